"""models/digpro.py: two EMA updates per step, the memory bank, group features and their k-means reset, resume
exactness with resets inside the run, and a short run whose loss decreases."""
from __future__ import annotations

import torch
import torch.nn.functional as F

import main as entry
from losses.digpro import momentum_group_update
from tests.conftest import assert_same_checkpoints
from tests.family_helpers import build, random_batch, run_killed_after, tiny_argv, train_losses


def _perturbed_target(model):
    for p in model._target_parameters():
        p.data.add_(0.1 * torch.randn_like(p))
    return [p.detach().clone() for p in model._online_parameters()], \
        [p.detach().clone() for p in model._target_parameters()]


def test_two_ema_updates_per_step_and_one_on_reset_steps():
    model, _, bundle, _ = build("digpro")
    model.train()
    online, target = _perturbed_target(model)
    model.training_step(random_batch(bundle), step=0)                   # it = 1: no reset
    for t_new, t, o in zip(model._target_parameters(), target, online):
        torch.testing.assert_close(t_new, 0.996 * (0.99 * t + 0.01 * o) + 0.004 * o, rtol=0, atol=1e-6)
    online, target = _perturbed_target(model)
    assert model.is_reset_step(9) and not model.is_reset_step(0) and not model.is_reset_step(10)   # it % K == 0
    model.training_step(random_batch(bundle), step=9)                   # it = 10 = K: reset, first EMA skipped
    for t_new, t, o in zip(model._target_parameters(), target, online):
        torch.testing.assert_close(t_new, 0.996 * t + 0.004 * o, rtol=0, atol=1e-6)
    assert model.resets == 1


def test_bank_groups_and_reset():
    from torch_clustering import KMeans

    model, _, bundle, _ = build("digpro", ["--digpro.bank_size", "40"])
    model.train()
    torch.manual_seed(3)
    groups_before = model.group_features.clone()
    batch = random_batch(bundle, batch=16)
    model.opts.momentum_base = 1.0      # keep the networks fixed so q can be recomputed after the step
    model.opts.first_momentum = 1.0
    model.training_step(batch, step=0)
    with torch.no_grad():               # train mode: BatchNorm uses the batch statistics, as in the step
        q1, q2 = model.online(batch["views"][0]), model.online(batch["views"][1])
    rows = torch.cat([F.normalize(q1, dim=1), F.normalize(q2, dim=1)])     # (32, D)
    torch.testing.assert_close(model.memory_bank[:, :32], rows.t())
    assert int(model.bank_pointer) == 32
    # the stored groups are the two sequential momentum updates with the raw online projections (beta 0.99)
    expected = momentum_group_update(q2, momentum_group_update(q1, groups_before, beta=0.99), beta=0.99)
    torch.testing.assert_close(model.group_features, expected)
    # FIFO: 32 + 32 >= 40 -> only 8 rows are written, the pointer wraps to 0, the rest is dropped
    new = F.normalize(torch.randn(32, model.memory_bank.shape[0]), dim=1)
    model.enqueue(new)
    torch.testing.assert_close(model.memory_bank[:, 32:], new[:8].t())
    torch.testing.assert_close(model.memory_bank[:, :32], rows.t())
    assert int(model.bank_pointer) == 0
    # reset: L2-normalised centres of a seeded k-means of the bank's vectors
    model.reset_groups(step=19)
    from engine.seeding import derive_seed
    centres = KMeans(10, n_init=10, random_state=derive_seed(0, "group_reset", 19) % (2 ** 31)).fit(
        model.memory_bank.t()).cluster_centers_
    torch.testing.assert_close(model.group_features, F.normalize(centres, dim=1))


def test_short_run_lowers_the_loss_and_resume_is_exact_across_group_resets(tmp_path):
    out = tmp_path / "runs"
    args = tiny_argv("digpro", ["--output_dir", str(out), "--deterministic", "true", "--epochs", "3",
                                "--warmup_epochs", "3", "--digpro.reset_every", "2", "--lr_schedule", "cosine"])
    full = entry.main(args + ["--run_name", "full"])
    losses = train_losses(out / "digpro_digits" / "full")
    assert len(losses) == 3 and losses[2] < losses[0] - 0.2, losses
    assert "group resets in epoch 1: 1 k-means" in (out / "digpro_digits/full/log.txt").read_text()
    run_killed_after(args + ["--run_name", "part"], 2)
    resumed = entry.main(args + ["--resume", str(out / "digpro_digits" / "part")])
    assert resumed["kmeans"] == full["kmeans"]
    state = assert_same_checkpoints(out / "digpro_digits/full/checkpoints/last.pt",
                               out / "digpro_digits/part/checkpoints/last.pt")
    assert {"group_features", "memory_bank", "bank_pointer", "pseudo_labels"} <= set(state["model"])


def _ddp_worker(rank: int, world: int, port: int, argv: list[str], out_dir: str) -> None:
    import os

    from engine import distributed
    from models.digpro import DigPro

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    original = DigPro.on_epoch_end

    def record(self, ctx):
        original(self, ctx)
        torch.save(self.state_dict(), os.path.join(out_dir, f"rank{rank}_epoch{ctx.epoch + 1}.pt"))

    DigPro.on_epoch_end = record
    try:
        entry.main(argv)
    finally:
        distributed.shutdown()


def test_two_gloo_ranks_keep_identical_state(tmp_path):
    """Under DDP every rank ends each epoch with the same networks, pseudo-labels, groups and memory bank."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    argv = tiny_argv("digpro", ["--output_dir", str(tmp_path / "runs"), "--epochs", "1", "--warmup_epochs", "0",
                                "--digpro.reset_every", "2", "--run_name", "ddp"])
    mp.spawn(_ddp_worker, args=(2, port, argv, str(tmp_path)), nprocs=2, join=True)
    for epoch in (1,):
        a = torch.load(tmp_path / f"rank0_epoch{epoch}.pt", weights_only=True)
        b = torch.load(tmp_path / f"rank1_epoch{epoch}.pt", weights_only=True)
        for key in a:
            if key.startswith(("online_", "predictor")) and ".running_" in key or "num_batches" in key:
                continue   # BN statistics of the online nets: DDP re-broadcasts them at the next forward
            torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6, msg=key)
        assert int(a["bank_pointer"]) == epoch * 3 * 2 * 64        # gathered rows of both views, 3 steps
