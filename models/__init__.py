"""Methods: `models.build(cfg, info)` imports `models/<cfg.method>.py` and instantiates its `METHOD` class."""
from __future__ import annotations

import difflib
import importlib
from pathlib import Path

from .base import ClusteringMethod, DataInfo

_NOT_METHODS = {"__init__", "base", "backbones", "heads", "momentum_family", "pseudo_label_sampler", "l2c_data", "l2c_networks", "l2c_pairwise"}


def available_methods() -> list[str]:
    return sorted(p.stem for p in Path(__file__).parent.glob("*.py") if p.stem not in _NOT_METHODS)


def method_class(name: str) -> type[ClusteringMethod]:
    """The class of method `name`; each method file exposes it as `METHOD`."""
    names = available_methods()
    if name not in names:
        close = difflib.get_close_matches(name, names, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown method {name!r}.{hint} Available: {', '.join(names)}.")
    return importlib.import_module(f"models.{name}").METHOD


def build(cfg, info: DataInfo) -> ClusteringMethod:
    """Instantiate the method named by cfg.method."""
    return method_class(cfg.method)(cfg, info)


__all__ = ["ClusteringMethod", "DataInfo", "available_methods", "build", "method_class"]
