"""models/propos.py and the shared structure of models/momentum_family.py: EMA, schedules, the k-means E-step
(single process and 2 gloo ranks), a short run that lowers the loss, resume exactness, balanced resampling."""
from __future__ import annotations

import math
import os
import socket
from types import SimpleNamespace

import pytest
import torch
import torch.multiprocessing as mp

import main as entry
from datasets.samplers import PseudoLabelBalancedSampler
from tests.conftest import assert_same_checkpoints
from tests.family_helpers import build, random_batch, run_killed_after, tiny_argv, train_losses


def _snapshot(params):
    return [p.detach().clone() for p in params]


def test_ema_updates_target_parameters_after_the_losses_and_leaves_bn_statistics():
    model, cfg, bundle, _ = build("propos")
    model.train()
    online, target = _snapshot(model._online_parameters()), _snapshot(model._target_parameters())
    assert all(torch.equal(o, t) for o, t in zip(online, target))  # the target starts as a copy
    for p, o in zip(model._target_parameters(), online):  # make target != online so the update is visible
        p.data.add_(0.1 * torch.randn_like(o))
    target = _snapshot(model._target_parameters())
    m = 0.9
    model.opts.momentum_base = m
    model.training_step(random_batch(bundle), step=0)
    for t_new, t_old, o in zip(model._target_parameters(), target, online):
        torch.testing.assert_close(t_new, m * t_old + (1 - m) * o, rtol=0, atol=1e-6)
    assert not any(p.requires_grad for p in model._target_parameters())
    # parameters only: the BN running statistics of the target are untouched by ema_update
    bn = [b for b in model.target_projector.modules() if isinstance(b, torch.nn.BatchNorm1d)][0]
    before = bn.running_mean.clone()
    model.ema_update(0.5)
    assert torch.equal(bn.running_mean, before)


def test_momentum_and_learning_rate_schedules_follow_the_official_formulas():
    model, cfg, _, _ = build("propos", ["--epochs", "10", "--warmup_epochs", "2", "--lr_schedule", "cosine"])
    model._steps_per_epoch = 10
    assert model.ema_momentum(5) == 0.996                                    # momentum_increase off
    model.opts.momentum_increase = True
    assert model.ema_momentum(0) == pytest.approx(1 - 0.004 * (math.cos(math.pi * 1 / 100) + 1) / 2)
    assert model.ema_momentum(99) == pytest.approx(1.0)
    # warm-up: e = (step + 1) / iters_per_epoch, factor e / warmup
    assert model.official_lr_factor(4, 10) == pytest.approx(0.5 / 2)
    # cosine over `epochs` (not epochs - warmup), from the end of the warm-up: step 29 -> e = 3
    assert model.official_lr_factor(29, 10) == pytest.approx(0.5 * (1 + math.cos(math.pi * 1 / 10)))
    assert model.official_lr_factor(99, 10) == pytest.approx(0.5 * (1 + math.cos(math.pi * 8 / 10)))  # never 0
    # the method declares that curve as its learning-rate factor (the trainer's one scheduler applies it)
    assert model.lr_factor(29, SimpleNamespace(steps_per_epoch=10)) == model.official_lr_factor(29, 10)
    model.opts.official_schedule = False
    assert model.lr_factor(29, SimpleNamespace(steps_per_epoch=10)) is None
    # param groups: lr x batch/256 for the online network, x predictor_lr_mult more for the predictor
    groups = model.param_groups()
    assert groups[0]["lr_mult"] == pytest.approx(64 / 256) and groups[1]["lr_mult"] == pytest.approx(10 * 64 / 256)
    assert len(groups[0]["params"]) + len(groups[1]["params"]) == sum(
        1 for p in model.parameters() if p.requires_grad)


def test_warmup_turns_off_psl_and_noise():
    model, _, bundle, _ = build("propos", ["--warmup_epochs", "2"])
    batch = random_batch(bundle)
    model.current_epoch = 1                       # epoch 2 of 2 warm-up epochs: plain BYOL
    out = model.training_step(batch, step=0)
    assert out["loss"].item() == pytest.approx(out["alignment"].item())
    model.current_epoch = 2                       # epoch 3: PSL at its weight
    out = model.training_step(batch, step=0)
    assert out["loss"].item() == pytest.approx(out["alignment"].item() + 0.1 * out["psl"].item(), rel=1e-6)
    q = torch.zeros(4, 16)
    assert torch.equal(model._sample(q, 3, "noise_view_1", 0.0), q)
    a, b = model._sample(q, 3, "noise_view_1", 0.5), model._sample(q, 3, "noise_view_1", 0.5)
    assert torch.equal(a, b) and a.abs().sum() > 0                          # re-derived from (seed, step)
    assert not torch.equal(a, model._sample(q, 4, "noise_view_1", 0.5))


def test_refresh_is_cosine_kmeans_of_target_features_and_is_logged():
    from torch_clustering import KMeans

    model, cfg, bundle, ctx = build("propos")
    model.refresh_pseudo_labels(ctx, epochs_trained=0)
    x = bundle.eval_view({"views": [bundle.eval.data]}, torch.device("cpu"))
    model.eval()
    feats = model.features(x)
    torch.testing.assert_close(feats.norm(dim=1), torch.ones(len(feats)))
    expected = KMeans(10, metric="cosine", n_init=1, random_state=0).fit(feats).labels_
    assert torch.equal(model.pseudo_labels, expected)
    assert int(model.pseudo_label_epoch) == 0
    assert any("k-means refresh before epoch 1" in line and "s (target features" in line
               for line in ctx._log.lines)
    assert "train/kmeans_refresh_seconds" in ctx._log.metrics[-1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _refresh_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        model, _, _, ctx = build("propos")
        model.refresh_pseudo_labels(ctx, epochs_trained=3)
        torch.save({"labels": model.pseudo_labels, "epoch": model.pseudo_label_epoch},
                   os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_refresh_gives_identical_labels_on_two_gloo_ranks(tmp_path):
    mp.spawn(_refresh_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert torch.equal(r0["labels"], r1["labels"]) and int(r0["epoch"]) == 3
    # each rank embedded half of the set; the sharded k-means equals the one-process k-means on all of it
    single, _, _, ctx = build("propos")
    single.refresh_pseudo_labels(ctx, epochs_trained=3)
    assert torch.equal(single.pseudo_labels, r0["labels"])
    assert len(torch.unique(r0["labels"])) == 10


def test_short_run_lowers_the_loss_and_resume_is_exact_with_v2_and_resampling(tmp_path):
    out = tmp_path / "runs"
    args = tiny_argv("propos", ["--output_dir", str(out), "--deterministic", "true", "--propos.v2", "true",
                                "--propos.data_resample", "true", "--propos.momentum_increase", "true",
                                "--lr_schedule", "cosine", "--epochs", "3"])
    full = entry.main(args + ["--run_name", "full"])
    # a short run lowers the loss: the alignment term (PSL joins the total after epoch 1)
    alignment = train_losses(out / "propos_digits" / "full", "alignment")
    assert len(alignment) == 3 and alignment[2] < alignment[0] - 0.2, alignment
    assert full["heads"] == [] and 0.0 <= full["kmeans"]["acc"] <= 1.0
    assert "k-means refresh after epoch 3" in (out / "propos_digits/full/log.txt").read_text()
    run_killed_after(args + ["--run_name", "part"], 2)
    resumed = entry.main(args + ["--resume", str(out / "propos_digits" / "part")])
    assert resumed["kmeans"] == full["kmeans"]
    a = assert_same_checkpoints(out / "propos_digits/full/checkpoints/last.pt",
                           out / "propos_digits/part/checkpoints/last.pt")
    assert a["step"] == 9 and int(a["model"]["pseudo_label_epoch"]) == 3
    # the optimizer ends at the official lr of the next step, predictor at 10x
    factor = 0.5 * (1 + math.cos(math.pi * (10 / 3 - 1) / 3))
    lrs = [g["lr"] for g in a["optimizer"]["param_groups"]]
    assert lrs == pytest.approx([0.05 * 64 / 256 * factor, 0.5 * 64 / 256 * factor])


def test_balanced_sampler_weights_by_inverse_cluster_size_and_deals_round_robin():
    labels = torch.tensor([0] * 30 + [1] * 10)
    s0 = PseudoLabelBalancedSampler(lambda: labels, num_samples=40, batch_size=8, rank=0, world_size=2, seed=0)
    s1 = PseudoLabelBalancedSampler(lambda: labels, num_samples=40, batch_size=8, rank=1, world_size=2, seed=0)
    torch.testing.assert_close(s0.weights(), torch.tensor([40 / 30] * 30 + [40 / 10] * 10, dtype=torch.float64))
    assert len(s0) == len(list(s0)) == 5 and all(len(b) == 4 for b in s0)   # 5 local batches of 4
    s0.set_epoch(1)
    s1.set_epoch(1)
    first, second = [i for b in s0 for i in b], [i for b in s1 for i in b]
    assert first == [i for b in s0 for i in b]                 # same epoch, same draw
    s0.set_epoch(2)
    assert [i for b in s0 for i in b] != first
    both = torch.tensor(first + second)
    assert (both >= 30).float().mean() > 0.3                   # the small cluster drawn ~half the time, not 1/4
