"""What a user sees from the command line on bad input, and wandb never stopping a run."""
import subprocess
import sys
from pathlib import Path

import main as entry

ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args, cwd=ROOT):
    proc = subprocess.run([sys.executable, str(ROOT / "main.py"), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)
    proc.stderr = " ".join(proc.stderr.split())  # the message is wrapped to the terminal width
    return proc


def test_missing_dataset_is_one_clear_paragraph(tmp_path):
    proc = run_cli("--preset", "cc_cifar10", "--data_root", str(tmp_path / "nowhere"), "--output_dir",
                   str(tmp_path / "runs"))
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert "nowhere" in proc.stderr and "--download true" in proc.stderr


def test_corrupt_checkpoint_from_the_cli(tmp_path):
    bad = tmp_path / "last.pt"
    bad.write_bytes(b"\x00" * 100)
    proc = run_cli("--eval_only", "true", "--resume", str(bad), "--output_dir", str(tmp_path / "runs"))
    assert proc.returncode == 4 and "corrupt" in proc.stderr and "Traceback" not in proc.stderr


def test_unknown_preset_lists_the_presets():
    proc = run_cli("--preset", "cc_cifar1O")
    assert proc.returncode == 2 and "cc_cifar10" in proc.stderr and "Traceback" not in proc.stderr


def test_divclust_target_with_one_clustering_warns_that_it_has_no_effect(tmp_path):
    proc = run_cli("--NMI_target", "0.7", "--epochs", "1", "--steps_per_epoch", "1", "--backbone", "mlp",
                   "--plots", "false", "--output_dir", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "no effect with one clustering" in proc.stderr and "--clusterings 2 or more" in proc.stderr


def test_wandb_failure_does_not_stop_the_run(tiny_args, tmp_path, monkeypatch, capsys):
    import wandb

    def broken_init(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(wandb, "init", broken_init)
    out = entry.main(tiny_args + ["--epochs", "1", "--run_name", "w", "--wandb", "true"])
    assert out["heads"] and "wandb could not start" in capsys.readouterr().err


def test_wandb_offline_logs_locally(tiny_args, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    entry.main(tiny_args + ["--epochs", "1", "--run_name", "wo", "--wandb", "true"])
    run_dir = tmp_path / "runs" / "cc_digits" / "wo"
    assert list(run_dir.glob("wandb/offline-run-*")), "no offline wandb run was written"
