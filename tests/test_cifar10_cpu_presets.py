"""Every `<method>_cifar10_cpu` preset runs as a user runs it with the JPEG copy (`--dataset image_folder`), here on a
small generated folder of 32 x 32 colour JPEGs, for a few steps and one evaluation; and the learning-curve figure
script draws their metrics."""
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import main as entry
from scripts import plot_learning_curves

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
CPU_PRESETS = sorted(p.stem for p in CONFIGS.glob("*_cifar10_cpu.yaml"))


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cifar_like")
    rng = np.random.default_rng(0)
    for split, count in (("train", 6), ("test", 2)):
        for c in range(10):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = np.clip(rng.normal(20 * c + 30, 50, (32, 32, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.jpg", quality=75)
    return root


def test_there_is_a_cpu_preset_for_every_image_method():
    assert CPU_PRESETS == sorted(f"{m}_cifar10_cpu" for m in ("cc", "pica", "iic", "propos", "hadis", "digpro",
                                                              "divclust_cc"))


@pytest.mark.parametrize("preset", CPU_PRESETS)
def test_each_cifar10_cpu_preset_trains_and_evaluates_on_an_image_folder(preset, image_folder, tmp_path):
    results = entry.main(["--preset", preset, "--dataset", "image_folder", "--data_root", str(image_folder),
                          "--epochs", "2", "--steps_per_epoch", "2", "--batch_size", "16", "--eval_every", "2",
                          "--eval_batch_size", "40", "--plots", "false", "--output_dir", str(tmp_path / "runs"),
                          "--run_name", "smoke"])
    assert results["step"] == 4 and results["kmeans"] is not None
    run = tmp_path / "runs" / preset / "smoke"
    losses = [json.loads(line)["metrics"].get("train/loss") for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any(v is not None for v in losses)
    assert all(np.isfinite(v) for v in losses if v is not None)
    # The curves script reads what the run wrote.
    out = plot_learning_curves.main([str(run), "--baseline", "0.2", "--out", str(tmp_path / "curves.png")])
    assert out.stat().st_size > 1000
