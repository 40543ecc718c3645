"""Bad input and faults: each class stops with its exit code and a clear message, prints no traceback, and leaves the
output folder byte-for-byte as it was (or absent)."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import main as entry
from tests.conftest import TINY

QUICK = [*TINY, "--epochs", "1", "--plots", "false", "--eval_kmeans", "false"]


def quick_with(key: str, value: str) -> list[str]:
    """QUICK with --key set to value (replacing QUICK's own value of that key)."""
    pairs = dict(zip(QUICK[::2], QUICK[1::2]))
    pairs[f"--{key}"] = value
    return [x for kv in pairs.items() for x in kv]


def snapshot(folder: Path) -> dict[str, str]:
    """Every file and folder under `folder` with a hash of its bytes ({} when it does not exist)."""
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir")
            for p in sorted(folder.rglob("*"))}


def refused(argv: list[str], out: Path, code: int, *words: str, capsys) -> str:
    """Run the CLI in-process; assert the exit code, the words of the message, no traceback and an unchanged `out`."""
    before = snapshot(out)
    assert entry.cli(argv) == code
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    for word in words:
        assert word in err, f"{word!r} not in:\n{err}"
    assert snapshot(out) == before, "the output folder changed"
    return err


# ----- 1. values -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("key, value, allowed", [
    ("clusterings", "0", ">= 1"), ("NMI_target", "0", "NMI_target"), ("NMI_target", "1.5", "NMI_target"),
    ("num_clusters", "1", "num_clusters"), ("batch_size", "0", "batch_size"), ("lr", "-1", "lr"), ("lr", "nan", "lr"),
    ("weight_decay", "-0.1", "weight_decay"), ("cc.instance_temperature", "0", "instance_temperature"),
    ("epochs", "0", "epochs"), ("log_every", "0", "log_every"), ("steps_per_epoch", "0", "steps_per_epoch"),
    ("seed", "-1", "seed"), ("seed", str(2 ** 32), "seed"), ("eval_every", "0", "eval_every"),
    ("threshold_rate", "1.5", "threshold_rate"), ("cc.entropy_weight", "inf", "entropy_weight"),
])
def test_an_out_of_range_value_is_a_configuration_error(tmp_path, capsys, key, value, allowed):
    out = tmp_path / "runs"
    refused(["--output_dir", str(out), *quick_with(key, value)], out, 2, "configuration error", allowed, value,
            capsys=capsys)


@pytest.mark.parametrize("argv, words", [
    (["--method", "nope"], ["nope", "cc"]), (["--dataset", "nope"], ["nope", "digits"]),
    (["--preset", "nope"], ["nope", "--list_presets"]), (["--bogus_key", "1"], ["bogus_key"]),
    (["--cc.bogus", "1"], ["cc.bogus"]), (["--batch_size", "abc"], ["batch_size", "abc"]),
])
def test_unknown_names_are_refused_with_what_exists(tmp_path, capsys, argv, words):
    out = tmp_path / "runs"
    refused(["--output_dir", str(out), *argv], out, 2, "configuration error", *words, capsys=capsys)


def test_an_empty_config_file_is_refused(tmp_path, capsys):
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    refused(["--config", str(empty), "--output_dir", str(tmp_path / "runs")], tmp_path, 2, "empty", capsys=capsys)


# ----- 2. a failed start writes nothing ---------------------------------------------------------------------------------
def test_a_failed_start_never_rewrites_an_existing_run(tmp_path, capsys):
    out = tmp_path / "runs"
    assert entry.cli(["--output_dir", str(out), "--run_name", "r", *QUICK]) == 0
    capsys.readouterr()
    refused(["--output_dir", str(out), "--run_name", "r", *QUICK, "--lr", "0.5"], out, 2, "already holds a run",
            capsys=capsys)
    refused(["--output_dir", str(out), "--run_name", "r", *QUICK, "--lr", "-1"], out, 2, "lr", capsys=capsys)


def test_a_resume_folder_without_a_run_is_never_written(tmp_path, capsys):
    folder = tmp_path / "not_a_run"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    refused(["--resume", str(folder)], tmp_path, 2, str(folder), capsys=capsys)


def test_a_checkpoint_of_another_model_is_refused_before_any_file(tmp_path, capsys):
    out = tmp_path / "runs"
    assert entry.cli(["--output_dir", str(out), "--run_name", "r", *QUICK]) == 0
    capsys.readouterr()
    refused(["--resume", str(out / "cc_digits/r"), "--cc.feature_dim", "8"], out, 2, "feature_dim", capsys=capsys)


# ----- 3. inside the output folder ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["a/b", "..", "", "../escape", "/abs"])
def test_the_run_name_is_one_folder_name(tmp_path, capsys, name):
    refused(["--output_dir", str(tmp_path / "runs"), "--run_name", name, *QUICK], tmp_path, 2, "run_name",
            capsys=capsys)


def test_an_empty_output_dir_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    refused(["--output_dir", "", *QUICK], tmp_path, 2, "--output_dir is empty", capsys=capsys)


# ----- 4. data -------------------------------------------------------------------------------------------------------
def image_folder(root: Path, sizes=((16, 16),), broken: bool = False) -> Path:
    rng = np.random.default_rng(0)
    for c in range(3):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(6):
            h, w = sizes[i % len(sizes)]
            Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(root / f"class{c}/{i}.png")
    if broken:
        (root / "class1/bad.png").write_bytes(b"not an image")
    return root


FOLDER_RUN = ["--dataset", "image_folder", "--num_clusters", "3", "--backbone", "mlp", "--image_size", "8",
              "--batch_size", "6", "--epochs", "1", "--plots", "false", "--eval_kmeans", "false",
              "--augmentation", "simclr"]


def test_an_unreadable_image_is_named_and_can_be_skipped(tmp_path, capsys):
    data = image_folder(tmp_path / "imgs", broken=True)
    out = tmp_path / "runs"
    refused(["--data_root", str(data), "--output_dir", str(out), *FOLDER_RUN], out, 3, "bad.png",
            "--skip_unreadable true", capsys=capsys)
    assert entry.cli(["--data_root", str(data), "--output_dir", str(out), *FOLDER_RUN, "--skip_unreadable", "true"]) == 0
    assert "1 unreadable" in (next((out / "cc_image_folder").iterdir()) / "log.txt").read_text()


def test_mixed_image_sizes_without_an_image_size_say_which_key_to_set(tmp_path, capsys):
    data = image_folder(tmp_path / "imgs", sizes=((16, 16), (20, 12)))
    out = tmp_path / "runs"
    refused(["--data_root", str(data), "--output_dir", str(out), "--dataset", "image_folder",
             "--dataset_options", "{image_size: null}", *FOLDER_RUN[2:]], out, 3, "image_size", capsys=capsys)


@pytest.mark.parametrize("arrays, words", [
    ({"x": np.array([[0.0, np.nan], [1.0, 2.0]] * 10, dtype=np.float32)}, ["NaN"]),
    ({"x": np.array([[0.0, np.inf], [1.0, 2.0]] * 10, dtype=np.float32)}, ["infinite"]),
    ({"foo": np.zeros((20, 2), dtype=np.float32)}, ["foo", "x"]),
])
def test_a_bad_npz_is_a_data_error(tmp_path, capsys, arrays, words):
    path = tmp_path / "data.npz"
    np.savez(path, **arrays)
    out = tmp_path / "runs"
    refused(["--dataset", "npz", "--dataset_options", f"{{path: {path}}}", "--output_dir", str(out),
             "--num_clusters", "2", "--backbone", "mlp", "--augmentation", "none", "--epochs", "1"], out, 3, *words,
            capsys=capsys)


@pytest.mark.parametrize("method, words", [("cc", ["2 augmented views", "kingdra"]), ("propos", ["vectors", "kingdra"])])
def test_vectors_to_a_method_for_images_say_which_methods_take_them(tmp_path, capsys, method, words):
    path = tmp_path / "data.npz"
    np.savez(path, x=np.random.default_rng(0).normal(size=(40, 5)).astype(np.float32))
    out = tmp_path / "runs"
    refused(["--method", method, "--dataset", "npz", "--dataset_options", f"{{path: {path}}}", "--output_dir",
             str(out), "--num_clusters", "2", "--backbone", "small_cnn", "--augmentation", "none", "--batch_size", "8"],
            out, 2, *words, capsys=capsys)


# ----- 5. resources and I/O ---------------------------------------------------------------------------------------------
def test_a_failed_checkpoint_write_keeps_the_previous_one_and_removes_its_temporary_file(tmp_path, capsys,
                                                                                          monkeypatch):
    out = tmp_path / "runs"
    assert entry.cli(["--output_dir", str(out), "--run_name", "r", *QUICK]) == 0
    capsys.readouterr()
    run = out / "cc_digits/r"
    before = (run / "checkpoints/last.pt").read_bytes()
    real_save = torch.save

    def disk_full(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs) if not str(f).endswith(".tmp") else None
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    code = entry.cli(["--resume", str(run), "--epochs", "2"])
    err = " ".join(capsys.readouterr().err.split())
    assert code == 6 and "No space left on device" in err and "is unchanged" in err and "Traceback" not in err
    assert (run / "checkpoints/last.pt").read_bytes() == before
    assert not [p.name for p in (run / "checkpoints").iterdir() if p.name.endswith(".tmp")]


def test_an_orphaned_temporary_checkpoint_is_removed_at_the_next_start(tmp_path, capsys):
    out = tmp_path / "runs"
    assert entry.cli(["--output_dir", str(out), "--run_name", "r", *QUICK]) == 0
    orphan = out / "cc_digits/r/checkpoints/.last.pt.tmp"
    orphan.write_bytes(b"half a checkpoint")
    assert entry.cli(["--resume", str(out / "cc_digits/r"), "--epochs", "2"]) == 0
    assert not orphan.exists()


@pytest.mark.parametrize("free, advice", [(1024, "smaller --backbone"), (6 * 2 ** 20, "lower --batch_size")])
def test_a_step_that_cannot_fit_in_memory_stops_before_any_file(tmp_path, capsys, monkeypatch, free, advice):
    from engine import preflight

    # the tiny run needs 5.1 MiB of weights, gradients and Adam state and 3.1 MiB of activations
    monkeypatch.setattr(preflight, "available_bytes", lambda device: free)
    out = tmp_path / "runs"
    refused(["--output_dir", str(out), *QUICK], out, 2, "not enough memory", advice, capsys=capsys)


# ----- 6. interrupted and finished runs ---------------------------------------------------------------------------------
def test_resuming_a_finished_run_leaves_its_results_untouched(tmp_path, capsys):
    out = tmp_path / "runs"
    assert entry.cli(["--output_dir", str(out), "--run_name", "r", *QUICK]) == 0
    capsys.readouterr()
    before = snapshot(out)
    assert entry.cli(["--resume", str(out / "cc_digits/r")]) == 0
    assert "is finished" in capsys.readouterr().err + (out / "cc_digits/r/log.txt").read_text()
    assert {k: v for k, v in snapshot(out).items() if not k.endswith("log.txt")} == \
           {k: v for k, v in before.items() if not k.endswith("log.txt")}


def test_divergence_in_the_first_epoch_claims_no_checkpoint(tmp_path, capsys, monkeypatch):
    import models.cc as cc_module

    real = cc_module.cc_loss
    monkeypatch.setattr(cc_module, "cc_loss", lambda *a, **k: tuple(t * float("nan") for t in real(*a, **k)))
    out = tmp_path / "runs"
    assert entry.cli(["--output_dir", str(out), "--run_name", "r", *QUICK]) == 5
    err = " ".join(capsys.readouterr().err.split())
    assert "no checkpoint was written yet" in err and "Traceback" not in err
    assert not (out / "cc_digits/r/checkpoints/last.pt").exists()


def test_a_run_killed_in_its_first_epoch_starts_again_under_its_name(tmp_path, capsys, monkeypatch):
    from engine.trainer import Trainer

    real = Trainer.train_epoch
    calls = {"n": 0}

    def killed_once(self):
        calls["n"] += 1
        if calls["n"] == 1:
            raise KeyboardInterrupt
        return real(self)

    monkeypatch.setattr(Trainer, "train_epoch", killed_once)
    out = tmp_path / "runs"
    argv = ["--output_dir", str(out), "--run_name", "r", *quick_with("epochs", "2")]
    assert entry.cli(argv) == 130
    assert "interrupted" in capsys.readouterr().err
    assert entry.cli(argv) == 0                                          # the same command: started again in place
    epochs = [json.loads(line)["epoch"] for line in (out / "cc_digits/r/metrics.jsonl").read_text().splitlines()
              if "train/loss" in json.loads(line)["metrics"]]
    assert epochs == [1, 2]                                              # no epoch written twice


def test_sigterm_stops_like_ctrl_c_and_keeps_the_checkpoint(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "runs"
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen([sys.executable, str(root / "main.py"), "--output_dir", str(out), "--run_name", "r",
                             *quick_with("epochs", "200")], cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    checkpoint = out / "cc_digits/r/checkpoints/last.pt"
    deadline = time.time() + 120
    while not checkpoint.exists() and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "interrupted" in err and "Traceback" not in err, err[-3000:]
    state = torch.load(checkpoint, weights_only=True)
    assert state["epoch"] >= 1


def test_an_interrupt_during_a_checkpoint_write_acts_after_the_file_is_complete(tmp_path, monkeypatch):
    """SIGTERM (handled like Ctrl-C) arriving in the middle of torch.save: the checkpoint is finished and renamed
    into place first, then the interrupt stops the run (before, it broke the zip writer: exit 1, a traceback)."""
    import signal

    from engine import checkpoint

    original_save = torch.save

    def save_with_a_kill_inside(obj, f):
        os.kill(os.getpid(), signal.SIGTERM)          # delivered while the file is being written
        original_save(obj, f)

    def terminated(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, terminated)
    monkeypatch.setattr(checkpoint.torch, "save", save_with_a_kill_inside)
    path = tmp_path / "last.pt"
    try:
        with pytest.raises(KeyboardInterrupt):
            checkpoint.save_atomic({"step": torch.tensor(7)}, path)
    finally:
        signal.signal(signal.SIGTERM, previous)
    monkeypatch.undo()
    assert int(torch.load(path, weights_only=True)["step"]) == 7
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]          # no temporary file left
    assert signal.getsignal(signal.SIGTERM) is previous
