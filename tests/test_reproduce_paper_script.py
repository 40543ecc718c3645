"""scripts/reproduce_paper.sh: it names every paper preset of configs/ (and only existing ones), launches each with
the GPU count the README's presets table gives, skips finished runs, resumes interrupted ones, logs per preset and
summarises. Runs use stand-in interpreters (PYTHON / TORCHRUN) that write results the way main.py does."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "reproduce_paper.sh"
CONFIGS = REPO / "configs"
# The bundled / CPU-sized sets of the `<method>_digits` and Fashion-MNIST presets; every other preset is a paper's.
DEMO_DATASETS = {"digits", "fashion_mnist"}
RUN_LINE = re.compile(r"^RUN (?P<entry>\S+): (?P<command>.*?)(?:  \(log: .*\))?$", re.M)

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def paper_presets() -> set[str]:
    presets = set()
    for path in CONFIGS.glob("*.yaml"):
        if (path.stem != "main_config" and not path.stem.endswith("_cpu")     # the CPU-sized CIFAR-10 presets
                and yaml.safe_load(path.read_text()).get("dataset") not in DEMO_DATASETS):
            presets.add(path.stem)
    return presets


def run_script(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if k not in ("NPROC", "PRESETS", "EXTRA_ARGS", "DRY_RUN")}
    full.update({"DATA_ROOT": "/data", "OUTPUT_DIR": str(tmp_path / "runs")}, **env)
    return subprocess.run(["bash", str(SCRIPT)], cwd=tmp_path, env=full, capture_output=True, text=True, timeout=120)


def dry_run(tmp_path: Path, **env: str) -> dict[str, str]:
    result = run_script(tmp_path, DRY_RUN="1", **env)
    assert result.returncode == 0, result.stderr
    return {m["entry"]: m["command"] for m in RUN_LINE.finditer(result.stdout)}


def test_dry_run_names_every_paper_preset_and_only_existing_ones(tmp_path):
    commands = dry_run(tmp_path)
    named = {entry.split(":")[0] for entry in commands}
    missing_configs = sorted(p for p in named if not (CONFIGS / f"{p}.yaml").is_file())
    assert not missing_configs, f"the script names presets that configs/ does not have: {missing_configs}"
    assert named == paper_presets(), (f"paper presets missing from the script: {sorted(paper_presets() - named)}; "
                                      f"not paper presets: {sorted(named - paper_presets())}")
    for entry, command in commands.items():
        preset = entry.split(":")[0]
        assert "--data_root /data" in command, command
        if ":" in entry:  # the Omniglot protocol: every alphabet, 3 seeds, with the spn_omniglot entry's network
            method, k = preset.removesuffix("_omniglot"), entry.split(":k")[1]
            assert f"scripts/l2c_omniglot.py --data_root /data --method {method} --k {k} --seeds 0 1 2" in command
            assert "--spn_checkpoint " + str(tmp_path / "runs/spn_omniglot/paper/checkpoints/last.pt") in command
        else:
            assert f"main.py --preset {preset} --data_root /data --output_dir {tmp_path / 'runs'} --run_name paper" \
                   in command, command
    entries = list(commands)
    assert entries.index("spn_omniglot") < min(entries.index(e) for e in entries if e.endswith("_omniglot:k100"))
    assert not (tmp_path / "runs").exists()  # a dry run writes nothing


def readme_rows() -> dict[str, list[str]]:
    text = (REPO / "README.md").read_text()
    table = text[text.index("<!-- presets-table -->"):text.index("<!-- /presets-table -->")]
    rows = {}
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if re.fullmatch(r"`\w+`", cells[0]):
            rows[cells[0].strip("`")] = cells
    return rows


def test_gpu_counts_agree_with_the_readme_presets_table(tmp_path):
    commands = dry_run(tmp_path)
    rows = readme_rows()
    for entry, command in commands.items():
        preset = entry.split(":")[0]
        assert preset in rows, f"{preset} has no row of its own in the README presets table"
        cells = rows[preset]
        assert len(cells) == 6 and cells[2], cells
        readme_command = cells[4]
        assert "--data_root DATA" in readme_command, readme_command
        gpus = re.search(r"--nproc_per_node=(\d+)", command)
        if ":" in entry:
            assert f"scripts/l2c_omniglot.py --data_root DATA --method {preset.removesuffix('_omniglot')}" \
                   in readme_command
        elif gpus:
            assert f"torchrun --nproc_per_node={gpus.group(1)} main.py --preset {preset} " in readme_command
        else:
            assert command.startswith("python3 main.py")
            assert f"`python main.py --preset {preset} --data_root DATA" in readme_command
    assert {e for e, c in commands.items() if "torchrun" in c} == {"propos_cifar10", "propos_cifar100",
                                                                 "propos_imagenet_dogs"}


def test_nproc_overrides_the_paper_gpu_count(tmp_path):
    commands = dry_run(tmp_path, NPROC="2", PRESETS="cc_cifar10 propos_cifar10 mcl_omniglot:kC")
    assert list(commands) == ["cc_cifar10", "propos_cifar10", "mcl_omniglot:kC"]
    assert commands["cc_cifar10"].startswith("torchrun --standalone --nproc_per_node=2 main.py --preset cc_cifar10")
    assert commands["propos_cifar10"].startswith("torchrun --standalone --nproc_per_node=2 main.py")
    assert commands["mcl_omniglot:kC"].startswith("python3 scripts/l2c_omniglot.py")  # always one process
    one = dry_run(tmp_path, NPROC="1", PRESETS="propos_cifar10")
    assert one["propos_cifar10"].startswith("python3 main.py --preset propos_cifar10")


def test_finished_runs_are_skipped_and_interrupted_runs_resume(tmp_path):
    done = tmp_path / "runs" / "cc_cifar10" / "paper"
    done.mkdir(parents=True)
    (done / "results.json").write_text(json.dumps({"heads": [{"acc": 0.79, "nmi": 0.705, "ari": 0.637}]}))
    interrupted = tmp_path / "runs" / "cc_cifar100" / "paper" / "checkpoints"
    interrupted.mkdir(parents=True)
    (interrupted / "last.pt").write_bytes(b"")
    result = run_script(tmp_path, DRY_RUN="1", PRESETS="cc_cifar10 cc_cifar100", EXTRA_ARGS="--num_workers 8")
    assert result.returncode == 0, result.stderr
    assert f"SKIP cc_cifar10: {done / 'results.json'} exists" in result.stdout
    commands = {m["entry"]: m["command"] for m in RUN_LINE.finditer(result.stdout)}
    assert list(commands) == ["cc_cifar100"]
    assert commands["cc_cifar100"].endswith(f"--resume {interrupted.parent} --num_workers 8")
    assert "--run_name" not in commands["cc_cifar100"]
    assert re.search(r"cc_cifar10 +skipped +head: ACC 0.7900 NMI 0.7050 ARI 0.6370", result.stdout)


def test_bad_environment_stops_before_any_run(tmp_path):
    no_root = run_script(tmp_path, DRY_RUN="1", DATA_ROOT="")
    assert no_root.returncode == 2 and "set DATA_ROOT" in no_root.stderr
    unknown = run_script(tmp_path, DRY_RUN="1", PRESETS="cc_cifar10 cc_digits")
    assert unknown.returncode == 2 and "'cc_digits' is not an entry" in unknown.stderr
    assert "RUN" not in unknown.stdout
    bad_nproc = run_script(tmp_path, DRY_RUN="1", NPROC="two")
    assert bad_nproc.returncode == 2 and "NPROC must be a positive integer" in bad_nproc.stderr


STAND_IN = '''#!{python}
"""Stands in for python / torchrun: records its arguments and writes what main.py or l2c_omniglot.py would."""
import json, os, sys
from pathlib import Path

args = sys.argv[1:]
print("ARGS", " ".join(args))
opt = lambda key: args[len(args) - 1 - args[::-1].index(key) + 1] if key in args else None
if "scripts/l2c_omniglot.py" in args:
    out = Path(opt("--output_dir")) / (opt("--method") + "_omniglot")
    out.mkdir(parents=True, exist_ok=True)
    (out / ("summary-k" + opt("--k") + ".json")).write_text(json.dumps({{"average": {{"acc": 0.8, "nmi": 0.7, "ari": 0.6}}}}))
    sys.exit(0)
preset = opt("--preset")
run_dir = Path(opt("--resume") or Path(opt("--output_dir")) / preset / opt("--run_name"))
run_dir.mkdir(parents=True, exist_ok=True)
if preset in os.environ.get("STAND_IN_FAIL", "").split():
    print("training diverged at step 3")
    sys.exit(5)
(run_dir / "results.json").write_text(json.dumps({{"heads": [], "kmeans": {{"acc": 0.5, "nmi": 0.4, "ari": 0.3}}}}))
'''


def test_runs_log_per_preset_summarise_and_rerun_only_what_failed(tmp_path):
    stand_in = tmp_path / "stand_in"
    stand_in.write_text(STAND_IN.format(python=sys.executable))
    stand_in.chmod(0o755)
    env = dict(PYTHON=str(stand_in), TORCHRUN=str(stand_in), PRESETS="cc_cifar10 propos_cifar10 mcl_omniglot:k100")
    first = run_script(tmp_path, STAND_IN_FAIL="propos_cifar10", **env)
    assert first.returncode == 1, first.stdout + first.stderr
    logs = tmp_path / "runs" / "reproduce_logs"
    assert sorted(p.name for p in logs.iterdir()) == ["cc_cifar10.log", "mcl_omniglot-k100.log", "propos_cifar10.log"]
    assert "ARGS main.py --preset cc_cifar10 --data_root /data" in (logs / "cc_cifar10.log").read_text()
    assert "ARGS --standalone --nproc_per_node=4 main.py --preset propos_cifar10" in \
           (logs / "propos_cifar10.log").read_text()
    summary = first.stdout[first.stdout.index("summary ("):]
    assert re.search(r"cc_cifar10 +done in 0 min +k-means: ACC 0.5000 NMI 0.4000 ARI 0.3000", summary)
    assert re.search(r"propos_cifar10 +FAILED +see .*propos_cifar10.log: training diverged at step 3", summary)
    assert re.search(r"mcl_omniglot:k100 +done in 0 min +mean over alphabets: ACC 0.8000", summary)
    assert "1 run(s) failed" in first.stdout

    second = run_script(tmp_path, **env)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "SKIP cc_cifar10" in second.stdout and "SKIP mcl_omniglot:k100" in second.stdout
    # The failed run left a folder without a checkpoint: it is moved aside and the preset starts again.
    assert re.search(r"MOVE .*propos_cifar10/paper -> .*propos_cifar10/paper\.incomplete-\d{8}-\d{6}", second.stdout)
    assert (tmp_path / "runs" / "propos_cifar10" / "paper" / "results.json").is_file()
    assert re.search(r"propos_cifar10 +done in 0 min", second.stdout)
