"""Config behaviour: main_config + sections -> preset -> CLI, typed values, sections that apply only to their owner,
and clear errors for anything unknown or out of range."""
import subprocess
import sys
from pathlib import Path

import pytest

from engine.config import (Catalog, ConfigError, Key, Section, dump, load_yaml, parse_cli_value, positive, resolve,
                           yaml_comments)
from engine.run import catalog, load_config

ROOT = Path(__file__).resolve().parent.parent


def test_default_preset_and_load_order():
    cfg = load_config([])
    assert cfg.preset == "cc_digits" and cfg.method == "cc" and cfg.dataset == "digits"
    preset = load_yaml(ROOT / "configs" / "cc_digits.yaml")
    assert cfg.epochs == preset["epochs"]                       # preset over main_config
    cfg = load_config(["--epochs", "3", "--lr", "1e-3", "--cc.instance_temperature", "0.25"])
    assert cfg.epochs == 3 and cfg.lr == pytest.approx(1e-3)   # CLI over preset; 1e-3 is a float, not 0
    assert cfg.cc.instance_temperature == 0.25 and cfg.cc.cluster_temperature == 1.0


def test_the_resolved_config_holds_only_the_sections_that_apply():
    cfg = load_config(["--preset", "pica_digits"])
    assert "pica" in cfg and "pica_augmentation" in cfg
    assert not any(name in cfg for name in ("cc", "iic", "propos", "kingdra", "l2c", "iic_augmentation"))
    cc = load_config([])
    assert "cc" in cc and "pica" not in cc and "pica_augmentation" not in cc
    # a family shares one section: mcl, kcl and spn all read l2c
    assert load_config(["--preset", "spn_digits"]).l2c.classes == [0, 1, 2, 3, 4]


def test_a_key_of_another_method_is_refused_on_the_command_line():
    with pytest.raises(ConfigError, match=r"--pica\.repeats is a setting of method pica, but this run's method is 'cc'"):
        load_config(["--pica.repeats", "2"])
    with pytest.raises(ConfigError, match="augmentation iic"):
        load_config(["--iic_augmentation.crop", "6"])
    # changing the method on the command line drops the preset's settings of the old one, with a note
    cfg = load_config(["--preset", "pica_digits", "--method", "iic"])
    assert "iic" in cfg and "pica" not in cfg and "pica_augmentation" in cfg      # the augmentation still applies
    assert any("pica.overcluster_heads" in note and "do not apply" in note for note in cfg.notes)


def test_values_are_yaml_and_typed():
    assert parse_cli_value("3e-4") == pytest.approx(3e-4)
    assert parse_cli_value("[30,60]") == [30, 60]
    assert parse_cli_value("none") is None
    cfg = load_config(["--NMI_target", "1", "--wandb", "true", "--crop_scale", "[0.2, 1.0]", "--run_name=abc"])
    assert isinstance(cfg.NMI_target, float) and cfg.wandb is True and cfg.crop_scale == [0.2, 1.0]
    assert cfg.run_name == "abc"
    assert load_config(["--steps_per_epoch", "null"]).steps_per_epoch is None
    assert load_config(["--steps_per_epoch", "5"]).steps_per_epoch == 5


@pytest.mark.parametrize("argv, words", [
    (["--epoch", "3"], ["'epoch'", "'epochs'"]),
    (["--NMI_targt", "0.8"], ["NMI_target"]),
    (["--clusters", "10"], ["num_clusters"]),
    (["--instance_temperature", "0.3"], ["cc.instance_temperature"]),
    (["--pica.resize", "9"], ["pica_augmentation.resize"]),
    (["--epochs", "ten"], ["epochs", "int"]),
    (["--epochs", "2.5"], ["epochs", "int"]),
    (["--wandb", "maybe"], ["wandb", "bool"]),
    (["--preset", "cc_cifar1O"], ["unknown preset", "cc_cifar10"]),
    (["--epochs"], ["needs a value"]),
    (["epochs", "3"], ["unexpected argument"]),
    (["--epochs", "3", "--epochs", "4"], ["twice"]),
    (["--method", "nosuch"], ["method = 'nosuch'", "one of"]),
    (["--dataset", "cifar1O"], ["dataset = 'cifar1O'", "cifar10"]),
    (["--backbone", "resnet19"], ["backbone = 'resnet19'"]),
])
def test_bad_input_is_refused_with_a_hint(argv, words):
    with pytest.raises(ConfigError) as err:
        load_config(argv)
    for word in words:
        assert word in str(err.value)


@pytest.mark.parametrize("argv, key", [
    (["--clusterings", "0"], "clusterings"), (["--NMI_target", "0"], "NMI_target"),
    (["--NMI_target", "1.5"], "NMI_target"), (["--num_clusters", "1"], "num_clusters"),
    (["--batch_size", "0"], "batch_size"), (["--lr", "-1e-3"], "lr"), (["--lr", "nan"], "lr"),
    (["--lr", ".inf"], "lr"), (["--weight_decay", "-0.1"], "weight_decay"), (["--log_every", "0"], "log_every"),
    (["--steps_per_epoch", "0"], "steps_per_epoch"), (["--seed", "-1"], "seed"), (["--seed", str(2 ** 32)], "seed"),
    (["--cc.instance_temperature", "0"], "cc.instance_temperature"), (["--epochs", "-2"], "epochs"),
    (["--crop_scale", "[0.5, 0.2]"], "crop_scale"), (["--threshold_rate", "1.0"], "threshold_rate"),
    (["--divclust.weight", "-1"], "divclust.weight"), (["--optimizer", "adagrad"], "optimizer"),
])
def test_out_of_range_values_name_the_key_the_value_and_what_is_allowed(argv, key):
    with pytest.raises(ConfigError, match=r"not allowed: .*" + key.replace(".", r"\.") + r" = .*: must be"):
        load_config(argv)


def test_all_violations_are_listed_at_once():
    with pytest.raises(ConfigError, match="2 value") as err:
        load_config(["--lr", "0", "--batch_size", "0"])
    assert "lr = 0.0" in str(err.value) and "batch_size = 0" in str(err.value)


def test_resume_false_means_no_resume():
    # DivClust's parser turned `--resume False` into True; here it is the boolean False (no resume).
    assert not load_config(["--resume", "False"]).resume


def test_no_prefix_matching():
    with pytest.raises(ConfigError):
        load_config(["--thresh", "0.9"])


TOY = Catalog([Section("toy", "a toy method", {"c": Key("x", "a string"), "w": Key(1.0, "a weight", positive)},
                       owners=("toy",))], {"method": ("toy", "other")})


def test_duplicate_and_unknown_preset_keys_and_yaml_floats(tmp_path):
    (tmp_path / "main_config.yaml").write_text("method: toy\na: 1\nb: 2.0\n")
    (tmp_path / "dup.yaml").write_text("a: 1\na: 2\n")
    (tmp_path / "bad.yaml").write_text("toy:\n  d: 1\n")
    (tmp_path / "ok.yaml").write_text("b: 1e-3\ntoy:\n  c: y\n  w: 2e-1\n")
    (tmp_path / "empty.yaml").write_text("# nothing but a comment\n")
    with pytest.raises(ConfigError, match="duplicate key 'a'"):
        resolve(["--preset", "dup"], TOY, config_dir=tmp_path)
    with pytest.raises(ConfigError, match="toy.d"):
        resolve(["--preset", "bad"], TOY, config_dir=tmp_path)
    with pytest.raises(ConfigError, match="empty"):
        resolve(["--preset", "empty"], TOY, config_dir=tmp_path)
    cfg = resolve(["--preset", "ok", "--a", "5"], TOY, config_dir=tmp_path)
    # YAML 1.1 reads 1e-3 (no dot) as a string: the preset means the number
    assert (cfg.a, cfg.b, cfg.toy.c, cfg.toy.w) == (5, 0.001, "y", 0.2) and isinstance(cfg.b, float)
    with pytest.raises(ConfigError, match=r"toy\.w = -1.0: must be"):
        resolve(["--preset", "ok", "--toy.w", "-1"], TOY, config_dir=tmp_path)
    other = resolve(["--preset", "ok", "--method", "other"], TOY, config_dir=tmp_path)
    assert "toy" not in other


def test_safe_load_only(tmp_path):
    (tmp_path / "main_config.yaml").write_text("a: !!python/object/apply:os.system ['echo hi']\n")
    with pytest.raises(ConfigError):
        resolve(["--preset", "x"], TOY, config_dir=tmp_path)


def test_saved_config_repeats_the_run(tmp_path):
    cfg = load_config(["--epochs", "7", "--cc.feature_dim", "64"])
    dump(cfg, tmp_path / "config.yaml")
    again = load_config(["--config", str(tmp_path / "config.yaml")])
    assert again.to_dict() == cfg.to_dict()
    assert load_config(["--config", str(tmp_path / "config.yaml"), "--epochs", "9"]).epochs == 9


def test_a_config_of_the_earlier_layout_still_loads(tmp_path):
    """Earlier versions wrote every method's section into config.yaml, pica/iic augmentation settings under the
    method and steps_per_epoch 0 for a full pass: the file still repeats the run."""
    old = load_yaml(ROOT / "configs" / "pica_digits.yaml")
    old.update({"preset": "pica_digits", "steps_per_epoch": 0,
                "cc": {"instance_temperature": 0.5}, "kingdra": {"ensemble_size": 10}})
    old["pica"].update({"resize": 9, "flip": False})
    del old["pica_augmentation"]
    import yaml

    (tmp_path / "config.yaml").write_text(yaml.safe_dump(old))
    cfg = load_config(["--config", str(tmp_path / "config.yaml")])
    assert cfg.pica_augmentation.resize == 9 and cfg.pica_augmentation.flip is False
    assert cfg.steps_per_epoch is None and "cc" not in cfg
    assert any("pica.resize -> pica_augmentation.resize" in note for note in cfg.notes)


def test_every_main_config_key_is_documented_and_every_section_key_has_help():
    for key, comment in yaml_comments(ROOT / "configs" / "main_config.yaml").items():
        assert comment, f"undocumented key: {key}"
    for section in catalog().sections:
        assert section.title and section.owners
        for name, key in section.keys.items():
            assert key.help, f"{section.name}.{name} has no help"
            if key.check is not None:
                assert key.check(key.default) is None, f"the default of {section.name}.{name} fails its own check"


def test_every_preset_resolves_and_sets_only_what_applies():
    for preset in sorted(p.stem for p in (ROOT / "configs").glob("*.yaml") if p.stem != "main_config"):
        cfg = load_config(["--preset", preset])
        assert cfg.preset == preset
        assert not cfg.notes, (preset, cfg.notes)      # no moved key, nothing set that does not apply


def test_cli_error_is_one_paragraph_without_traceback():
    proc = subprocess.run([sys.executable, "main.py", "--epoch", "3"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "did you mean" in proc.stderr.lower()


def test_an_optional_string_key_takes_yaml_words_as_written():
    from engine.run import load_config

    assert load_config(["--run_name", "on"]).run_name == "on"           # YAML would read True
    assert load_config(["--run_name", "2024"]).run_name == "2024"
    assert load_config(["--resume", "false"]).resume is None            # "no resume", as users write it
