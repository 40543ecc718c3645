"""The L2C pipelines end to end on tiny generated images: the supervised similarity network on source classes, then
MCL / KCL on unseen target classes from its frozen predictions (labels never read), and the pairwise-supervised mode."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import main as entry
from engine.checkpoint import CheckpointError
from engine.config import ConfigError
from models.l2c_pairwise import PairwiseClustering

CLASSES, PER_CLASS, SIDE = 10, 12, 8


def make_images(path: Path, labels: np.ndarray | None = None) -> Path:
    """10 classes of 8x8 images: a fixed random binary template per class plus pixel noise."""
    rng = np.random.default_rng(0)
    templates = rng.random((CLASSES, SIDE, SIDE)) > 0.5
    y = np.repeat(np.arange(CLASSES), PER_CLASS)
    x = templates[y] * 200.0 + rng.normal(0, 25, (len(y), SIDE, SIDE)) + 25
    np.savez(path, x=np.clip(x, 0, 255).astype(np.uint8), y=y if labels is None else labels)
    return path


def common(data: Path, out: Path) -> list[str]:
    return ["--dataset", "npz", "--data_root", str(data), "--backbone", "lenet", "--image_size", str(SIDE),
            "--augmentation", "none", "--batch_size", "20", "--eval_every", "1", "--log_every", "1",
            "--output_dir", str(out), "--eval_batch_size", "512", "--deterministic", "true"]


def replace(args: list[str], key: str, value: str) -> list[str]:
    args = list(args)
    args[args.index(f"--{key}") + 1] = value
    return args


def metrics_of(run_dir: Path) -> list[dict]:
    return [json.loads(line)["metrics"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def spn_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("l2c")
    data = make_images(root / "tiny.npz")
    results = entry.main(["--preset", "spn_digits", *common(data, root / "runs"), "--num_clusters", "5",
                          "--epochs", "3", "--run_name", "spn", "--l2c.spn_hidden", "64"])
    return root, data, root / "runs" / "spn_digits" / "spn", results


def test_similarity_network_is_a_supervised_stage_on_the_source_classes(spn_run):
    root, _, run_dir, results = spn_run
    assert results["heads"] == [] and results["kmeans"] is not None
    log = (run_dir / "log.txt").read_text()
    assert "SUPERVISED stage" in log and "classes [0, 1, 2, 3, 4] only (60 samples)" in log
    preds = np.load(run_dir / "predictions.npz")
    assert set(preds["labels"].tolist()) == {0, 1, 2, 3, 4} and len(preds["labels"]) == 5 * PER_CLASS
    scores = [m for m in metrics_of(run_dir) if "spn/similar_f1" in m]
    assert len(scores) == 3 and 0.0 <= scores[-1]["spn/similar_f1"] <= 1.0
    losses = [m["train/spn_loss"] for m in metrics_of(run_dir) if "train/spn_loss" in m and "train/epoch_seconds" in m]
    assert losses[-1] < losses[0]


def transfer_args(spn_run, preset="mcl_digits_transfer", data=None, name="t"):
    root, tiny, spn_dir, _ = spn_run
    return ["--preset", preset, *common(data or tiny, root / "runs"), "--num_clusters", "8", "--epochs", "2",
            "--run_name", name, "--l2c.spn_checkpoint", str(spn_dir / "checkpoints" / "last.pt")]


def test_transfer_clusters_target_classes_from_the_frozen_network(spn_run, monkeypatch):
    root, _, spn_dir, _ = spn_run
    seen = []
    real_step = PairwiseClustering.training_step

    def spy(self, batch, step):
        seen.append(sorted(batch))
        assert self.spn.training, "the similarity network must run in train mode (target batch statistics)"
        return real_step(self, batch, step)

    monkeypatch.setattr(PairwiseClustering, "training_step", spy)
    results = entry.main(transfer_args(spn_run, name="mcl"))
    run_dir = root / "runs" / "mcl_digits_transfer" / "mcl"
    assert seen and all(keys == ["index", "views"] for keys in seen)     # no "label" in any training batch
    log = (run_dir / "log.txt").read_text()
    assert "SUPERVISED" not in log and "frozen similarity network" in log and "sha256" in log
    # the target set is classes 5-9 only, scored with K = 8 > 5; the clusters used are counted and logged
    preds = np.load(run_dir / "predictions.npz")
    assert set(preds["labels"].tolist()) == {5, 6, 7, 8, 9}
    used = [m["l2c/clusters_used"] for m in metrics_of(run_dir) if "l2c/clusters_used" in m]
    assert len(used) == 2 and used[-1] == sum(1 for s in results["cluster_sizes"][0] if s > 0)
    assert 1 <= used[-1] <= 8 and 0 < results["heads"][0]["acc"] <= 1
    spn_scores = [m for m in metrics_of(run_dir) if "l2c/spn_similar_f1" in m]     # evaluation-time analysis
    assert len(spn_scores) == 2 and 0 < spn_scores[-1]["l2c/spn_true_similar"] < 1
    # the similarity network was not optimised: its parameters equal the checkpoint's (BN statistics may move)
    spn_state = torch.load(spn_dir / "checkpoints" / "last.pt", weights_only=True)["model"]
    mcl_state = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["model"]
    params = [k for k in spn_state if k.startswith("net.") and not any(
        b in k for b in ("running_mean", "running_var", "num_batches_tracked"))]
    assert params
    for k in params:
        assert torch.equal(mcl_state["spn." + k[len("net."):]], spn_state[k]), k


def test_target_labels_do_not_influence_transfer_training(spn_run, tmp_path):
    """Permuting the labels among the target samples (same target set) leaves the trained weights bit-identical."""
    labels = np.repeat(np.arange(CLASSES), PER_CLASS)
    target = np.flatnonzero(labels >= 5)
    shuffled = labels.copy()
    shuffled[target] = np.random.default_rng(1).permutation(labels[target])
    assert (shuffled != labels).any()
    other = make_images(tmp_path / "shuffled.npz", shuffled)
    root = spn_run[0]
    entry.main(transfer_args(spn_run, preset="kcl_digits_transfer", name="plain"))
    entry.main(transfer_args(spn_run, preset="kcl_digits_transfer", data=other, name="shuffled"))
    a = torch.load(root / "runs" / "kcl_digits_transfer" / "plain" / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(root / "runs" / "kcl_digits_transfer" / "shuffled" / "checkpoints" / "last.pt", weights_only=True)
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k


def test_pairwise_supervised_mode_reads_labels_and_learns(spn_run):
    root, tiny, _, _ = spn_run
    seen = []
    real_step = PairwiseClustering.training_step

    def spy(self, batch, step):
        seen.append("label" in batch)
        return real_step(self, batch, step)

    PairwiseClustering.training_step = spy
    try:
        results = entry.main(["--preset", "kcl_digits", *common(tiny, root / "runs"), "--epochs", "4",
                              "--run_name", "sup"])
    finally:
        PairwiseClustering.training_step = real_step
    assert seen and all(seen)
    assert "SUPERVISED stage" in (root / "runs" / "kcl_digits" / "sup" / "log.txt").read_text()
    assert results["heads"][0]["acc"] > 0.6                 # 10 easy classes: chance is about 0.1


def test_similarity_checkpoint_errors(spn_run, tmp_path):
    root = spn_run[0]

    def with_checkpoint(path, name):
        return replace(transfer_args(spn_run, name=name), "l2c.spn_checkpoint", str(path))

    with pytest.raises(CheckpointError, match="spn_digits"):
        entry.main(with_checkpoint(tmp_path / "nope.pt", "err1"))
    entry.main(["--preset", "mcl_digits", *common(spn_run[1], root / "runs"), "--epochs", "1", "--run_name", "m1"])
    with pytest.raises(CheckpointError, match="not by a similarity network"):
        entry.main(with_checkpoint(root / "runs" / "mcl_digits" / "m1", "err2"))
    with pytest.raises(CheckpointError, match="normalize_mean"):
        entry.main(transfer_args(spn_run, name="err3") + ["--normalize_mean", "[0.5]", "--normalize_std", "[0.5]"])


def test_label_reading_options_are_refused_in_transfer_mode_and_eval_only_keeps_the_class_split(spn_run):
    root = spn_run[0]
    with pytest.raises(ConfigError, match="classes_per_batch"):
        entry.main(transfer_args(spn_run, name="cpb") + ["--l2c.classes_per_batch", "5"])
    with pytest.raises(ConfigError, match="augmentation none"):
        entry.main(replace(transfer_args(spn_run, name="crop"), "augmentation", "digits")
                   + ["--l2c.crop_scale", "[0.8, 1]"])
    # the class split defines the dataset, so evaluating the checkpoint alone sees the source classes only
    ckpt = spn_run[2] / "checkpoints" / "last.pt"
    entry.main(["--eval_only", "true", "--resume", str(ckpt)])
    (evaluation,) = spn_run[2].glob("eval-*")
    preds = np.load(evaluation / "predictions.npz")
    assert set(preds["labels"].tolist()) == {0, 1, 2, 3, 4} and len(preds["labels"]) == 5 * PER_CLASS

