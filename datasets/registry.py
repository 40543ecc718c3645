"""Dataset registry: every reader turns files on disk (or bundled data) into one in-memory `RawData`.

A reader is registered under the name users pass as `--dataset`. It receives the data root (or None),
whether downloading is allowed, and the reader-specific options from the `dataset_options` config key,
and returns the whole dataset as arrays. Splits are merged inside the reader according to the paper
protocol (docs/datasets.md), and the reader says which in `RawData.description`.
"""
from __future__ import annotations

import difflib
import inspect
from dataclasses import dataclass, field
from typing import Callable

import numpy as np


class DatasetNotFoundError(FileNotFoundError):
    """Raised by a reader when its files are absent: the message lists the paths searched and how to get them."""


class DatasetError(ValueError):
    """Data that cannot be used as given (an unknown option, a corrupt file, mixed image sizes, NaN values, ...);
    the message names the file or option and what to do. main.py reports it without a traceback (exit 3)."""


@dataclass
class RawData:
    """A whole dataset in memory.

    data:   images as uint8 [N, H, W, C] (C = 1 or 3), or vectors as float32 [N, D]
    labels: int64 [N]; -1 where the ground truth is unknown (metrics skip those samples)
    extra:  additional training-only streams, e.g. {"unlabeled": RawData} for STL-10
    ids:    one id per sample that a user can join back to the data (the file path relative to the data folder
            for image folders, the row number for arrays); None: the position in the dataset
    files:  the full-resolution original image files (the option `originals` of the ImageNet subsets): the
            per-image training pipeline crops its views from them (PIL, antialiased), as the official loaders;
            `data` stays the resized copy that evaluation uses
    """

    data: np.ndarray
    labels: np.ndarray
    description: str = ""
    class_names: list[str] | None = None
    extra: dict[str, "RawData"] = field(default_factory=dict)
    ids: list[str] | None = None
    files: list[str] | None = None

    def __post_init__(self) -> None:
        if len(self.data) != len(self.labels):
            raise ValueError(f"RawData: {len(self.data)} samples but {len(self.labels)} labels")
        if self.ids is not None and len(self.ids) != len(self.labels):
            raise ValueError(f"RawData: {len(self.labels)} samples but {len(self.ids)} ids")
        if self.files is not None and len(self.files) != len(self.labels):
            raise ValueError(f"RawData: {len(self.labels)} samples but {len(self.files)} original files")
        self.labels = np.asarray(self.labels, dtype=np.int64)

    @property
    def kind(self) -> str:
        """'image' for uint8 [N, H, W, C] arrays, 'vector' for float [N, D] arrays."""
        return "image" if self.data.ndim == 4 else "vector"

    @property
    def num_classes(self) -> int:
        known = self.labels[self.labels >= 0]
        return int(known.max()) + 1 if known.size else 0


Reader = Callable[..., RawData]
READERS: dict[str, Reader] = {}


def register(name: str) -> Callable[[Reader], Reader]:
    """Decorator: make `reader(root, *, download, **options) -> RawData` available as `--dataset name`."""

    def wrap(reader: Reader) -> Reader:
        if name in READERS:
            raise ValueError(f"dataset {name!r} is registered twice")
        READERS[name] = reader
        return reader

    return wrap


def read(name: str, root: str | None, *, download: bool = False, options: dict | None = None) -> RawData:
    """Read dataset `name`; unknown names and unknown options fail with the valid choices."""
    if name not in READERS:
        close = difflib.get_close_matches(name, READERS, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise DatasetError(f"unknown dataset {name!r}.{hint} Available: {', '.join(sorted(READERS))}.")
    reader = READERS[name]
    options = dict(options or {})
    accepted = [p for p in inspect.signature(reader).parameters if p not in ("root", "download")]
    unknown = [k for k in options if k not in accepted]
    if unknown:
        raise DatasetError(
            f"dataset {name!r} has no option(s) {', '.join(unknown)} (dataset_options); "
            f"it accepts: {', '.join(accepted) or 'none'}."
        )
    return reader(root, download=download, **options)
