"""Config behaviour: main_config -> preset -> CLI, typed values, and clear errors for anything unknown."""
import subprocess
import sys
from pathlib import Path

import pytest

from engine.config import ConfigError, dump, load_yaml, parse_cli_value, resolve

ROOT = Path(__file__).resolve().parent.parent


def test_default_preset_and_load_order():
    cfg = resolve([])
    assert cfg.preset == "cc_digits" and cfg.method == "cc" and cfg.dataset == "digits"
    preset = load_yaml(ROOT / "configs" / "cc_digits.yaml")
    assert cfg.epochs == preset["epochs"]                       # preset over main_config
    cfg = resolve(["--epochs", "3", "--lr", "1e-3", "--cc.instance_temperature", "0.25"])
    assert cfg.epochs == 3 and cfg.lr == pytest.approx(1e-3)   # CLI over preset; 1e-3 is a float, not 0
    assert cfg.cc.instance_temperature == 0.25 and cfg.cc.cluster_temperature == 1.0


def test_values_are_yaml_and_typed():
    assert parse_cli_value("3e-4") == pytest.approx(3e-4)
    assert parse_cli_value("[30,60]") == [30, 60]
    assert parse_cli_value("none") is None
    cfg = resolve(["--NMI_target", "1", "--wandb", "true", "--crop_scale", "[0.2, 1.0]", "--run_name=abc"])
    assert isinstance(cfg.NMI_target, float) and cfg.wandb is True and cfg.crop_scale == [0.2, 1.0]
    assert cfg.run_name == "abc"


@pytest.mark.parametrize("argv, words", [
    (["--epoch", "3"], ["'epoch'", "'epochs'"]),
    (["--NMI_targt", "0.8"], ["NMI_target"]),
    (["--clusters", "10"], ["num_clusters"]),
    (["--instance_temperature", "0.3"], ["cc.instance_temperature"]),
    (["--epochs", "ten"], ["epochs", "int"]),
    (["--epochs", "2.5"], ["epochs", "int"]),
    (["--wandb", "maybe"], ["wandb", "bool"]),
    (["--preset", "cc_cifar1O"], ["unknown preset", "cc_cifar10"]),
    (["--epochs"], ["needs a value"]),
    (["epochs", "3"], ["unexpected argument"]),
    (["--epochs", "3", "--epochs", "4"], ["twice"]),
])
def test_bad_input_is_refused_with_a_hint(argv, words):
    with pytest.raises(ConfigError) as err:
        resolve(argv)
    for word in words:
        assert word in str(err.value)


def test_resume_false_means_no_resume():
    # DivClust's parser turned `--resume False` into True; here it is the boolean False (no resume).
    assert not resolve(["--resume", "False"]).resume


def test_no_prefix_matching():
    with pytest.raises(ConfigError):
        resolve(["--thresh", "0.9"])


def test_duplicate_yaml_keys_and_unknown_preset_keys(tmp_path):
    (tmp_path / "main_config.yaml").write_text("a: 1\nb: 2.0\nsec:\n  c: x\n")
    (tmp_path / "dup.yaml").write_text("a: 1\na: 2\n")
    (tmp_path / "bad.yaml").write_text("sec:\n  d: 1\n")
    (tmp_path / "ok.yaml").write_text("b: 3\nsec:\n  c: y\n")
    with pytest.raises(ConfigError, match="duplicate key 'a'"):
        resolve(["--preset", "dup"], config_dir=tmp_path)
    with pytest.raises(ConfigError, match="sec.d"):
        resolve(["--preset", "bad"], config_dir=tmp_path)
    cfg = resolve(["--preset", "ok", "--a", "5"], config_dir=tmp_path)
    assert (cfg.a, cfg.b, cfg.sec.c) == (5, 3.0, "y") and isinstance(cfg.b, float)


def test_safe_load_only(tmp_path):
    (tmp_path / "main_config.yaml").write_text("a: !!python/object/apply:os.system ['echo hi']\n")
    with pytest.raises(ConfigError):
        resolve(["--preset", "x"], config_dir=tmp_path)


def test_saved_config_repeats_the_run(tmp_path):
    cfg = resolve(["--epochs", "7", "--cc.feature_dim", "64"])
    dump(cfg, tmp_path / "config.yaml")
    again = resolve(["--config", str(tmp_path / "config.yaml")])
    assert again.to_dict() == cfg.to_dict()
    assert resolve(["--config", str(tmp_path / "config.yaml"), "--epochs", "9"]).epochs == 9


def test_every_main_config_key_is_documented():
    for line in (ROOT / "configs" / "main_config.yaml").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#") and not line.rstrip().endswith(":"):
            assert "#" in line, f"undocumented key: {line}"


def test_every_preset_resolves():
    for preset in sorted(p.stem for p in (ROOT / "configs").glob("*.yaml") if p.stem != "main_config"):
        cfg = resolve(["--preset", preset])
        assert cfg.preset == preset


def test_cli_error_is_one_paragraph_without_traceback():
    proc = subprocess.run([sys.executable, "main.py", "--epoch", "3"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "did you mean" in proc.stderr.lower()
