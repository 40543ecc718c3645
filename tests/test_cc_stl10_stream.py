"""CC on STL-10 as the official script: every epoch an instance-loss pass over the unlabelled images, then both losses
on the labelled ones; the two streams resume exactly (generated STL-10 stand-in files)."""
import json
import os

import numpy as np
import pytest

import main as entry
from tests.conftest import assert_same_checkpoints, killed_after_epoch
from tests.test_dataset_readers import stl_bytes

LABELLED, UNLABELLED, BATCH = 40, 60, 16


def make_stl10(root) -> str:
    folder = root / "stl10_binary"
    os.makedirs(folder)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (LABELLED + UNLABELLED, 96, 96, 3), dtype=np.uint8)
    labels = (np.arange(LABELLED) % 10 + 1).astype(np.uint8)
    for part, lo, hi in (("train", 0, 30), ("test", 30, LABELLED)):
        (folder / f"{part}_X.bin").write_bytes(stl_bytes(images[lo:hi]))
        (folder / f"{part}_y.bin").write_bytes(labels[lo:hi].tobytes())
    (folder / "unlabeled_X.bin").write_bytes(stl_bytes(images[LABELLED:]))
    return str(root)


def args(root, out, name, *extra):
    return ["--preset", "cc_stl10", "--data_root", root, "--output_dir", str(out), "--run_name", name,
            "--backbone", "mlp", "--image_size", "8", "--batch_size", str(BATCH), "--epochs", "2", "--eval_every", "2",
            "--cc.hidden_dim", "32", "--cc.feature_dim", "16", "--eval_kmeans", "false", "--plots", "false",
            "--log_every", "1", *extra]


def test_each_epoch_runs_the_unlabelled_instance_pass_first(tmp_path):
    root = make_stl10(tmp_path / "data")
    results = entry.main(args(root, tmp_path / "runs", "both"))
    per_epoch = UNLABELLED // BATCH + LABELLED // BATCH                  # 3 unlabelled + 2 labelled batches
    assert results["step"] == 2 * per_epoch
    log = (tmp_path / "runs/cc_stl10/both/log.txt").read_text()
    assert "unlabeled_instance_loss=" in log and "unlabeled_cluster_loss" not in log
    without = entry.main(args(root, tmp_path / "runs", "labelled_only", "--cc.unlabeled_pass", "false"))
    assert without["step"] == 2 * (LABELLED // BATCH)


def test_a_run_killed_after_an_epoch_resumes_both_streams_exactly(tmp_path):
    root = make_stl10(tmp_path / "data")
    out = tmp_path / "runs"
    entry.main(args(root, out, "straight"))
    with killed_after_epoch(1), pytest.raises(KeyboardInterrupt):
        entry.main(args(root, out, "killed"))
    entry.main(["--resume", str(out / "cc_stl10/killed")])
    assert_same_checkpoints(out / "cc_stl10/straight/checkpoints/last.pt", out / "cc_stl10/killed/checkpoints/last.pt")
    a = json.loads((out / "cc_stl10/straight/results.json").read_text())
    b = json.loads((out / "cc_stl10/killed/results.json").read_text())
    assert a["head"] == b["head"]


def test_the_pass_needs_stl10(tmp_path):
    code = entry.cli(["--preset", "cc_cifar10", "--cc.unlabeled_pass", "true", "--output_dir", str(tmp_path)])
    assert code == 2 and not any(tmp_path.iterdir())
