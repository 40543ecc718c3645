"""`stl10`: the STL-10 binaries, parsed here (docs/datasets.md).

Protocol: cluster and evaluate the 13,000 labelled images, train (5,000) + test (8,000) merged
(`split="all"`, default); `split="train"` / `"test"` give one partition. With `unlabeled=True` the 100,000
unlabelled images come back as `RawData.extra["unlabeled"]` (labels -1), a training-only stream: CC trains
its instance head on it, PICA and IIC their over-clustering head on train + unlabeled + test. The file
`unlabeled_X.bin` (2.7 GB) is only required when `unlabeled=True`; it is memory-mapped read-only, not loaded,
so `extra["unlabeled"].data` is a [100000, 96, 96, 3] view of the file (indexing one image copies 27 KB).

Format: raw uint8 images 3 x 96 x 96, each channel stored column-major, so the bytes are reshaped to
N x 3 x 96 x 96 and the last two axes swapped (else every image is transposed); labels uint8 1..10 -> 0..9.

Lookup under `--data_root`: <root>/stl10_binary, <root>/stl10/stl10_binary, <root>/STL10/stl10_binary,
<root>/stl10, <root>. `--download true` (only when nothing is found) uses torchvision's STL10 downloader
(the 2.6 GB archive, extracted into <root>/stl10_binary). The files' MD5s are not checked here (raw bytes, no
pickle; torchvision's class would also hash the 2.7 GB unlabeled file, even to read `train`).
"""
from __future__ import annotations

import os

import numpy as np

from .lookup import check_choice, expand_root, log, not_found, root_for_download, under
from .registry import DatasetError, RawData, register

SPLITS = ("all", "train", "test")
CLASSES = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]
SIDE = 96
IMAGE_BYTES = 3 * SIDE * SIDE


def _as_images(raw: np.ndarray, path: str) -> np.ndarray:
    """Flat uint8 bytes -> [N, 96, 96, 3] HWC (a view; the file stores each channel column-major)."""
    if raw.size % IMAGE_BYTES:
        raise DatasetError(f"{path}: {raw.size} bytes is not a whole number of 3x96x96 images")
    return raw.reshape(-1, 3, SIDE, SIDE).transpose(0, 3, 2, 1)


def read_stl10_images(path: str, *, memory_map: bool = False) -> np.ndarray:
    """One `*_X.bin` file as uint8 [N, 96, 96, 3]: in memory (contiguous) or as a read-only memory-mapped view."""
    if memory_map:
        return _as_images(np.memmap(path, dtype=np.uint8, mode="r"), path)
    return np.ascontiguousarray(_as_images(np.fromfile(path, dtype=np.uint8), path))


def read_stl10_labels(path: str) -> np.ndarray:
    """One `*_y.bin` file: uint8 labels 1..10 -> int64 0..9."""
    labels = np.fromfile(path, dtype=np.uint8).astype(np.int64)
    if labels.size and (labels.min() < 1 or labels.max() > 10):
        raise DatasetError(f"{path}: STL-10 labels must be 1..10, found {labels.min()}..{labels.max()}")
    return labels - 1


def _needed(parts: list[str], unlabeled: bool) -> list[str]:
    names = [f"{p}_{k}.bin" for p in parts for k in ("X", "y")]
    return names + (["unlabeled_X.bin"] if unlabeled else [])


@register("stl10")
def read_stl10(root: str | None, *, download: bool = False, split: str = "all",
               unlabeled: bool = False) -> RawData:
    """STL-10 labelled images as uint8 [N, 96, 96, 3] (split 'all' = train 5,000 + test 8,000 = 13,000);
    `unlabeled=True` adds `extra['unlabeled']` (100,000 images, labels -1, memory-mapped)."""
    check_choice("stl10", "split", split, SPLITS)
    check_choice("stl10", "unlabeled", unlabeled, (True, False))
    root = expand_root(root)
    parts = ["train", "test"] if split == "all" else [split]
    needed = _needed(parts, unlabeled)
    folders = under(root, "stl10_binary", "stl10/stl10_binary", "STL10/stl10_binary", "stl10", "")

    def locate(candidates: list[str]) -> str | None:
        return next((f for f in candidates if all(os.path.isfile(os.path.join(f, n)) for n in needed)), None)

    folder = locate(folders)
    if folder is None and download:
        target = root_for_download("stl10", root)
        import torchvision

        torchvision.datasets.STL10(target, split="test", download=True)
        folder = locate([os.path.join(target, "stl10_binary")])
    if folder is None:
        raise not_found(
            "stl10", folders,
            f"stl10_binary/ (the extracted stl10_binary.tar.gz) holding {', '.join(needed)}",
            "Get it with --download true (torchvision's STL10 downloader, 2.6 GB, into <data_root>) or extract "
            "stl10_binary.tar.gz into <data_root>.",
        )
    images, labels = [], []
    for part in parts:
        x = read_stl10_images(os.path.join(folder, f"{part}_X.bin"))
        y = read_stl10_labels(os.path.join(folder, f"{part}_y.bin"))
        if len(x) != len(y):
            raise DatasetError(f"{folder}: {part}_X.bin has {len(x)} images but {part}_y.bin {len(y)} labels")
        images.append(x)
        labels.append(y)
    counts = " + ".join(f"{p} ({len(x)})" for p, x in zip(parts, images))
    data = np.concatenate(images)
    description = f"stl10: {counts}{' merged' if len(parts) > 1 else ''} = {len(data)} labelled images from {folder}"
    extra = {}
    if unlabeled:
        path = os.path.join(folder, "unlabeled_X.bin")
        stream = read_stl10_images(path, memory_map=True)
        extra["unlabeled"] = RawData(stream, np.full(len(stream), -1, dtype=np.int64),
                                     f"stl10 unlabeled: {len(stream)} images (training only, labels -1), "
                                     f"memory-mapped from {path}", list(CLASSES))
        description += f"; plus {len(stream)} unlabeled images as extra['unlabeled']"
    names_file = os.path.join(folder, "class_names.txt")
    class_names = list(CLASSES)
    if os.path.isfile(names_file):
        with open(names_file, encoding="utf-8") as f:
            listed = [line.strip() for line in f if line.strip()]
        class_names = listed if len(listed) == len(CLASSES) else class_names
    log.info(description)
    return RawData(data, np.concatenate(labels), description, class_names, extra)
