"""scripts/device_check.sh and .py, in their CPU dry run: every section runs and both report files are written."""
import json
import os
import subprocess
import sys
from pathlib import Path

from scripts import device_check

ROOT = Path(__file__).resolve().parents[1]
DEVICE_SIZES = device_check.sizes


def small_sizes(device: str) -> dict:
    size = DEVICE_SIZES(device)
    size.update(bench_presets=["cc_digits"], bench_extra=["cc_digits"], bench_resnet18_batch=8,
                bench=["--steps", "1", "--warmup", "0", "--batch_size", "8", "--image_size", "16", "--num_images",
                       "32"], kmeans=[(2_000, 16, 10, True)], consensus=(5, 500))
    return size


def test_the_dry_run_measures_every_section_and_writes_both_reports(tmp_path, monkeypatch):
    monkeypatch.setattr(device_check, "sizes", small_sizes)
    out = tmp_path / "out"
    report = device_check.main(["--device", "cpu", "--out", str(out), "--run_seconds", "40", "--sections",
                                "environment", "train_speed", "clustering", "consensus", "timed_run"])
    failed = {name: report[name]["error"] for name in device_check.SECTIONS if "error" in report.get(name, {})}
    assert not failed, failed
    assert json.loads((out / "device_check.json").read_text())["consensus"]["result"]["ari_device_vs_cpu"] == 1.0
    speed = report["train_speed"]["result"]
    assert {r["variant"] for r in speed["rows"]} >= {"fp32", "bf16", "fp32 contiguous", "bf16 compiled"}
    assert not speed["errors"] and all(r["images_per_s"] > 0 for r in speed["rows"])
    kmeans_row = report["clustering"]["result"]["rows"][0]
    assert kmeans_row["kmeans_s"] > 0 and kmeans_row["gmm_s"] > 0 and kmeans_row["sklearn_kmeans_s"] > 0
    run = report["timed_run"]["result"]
    for name in ("fp32", "bf16"):
        assert run[name]["returncode"] == 0, run[name]["tail"]
        assert [e["epoch"] for e in run[name]["epochs"]] == [1, 2, 3]
        assert all(0 <= e["kmeans_acc"] <= 1 for e in run[name]["epochs"])
    text = (out / "device_check.md").read_text()
    for heading in ("## environment", "## train_speed", "## clustering", "## consensus", "## timed_run"):
        assert heading in text


def test_a_failing_section_is_recorded_and_the_others_still_run(tmp_path, monkeypatch):
    def broken(args, size):
        raise RuntimeError("no such kernel")

    monkeypatch.setitem(device_check.SECTIONS, "clustering", broken)
    monkeypatch.setattr(device_check, "sizes", small_sizes)
    report = device_check.main(["--device", "cpu", "--out", str(tmp_path), "--sections", "clustering", "consensus"])
    assert report["clustering"]["error"] == "RuntimeError: no such kernel"
    assert report["consensus"]["result"]["ari_device_vs_cpu"] == 1.0
    assert "FAILED: RuntimeError: no such kernel" in (tmp_path / "device_check.md").read_text()


def test_the_shell_wrapper_needs_out_and_passes_arguments_on(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "OUT"}
    missing = subprocess.run(["bash", "scripts/device_check.sh", "--device", "cpu"], cwd=ROOT, env=env,
                             capture_output=True, text=True)
    assert missing.returncode != 0 and "set OUT" in missing.stderr
    done = subprocess.run(["bash", "scripts/device_check.sh", "--device", "cpu", "--sections", "environment"],
                          cwd=ROOT, env=dict(env, OUT=str(tmp_path), PYTHON=sys.executable), capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "device_check.json").read_text())["environment"]["result"]["device"] == "cpu"


def test_cuda_without_a_gpu_is_refused_with_a_message(tmp_path, capsys):
    import pytest
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(SystemExit) as stop:
        device_check.main(["--device", "cuda", "--out", str(tmp_path)])
    assert stop.value.code == 2 and "no CUDA device here" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
