"""IIC as a method: head schedule, sub-heads and their label-free selection, DivClust, BN modes, pipelines, training."""
from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import main as entry
from datasets.batch_augment import BatchAugmenter, iic_specs
from engine.run import load_config as resolve
from losses.iic import iic_loss
from datasets import DataInfo
from models.iic import IIC

TINY = ["--backbone", "mlp", "--image_size", "8", "--batch_size", "64", "--log_every", "1", "--eval_batch_size", "1024",
        "--iic.overcluster_k", "12", "--iic.sub_heads", "3", "--iic.repeats", "2"]


def merged(base: list[str], extra) -> list[str]:
    """base --key value pairs with those of `extra` replacing the same keys."""
    pairs = dict(zip(base[::2], base[1::2]))
    pairs.update(zip(extra[::2], extra[1::2]))
    return [x for kv in pairs.items() for x in kv]


def build(*args: str, k: int = 5) -> IIC:
    cfg = resolve(["--preset", "iic_digits", "--num_clusters", str(k), *merged(TINY, args)])
    torch.manual_seed(0)
    return IIC(cfg, DataInfo("image", 1, 8, 0, 100, k))


def views(model: IIC, b: int = 16, seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    r = int(model.cfg.iic.repeats)
    return {"views": [torch.rand(b, 1, 8, 8, generator=g) for _ in range(1 + r)], "index": torch.arange(b)}


def grads_after_step(model: IIC, epoch: int) -> dict[str, float]:
    model.zero_grad(set_to_none=True)
    model.on_epoch_start(SimpleNamespace(epoch=epoch))
    model.training_step(views(model), 0)["loss"].backward()
    norm = lambda m: sum(float(p.grad.abs().sum()) if p.grad is not None else math.nan for p in m.parameters())
    return {"trunk": norm(model.backbone), "A": norm(model.head_a), "B": norm(model.head_b)}


def test_schedule_follows_head_order_and_epochs_and_only_the_active_head_learns():
    model = build("--iic.head_order", "BA", "--iic.head_B_epochs", "2", "--iic.head_A_epochs", "1")
    assert [model.head_for_epoch(e) for e in range(7)] == list("BBABBAB")          # official MNIST (685)
    assert [build("--iic.head_order", "AB", "--iic.head_B_epochs", "2").head_for_epoch(e) for e in range(6)] \
        == list("ABBABB")                                                             # official CIFAR-10 (640)
    assert [build("--iic.overcluster_k", "0").head_for_epoch(e) for e in range(3)] == list("BBB")
    g = grads_after_step(model, 2)                     # head-A pass
    assert g["A"] > 0 and g["trunk"] > 0 and g["B"] == 0.0
    g = grads_after_step(model, 0)                     # head-B pass
    assert g["B"] > 0 and g["trunk"] > 0 and g["A"] == 0.0


def test_step_loss_is_the_mean_over_sub_heads_of_iic_loss_with_the_original_view_tiled():
    model = build()
    model.on_epoch_start(SimpleNamespace(epoch=0))
    batch = views(model)
    out = model.training_step(batch, 0)
    with torch.no_grad():
        p1 = model.head_b(model.backbone(batch["views"][0]))
        p2 = model.head_b(model.backbone(torch.cat(batch["views"][1:])))
    expected = torch.stack([iic_loss(p1[s].repeat(2, 1), p2[s]) for s in range(3)]).mean()
    torch.testing.assert_close(out["loss"].detach(), expected)
    assert out["assignments"].shape == (3, 16, 5)


def test_select_head_is_the_sub_head_with_the_lowest_training_loss():
    model = build()
    with torch.no_grad():              # sub-head 2 outputs the uniform distribution: MI 0, a stationary point
        model.head_b.out.weight[2].zero_()
        model.head_b.out.bias[2].zero_()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    assert model.select_head() is None                 # nothing measured yet
    model.on_epoch_start(SimpleNamespace(epoch=0))
    expected = torch.zeros(3, dtype=torch.float64)
    for seed in range(4):
        batch = views(model, seed=seed)
        with torch.no_grad():
            p1 = model.head_b(model.backbone(batch["views"][0]))
            p2 = model.head_b(model.backbone(torch.cat(batch["views"][1:])))
            expected += torch.stack([iic_loss(p1[s].repeat(2, 1), p2[s]) for s in range(3)]).double()
        opt.zero_grad()
        model.training_step(batch, seed)["loss"].backward()
        opt.step()
    torch.testing.assert_close(model.head_loss_sum, expected, rtol=1e-5, atol=1e-6)
    assert model.select_head() == int(expected.argmin()) and model.select_head() != 2
    model.on_epoch_start(SimpleNamespace(epoch=2))                      # a head-A pass keeps the head-B record
    model.training_step(views(model), 0)
    assert model.select_head() == int(expected.argmin())
    model.on_epoch_start(SimpleNamespace(epoch=3))                      # a new head-B pass starts a new record
    assert model.select_head() is None


def test_eval_loss_selection_is_the_lowest_loss_over_an_eval_mode_pass_of_the_training_data():
    from tests.conftest import build_method

    cfg = resolve(["--preset", "iic_digits", *merged(TINY, ["--batch_size", "500"])])
    model, bundle, ctx = build_method(cfg)
    with torch.no_grad():   # sub-head 0 confident (large weights): positive MI, a clearly negative loss; 2 uniform
        model.head_b.out.weight[0].mul_(300.0)
        model.head_b.out.weight[2].zero_()
        model.head_b.out.bias[2].zero_()
    model.train()
    losses = model.eval_pass_losses(ctx)
    assert model.training                                     # the pass switches to eval mode and back
    # the same pass by hand: batches of batch_size in dataset order (the last one partial), eval mode
    generator = torch.Generator().manual_seed(ctx.seed_for("subhead_selection", 0))
    expected = torch.zeros(3)
    model.eval()
    with torch.no_grad():
        for start in range(0, len(bundle.train), 500):
            batch = torch.utils.data.default_collate([bundle.train[i] for i in range(start, min(start + 500, 1797))])
            tf1, *tf2 = bundle.train_views(batch, torch.device("cpu"), generator)
            p1, p2 = model.head_b(model._trunk(tf1)), model.head_b(model._trunk(torch.cat(tf2)))
            expected += torch.stack([iic_loss(p1[s].repeat(len(tf2), 1), p2[s]) for s in range(3)])
    torch.testing.assert_close(losses, expected, rtol=1e-5, atol=1e-5)
    chosen = model.select_head(ctx)
    assert expected[0] < expected[2] - 0.1 and chosen == int(expected.argmin()) == 0
    assert any("eval/subhead_loss/0" in m for m in ctx._log.metrics)


def test_training_batches_are_sequential_and_keep_the_last_one_as_officially():
    from tests.conftest import build_method

    model, bundle, ctx = build_method(resolve(["--preset", "iic_digits", "--iic.batch_order", "sequential",
                                               *merged(TINY, ["--batch_size", "500"])]))
    sampler = model.batch_sampler(ctx)
    batches = list(sampler)
    assert [len(b) for b in batches] == [500, 500, 500, 297] and batches[0][:3] == [0, 1, 2]
    sampler.set_epoch(5)
    assert list(sampler) == batches                           # the same order every epoch
    shuffled, _, ctx2 = build_method(resolve(["--preset", "iic_digits", "--iic.batch_order", "shuffled"]))
    assert shuffled.batch_sampler(ctx2) is None               # the trainer's shuffled batches


def test_evaluation_reports_every_sub_head_their_mean_and_the_selected_one(tmp_path):
    args = ["--preset", "iic_digits", "--output_dir", str(tmp_path), "--run_name", "e", *TINY,
            "--steps_per_epoch", "2", "--epochs", "3", "--eval_every", "3", "--consensus", "none",
            "--iic.select_by", "train_loss"]
    results = entry.main(args)
    assert len(results["heads"]) == 3 and results["heads_mean"] is not None
    chosen = results["selected_head"]
    assert chosen is not None and chosen == dict(results["heads"][chosen["index"]], index=chosen["index"])
    ckpt = torch.load(tmp_path / "iic_digits" / "e" / "checkpoints" / "last.pt", weights_only=True)
    assert int(torch.argmin(ckpt["model"]["head_loss_sum"])) == chosen["index"]


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line)["metrics"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_short_training_run_on_digits_lowers_the_head_b_loss(tmp_path):
    args = ["--preset", "iic_digits", "--output_dir", str(tmp_path), "--run_name", "t", *TINY,
            "--steps_per_epoch", "3", "--epochs", "6", "--eval_every", "6", "--lr", "0.002", "--consensus", "none"]
    entry.main(args)
    rows = [m for m in read_metrics(tmp_path / "iic_digits" / "t") if "train/epoch_seconds" in m]
    b_losses = [m["train/head_B_loss"] for m in rows if "train/head_B_loss" in m]
    assert len(b_losses) == 4 and all("train/head_A_loss" in m for m in rows[2::3])
    assert b_losses[-1] < b_losses[0] - 0.1, b_losses


def test_divclust_needs_single_sub_heads_and_returns_the_c_main_heads(tmp_path):
    from engine.config import ConfigError

    with pytest.raises(ConfigError, match="--iic.sub_heads 1"):
        IIC.check_config(resolve(["--preset", "iic_digits", "--clusterings", "2"]))
    model = build("--clusterings", "2", "--iic.sub_heads", "1")
    assert model.head_b.out.weight.shape[0] == 2 and model.head_a.out.weight.shape[0] == 1
    model.on_epoch_start(SimpleNamespace(epoch=0))
    out = model.training_step(views(model), 0)
    assert out["assignments"].shape == (2, 16, 5) and out["assignments"].requires_grad
    args = ["--preset", "iic_digits", "--output_dir", str(tmp_path), "--run_name", "d", *merged(TINY, ["--iic.sub_heads", "1"]),
            "--steps_per_epoch", "2", "--epochs", "3", "--eval_every", "3", "--clusterings", "2",
            "--NMI_target", "0.8", "--NMI_interval", "1", "--consensus", "coassoc"]
    results = entry.main(args)
    assert len(results["heads"]) == 2 and results["diversity"] is not None


def test_batchnorm_without_running_statistics_uses_the_batch_in_evaluation():
    tracked, untracked = build("--backbone", "small_cnn"), build("--backbone", "small_cnn", "--iic.bn_track", "false")
    assert all(m.running_mean is None for m in untracked.modules() if isinstance(m, torch.nn.BatchNorm2d))
    x = torch.rand(8, 1, 8, 8)
    for model in (tracked, untracked):
        model.eval()
    alone = untracked.cluster_probs(x[:4])
    together = untracked.cluster_probs(x)[:, :4]
    assert not torch.allclose(alone, together)         # batch statistics: depends on the batch
    torch.testing.assert_close(tracked.cluster_probs(x[:4]), tracked.cluster_probs(x)[:, :4])


def test_iic_pipelines_crop_rotate_and_flip_as_configured():
    tf1, tf2 = iic_specs(24, crop=20 / 28, tf2_crops=[16 / 28, 20 / 28, 24 / 28], tf1_center_p=0.5, rotation=25.0,
                         flip=False)
    assert tf1.crop_sides == (20 / 28,) and tf1.jitter_p == 0 and tf1.flip_p == 0 and tf1.rotation_deg == 0
    assert tf2.flip_p == 0 and tf2.jitter_p == 1.0 and tf2.hue == 0.125 and tf2.rotation_p == 0.5
    assert not tf1.mean and not tf2.mean                          # IIC feeds [0, 1] images
    aug = BatchAugmenter(tf2, 1, 4, first_spec=tf1)
    images = torch.randint(0, 256, (32, 1, 28, 28), dtype=torch.uint8)
    out = aug(images, torch.Generator().manual_seed(0))
    assert [v.shape for v in out] == [(32, 1, 24, 24)] * 4 and all(0 <= v.min() and v.max() <= 1 for v in out)
    assert not torch.allclose(out[1], out[2])
    assert iic_specs(32, crop=0.625)[1].crop_sides == (0.625,) and iic_specs(32, crop=0.625)[1].flip_p == 0.5


def test_iic_data_bundle_crops_in_pixels_of_the_stored_image():
    import datasets

    cfg = resolve(["--preset", "iic_digits", "--iic_augmentation.crop", "6", "--iic_augmentation.tf2_crops", "[4, 8]", "--iic.repeats", "2"])
    bundle = datasets.build(cfg, IIC.data_request(cfg))
    assert bundle.eval_crop == pytest.approx(0.75)
    assert bundle.augmenter.views == 3 and bundle.augmenter.first_spec.crop_sides == (0.75,)
    assert bundle.augmenter.spec.crop_sides == (0.5, 1.0)


def test_batch_statistics_evaluation_visits_the_data_in_mixed_batches_and_returns_dataset_order():
    """Without running statistics, an evaluation batch of similar samples (an image folder lists its files class by
    class) would be normalised by that class's own statistics. embed passes over a fixed shuffled order instead
    and puts the rows back in dataset order."""
    from tests.conftest import build_method

    cfg = resolve(["--preset", "iic_digits", *merged(TINY, ["--iic.bn_track", "false", "--eval_batch_size", "100"])])
    model, bundle, ctx = build_method(cfg)
    assert model.embeds_in_mixed_batches
    seen: list[torch.Tensor] = []

    def fn(x: torch.Tensor) -> torch.Tensor:
        seen.append(x.flatten(1).sum(1))
        return x.flatten(1).sum(1, keepdim=True)               # one value per sample, to check the order

    rows = ctx.embed(bundle.eval, fn)
    by_hand = torch.stack([bundle.eval_view(torch.utils.data.default_collate([bundle.eval[i]]),
                                            torch.device("cpu")).sum() for i in range(len(bundle.eval))])
    torch.testing.assert_close(rows[:, 0], by_hand)            # dataset order
    first_batch = seen[0]
    assert not torch.allclose(first_batch, by_hand[:100])     # but not visited in it
    again = ctx.embed(bundle.eval, lambda x: x.flatten(1).sum(1, keepdim=True))
    torch.testing.assert_close(again, rows)                    # the order is fixed (seeded)
    tracked, _, tracked_ctx = build_method(resolve(["--preset", "iic_digits", *merged(TINY, [])]))
    assert not tracked.embeds_in_mixed_batches


def test_sequential_batches_on_an_image_folder_are_refused(tmp_path):
    from engine.config import ConfigError

    with pytest.raises(ConfigError, match="class folder by class folder"):
        IIC.check_config(resolve(["--preset", "iic_cifar10", "--dataset", "image_folder", "--data_root",
                                  str(tmp_path)]))
    IIC.check_config(resolve(["--preset", "iic_cifar10_cpu", "--dataset", "image_folder", "--data_root",
                              str(tmp_path)]))                 # shuffled: fine
