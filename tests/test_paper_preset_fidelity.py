"""The paper presets do what the official code does around the losses: precision, learning-rate steps, the
zero-initialised residual BatchNorm of DivClust's network, the CIFAR stem's default init, and the best-accuracy
epoch reported only as label-informed analysis (the official PICA and IIC code keep that checkpoint)."""
import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

import main as entry
from datasets import DataInfo
from engine.run import load_config as resolve
from engine.trainer import config_lr_factor
from models.backbones import build_backbone

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SMALL = ("_digits", "_fashion_mnist", "_cpu", "_digits_transfer")
PAPER_PRESETS = sorted(p.stem for p in CONFIGS.glob("*.yaml")
                       if p.stem != "main_config" and not p.stem.endswith(SMALL))


def test_there_are_paper_presets_of_every_family():
    assert {"cc_cifar10", "divclust_cc_cifar10", "divclust_pica_cifar10", "pica_cifar10", "iic_cifar10",
            "propos_cifar10", "hadis_cifar10", "digpro_imagenet10", "spn_omniglot", "mcl_omniglot"} <= set(PAPER_PRESETS)


@pytest.mark.parametrize("preset", PAPER_PRESETS)
def test_every_paper_preset_runs_in_its_official_precision(preset):
    cfg = resolve(["--preset", preset])
    if preset.startswith("divclust_"):          # the official DivClust runs use fp16 autocast with a GradScaler
        assert cfg.amp is True and cfg.amp_dtype == "float16", preset
    else:                                       # everything else trains in fp32
        assert cfg.amp is False, preset


@pytest.mark.parametrize("preset, steps", [("spn_omniglot", {29: 1.0, 30: 0.1, 39: 0.1, 40: 0.01}),
                                           ("mcl_omniglot", {99: 1.0, 100: 0.1}),
                                           ("kcl_omniglot", {99: 1.0, 100: 0.1})])
def test_l2c_presets_decay_the_learning_rate_at_the_official_epochs(preset, steps):
    cfg = resolve(["--preset", preset])
    for epoch, factor in steps.items():
        assert config_lr_factor(cfg, epoch * 10, 10) == pytest.approx(factor), (preset, epoch)


def image_info(channels: int = 3, size: int = 32) -> DataInfo:
    return DataInfo(kind="image", channels=channels, image_size=size, input_dim=0, num_samples=100, num_clusters=10)


@pytest.mark.parametrize("preset", [p for p in PAPER_PRESETS if p.startswith("divclust_cc_")])
def test_divclust_cc_presets_zero_initialise_the_last_batchnorm_of_every_residual_block(preset):
    cfg = resolve(["--preset", preset])
    assert cfg.zero_init_residual is True
    net, _ = build_backbone(cfg.backbone, image_info(), zero_init_residual=cfg.zero_init_residual)
    blocks = [m for m in net.modules() if hasattr(m, "bn2") and hasattr(m, "conv2")]
    assert blocks
    for block in blocks:
        last = block.bn3 if hasattr(block, "bn3") else block.bn2
        assert torch.count_nonzero(last.weight) == 0
    plain, _ = build_backbone(cfg.backbone, image_info(), zero_init_residual=False)
    assert all(torch.count_nonzero(b.bn2.weight) > 0 for b in plain.modules() if hasattr(b, "bn2"))


def test_the_cifar_stem_keeps_pytorchs_default_init():
    torch.manual_seed(0)
    net, _ = build_backbone("resnet18_cifar", image_info())
    weight = net.conv1.weight                                   # (64, 3, 3, 3)
    bound = 1 / math.sqrt(3 * 3 * 3)                            # kaiming_uniform(a=sqrt(5)): U(-1/sqrt(fan_in), ...)
    assert weight.abs().max() <= bound
    assert weight.std() > 0.8 * bound / math.sqrt(3)            # uniform's std; Kaiming fan_out would give 0.059
    assert isinstance(net.maxpool, nn.Identity) and net.conv1.stride == (1, 1)


def test_the_best_accuracy_epoch_is_reported_only_as_label_informed_analysis(tiny_args, tmp_path):
    results = entry.main(tiny_args + ["--epochs", "3", "--run_name", "best", "--lr", "0.002"])
    rows = [json.loads(line) for line in (tmp_path / "runs" / "cc_digits" / "best" / "metrics.jsonl")
            .read_text().splitlines()]
    evaluations = [r for r in rows if "eval/head.acc" in r["metrics"]]
    assert [r["epoch"] for r in evaluations] == [1, 2, 3]
    best = results["label_informed"]["best_accuracy_epoch"]
    assert best["acc"] == max(r["metrics"]["eval/head.acc"] for r in evaluations)
    assert "not the result" in results["label_informed"]["note"]
    # The result is the final evaluation, whichever epoch was best.
    assert results["head"]["acc"] == evaluations[-1]["metrics"]["eval/head.acc"]


def test_the_label_informed_epoch_looks_at_every_head(tmp_path):
    from engine.report import label_informed_best

    rows = [{"epoch": 1, "metrics": {"eval/heads/0.acc": 0.5, "eval/heads/1.acc": 0.7, "eval/heads/1.nmi": 0.4,
                                     "eval/head.acc": 0.5}},
            {"epoch": 2, "metrics": {"eval/heads/0.acc": 0.6, "eval/heads/1.acc": 0.65, "eval/head.acc": 0.65}}]
    path = tmp_path / "metrics.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    assert label_informed_best(path) == {"epoch": 1, "head": 1, "acc": 0.7, "nmi": 0.4, "ari": None}
