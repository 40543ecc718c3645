"""Where a reader looks for its files, how it validates its options, and how it says data are missing.

Every reader searches a short, documented list of folders under `--data_root` (plus, for a few sets, a
system location) and, when nothing is found, raises one `DatasetNotFoundError` whose single paragraph
names the paths searched, the expected layout and how to get the files (`not_found`).
"""
from __future__ import annotations

import logging
import os
from typing import Iterable, Sequence

from .registry import DatasetError, DatasetNotFoundError

log = logging.getLogger("datasets")


def expand_root(root: str | None) -> str | None:
    """`~` and environment variables expanded; None stays None (no `--data_root` given)."""
    if root is None or str(root).strip() == "":
        return None
    return os.path.expandvars(os.path.expanduser(str(root)))


def under(root: str | None, *relative: str) -> list[str]:
    """Candidate paths `root/<relative>` in the given order ('' means root itself); none without a root."""
    if root is None:
        return []
    return [os.path.normpath(os.path.join(root, r)) if r else os.path.normpath(root) for r in relative]


def not_found(dataset: str, searched: Sequence[str], layout: str, how_to_get: str) -> DatasetNotFoundError:
    """The error every reader raises for missing files: one paragraph, paths searched, layout, remedy."""
    places = ", ".join(searched) if searched else "nothing (no --data_root was given)"
    return DatasetNotFoundError(
        f"Dataset {dataset!r} not found. Searched: {places}. Expected layout: {layout}. {how_to_get}"
    )


def check_choice(dataset: str, option: str, value: object, choices: Iterable[object]) -> None:
    """Fail with the valid values when an option has a value the reader does not know."""
    choices = list(choices)
    if value not in choices:
        raise DatasetError(
            f"dataset {dataset!r}: option {option}={value!r} is not valid; choose one of "
            f"{', '.join(repr(c) for c in choices)}."
        )


def check_image_size(dataset: str, image_size: object, *, allow_none: bool) -> None:
    """`image_size` must be a positive int (or None where the reader can keep the native size)."""
    if image_size is None and allow_none:
        return
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size <= 0:
        kind = "a positive integer" + (" or null (native size)" if allow_none else "")
        raise DatasetError(f"dataset {dataset!r}: option image_size={image_size!r} must be {kind}.")


def root_for_download(dataset: str, root: str | None) -> str:
    """The folder `--download true` writes into; downloading needs an explicit `--data_root`."""
    if root is None:
        raise DatasetError(
            f"dataset {dataset!r}: --download true needs --data_root (the folder to download into)."
        )
    os.makedirs(root, exist_ok=True)
    return root
