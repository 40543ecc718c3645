"""`imagenet10`, `imagenet_dogs`: the DAC/CC subsets of the ILSVRC-2012 train set (docs/datasets.md).

ImageNet-10: 10 classes, 13,000 images; ImageNet-Dogs: 15 dog breeds, 19,500 images (1,300 per class). The
WNID lists are CC's `datasets/ImageNet-10.txt` / `ImageNet-dogs.txt` (identical in DivClust), sorted, so list
index = `ImageFolder` label. Protocol: train and evaluate on all images of the subset (the ImageNet *train*
images of those classes). `include_val=True` also reads `val/<wnid>/` folders next to `train/` (ProPos's
downloadable folders merge both); the default reads train only.

Layouts searched (the first folder that holds every WNID sub-folder wins):
  (a) a subset folder <dir>/<wnid>/*.JPEG (CC) or <dir>/train/<wnid>/*.JPEG (HaDis / DigPro),
  (b) a full ImageNet train folder <dir>/train/<wnid>/*.JPEG, filtered by WNID (DivClust),
with <dir> = <root>, <root>/<subset folder name> (`imagenet10`, `imagenet_10`, `ImageNet-10`, `imagenet-10`;
`imagenet_dogs`, `imagenet-dogs`, `ImageNet-dogs`, `ImageNet-Dogs`), <root>/imagenet, <root>/ImageNet,
<root>/ILSVRC2012 or <root>/ILSVRC/Data/CLS-LOC. No downloader exists (ImageNet needs a licence).

In-memory size: the images are decoded once (PIL, RGB; ImageNet has greyscale and CMYK JPEGs) and resized to
a fixed `image_size` square so the set fits in RAM as uint8 [N, S, S, 3]. Default 224 with
`resize="stretch"`: exactly CC's evaluation input `Resize((224, 224))` (DivClust-CC, ProPos ImageNet-Dogs
also use 224), 13,000 x 224 x 224 x 3 = 1.96 GB (ImageNet-Dogs 2.9 GB). Presets at 96 px (PICA, HaDis,
DigPro) set `image_size: 96` (0.36 GB). Evaluation uses this copy (PIL's antialiased resize, the official
evaluation input). Training: with `originals=True` (`--dataset_options '{originals: true}'`, set by the presets
whose official code crops its training views from the full-resolution files: CC, DivClust-CC, ProPos, HaDis,
DigPro) the per-image loader pipeline opens the original JPEG for every view and crops it with PIL's antialiased
RandomResizedCrop, as the official ImageFolder loaders; without it the views are cropped from the S x S copy.
"""
from __future__ import annotations

import os

import numpy as np

from .image_decoding import RESIZE_MODES, decode_images, list_image_files
from .lookup import check_choice, check_image_size, expand_root, log, not_found, under
from .registry import DatasetError, RawData, register

IMAGENET10 = [
    ("n02056570", "king penguin"), ("n02085936", "Maltese dog"), ("n02128757", "snow leopard"),
    ("n02690373", "airliner"), ("n02692877", "airship"), ("n03095699", "container ship"),
    ("n04254680", "soccer ball"), ("n04285008", "sports car"), ("n04467665", "trailer truck"),
    ("n07747607", "orange"),
]
IMAGENET_DOGS = [
    ("n02085936", "Maltese dog"), ("n02086646", "Blenheim spaniel"), ("n02088238", "basset"),
    ("n02091467", "Norwegian elkhound"), ("n02097130", "giant schnauzer"), ("n02099601", "golden retriever"),
    ("n02101388", "Brittany spaniel"), ("n02101556", "clumber"), ("n02102177", "Welsh springer spaniel"),
    ("n02105056", "groenendael"), ("n02105412", "kelpie"), ("n02105855", "Shetland sheepdog"),
    ("n02107142", "Doberman"), ("n02110958", "pug"), ("n02112137", "chow"),
]
SUBSET_FOLDERS = {
    "imagenet10": ("imagenet10", "imagenet_10", "ImageNet-10", "imagenet-10", "ImageNet10"),
    "imagenet_dogs": ("imagenet_dogs", "imagenet-dogs", "ImageNet-dogs", "ImageNet-Dogs", "imagenetdogs"),
}
FULL_IMAGENET_FOLDERS = ("imagenet", "ImageNet", "ILSVRC2012", "ILSVRC/Data/CLS-LOC")
IMAGES_PER_CLASS = 1300


def find_wnid_folder(candidates: list[str], wnids: list[str]) -> tuple[str | None, dict[str, list[str]]]:
    """First candidate holding a sub-folder for every WNID; also {candidate: missing WNIDs} for partial hits."""
    partial: dict[str, list[str]] = {}
    for folder in candidates:
        if not os.path.isdir(folder):
            continue
        missing = [w for w in wnids if not os.path.isdir(os.path.join(folder, w))]
        if not missing:
            return folder, partial
        if len(missing) < len(wnids):
            partial[folder] = missing
    return None, partial


def _read_subset(name: str, table: list[tuple[str, str]], root: str | None, download: bool, split: str,
                 image_size: int, resize: str, include_val: bool, originals: bool = False) -> RawData:
    check_choice(name, "split", split, ("all",))
    check_image_size(name, image_size, allow_none=False)
    check_choice(name, "resize", resize, RESIZE_MODES)
    check_choice(name, "include_val", include_val, (True, False))
    check_choice(name, "originals", originals, (True, False))
    root = expand_root(root)
    wnids = [w for w, _ in table]
    bases = under(root, "", *SUBSET_FOLDERS[name], *FULL_IMAGENET_FOLDERS)
    candidates = [c for b in bases for c in (os.path.join(b, "train"), b)]
    folder, partial = find_wnid_folder(candidates, wnids)
    if folder is None:
        hint = "".join(f"; {f} lacks {', '.join(m)}" for f, m in partial.items())
        raise not_found(
            name, candidates,
            f"one sub-folder per WNID ({', '.join(wnids)}) holding that class's ImageNet train JPEGs, either as "
            f"a subset folder <data_root>/{SUBSET_FOLDERS[name][0]}/<wnid>/ (optionally with a train/ level) or "
            f"a full ImageNet train folder <data_root>/imagenet/train/<wnid>/{hint}",
            ("--download true cannot fetch it (ImageNet needs a licence from image-net.org): put the ILSVRC-2012 "
             "train folders of those WNIDs there." if download else
             "ImageNet has no automatic download (licence from image-net.org): put the ILSVRC-2012 train folders "
             "of those WNIDs there."),
        )
    folders = [folder]
    val_folder = os.path.join(os.path.dirname(folder), "val")
    if include_val and os.path.basename(folder) == "train" and os.path.isdir(val_folder):
        folders.append(val_folder)
    files, labels, counts = [], [], []
    for label, wnid in enumerate(wnids):
        found = [p for f in folders if os.path.isdir(os.path.join(f, wnid))
                 for p in list_image_files(os.path.join(f, wnid))]
        if not found:
            raise DatasetError(f"{name}: no image files in {folder}/{wnid}")
        files.extend(found)
        labels.extend([label] * len(found))
        counts.append(len(found))
    off = [f"{w} {c}" for w, c in zip(wnids, counts) if c != IMAGES_PER_CLASS]
    if off and not include_val:
        log.warning("%s: expected %d images per class, found %s", name, IMAGES_PER_CLASS, ", ".join(off))
    data = decode_images(files, mode="RGB", size=image_size, resize=resize, desc=f"decoding {name}")
    parts = " + ".join(folders)
    description = (f"{name}: {len(wnids)} classes, {len(data)} images ({min(counts)}-{max(counts)} per class) "
                   f"from {parts}, resized to {image_size}x{image_size} ({resize})")
    if originals:
        description += "; training views from the original files"
    log.info(description)
    return RawData(data, np.asarray(labels, dtype=np.int64), description, [n for _, n in table],
                   files=list(files) if originals else None)


@register("imagenet10")
def read_imagenet10(root: str | None, *, download: bool = False, split: str = "all", image_size: int = 224,
                    resize: str = "stretch", include_val: bool = False, originals: bool = False) -> RawData:
    """ImageNet-10 (13,000 images, 10 classes) as uint8 [N, image_size, image_size, 3]."""
    return _read_subset("imagenet10", IMAGENET10, root, download, split, image_size, resize, include_val, originals)


@register("imagenet_dogs")
def read_imagenet_dogs(root: str | None, *, download: bool = False, split: str = "all", image_size: int = 224,
                       resize: str = "stretch", include_val: bool = False, originals: bool = False) -> RawData:
    """ImageNet-Dogs (19,500 images, 15 breeds) as uint8 [N, image_size, image_size, 3]."""
    return _read_subset("imagenet_dogs", IMAGENET_DOGS, root, download, split, image_size, resize, include_val,
                        originals)
