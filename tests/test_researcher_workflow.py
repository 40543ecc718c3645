"""The everyday paths of a researcher: resume and evaluation from the run's own config, per-sample predictions, options
that explain themselves, a recorded environment, custom data without a preset, and the CI's pinned versions."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

import main as entry
from engine.config import available_presets
from tests.conftest import TINY

ROOT = Path(__file__).resolve().parents[1]
QUICK = [*TINY, "--plots", "false", "--eval_kmeans", "false"]


def test_a_divclust_run_resumes_and_evaluates_from_its_own_config(tmp_path, capsys):
    out = tmp_path / "runs"
    args = ["--output_dir", str(out), "--run_name", "d", *QUICK, "--epochs", "2", "--clusterings", "3",
            "--NMI_target", "0.7", "--lr", "0.005", "--consensus", "none"]
    trained = entry.main(args)
    run = out / "cc_digits/d"
    # the README's commands, verbatim: no --config, no repeated options
    evaluated = entry.main(["--eval_only", "true", "--resume", str(run)])
    assert evaluated["heads"] == trained["heads"] and (evaluated["epochs"], evaluated["step"]) == (2, 6)
    more = entry.main(["--resume", str(run), "--epochs", "3"])
    assert more["step"] == 9
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["lr"] == 0.005 and saved["clusterings"] == 3 and saved["epochs"] == 3
    assert "epochs: 2 -> 3" in (run / "log.txt").read_text()


def test_help_lists_methods_presets_and_keys_and_survives_a_closed_pipe():
    proc = subprocess.run(f"{sys.executable} main.py --help | head -3", shell=True, cwd=ROOT, capture_output=True,
                          text=True)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr and len(proc.stdout.splitlines()) == 3
    text = entry.help_text()
    for word in ("methods:", "pica", "presets:", "cc_cifar10_cpu", "--lr", "--cc.instance_temperature",
                 "Exit status"):
        assert word in text, word


def test_print_config_prints_the_resolved_yaml_and_writes_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert entry.cli(["--print_config", "--preset", "pica_digits", "--lr", "0.002"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["method"] == "pica" and printed["lr"] == 0.002 and "pica" in printed
    assert not list(tmp_path.iterdir())


def test_list_presets_names_every_preset_with_what_it_is(capsys):
    assert entry.cli(["--list_presets"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == available_presets()
    assert all(len(line.split()) > 3 for line in lines)


def test_env_json_records_the_code_and_the_environment(tmp_path):
    entry.main(["--output_dir", str(tmp_path), "--run_name", "e", *QUICK, "--epochs", "1"])
    env = json.loads((tmp_path / "cc_digits/e/env.json").read_text())
    for key in ("git_commit", "git_dirty", "python", "torch", "torchvision", "cuda", "cudnn", "devices", "world_size",
                "hostname", "command", "time"):
        assert key in env, key
    assert env["world_size"] == 1 and "--run_name" in env["command"]


def test_python_warnings_of_a_run_reach_its_log(tmp_path, monkeypatch):
    from models.cc import CC

    real = CC.on_epoch_end

    def warn_then_continue(self, ctx):
        warnings.warn("something the researcher should see", UserWarning)
        return real(self, ctx)

    monkeypatch.setattr(CC, "on_epoch_end", warn_then_continue)
    entry.main(["--output_dir", str(tmp_path), "--run_name", "w", *QUICK, "--epochs", "1"])
    assert "something the researcher should see" in (tmp_path / "cc_digits/w/log.txt").read_text()


def test_wandb_receives_group_tags_and_notes(tmp_path, monkeypatch):
    calls = {}

    class FakeWandb:
        Settings = staticmethod(lambda **kw: kw)

        @staticmethod
        def init(**kwargs):
            calls.update(kwargs)

        log = staticmethod(lambda *a, **k: None)
        finish = staticmethod(lambda *a, **k: None)
        Image = staticmethod(lambda *a, **k: None)

    monkeypatch.setitem(sys.modules, "wandb", FakeWandb)
    entry.main(["--output_dir", str(tmp_path), "--run_name", "w", *QUICK, "--epochs", "1", "--wandb", "true",
                "--wandb_tags", "[ablation, tiny]", "--wandb_notes", "a note"])
    assert calls["group"] == "cc_digits" and calls["tags"] == ["ablation", "tiny"] and calls["notes"] == "a note"


def folder_of_images(root: Path, side: int = 16) -> Path:
    rng = np.random.default_rng(0)
    for name in ("cats", "dogs", "owls"):
        (root / name).mkdir(parents=True)
        for i in range(12):
            Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8)).save(root / name / f"{i}.png")
    return root


def test_an_image_folder_without_a_preset_takes_its_size_and_k_from_the_data(tmp_path):
    data = folder_of_images(tmp_path / "imgs")
    out = tmp_path / "runs"
    results = entry.main(["--dataset", "image_folder", "--data_root", str(data), "--output_dir", str(out),
                          "--run_name", "f", "--epochs", "1", "--batch_size", "12", "--plots", "false"])
    run = out / "cc_image_folder/f"
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["image_size"] == 16 and saved["num_clusters"] == 3 and saved["augmentation"] == "simclr"
    assert len(results["cluster_sizes"][0]) == 3
    rows = list(csv.DictReader(open(run / "predictions.csv")))
    assert len(rows) == 36 and rows[0]["id"] == "cats/0.png" and rows[0]["class"] == "cats"
    assert {r["class"] for r in rows} == {"cats", "dogs", "owls"} and "head0_confidence" in rows[0]


def test_an_unlabelled_flat_folder_needs_k(tmp_path, capsys):
    flat = tmp_path / "flat"
    flat.mkdir()
    rng = np.random.default_rng(0)
    for i in range(10):
        Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(flat / f"{i}.png")
    code = entry.cli(["--dataset", "image_folder", "--data_root", str(flat), "--output_dir", str(tmp_path / "runs")])
    assert code == 2 and "--num_clusters" in capsys.readouterr().err and not (tmp_path / "runs").exists()


def test_ci_installs_the_pinned_versions_that_the_readme_names():
    ci = (ROOT / ".ci/run").read_text()
    readme = (ROOT / "README.md").read_text()
    command = next(line for line in ci.splitlines() if "pytest" in line).replace("pip install -q", "pip install")
    assert "-c constraints.txt" in command and command.split(" && ")[0] in readme
    pins = [line for line in (ROOT / "constraints.txt").read_text().splitlines() if line and not line[0] == "#"]
    assert all("==" in line for line in pins) and any(line.startswith("torch==") for line in pins)
