"""End-to-end behaviour of the trainer through main.main: outputs, learning, resume, bad input."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import main as entry
from engine.checkpoint import CheckpointError, save_atomic
from engine.config import ConfigError
from engine.trainer import TrainingDiverged
from tests.conftest import assert_same_checkpoints, killed_after_epoch


def run_dir_of(tmp_path, name):
    return tmp_path / "runs" / "cc_digits" / name


def read_jsonl(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def test_run_writes_the_documented_outputs(tiny_args, tmp_path):
    results = entry.main(tiny_args + ["--epochs", "2", "--run_name", "a"])
    rd = run_dir_of(tmp_path, "a")
    for f in ("config.yaml", "metrics.jsonl", "results.json", "checkpoints/last.pt", "checkpoints/best.pt",
              "predictions.npz", "log.txt"):
        assert (rd / f).is_file(), f
    saved = json.loads((rd / "results.json").read_text())
    assert saved == json.loads(json.dumps(results))
    for key in ("heads", "best_head", "kmeans", "gmm", "consensus", "diversity", "epochs", "seconds", "config"):
        assert key in saved
    assert len(saved["heads"]) == 1 and 0.0 <= saved["heads"][0]["acc"] <= 1.0
    assert saved["epochs"] == 2 and saved["diversity"] is None
    evals = [r for r in read_jsonl(rd / "metrics.jsonl") if "eval/head.acc" in r["metrics"]]
    assert [r["epoch"] for r in evals] == [1, 2]
    preds = np.load(rd / "predictions.npz")
    assert preds["assignments"].shape == (1, 1797) and (preds["indices"] == np.arange(1797)).all()


def test_training_lowers_the_loss(tiny_args, tmp_path):
    entry.main(tiny_args + ["--epochs", "6", "--run_name", "b", "--lr", "0.002"])
    losses = [r["metrics"]["train/loss"] for r in read_jsonl(run_dir_of(tmp_path, "b") / "metrics.jsonl")
              if "train/loss" in r["metrics"]]
    assert losses[-1] < losses[0] - 0.1, losses


def test_resume_continues_exactly(tiny_args, tmp_path):
    # The preset's cosine schedule spans all 4 epochs, so the interrupted run is killed (not shortened).
    args = tiny_args + ["--deterministic", "true", "--epochs", "4"]
    full = entry.main(args + ["--run_name", "full"])
    with killed_after_epoch(2), pytest.raises(KeyboardInterrupt):
        entry.main(args + ["--run_name", "part"])
    resumed = entry.main(args + ["--resume", str(run_dir_of(tmp_path, "part"))])
    assert resumed["heads"] == full["heads"] and resumed["kmeans"] == full["kmeans"]
    a = assert_same_checkpoints(run_dir_of(tmp_path, "full") / "checkpoints/last.pt",
                                run_dir_of(tmp_path, "part") / "checkpoints/last.pt")
    assert a["step"] == 12


def test_existing_run_is_not_overwritten(tiny_args):
    entry.main(tiny_args + ["--epochs", "1", "--run_name", "c"])
    with pytest.raises(ConfigError, match="already holds a run"):
        entry.main(tiny_args + ["--epochs", "1", "--run_name", "c"])


def test_eval_only_reproduces_the_final_metrics(tiny_args, tmp_path):
    trained = entry.main(tiny_args + ["--epochs", "1", "--run_name", "d"])
    ckpt = run_dir_of(tmp_path, "d") / "checkpoints" / "last.pt"
    evaluated = entry.main(tiny_args + ["--eval_only", "true", "--resume", str(ckpt)])
    assert evaluated["heads"] == trained["heads"]
    assert (run_dir_of(tmp_path, "d") / "results.json").is_file()


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tiny_args, tmp_path, monkeypatch):
    import models.cc as cc_module

    real = cc_module.cc_loss
    calls = {"n": 0}

    def poisoned(*a, **k):
        calls["n"] += 1
        total, instance, cluster = real(*a, **k)
        if calls["n"] > 4:                  # epoch 1 (3 steps) is fine, epoch 2 breaks
            return total * float("nan"), instance * float("nan"), cluster
        return total, instance, cluster

    monkeypatch.setattr(cc_module, "cc_loss", poisoned)
    with pytest.raises(TrainingDiverged, match=r"step 4 .*instance_loss=nan"):
        entry.main([a if a != "--log_every" else "--eval_every" for a in tiny_args[:0]] + tiny_args
                   + ["--epochs", "3", "--run_name", "e"])
    state = torch.load(run_dir_of(tmp_path, "e") / "checkpoints" / "last.pt", weights_only=True)
    assert state["epoch"] == 1 and all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_corrupt_and_unsafe_checkpoints_are_refused(tiny_args, tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt"):
        entry.main(tiny_args + ["--eval_only", "true", "--resume", str(bad)])

    class Payload:
        def __reduce__(self):
            return (print, ("this must never run",))

    unsafe = tmp_path / "unsafe.pt"
    torch.save({"format": 1, "model": {}, "payload": Payload()}, unsafe)
    with pytest.raises(CheckpointError, match="refused"):
        entry.main(tiny_args + ["--eval_only", "true", "--resume", str(unsafe)])


def test_ddp_prefix_is_stripped_and_mismatches_are_named(tiny_args, tmp_path):
    entry.main(tiny_args + ["--epochs", "1", "--run_name", "f"])
    ckpt = run_dir_of(tmp_path, "f") / "checkpoints" / "last.pt"
    state = torch.load(ckpt, weights_only=True)
    state["model"] = {f"module.{k}": v for k, v in state["model"].items()}
    save_atomic(state, tmp_path / "prefixed.pt")
    out = entry.main(tiny_args + ["--eval_only", "true", "--resume", str(tmp_path / "prefixed.pt")])
    assert out["heads"][0]["acc"] > 0
    del state["model"][next(iter(state["model"]))]
    save_atomic(state, tmp_path / "missing.pt")
    with pytest.raises(CheckpointError, match="Missing"):
        entry.main(tiny_args + ["--eval_only", "true", "--resume", str(tmp_path / "missing.pt")])


@pytest.mark.plots
def test_several_clusterings_report_the_nmi_matrix(tiny_args, tmp_path):
    out = entry.main(tiny_args + ["--epochs", "1", "--run_name", "g", "--clusterings", "3", "--consensus", "coassoc"])
    assert len(out["heads"]) == 3
    matrix = np.array(out["diversity"]["nmi_matrix"])
    assert matrix.shape == (3, 3) and np.allclose(np.diag(matrix), 1.0)
    assert math.isclose(out["diversity"]["nmi_mean"], matrix[~np.eye(3, dtype=bool)].mean())
    assert out["consensus"] is not None
    assert (run_dir_of(tmp_path, "g") / "nmi_matrix.png").is_file()


def test_methods_never_receive_labels(tiny_args, monkeypatch):
    import models.cc as cc_module

    seen = []
    real = cc_module.CC.training_step

    def spy(self, batch, step):
        seen.append(set(batch))
        return real(self, batch, step)

    monkeypatch.setattr(cc_module.CC, "training_step", spy)
    entry.main(tiny_args + ["--epochs", "1", "--run_name", "h"])
    assert seen and all("label" not in keys for keys in seen)
