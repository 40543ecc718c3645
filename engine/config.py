"""Configuration: declarations, resolution and checks, before any work is done.

Where the keys come from:
- `configs/main_config.yaml`: the framework's common keys (flat, as users type them), each with its default and a
  one-line comment; `COMMON_CHECKS` below gives their allowed values.
- `Section`s declared in code next to their owner: each method declares its section in its file under `models/`
  (`--cc.instance_temperature`), the augmentation families with per-family settings declare theirs in `datasets/`
  (`--pica_augmentation.resize`). A section applies only while its owner is chosen (method `pica`, augmentation
  `iic`, ...): the resolved config holds the common keys and the sections that apply, nothing else.

Resolution: main_config + every section's defaults -> a preset (`configs/<preset>.yaml`) or a saved config
(`--config FILE`, or the checkpoint's config on `--resume`) -> command-line `--key value`, in that order. A CLI
value is read as a YAML scalar or flow list and must fit the default's type. Unknown keys, a key of a section
that does not apply, a value of the wrong type or outside its range: `ConfigError`, naming the key, the value and
what is allowed (all violations at once), before anything is built or written. Unlike DivClust's argument parser,
nothing is prefix-matched and nothing unknown is dropped.

The config layer imports nothing of the framework: the caller passes the `Catalog` (sections and the names of
methods, datasets, backbones and augmentations), which `engine/run.py` assembles from models/ and datasets/.
"""
from __future__ import annotations

import copy
import difflib
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import yaml

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
DEFAULT_PRESET = "cc_digits"

# Names that DivClust users type, mapped to ours, so the error can point at the new name.
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

# Keys that moved between sections (older presets and run directories wrote the old names; they still load).
MOVED_KEYS = {
    "pica.resize": "pica_augmentation.resize",
    "pica.flip": "pica_augmentation.flip",
    "iic.crop": "iic_augmentation.crop",
    "iic.tf2_crops": "iic_augmentation.tf2_crops",
    "iic.tf1_center_p": "iic_augmentation.tf1_center_p",
    "iic.rotation": "iic_augmentation.rotation",
    "iic.flip": "iic_augmentation.flip",
}

# Keys whose value is a free-form mapping (options passed through to a reader), not a section.
FREE_MAPPINGS = {"dataset_options"}

# Keys whose default is null but whose value, when set, is an integer (other null keys hold strings: paths, names).
OPTIONAL_INTS = {"steps_per_epoch", "image_size", "num_clusters"}   # null: a full pass; from the data


class ConfigError(ValueError):
    """A configuration problem the user must fix; main.py prints it as one paragraph and exits with status 2."""


# ----- value checks ----------------------------------------------------------------------------------------------
Check = Callable[[Any], "str | None"]   # value -> None when allowed, else what is allowed ("a number > 0")


def _finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def in_range(low: float | None = None, high: float | None = None, *, low_open: bool = False,
             high_open: bool = False, integer: bool = False) -> Check:
    """A finite number (an integer when `integer`) in [low, high] (open ends with low_open / high_open)."""
    lo = "" if low is None else f"{'>' if low_open else '>='} {low:g}"
    hi = "" if high is None else f"{'<' if high_open else '<='} {high:g}"
    if low is not None and high is not None:
        text = f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    else:
        text = lo or hi
    what = f"{'an integer' if integer else 'a finite number'}" + (f" {text}" if text else "")

    def check(value: Any) -> str | None:
        if not _finite_number(value) or (integer and not isinstance(value, int)):
            return what
        if low is not None and (value < low or (low_open and value == low)):
            return what
        if high is not None and (value > high or (high_open and value == high)):
            return what
        return None

    check.what = what
    return check


def at_least(low: float, *, integer: bool = False) -> Check:
    return in_range(low, integer=integer)


positive = in_range(0, low_open=True)
non_negative = in_range(0)
probability = in_range(0, 1)


def one_of(*choices: Any) -> Check:
    def check(value: Any) -> str | None:
        return None if value in choices else "one of " + ", ".join(str(c) for c in choices)

    return check


def each(item: Check, *, length: int | None = None, min_length: int = 0) -> Check:
    """A list whose items all pass `item` (and of `length` items, or at least `min_length`)."""

    def check(value: Any) -> str | None:
        count = f"{length} values" if length is not None else (f"at least {min_length} values" if min_length else "")
        what = f"a list{(' of ' + count) if count else ''}, each {getattr(item, 'what', 'valid')}"
        if not isinstance(value, list) or (length is not None and len(value) != length) or len(value) < min_length:
            return what
        return what if any(item(v) is not None for v in value) else None

    return check


def both(*checks: Check) -> Check:
    def check(value: Any) -> str | None:
        for c in checks:
            problem = c(value)
            if problem is not None:
                return problem
        return None

    return check


def unit_interval_pair(value: Any) -> str | None:
    """[low, high] with 0 < low <= high <= 1 (RandomResizedCrop scale)."""
    ok = (isinstance(value, list) and len(value) == 2 and all(_finite_number(v) for v in value)
          and 0 < value[0] <= value[1] <= 1)
    return None if ok else "[low, high] with 0 < low <= high <= 1"


# ----- declarations -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Key:
    """One key of a section: its default (which also fixes its type), a one-line help and its allowed values.
    `shape`: the key changes the shapes of the model's tensors, so a resumed run may not change it."""

    default: Any
    help: str
    check: Check | None = None
    shape: bool = False


@dataclass(frozen=True)
class Section:
    """Keys reached as `--<name>.<key>`, which apply while the common key `owner` has one of the values `owners`
    (a method's section: owner `method`; an augmentation family's: owner `augmentation`)."""

    name: str
    title: str
    keys: dict[str, Key]
    owners: tuple[str, ...]
    owner: str = "method"

    def applies(self, values: dict[str, Any]) -> bool:
        return values.get(self.owner) in self.owners


@dataclass
class Catalog:
    """What the layers above the config declare: every section, and the allowed names of the string keys whose
    choices live there (method, dataset, backbone, augmentation)."""

    sections: list[Section] = field(default_factory=list)
    choices: dict[str, tuple[str, ...] | Callable[[], tuple[str, ...]]] = field(default_factory=dict)  # or a callable
    shape_keys: frozenset[str] = frozenset()   # common keys that change the model's shapes

    def section(self, name: str) -> Section | None:
        return next((s for s in self.sections if s.name == name), None)


# Allowed values of the common keys (main_config.yaml holds their defaults and comments).
COMMON_CHECKS: dict[str, Check] = {
    "num_clusters": lambda v: None if v is None else at_least(2, integer=True)(v),
    "backbone_norm": one_of("batch", "group", "none"),
    "clusterings": at_least(1, integer=True),
    "NMI_target": in_range(0, 1, low_open=True),
    "NMI_interval": at_least(1, integer=True),
    "threshold_rate": in_range(0, 1, low_open=True, high_open=True),
    "divclust_mbank_size": at_least(1, integer=True),
    "consensus": one_of("sccbg", "coassoc", "none"),
    "consensus_restore_k": one_of(True, False),
    "divclust.weight": non_negative,
    "divclust.init_threshold": probability,
    "epochs": at_least(0, integer=True),
    "steps_per_epoch": lambda v: None if v is None or (isinstance(v, int) and not isinstance(v, bool) and v >= 1)
    else "null (a full pass) or an integer >= 1",
    "batch_size": at_least(1, integer=True),
    "optimizer": one_of("adam", "adamw", "sgd"),
    "lr": positive,
    "weight_decay": non_negative,
    "momentum": in_range(0, 1, high_open=True),
    "lr_schedule": one_of("constant", "cosine", "step"),
    "lr_milestones": each(at_least(1, integer=True)),
    "lr_gamma": in_range(0, 1, low_open=True),
    "warmup_epochs": at_least(0, integer=True),
    "grad_clip": non_negative,
    "augment_on": one_of("auto", "device", "loader"),
    "image_size": lambda v: None if v is None else at_least(1, integer=True)(v),
    "color_strength": non_negative,
    "crop_scale": unit_interval_pair,
    "normalize_mean": each(in_range()),
    "normalize_std": each(lambda v: None if _finite_number(v) and v != 0 else "a finite number other than 0"),
    "num_workers": at_least(0, integer=True),
    "seed": in_range(0, 2 ** 32, high_open=True, integer=True),
    "device": one_of("auto", "cpu", "cuda"),
    "amp_dtype": one_of("bfloat16", "float16"),
    "channels_last": one_of("auto", True, False),
    "log_every": at_least(1, integer=True),
    "eval_every": at_least(1, integer=True),
    "eval_batch_size": at_least(1, integer=True),
    "plot_tsne": one_of("final", "every", "never"),
    "plot_tsne_points": at_least(0, integer=True),
    "skip_unreadable": one_of(True, False),
    "wandb_tags": each(lambda v: None if isinstance(v, (str, int, float)) else "a string"),
}


# ----- YAML ------------------------------------------------------------------------------------------------------
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


def load_yaml(path: str | os.PathLike, *, allow_empty: bool = True) -> dict:
    """Read a YAML mapping safely (SafeLoader semantics, duplicate keys rejected)."""
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"cannot read {path}: {err}") from None
    loader = _UniqueKeyLoader(text)
    loader.source_name = str(path)
    try:
        data = loader.get_single_data()
    except yaml.YAMLError as err:
        raise ConfigError(f"cannot parse {path}: {err}") from None
    finally:
        loader.dispose()
    if data is None:
        if not allow_empty:
            raise ConfigError(f"{path} is empty: a preset or config file must set at least one key.")
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of keys to values, found {type(data).__name__}")
    return data


def yaml_comments(path: str | os.PathLike) -> dict[str, str]:
    """{flat key: its trailing `# comment`} of a YAML file laid out one key per line (main_config.yaml)."""
    comments: dict[str, str] = {}
    parents: list[tuple[int, str]] = []
    for line in Path(path).read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#") or ":" not in stripped:
            continue
        indent = len(line) - len(line.lstrip())
        key = stripped.split(":", 1)[0].strip()
        while parents and parents[-1][0] >= indent:
            parents.pop()
        name = ".".join([p for _, p in parents] + [key])
        if stripped.endswith(":"):
            parents.append((indent, key))
            continue
        comments[name] = line.split("#", 1)[1].strip() if "#" in line else ""
    return comments


# ----- the resolved config ----------------------------------------------------------------------------------------
class Config:
    """A nested, attribute-accessible view of the resolved configuration (`cfg.lr`, `cfg.cc.instance_temperature`).

    Besides the values it carries, outside `to_dict()`, the keys given on the command line (`cli_keys`) and the
    notes the resolution made (`notes`: moved keys, dropped settings) for the run's log."""

    def __init__(self, data: dict, *, cli_keys: frozenset[str] = frozenset(), notes: tuple[str, ...] = ()):
        object.__setattr__(self, "_data", {k: Config(v) if isinstance(v, dict) and not _is_free_mapping(k) else v
                                           for k, v in data.items()})
        object.__setattr__(self, "cli_keys", frozenset(cli_keys))
        object.__setattr__(self, "notes", tuple(notes))

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name == "_data":    # copy/pickle probe these before __init__ has run
            raise AttributeError(name)
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

    def flat(self) -> dict[str, Any]:
        """{dotted key: value} of every key."""
        return _flatten(self.to_dict())

    def __repr__(self) -> str:
        return f"Config({self.to_dict()!r})"


def _is_free_mapping(key: str) -> bool:
    return key.rsplit(".", 1)[-1] in FREE_MAPPINGS


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


def available_presets(config_dir: str | os.PathLike | None = None) -> list[str]:
    return sorted(p.stem for p in Path(config_dir or CONFIG_DIR).glob("*.yaml") if p.stem != "main_config")


def preset_summary(path: str | os.PathLike) -> str:
    """The first comment line of a preset file (what it is), without the '# '."""
    for line in Path(path).read_text().splitlines():
        if line.startswith("#"):
            return line.lstrip("#").strip()
        if line.strip():
            break
    return ""


# ----- typing of values -------------------------------------------------------------------------------------------
def _type_name(value: Any) -> str:
    return {bool: "bool", int: "int", float: "float", str: "string", list: "list", dict: "mapping"}.get(
        type(value), type(value).__name__)


def _number_from_text(value: str) -> float | None:
    """YAML 1.1 reads `1e-3` (no dot) as a string; the user meant the number (`nan` and `inf` too, so that the
    range checks can say what is wrong with them)."""
    if value.strip().lower().lstrip("+-") in ("nan", "inf", "infinity"):
        return float(value)
    try:
        number = float(value)
    except ValueError:
        return None
    return number if any(c in value.lower() for c in "e.") or value.strip().lstrip("+-").isdigit() else None


def _coerce(key: str, value: Any, default: Any, where: str) -> Any:
    """Check `value` against the type of `default`; an int is accepted (and converted) where a float is expected."""
    if value is None:
        # `--consensus none` names the choice "none" of a string key; elsewhere null means "not set".
        return "none" if isinstance(default, str) else None
    if default is None and key in OPTIONAL_INTS:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"key {key!r} {where} expects an integer or null but got {value!r} ({_type_name(value)}).")
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
        if isinstance(value, str) and _number_from_text(value) is not None:
            return _number_from_text(value)
    elif isinstance(default, str):
        if isinstance(value, str):
            return value
        if default == "auto" and isinstance(value, bool):  # auto-or-boolean keys (channels_last: true)
            return value
    elif isinstance(default, list):
        if isinstance(value, list):
            return [_number_from_text(v) if isinstance(v, str) and _number_from_text(v) is not None else v
                    for v in value]
    elif isinstance(default, dict):
        if isinstance(value, dict):
            return value
    raise ConfigError(
        f"key {key!r} {where} expects a {_type_name(default)} (default {default!r}) but got "
        f"{value!r} ({_type_name(value)})."
    )


# Keys whose empty command-line value is a mistake, not "unset" (what to give instead).
NON_EMPTY_CLI = {"run_name": "give one folder name for the run (created under --output_dir), or leave --run_name out "
                             "for a time stamp.",
                 "output_dir": "give the folder that holds the runs (default: runs).",
                 "resume": "give the run folder or checkpoint to continue, or leave --resume out."}


def parse_cli_value(text: str) -> Any:
    """A CLI value read as a YAML scalar or flow collection: `3e-4` -> 0.0003, `true` -> True, `[30,60]` -> list."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, str) and value.lower() in {"none", "null", "~"}:
        return None
    if isinstance(value, str):
        number = _number_from_text(value)
        return number if number is not None and any(c in value.lower() for c in "e.n") else value
    return value


# ----- the command line -------------------------------------------------------------------------------------------
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
            if preset is not None:
                raise ConfigError("--preset is given twice on the command line.")
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


# ----- resolution --------------------------------------------------------------------------------------------------
def _unknown_key_message(key: str, valid: list[str], where: str) -> str:
    if key in RENAMED_KEYS:
        return f"unknown key {key!r} {where}: did you mean {RENAMED_KEYS[key]!r}? (DivClust's name, renamed here)"
    if key in MOVED_KEYS:
        return f"unknown key {key!r} {where}: it is now {MOVED_KEYS[key]!r} (an augmentation setting)."
    close = difflib.get_close_matches(key, valid, n=3, cutoff=0.6)
    if not close and "." not in key:  # a method key typed without its section, e.g. --instance_temperature
        close = [v for v in valid if v.endswith("." + key)][:3]
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return f"unknown key {key!r} {where}.{hint} `python main.py --help` lists every key with its default."


def _defaults(config_dir: Path, catalog: Catalog) -> tuple[dict[str, Any], dict[str, Section]]:
    """({flat key: default} of the common keys and of every section's keys, {flat key: its section})."""
    common = _flatten(load_yaml(config_dir / "main_config.yaml"))
    owners: dict[str, Section] = {}
    defaults = dict(common)
    for section in catalog.sections:
        for name, key in section.keys.items():
            defaults[f"{section.name}.{name}"] = copy.deepcopy(key.default)
            owners[f"{section.name}.{name}"] = section
    return defaults, owners


def _check_choice(key: str, value: Any, choices: tuple[str, ...]) -> str | None:
    if value in choices:
        return None
    close = difflib.get_close_matches(str(value), choices, n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    return f"one of {', '.join(choices)}{hint}"


def check_values(values: dict[str, Any], catalog: Catalog, sections: list[Section]) -> list[str]:
    """Every violation of an allowed value among `values` (flat), as 'key = value: must be ...' lines."""
    problems = []
    for key, check in COMMON_CHECKS.items():
        if key in values:
            problem = check(values[key])
            if problem is not None:
                problems.append(f"{key} = {values[key]!r}: must be {problem}")
    for key, choices in catalog.choices.items():
        choices = choices() if callable(choices) else choices
        if key in values and choices:
            problem = _check_choice(key, values[key], choices)
            if problem is not None:
                problems.append(f"{key} = {values[key]!r}: must be {problem}")
    for section in sections:
        for name, spec in section.keys.items():
            full = f"{section.name}.{name}"
            if spec.check is not None and full in values:
                problem = spec.check(values[full])
                if problem is not None:
                    problems.append(f"{full} = {values[full]!r}: must be {problem}")
    if values.get("normalize_mean") is not None and len(values.get("normalize_mean") or []) != len(
            values.get("normalize_std") or []):
        problems.append(f"normalize_mean and normalize_std must have the same length (got "
                        f"{values.get('normalize_mean')} and {values.get('normalize_std')})")
    return problems


def resolve(argv: list[str] | None, catalog: Catalog, *, config_dir: str | os.PathLike | None = None,
            base: dict | None = None, base_name: str = "") -> Config:
    """Resolve main_config -> preset (or `base`, a saved config) -> CLI into a Config; ConfigError on bad input.

    `--config PATH` (a run directory's config.yaml) is a `base` read from a file. `base_name` says where `base`
    came from, for messages ("the checkpoint's config").
    """
    config_dir = Path(config_dir) if config_dir is not None else CONFIG_DIR
    preset, pairs = split_cli(list(argv or []))
    config_files = [text for key, text in pairs if key == "config"]
    pairs = [(key, text) for key, text in pairs if key != "config"]
    if len(config_files) > 1:
        raise ConfigError("--config is given twice on the command line.")
    defaults, owners = _defaults(config_dir, catalog)
    valid = sorted(defaults)
    notes: list[str] = []
    layer: dict[str, Any] = {}          # keys set by the preset or the saved config
    if config_files or base is not None:
        if config_files and base is not None:
            raise ConfigError("give --config (a saved config.yaml) or --resume, not both: a resumed run continues "
                              "with the config saved in its checkpoint (change keys with --key value).")
        if config_files:
            path = Path(config_files[0]).expanduser()
            if not path.is_file():
                raise ConfigError(f"--config {config_files[0]}: no such file.")
            base, base_name = load_yaml(path, allow_empty=False), str(path)
        saved = _flatten(base)
        name = saved.pop("preset", DEFAULT_PRESET)
        if preset is not None and preset != name:
            raise ConfigError(f"--preset {preset} does not match the preset {name!r} of {base_name}; leave "
                              f"--preset out (the saved config holds every key).")
        preset = str(name)
        layer = _migrate(saved, defaults, owners, base_name, notes, catalog, lenient=True)
    else:
        given = preset is not None
        preset = preset or DEFAULT_PRESET
        preset_file = config_dir / (preset if preset.endswith(".yaml") else f"{preset}.yaml")
        if not preset_file.is_file() or preset_file.stem == "main_config":
            names = available_presets(config_dir)
            close = difflib.get_close_matches(preset, names, n=3)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise ConfigError(f"unknown preset {preset!r}.{hint} `python main.py --list_presets` lists them all.")
        preset = preset_file.stem
        layer = _migrate(_flatten(load_yaml(preset_file, allow_empty=not given or preset == DEFAULT_PRESET)),
                         defaults, owners, f"in preset {preset_file.name}", notes, catalog, lenient=False)
        cli_dataset = next((parse_cli_value(t) for k, t in pairs if k == "dataset"), None)
        if not given and cli_dataset is not None and cli_dataset != layer.get("dataset"):
            # `--dataset X` without a preset: the default preset's settings are for its own data (8x8 digits), so
            # only main_config.yaml's defaults apply, with the image size and K taken from the data
            method = next((parse_cli_value(t) for k, t in pairs if k == "method"), defaults["method"])
            preset, layer = f"{method}_{cli_dataset}", {}
            notes.append(f"--dataset {cli_dataset} without --preset: main_config.yaml's defaults apply (not "
                         f"{DEFAULT_PRESET}'s, which are for its 8x8 digits); image_size and num_clusters come from "
                         f"the data unless given")

    resolved = dict(defaults)
    resolved.update(layer)
    cli: dict[str, Any] = {}
    for key, text in pairs:
        if key not in defaults:
            raise ConfigError(_unknown_key_message(key, valid, "on the command line"))
        if key in cli:
            raise ConfigError(f"--{key} is given twice on the command line.")
        if key in NON_EMPTY_CLI and not text.strip():
            raise ConfigError(f"--{key} is empty: {NON_EMPTY_CLI[key]}")
        value = parse_cli_value(text)
        if defaults[key] is None and key not in OPTIONAL_INTS and value is True:
            value = text        # an optional string (a name, a path): `--run_name on` is the name "on"
        cli[key] = _coerce(key, value, defaults[key], f"--{key}")
    resolved.update(cli)

    active = [s for s in catalog.sections if s.applies(resolved)]
    for key in cli:
        section = owners.get(key)
        if section is not None and section not in active:
            raise ConfigError(_inactive_message(key, section, resolved))
    dropped = sorted(k for k in layer if owners.get(k) is not None and owners[k] not in active
                     and layer[k] != defaults[k])
    if dropped:
        what = "; ".join(f"{k} = {layer[k]!r}" for k in dropped)
        notes.append(f"{len(dropped)} setting(s) of {base_name or f'preset {preset}'} belong to a method or "
                     f"augmentation this run does not use, and do not apply: {what}")
    final = {k: v for k, v in resolved.items() if k not in owners or owners[k] in active}
    final["preset"] = preset
    problems = check_values(final, catalog, active)
    if problems:
        raise ConfigError(f"{len(problems)} value(s) not allowed: " + "; ".join(problems) + ".")
    return Config(_unflatten(final), cli_keys=frozenset(cli), notes=tuple(notes))


def _inactive_message(key: str, section: Section, values: dict[str, Any]) -> str:
    owner = section.owner
    choices = " or ".join(section.owners)
    return (f"--{key} is a setting of {owner} {choices}, but this run's {owner} is {values.get(owner)!r}; "
            f"set --{owner} {section.owners[0]} (or use a {section.owners[0]} preset), or leave --{key} out.")


def _migrate(saved: dict[str, Any], defaults: dict[str, Any], owners: dict[str, Section], where: str,
             notes: list[str], catalog: Catalog, *, lenient: bool) -> dict[str, Any]:
    """The keys of a preset or saved config, typed, with moved keys renamed. `lenient` (saved configs of earlier
    versions): keys of sections that no longer exist are dropped with a note instead of refused."""
    out: dict[str, Any] = {}
    moved, unknown = [], []
    for key, value in saved.items():
        if key == "steps_per_epoch" and value == 0:   # earlier versions wrote 0 for "a full pass"
            value = None
        if key in MOVED_KEYS:
            moved.append(f"{key} -> {MOVED_KEYS[key]}")
            key = MOVED_KEYS[key]
        if key not in defaults:
            if lenient:
                unknown.append(key)
                continue
            raise ConfigError(_unknown_key_message(key, sorted(defaults), where))
        out[key] = _coerce(key, value, defaults[key], where)
    if moved:
        notes.append(f"{where}: keys read under their new names: {', '.join(moved)}")
    if unknown:
        notes.append(f"{where}: keys this version no longer has were ignored: {', '.join(sorted(unknown))}")
    return out


def from_file(path: str | os.PathLike, catalog: Catalog, *, config_dir: str | os.PathLike | None = None) -> Config:
    """Re-load a resolved config written to a run directory (`--config PATH` with no other option)."""
    return resolve(["--config", str(path)], catalog, config_dir=config_dir)


def dump(cfg: Config, path: str | os.PathLike) -> None:
    """Write the resolved config as YAML, atomically; `python main.py --config PATH` repeats the run from it."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(to_yaml(cfg))
    os.replace(tmp, path)


def to_yaml(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


def differences(a: Config | dict, b: Config | dict) -> dict[str, tuple[Any, Any]]:
    """{flat key: (value in a, value in b)} where the two configs differ (a key missing on one side: None)."""
    fa = a.flat() if isinstance(a, Config) else _flatten(a)
    fb = b.flat() if isinstance(b, Config) else _flatten(b)
    return {k: (fa.get(k), fb.get(k)) for k in sorted(set(fa) | set(fb)) if fa.get(k) != fb.get(k)}
