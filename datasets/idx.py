"""`mnist`, `fashion_mnist`: the IDX files (plain or .gz), parsed here (docs/datasets.md).

Protocol: clustering papers (IIC, IMSAT, DivClust-style transductive evaluation) use train + test merged =
70,000 images; `split="train"` (60,000) or `split="test"` (10,000) give one partition (L2C's supervised
MNIST demo trains on train and evaluates on test). Images come back as uint8 [N, 28, 28, 1].

Lookup under `--data_root` (first folder holding the needed files wins):
  mnist:         <root>/MNIST/raw, <root>/mnist, <root>/MNIST, <root>
  fashion_mnist: <root>/FashionMNIST/raw, <root>/fashion_mnist, <root>/fashion-mnist, <root>/FashionMNIST,
                 <root>, then the Debian `dataset-fashion-mnist` install /usr/share/datasets/fashion-mnist
Each file may be plain or gzipped (`train-images-idx3-ubyte` or `train-images-idx3-ubyte.gz`).
`--download true` (only when nothing is found) calls torchvision's MNIST / FashionMNIST downloader, which
writes `<root>/MNIST/raw` / `<root>/FashionMNIST/raw`, and then parses those files here.
"""
from __future__ import annotations

import gzip
import os
import struct

import numpy as np

from .lookup import check_choice, expand_root, log, not_found, root_for_download, under
from .registry import DatasetError, RawData, register

DEBIAN_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"

FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
SPLITS = ("all", "train", "test")

FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot"]

# IDX type byte -> numpy dtype (big-endian for multi-byte types).
_IDX_TYPES = {0x08: np.dtype(np.uint8), 0x09: np.dtype(np.int8), 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
              0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def parse_idx(blob: bytes, name: str = "IDX file") -> np.ndarray:
    """Parse the bytes of one IDX file: 0x00 0x00, type byte, number of dimensions, big-endian uint32 sizes,
    then the row-major data. Raises ValueError on a bad header or a size that does not match."""
    if len(blob) < 4 or blob[0] != 0 or blob[1] != 0 or blob[2] not in _IDX_TYPES:
        raise DatasetError(f"{name}: not an IDX file (header bytes {blob[:4].hex()})")
    dtype, ndim = _IDX_TYPES[blob[2]], blob[3]
    header = 4 + 4 * ndim
    if len(blob) < header:
        raise DatasetError(f"{name}: truncated IDX header")
    dims = struct.unpack(f">{ndim}I", blob[4:header])
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(blob) - header != expected:
        raise DatasetError(f"{name}: header announces shape {dims} ({expected} bytes) but {len(blob) - header} "
                         f"bytes follow")
    return np.frombuffer(blob, dtype=dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def read_idx_file(path: str) -> np.ndarray:
    """Read an IDX file, gunzipping it when it starts with the gzip magic bytes (whatever its name)."""
    with open(path, "rb") as f:
        blob = f.read()
    if blob[:2] == b"\x1f\x8b":
        blob = gzip.decompress(blob)
    return parse_idx(blob, path)


def _find_file(folder: str, stem: str) -> str | None:
    for name in (stem, stem + ".gz"):
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            return path
    return None


def _folder_with(folder: str, parts: list[str]) -> dict[str, str] | None:
    """{stem: path} when `folder` holds every file the requested partitions need, else None."""
    paths = {stem: _find_file(folder, stem) for part in parts for stem in FILES[part]}
    return paths if all(paths.values()) else None


def _read_partition(paths: dict[str, str], part: str) -> tuple[np.ndarray, np.ndarray]:
    images_stem, labels_stem = FILES[part]
    images, labels = read_idx_file(paths[images_stem]), read_idx_file(paths[labels_stem])
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DatasetError(f"{paths[images_stem]}: expected uint8 images N x H x W, got {images.dtype} {images.shape}")
    if labels.ndim != 1 or len(labels) != len(images):
        raise DatasetError(f"{paths[labels_stem]}: {labels.shape} labels for {len(images)} images")
    return images, labels.astype(np.int64)


def _read_idx_dataset(name: str, root: str | None, download: bool, split: str, folders: list[str],
                      torchvision_class: str, class_names: list[str]) -> RawData:
    check_choice(name, "split", split, SPLITS)
    parts = ["train", "test"] if split == "all" else [split]
    found = next((p for p in (_folder_with(f, parts) for f in folders) if p), None)
    if found is None and download:
        target = root_for_download(name, root)
        import torchvision

        getattr(torchvision.datasets, torchvision_class)(target, train=True, download=True)
        found = _folder_with(os.path.join(target, torchvision_class, "raw"), parts)
    if found is None:
        wanted = ", ".join(f"{stem}[.gz]" for part in parts for stem in FILES[part])
        raise not_found(
            name, folders,
            f"the IDX files {wanted} (plain or gzipped) directly in one of those folders",
            f"Get them with --download true (torchvision's {torchvision_class} downloader, into "
            f"<data_root>/{torchvision_class}/raw) or copy the files into <data_root>/{torchvision_class}/raw.",
        )
    images, labels = zip(*(_read_partition(found, part) for part in parts))
    data = np.concatenate(images)[..., None]
    counts = " + ".join(f"{part} ({len(x)})" for part, x in zip(parts, images))
    folder = os.path.dirname(next(iter(found.values())))
    description = f"{name}: {counts}{' merged' if len(parts) > 1 else ''} = {len(data)} images from {folder}"
    log.info(description)
    return RawData(data, np.concatenate(labels), description, class_names)


@register("mnist")
def read_mnist(root: str | None, *, download: bool = False, split: str = "all") -> RawData:
    """MNIST, uint8 [N, 28, 28, 1]; split 'all' = train + test = 70,000 (clustering protocol)."""
    root = expand_root(root)
    folders = under(root, "MNIST/raw", "mnist", "MNIST", "")
    return _read_idx_dataset("mnist", root, download, split, folders, "MNIST", [str(i) for i in range(10)])


@register("fashion_mnist")
def read_fashion_mnist(root: str | None, *, download: bool = False, split: str = "all") -> RawData:
    """Fashion-MNIST, uint8 [N, 28, 28, 1]; split 'all' = train + test = 70,000. Falls back to the Debian
    `dataset-fashion-mnist` files in /usr/share/datasets/fashion-mnist (their .gz MD5s differ from upstream
    because Debian re-compressed them; the IDX content is the same, so no MD5 check is made here)."""
    root = expand_root(root)
    folders = under(root, "FashionMNIST/raw", "fashion_mnist", "fashion-mnist", "FashionMNIST", "")
    folders.append(DEBIAN_FASHION_MNIST)
    return _read_idx_dataset("fashion_mnist", root, download, split, folders, "FashionMNIST", FASHION_CLASSES)
