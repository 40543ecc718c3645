"""Kingdra end to end through main.main: outer iterations as epoch hooks, rising ensemble agreement, exact resume
of the outer-iteration state, and the features path (docs/methods/kingdra.md)."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import main as entry
from datasets.registry import DatasetNotFoundError
from engine.config import ConfigError

# 4 small ladders on digits, one epoch (6 steps) per outer iteration; t_high = M - 1 and no confidence threshold so
# that pseudo-labels (and the supervised loss) start after the first iteration.
TINY = ["--preset", "kingdra_digits", "--kingdra.hidden_sizes", "[32, 32]", "--kingdra.ensemble_size", "4",
        "--kingdra.t_high", "3", "--kingdra.thresh", "0.0", "--kingdra.epochs_per_iter0", "1",
        "--kingdra.epochs_per_iter", "1", "--steps_per_epoch", "6", "--eval_every", "2", "--log_every", "3",
        "--deterministic", "true"]


def read_jsonl(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny tensors: one thread is several times faster than two on a shared machine (no spinning workers)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, one_thread):
    out = tmp_path_factory.mktemp("kingdra")
    args = TINY + ["--output_dir", str(out / "runs")]
    full = entry.main(args + ["--epochs", "4", "--run_name", "full"])
    entry.main(args + ["--epochs", "2", "--run_name", "part"])
    part_dir = out / "runs" / "kingdra_digits" / "part"
    resumed = entry.main(args + ["--epochs", "4", "--resume", str(part_dir)])
    return {"dir": out / "runs" / "kingdra_digits", "full": full, "resumed": resumed}


def test_progress_reports_iterations_pseudo_labels_groups_and_agreement(runs):
    rows = [r["metrics"] for r in read_jsonl(runs["dir"] / "full" / "metrics.jsonl")
            if "kingdra/agreement" in r["metrics"]]
    assert [r["kingdra/outer_iteration"] for r in rows] == [1, 2, 3, 4]
    assert all(r["kingdra/groups"] == 10 and r["kingdra/pseudo_labelled"] > 0 for r in rows)
    assert rows[-1]["kingdra/sup_weight"] == 1.0
    log = (runs["dir"] / "full" / "log.txt").read_text()
    assert "kingdra outer iteration 4:" in log and "pseudo-labelled points in 10 group(s)" in log
    assert "ensemble agreement" in log and "sup_loss=" in log


def test_ensemble_agreement_rises(runs):
    agreement = [r["metrics"]["kingdra/agreement"] for r in read_jsonl(runs["dir"] / "full" / "metrics.jsonl")
                 if "kingdra/agreement" in r["metrics"]]
    assert agreement[-1] > agreement[0] + 0.05, agreement


def test_evaluation_reports_the_ensemble_and_every_member(runs):
    full = runs["full"]
    assert len(full["heads"]) == 5 and full["selected_head"]["index"] == 0
    assert full["kmeans"] is not None and 0 < full["heads"][0]["acc"] <= 1


def test_resume_continues_the_outer_iterations_exactly(runs):
    assert runs["resumed"]["heads"] == runs["full"]["heads"]
    assert runs["resumed"]["kmeans"] == runs["full"]["kmeans"]
    a = torch.load(runs["dir"] / "full" / "checkpoints" / "last.pt", weights_only=True)["model"]
    b = torch.load(runs["dir"] / "part" / "checkpoints" / "last.pt", weights_only=True)["model"]
    for key in ("outer_iteration", "pseudo_labels", "saved_labels", "sup_index", "sup_target", "sup_weight",
                "min_labels", "ladder.enc.0", "stat_mean_1"):
        assert torch.equal(a[key], b[key]), key
    assert int(a["outer_iteration"]) == 4 and (a["pseudo_labels"] >= 0).any()
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_features_option_reads_an_npz(tmp_path):
    from sklearn.datasets import load_digits

    digits = load_digits()
    path = tmp_path / "feats.npz"
    np.savez(path, x=(digits.data / 16.0).astype(np.float32), y=digits.target)
    out = entry.main(TINY + ["--output_dir", str(tmp_path / "runs"), "--dataset", "npz", "--epochs", "1",
                             "--kingdra.features", str(path), "--run_name", "npz"])
    assert len(out["heads"]) == 5
    with pytest.raises(DatasetNotFoundError, match="extract_features.py"):
        entry.main(TINY + ["--output_dir", str(tmp_path / "runs"), "--dataset", "npz", "--epochs", "1",
                           "--kingdra.features", str(tmp_path / "missing.npz"), "--run_name", "missing"])
    with pytest.raises(ConfigError, match="--dataset npz"):
        entry.main(TINY + ["--output_dir", str(tmp_path / "runs"), "--epochs", "1", "--kingdra.features",
                           str(path), "--run_name", "wrong"])
