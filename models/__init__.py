"""Methods: a method is a file `models/<name>.py` that exposes its `ClusteringMethod` subclass as `METHOD`.

`method_class(name)` imports it; `available_methods()` lists the files that define `METHOD` (read, not
imported); `config_catalog()` gathers every method's config sections and the names the config may choose from.
"""
from __future__ import annotations

import difflib
import importlib
import re
from pathlib import Path

from engine.config import Catalog, ConfigError

from .base import ClusteringMethod, DataInfo, RunContext

_DEFINES_METHOD = re.compile(r"^METHOD\s*=", re.MULTILINE)


def available_methods() -> list[str]:
    """Names of the method files (those that assign METHOD at top level)."""
    return sorted(p.stem for p in Path(__file__).parent.glob("*.py")
                  if _DEFINES_METHOD.search(p.read_text(encoding="utf-8")))


def method_class(name: str) -> type[ClusteringMethod]:
    """The class of method `name`; each method file exposes it as `METHOD`."""
    names = available_methods()
    if name not in names:
        close = difflib.get_close_matches(name, names, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(f"unknown method {name!r}.{hint} Available: {', '.join(names)}.")
    return importlib.import_module(f"models.{name}").METHOD


def backbone_names() -> list[str]:
    from .backbones import BACKBONES
    from .l2c_networks import LOCAL_TRUNKS

    return sorted(set(BACKBONES) | set(LOCAL_TRUNKS))


def config_catalog() -> Catalog:
    """Every config section (methods' and augmentation families') and the allowed method, dataset, backbone and
    augmentation names: what engine.config.resolve checks a configuration against."""
    import datasets
    from datasets.registry import READERS

    sections, seen = [], set()
    for name in available_methods():
        for section in method_class(name).config_sections:
            if section.name not in seen:
                sections.append(section)
                seen.add(section.name)
    sections += datasets.AUGMENTATION_SECTIONS
    choices = {"method": tuple(available_methods()), "dataset": lambda: tuple(sorted(READERS)),
               "backbone": tuple(backbone_names()), "augmentation": tuple(datasets.AUGMENTATIONS)}
    shape_keys = frozenset({"method", "dataset", "dataset_options", "num_clusters", "clusterings", "backbone",
                            "backbone_norm", "image_size", "normalize_mean"})
    return Catalog(sections, choices, shape_keys)


__all__ = ["ClusteringMethod", "DataInfo", "RunContext", "available_methods", "config_catalog", "method_class"]
