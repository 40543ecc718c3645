"""Configuration: configs/main_config.yaml -> configs/<preset>.yaml -> CLI `--key value`, in that order.

Every key lives in main_config.yaml with its default; a preset may only change existing keys; a CLI value is
parsed as a YAML scalar or flow list/mapping and must fit the default's type. Method-specific keys live in a
section named after the method and are reached with dots (`--cc.instance_temperature 0.4`). Anything unknown
stops the run before any work, naming the key and the closest valid ones (see shared/specs/config.md §6 for
how this differs from DivClust's argument parser, which silently dropped typos and prefix-matched keys).
"""
from __future__ import annotations

import copy
import difflib
import os
from pathlib import Path
from typing import Any, Iterator

import yaml

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
DEFAULT_PRESET = "cc_digits"

# Names that DivClust users type, mapped to ours (config.md §5), so the error can point at the new name.
RENAMED_KEYS = {
    "clusters": "num_clusters",
    "clustering_framework": "method",
    "dataset_path": "data_root",
    "eval_interval": "eval_every",
    "mixed_precision": "amp",
    "wandb_mode": "wandb",
    "project_name": "wandb_project",
    "gpu": "device",
    "gpus": "device",
}


class ConfigError(ValueError):
    """A configuration problem the user must fix; main() prints it as one paragraph and exits non-zero."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that rejects a mapping with the same key twice (PyYAML silently keeps the last)."""


def _construct_unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict[Any, Any] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise ConfigError(
                f"duplicate key {key!r} in {getattr(loader, 'source_name', 'YAML')} "
                f"(line {key_node.start_mark.line + 1}); each key may appear only once."
            )
        seen[key] = True
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping)


def load_yaml(path: str | os.PathLike) -> dict:
    """Read a YAML mapping safely (SafeLoader semantics, duplicate keys rejected)."""
    path = Path(path)
    text = path.read_text()
    loader = _UniqueKeyLoader(text)
    loader.source_name = str(path)
    try:
        data = loader.get_single_data()
    except yaml.YAMLError as err:
        raise ConfigError(f"cannot parse {path}: {err}") from None
    finally:
        loader.dispose()
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of keys to values, found {type(data).__name__}")
    return data


class Config:
    """A nested, attribute-accessible view of the resolved configuration (`cfg.lr`, `cfg.cc.instance_temperature`)."""

    def __init__(self, data: dict):
        object.__setattr__(self, "_data", {k: Config(v) if isinstance(v, dict) and not _is_free_mapping(k) else v
                                           for k, v in data.items()})

    def __getattr__(self, name: str) -> Any:
        try:
            return self._data[name]
        except KeyError:
            raise AttributeError(f"config has no key {name!r}") from None

    def __setattr__(self, name: str, value: Any) -> None:
        if name not in self._data:
            raise AttributeError(f"config has no key {name!r}")
        self._data[name] = Config(value) if isinstance(value, dict) and not _is_free_mapping(name) else value

    def __getitem__(self, name: str) -> Any:
        return self.__getattr__(name)

    def __contains__(self, name: str) -> bool:
        return name in self._data

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def get(self, name: str, default: Any = None) -> Any:
        return self._data.get(name, default)

    def to_dict(self) -> dict:
        return {k: v.to_dict() if isinstance(v, Config) else copy.deepcopy(v) for k, v in self._data.items()}

    def __repr__(self) -> str:
        return f"Config({self.to_dict()!r})"


# Keys whose value is a free-form mapping (options passed through to a reader), not a config section.
FREE_MAPPINGS = {"dataset_options"}


def _is_free_mapping(key: str) -> bool:
    return key.rsplit(".", 1)[-1] in FREE_MAPPINGS


def available_presets() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml") if p.stem != "main_config")


def _flatten(data: dict, prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and not _is_free_mapping(name):
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def _unflatten(flat: dict[str, Any]) -> dict:
    data: dict = {}
    for name, value in flat.items():
        node = data
        *parents, leaf = name.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return data


def _unknown_key_message(key: str, valid: list[str], where: str) -> str:
    if key in RENAMED_KEYS:
        return f"unknown key {key!r} {where}: did you mean {RENAMED_KEYS[key]!r}? (DivClust's name, renamed here)"
    close = difflib.get_close_matches(key, valid, n=3, cutoff=0.6)
    if not close and "." not in key:  # a method key typed without its section, e.g. --instance_temperature
        close = [v for v in valid if v.endswith("." + key)][:3]
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return f"unknown key {key!r} {where}.{hint} Every key is listed, with its default, in configs/main_config.yaml."


def _type_name(value: Any) -> str:
    return {bool: "bool", int: "int", float: "float", str: "string", list: "list", dict: "mapping"}.get(
        type(value), type(value).__name__)


def _coerce(key: str, value: Any, default: Any, where: str) -> Any:
    """Check `value` against the type of `default`; an int is accepted (and converted) where a float is expected."""
    if value is None:
        # `--consensus none` names the choice "none" of a string key; elsewhere null means "not set".
        return "none" if isinstance(default, str) else None
    if default is None:
        # Keys whose default is null hold an optional string (a path, a name): `--run_name 2024` is the name
        # "2024", and `--resume false` means "no resume", as users write it.
        if isinstance(value, bool):
            if not value:
                return None
        elif isinstance(value, (str, int, float)):
            return str(value)
        raise ConfigError(f"key {key!r} {where} expects a string or null but got {value!r} ({_type_name(value)}).")
    elif isinstance(default, bool):
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
    elif isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(default, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif isinstance(default, str):
        if isinstance(value, str):
            return value
        if default == "auto" and isinstance(value, bool):  # auto-or-boolean keys (channels_last: true)
            return value
    elif isinstance(default, list):
        if isinstance(value, list):
            return value
    elif isinstance(default, dict):
        if isinstance(value, dict):
            return value
    raise ConfigError(
        f"key {key!r} {where} expects a {_type_name(default)} (default {default!r}) but got "
        f"{value!r} ({_type_name(value)})."
    )


def parse_cli_value(text: str) -> Any:
    """A CLI value read as a YAML scalar or flow collection: `3e-4` -> 0.0003, `true` -> True, `[30,60]` -> list."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, str) and value.lower() in {"none", "null", "~"}:
        return None
    # YAML 1.1 reads "1e-3" (no dot) as a string; accept the spelling users expect.
    if isinstance(value, str):
        try:
            return float(value) if any(c in value.lower() for c in "e.") else value
        except ValueError:
            return value
    return value


def split_cli(argv: list[str]) -> tuple[str | None, list[tuple[str, str]]]:
    """`--preset P --key value --key=value ...` -> (P, [(key, text), ...]). Positional leftovers are errors."""
    preset: str | None = None
    pairs: list[tuple[str, str]] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--") or len(arg) == 2:
            raise ConfigError(f"unexpected argument {arg!r}: options are written --key value (e.g. --epochs 10).")
        key, eq, text = arg[2:].partition("=")
        if not eq:
            if i + 1 >= len(argv) or (argv[i + 1].startswith("--") and len(argv[i + 1]) > 2
                                      and not _looks_negative_number(argv[i + 1])):
                raise ConfigError(f"option --{key} needs a value (write --{key} VALUE).")
            text = argv[i + 1]
            i += 1
        i += 1
        if key == "preset":
            preset = text
        else:
            pairs.append((key, text))
    return preset, pairs


def _looks_negative_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def resolve(argv: list[str] | None = None, *, config_dir: str | os.PathLike | None = None) -> Config:
    """Resolve main_config -> preset -> CLI into a Config. Raises ConfigError before any work on bad input.

    `--config PATH` (a run directory's config.yaml) replaces main_config + preset, so a run can be repeated from
    that file alone; later CLI options still override it.
    """
    config_dir = Path(config_dir) if config_dir is not None else CONFIG_DIR
    preset, pairs = split_cli(list(argv or []))
    config_file = [text for key, text in pairs if key == "config"]
    pairs = [(key, text) for key, text in pairs if key != "config"]
    if config_file:
        if preset is not None:
            raise ConfigError("give either --preset or --config (a saved config.yaml), not both.")
        if not Path(config_file[-1]).is_file():
            raise ConfigError(f"--config {config_file[-1]}: no such file.")
        base = from_file(config_file[-1], config_dir=config_dir)
        return _apply_cli(base, pairs, config_dir)
    preset = preset or DEFAULT_PRESET

    main = load_yaml(config_dir / "main_config.yaml")
    defaults = _flatten(main)
    valid = sorted(defaults)
    resolved = dict(defaults)

    preset_file = config_dir / (preset if preset.endswith(".yaml") else f"{preset}.yaml")
    if not preset_file.is_file() or preset_file.stem == "main_config":
        names = sorted(p.stem for p in config_dir.glob("*.yaml") if p.stem != "main_config")
        close = difflib.get_close_matches(preset, names, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(f"unknown preset {preset!r}.{hint} Available presets: {', '.join(names)}.")
    for key, value in _flatten(load_yaml(preset_file)).items():
        if key not in defaults:
            raise ConfigError(_unknown_key_message(key, valid, f"in preset {preset_file.name}"))
        resolved[key] = _coerce(key, value, defaults[key], f"in preset {preset_file.name}")

    resolved["preset"] = preset_file.stem
    return _apply_cli(Config(_unflatten(resolved)), pairs, config_dir)


def _apply_cli(base: Config, pairs: list[tuple[str, str]], config_dir: Path) -> Config:
    defaults = _flatten(load_yaml(config_dir / "main_config.yaml"))
    resolved = _flatten(base.to_dict())
    seen: set[str] = set()
    for key, text in pairs:
        if key not in defaults:
            raise ConfigError(_unknown_key_message(key, sorted(defaults), "on the command line"))
        if key in seen:
            raise ConfigError(f"--{key} is given twice on the command line.")
        seen.add(key)
        resolved[key] = _coerce(key, parse_cli_value(text), defaults[key], f"--{key}")
    return Config(_unflatten(resolved))


def from_file(path: str | os.PathLike, *, config_dir: str | os.PathLike | None = None) -> Config:
    """Re-load a resolved config written to a run directory, checking it against main_config's keys and types."""
    config_dir = Path(config_dir) if config_dir is not None else CONFIG_DIR
    defaults = _flatten(load_yaml(config_dir / "main_config.yaml"))
    saved = _flatten(load_yaml(path))
    preset = saved.pop("preset", DEFAULT_PRESET)
    resolved = dict(defaults)
    for key, value in saved.items():
        if key not in defaults:
            raise ConfigError(_unknown_key_message(key, sorted(defaults), f"in {path}"))
        resolved[key] = _coerce(key, value, defaults[key], f"in {path}")
    resolved["preset"] = preset
    return Config(_unflatten(resolved))


def dump(cfg: Config, path: str | os.PathLike) -> None:
    """Write the resolved config as YAML; `python main.py --config_file PATH` repeats the run from it alone."""
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
