"""PICA as a method: head alternation, DivClust composition, the Sobel input, its augmentation pipelines, training."""
from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

import main as entry
from datasets.batch_augment import (AugmentSpec, BatchAugmenter, center_crop_resize, draw_params, eval_images,
                                    pica_specs)
from engine.run import load_config as resolve
from losses.pica import pica_loss
from models.backbones import SobelFilter
from datasets import DataInfo
from models.pica import PICA

TINY = ["--backbone", "mlp", "--image_size", "8", "--pica_augmentation.resize", "9", "--batch_size", "64", "--log_every", "1",
        "--eval_batch_size", "1024", "--pica.overcluster_heads", "[12]"]


def merged(base: list[str], extra) -> list[str]:
    """base --key value pairs with those of `extra` replacing the same keys."""
    pairs = dict(zip(base[::2], base[1::2]))
    pairs.update(zip(extra[::2], extra[1::2]))
    return [x for kv in pairs.items() for x in kv]


def build(*args: str, k: int = 5) -> PICA:
    cfg = resolve(["--preset", "pica_digits", "--num_clusters", str(k), *merged(TINY, args)])
    torch.manual_seed(0)
    return PICA(cfg, DataInfo("image", 1, 8, 0, 100, k))


def views(model: PICA, b: int = 16, seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    r = int(model.cfg.pica.repeats)
    return {"views": [torch.rand(b, 1, 8, 8, generator=g) for _ in range(1 + r)], "index": torch.arange(b)}


def grads_after_step(model: PICA, epoch: int) -> dict[str, float]:
    model.zero_grad(set_to_none=True)
    model.on_epoch_start(SimpleNamespace(epoch=epoch))
    model.training_step(views(model), 0)["loss"].backward()
    norm = lambda m: sum(float(p.grad.abs().sum()) if p.grad is not None else math.nan for p in m.parameters())
    return {"trunk": norm(model.backbone), "over": norm(model.overcluster[0]), "main": norm(model.main_head)}


def test_heads_alternate_one_epoch_each_and_only_the_active_head_learns():
    model = build()
    assert [model.head_for_epoch(e) for e in range(5)] == [0, 1, 0, 1, 0]
    g = grads_after_step(model, 0)                     # over-clustering pass
    assert g["over"] > 0 and g["trunk"] > 0 and g["main"] == 0.0   # zero (not None) gradients, as official
    g = grads_after_step(model, 1)                     # main-head pass
    assert g["main"] > 0 and g["trunk"] > 0 and g["over"] == 0.0
    three = build("--pica.overcluster_heads", "[12, 7]")
    assert [three.head_for_epoch(e) for e in range(6)] == [0, 1, 2, 0, 1, 2]
    assert [h.out.weight.shape[1] for h in three.overcluster] == [12, 7] and three.main_head.out.weight.shape[1] == 5


def test_step_loss_is_the_pica_loss_of_the_active_head_on_block_layout_views():
    model = build("--pica.repeats", "2")
    model.on_epoch_start(SimpleNamespace(epoch=1))
    batch = views(model)
    out = model.training_step(batch, 0)
    with torch.no_grad():
        clean = model.main_head(model.backbone(batch["views"][0]))[0]
        pert = model.main_head(model.backbone(torch.cat(batch["views"][1:])))[0]
    torch.testing.assert_close(out["loss"].detach(), pica_loss(clean, pert, lamda=2.0, eps=0.0))
    assert out["assignments"].shape == (1, 16, 5)


def test_sobel_is_a_fixed_input_layer():
    model = build("--pica.sobel", "true")
    names = [n for n, _ in model.named_parameters()]
    assert not any(n.startswith("sobel") for n in names) and "sobel.kernels" not in model.state_dict()
    x = torch.rand(4, 1, 8, 8)
    model.eval()
    torch.testing.assert_close(model.features(x), model.backbone(model.sobel(x)))
    # A horizontal ramp of slope 1: Sobel-x = 4 * (I(x-1) - I(x+1)) = -8 inside the image, Sobel-y = 0.
    ramp = torch.arange(8.0).view(1, 1, 1, 8).expand(1, 1, 8, 8)
    g = SobelFilter("mean")(ramp)
    assert torch.all(g[0, 0, 1:-1, 1:-1] == -8.0) and torch.all(g[0, 1, 1:-1, 1:-1] == 0.0)
    rgb = torch.rand(2, 3, 6, 6)
    torch.testing.assert_close(SobelFilter("mean")(rgb), SobelFilter("mean")(rgb.mean(1, keepdim=True)))
    luma = (0.299 * rgb[:, 0] + 0.587 * rgb[:, 1] + 0.114 * rgb[:, 2]).unsqueeze(1)
    torch.testing.assert_close(SobelFilter("luma")(rgb), SobelFilter("luma")(luma))


def test_divclust_replicates_only_the_main_head_and_returns_its_clean_assignments():
    model = build("--clusterings", "2")
    assert model.main_head.out.weight.shape[0] == 2 and model.overcluster[0].out.weight.shape[0] == 1
    model.on_epoch_start(SimpleNamespace(epoch=1))
    batch = views(model)
    out = model.training_step(batch, 0)
    assert out["assignments"].shape == (2, 16, 5) and out["assignments"].requires_grad
    # The diversity loss reaches the main heads through the assignments.
    out["assignments"].pow(2).sum().backward()
    assert model.main_head.out.weight.grad.abs().sum() > 0
    model.on_epoch_start(SimpleNamespace(epoch=0))                      # over-clustering pass: assignments are detached
    assert not model.training_step(batch, 0)["assignments"].requires_grad


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line)["metrics"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_short_training_run_on_digits_lowers_the_main_head_loss(tmp_path):
    args = ["--preset", "pica_digits", "--output_dir", str(tmp_path), "--run_name", "t", *TINY,
            "--steps_per_epoch", "3", "--epochs", "4", "--eval_every", "4", "--lr", "0.002"]
    results = entry.main(args)
    rows = [m for m in read_metrics(tmp_path / "pica_digits" / "t") if "train/epoch_seconds" in m]
    assert len(rows) == 4
    main_losses = [m["train/head1_loss"] for m in rows[1::2]]
    assert all("train/head0_loss" in m for m in rows[0::2])      # the trainer's epochs alternate the heads
    assert main_losses[-1] < main_losses[0] - 0.05, main_losses
    assert len(results["heads"]) == 1 and results["heads"][0]["acc"] > 0.3


def test_divclust_run_with_two_clusterings(tmp_path):
    args = ["--preset", "pica_digits", "--output_dir", str(tmp_path), "--run_name", "d", *TINY,
            "--steps_per_epoch", "2", "--epochs", "2", "--eval_every", "2", "--clusterings", "2",
            "--NMI_target", "0.8", "--NMI_interval", "1", "--consensus", "coassoc"]
    results = entry.main(args)
    assert len(results["heads"]) == 2 and results["diversity"] is not None and results["consensus"] is not None
    rows = read_metrics(tmp_path / "pica_digits" / "d")
    assert any("train/divclust_threshold" in m for m in rows)


# ----- augmentation pipelines ---------------------------------------------------------------------------------
def ramp_images(n: int, side: int) -> torch.Tensor:
    """uint8 images whose value grows by 8 per column (a horizontal ramp)."""
    return (torch.arange(side) * 8).view(1, 1, 1, side).expand(n, 1, side, side).to(torch.uint8)


def column_step(x: torch.Tensor) -> torch.Tensor:
    """Per image, the median step between neighbouring columns of the middle rows (in input-ramp units)."""
    mid = x[:, 0, 2:-2, 2:-2] * 255 / 8
    return (mid[..., 1:] - mid[..., :-1]).flatten(1).median(dim=1).values


def test_pica_clean_view_is_a_fixed_crop_and_perturbed_views_vary():
    clean, perturbed = pica_specs(16, resize=20, crop_scale=(0.2, 1.0), flip=False)
    aug = BatchAugmenter(perturbed, 1, 4, first_spec=clean)
    out = aug(ramp_images(64, 16), torch.Generator().manual_seed(0))
    assert len(out) == 4 and all(v.shape == (64, 1, 16, 16) for v in out)
    # Clean: a 16/20 crop of the side resized back to 16 px, so neighbouring columns differ by 0.8 ramp steps,
    # the same for every image (no scale change, no flip, no jitter).
    torch.testing.assert_close(column_step(out[0]), torch.full((64,), 0.8), atol=0.02, rtol=0)
    # Perturbed: RandomResizedCrop with area in [0.2, 1] and always-on jitter: scales vary per image.
    steps = column_step(out[1])
    assert steps.std() > 0.05 and not torch.allclose(out[1], out[2])


def test_pica_flip_option_and_colour_jitter_always_on():
    clean, perturbed = pica_specs(16, resize=16)
    assert perturbed.flip_p == 0.5 and perturbed.jitter_p == 1.0 and perturbed.hue == 0.4
    assert perturbed.grayscale_p == 0.2 and clean.jitter_p == 0.0 and clean.crop_sides == (1.0,)
    assert pica_specs(16, resize=16, flip=False)[1].flip_p == 0.0
    with pytest.raises(ValueError, match="resize"):
        pica_specs(32, resize=28)


def test_new_options_draw_after_the_existing_random_stream():
    base = AugmentSpec(16, (0.3, 1.0))
    fixed = AugmentSpec(16, (0.3, 1.0), crop_sides=(0.5, 0.75), crop_center_p=0.5, rotation_deg=10, rotation_p=0.5)
    a = draw_params(base, 200, torch.Generator().manual_seed(3))
    b = draw_params(fixed, 200, torch.Generator().manual_seed(3))
    for key in ("flip", "jitter", "brightness", "contrast", "saturation", "hue", "gray", "blur", "sigma"):
        assert torch.equal(a[key], b[key]), key
    assert set(b["w"].tolist()) == {0.5, 0.75} and torch.equal(b["w"], b["h"])
    centred = (b["cx"] == 0) & (b["cy"] == 0)
    assert 60 < int(centred.sum()) < 140                          # crop_center_p 0.5
    assert 60 < int((b["angle"] == 0).sum()) < 140                # rotation_p 0.5
    assert torch.all(b["cx"].abs() <= 1 - b["w"] + 1e-6)


def test_eval_centre_crop_matches_resize_then_crop_and_crop_then_resize():
    x = torch.rand(2, 3, 32, 32)
    # PICA: Resize(40) -> CenterCrop(32)  (crop 0.8 of the side is not a whole number of pixels)
    big = F.interpolate(x, size=(40, 40), mode="bilinear", align_corners=False, antialias=True)
    torch.testing.assert_close(center_crop_resize(x, image_size=32, crop=0.8), big[..., 4:36, 4:36])
    # IIC: CenterCrop(20) -> Resize(32)
    cut = F.interpolate(x[..., 6:26, 6:26], size=(32, 32), mode="bilinear", align_corners=False, antialias=True)
    torch.testing.assert_close(center_crop_resize(x, image_size=32, crop=20 / 32), cut)
    u8 = (x * 255).to(torch.uint8)
    torch.testing.assert_close(eval_images(u8, image_size=32, channels=3),
                               eval_images(u8, image_size=32, channels=3, crop=1.0))


def test_pica_data_bundle_uses_the_clean_crop_for_evaluation():
    import datasets

    cfg = resolve(["--preset", "pica_digits", "--image_size", "8", "--pica_augmentation.resize", "10"])
    bundle = datasets.build(cfg, datasets.DataRequest(views=4))
    assert bundle.eval_crop == pytest.approx(0.8) and bundle.augmenter.first_spec.crop_sides == (0.8,)
    batch = {"views": [bundle.eval[i]["views"][0] for i in range(3)]}
    batch["views"] = [torch.stack(batch["views"])]
    x = bundle.eval_view(batch, torch.device("cpu"))
    assert x.shape == (3, 1, 8, 8)


def test_training_keeps_the_last_partial_batch_as_officially():
    from engine.run import load_config
    from tests.conftest import build_method

    argv = ["--preset", "pica_digits", "--batch_size", "500", "--backbone", "mlp", "--pica.sobel", "false"]
    assert load_config(argv).pica.keep_last_batch is False          # the digits preset drops it (5 images)
    model, bundle, ctx = build_method(load_config(argv + ["--pica.keep_last_batch", "true"]))
    sampler = model.batch_sampler(ctx)
    assert [len(b) for b in sampler] == [500, 500, 500, 297]
    assert sorted(i for b in sampler for i in b) == list(range(1797))
    assert load_config(["--preset", "pica_cifar10"]).pica.keep_last_batch is True
    dropping, _, ctx = build_method(load_config(argv))
    assert dropping.batch_sampler(ctx) is None                       # the trainer's batches: last one dropped
