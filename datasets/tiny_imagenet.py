"""`tiny_imagenet`: Tiny-ImageNet-200 from its extracted zip (docs/datasets.md).

Protocol (CC, DigPro): the 100,000 `train` images, 200 classes (`split="all"` = `split="train"`, default);
`split="val"` reads the 10,000 labelled validation images (labels from `val/val_annotations.txt`). The
unlabelled `test/` part is never used. Labels = index of the WNID in sorted order (`ImageFolder` order on
`train/`); class names from `words.txt` when present.

Images are 64 x 64 (converted to RGB; a few are greyscale JPEGs) and kept at that size by default
(`image_size=None`, 100,000 x 64 x 64 x 3 = 1.2 GB); `image_size=S` resizes every image to S x S on
decoding (`resize="stretch"` or `"center_crop"`, see `image_decoding`). Methods that train at another size
(CC 224, DigPro 32) usually resize in their transform instead.

Lookup under `--data_root`: <root>/tiny-imagenet-200, <root>/tiny_imagenet/tiny-imagenet-200,
<root>/tiny_imagenet, <root>/tiny-imagenet, <root>. No torchvision downloader exists: download
http://cs231n.stanford.edu/tiny-imagenet-200.zip and unzip it into <root>.
"""
from __future__ import annotations

import os

import numpy as np

from .image_decoding import RESIZE_MODES, decode_images, list_image_files
from .lookup import check_choice, check_image_size, expand_root, log, not_found, under
from .registry import DatasetError, RawData, register

URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"


def _wnids(folder: str) -> list[str]:
    train = os.path.join(folder, "train")
    return sorted(d for d in os.listdir(train) if os.path.isdir(os.path.join(train, d)))


def _words(folder: str) -> dict[str, str]:
    path = os.path.join(folder, "words.txt")
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as f:
        pairs = (line.rstrip("\n").split("\t", 1) for line in f)
        return {p[0]: p[1] for p in pairs if len(p) == 2}


def _val_files(folder: str, index: dict[str, int]) -> tuple[list[str], list[int]]:
    annotations = os.path.join(folder, "val", "val_annotations.txt")
    if not os.path.isfile(annotations):
        raise DatasetError(f"tiny_imagenet: split='val' needs {annotations}")
    files, labels = [], []
    with open(annotations, encoding="utf-8") as f:
        rows = sorted(line.rstrip("\n").split("\t")[:2] for line in f if line.strip())
    for name, wnid in rows:
        if wnid not in index:
            raise DatasetError(f"{annotations}: {name} has WNID {wnid}, which is not a train/ class")
        files.append(os.path.join(folder, "val", "images", name))
        labels.append(index[wnid])
    return files, labels


@register("tiny_imagenet")
def read_tiny_imagenet(root: str | None, *, download: bool = False, split: str = "all",
                       image_size: int | None = None, resize: str = "stretch") -> RawData:
    """Tiny-ImageNet train set (100,000 images, 200 classes) as uint8 [N, 64, 64, 3] (or image_size^2)."""
    check_choice("tiny_imagenet", "split", split, ("all", "train", "val"))
    check_image_size("tiny_imagenet", image_size, allow_none=True)
    check_choice("tiny_imagenet", "resize", resize, RESIZE_MODES)
    root = expand_root(root)
    candidates = under(root, "tiny-imagenet-200", "tiny_imagenet/tiny-imagenet-200", "tiny_imagenet",
                       "tiny-imagenet", "")
    folder = next((c for c in candidates if os.path.isdir(os.path.join(c, "train"))
                   and os.path.isfile(os.path.join(c, "wnids.txt"))), None)
    if folder is None:
        raise not_found(
            "tiny_imagenet", candidates,
            "tiny-imagenet-200/ with wnids.txt, words.txt, train/<wnid>/images/*.JPEG and "
            "val/images/ + val/val_annotations.txt",
            f"{'torchvision has no Tiny-ImageNet downloader, so --download true cannot fetch it. ' if download else ''}"
            f"Download {URL} and unzip it into <data_root>.",
        )
    wnids = _wnids(folder)
    with open(os.path.join(folder, "wnids.txt"), encoding="utf-8") as f:
        listed = sorted(line.strip() for line in f if line.strip())
    if listed != wnids:
        raise DatasetError(f"tiny_imagenet: train/ has {len(wnids)} class folders but wnids.txt lists "
                         f"{len(listed)} WNIDs, and they differ")
    index = {w: i for i, w in enumerate(wnids)}
    if split == "val":
        files, labels = _val_files(folder, index)
        part = "val"
    else:
        files, labels = [], []
        for wnid in wnids:
            found = list_image_files(os.path.join(folder, "train", wnid))
            files.extend(found)
            labels.extend([index[wnid]] * len(found))
        part = "train"
    data = decode_images(files, mode="RGB", size=image_size, resize=resize, desc=f"decoding tiny_imagenet {part}")
    size = f"resized to {image_size}x{image_size} ({resize})" if image_size else "native 64x64"
    description = f"tiny_imagenet: {part} split only, {len(data)} images, {len(wnids)} classes, {size}, from {folder}"
    log.info(description)
    words = _words(folder)
    return RawData(data, np.asarray(labels, dtype=np.int64), description, [words.get(w, w) for w in wnids])
