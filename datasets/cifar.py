"""`cifar10`, `cifar100`: the official python-pickle batches (docs/datasets.md).

Protocol: CC, PICA, IIC, ProPos, HaDis and DivClust train and evaluate on train + test merged = 60,000
images (`split="all"`, default); `split="train"` (50,000) / `split="test"` (10,000) give one partition
(SCAN-style or supervised protocols; never mix protocols in one table). Images: uint8 [N, 32, 32, 3] RGB.

`cifar100` ground truth is the 20 super-classes (`labels="coarse"`, default), read from the pickle's own
`coarse_labels` as PICA does; `labels="fine"` gives the 100 classes. The reader checks the file's
fine -> coarse pairs against the official table (docs/datasets.md) and warns if they differ.

Lookup under `--data_root`: the extracted folder `cifar-10-batches-py/` (`cifar-100-python/`) in <root>,
<root>/cifar10 (<root>/cifar100) or <root>/CIFAR10 (<root>/CIFAR100); the batch files directly in
<root>/cifar10 or <root>; else the archive `cifar-10-python.tar.gz` (`cifar-100-python.tar.gz`) in <root> or
that sub-folder, read without extracting. `--download true` (only when nothing is found) uses
torchvision's CIFAR10 / CIFAR100 downloader (which extracts into <root>).

Safety: the batches are pickles. Each file's MD5 is checked against the official value before it is
unpickled (`verify_md5=True`, default; a mismatch is refused with a ValueError), and unpickling goes through
a restricted unpickler that can build only numpy arrays/dtypes and plain containers, never call anything
else. `verify_md5=False` is for files you made yourself (tests) or trust.
"""
from __future__ import annotations

import hashlib
import io
import os
import pickle
import tarfile

import numpy as np

from .lookup import check_choice, expand_root, log, not_found, root_for_download, under
from .registry import DatasetError, RawData, register

SPLITS = ("all", "train", "test")

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]

# Fine id (alphabetical index into fine_label_names) -> coarse id, the official super-class table.
CIFAR100_FINE_TO_COARSE = np.array([
    4, 1, 14, 8, 0, 6, 7, 7, 18, 3, 3, 14, 9, 18, 7, 11, 3, 9, 7, 11, 6, 11, 5, 10, 7, 6, 13, 15, 3, 15,
    0, 11, 1, 10, 12, 14, 16, 9, 11, 5, 5, 19, 8, 8, 15, 13, 14, 17, 18, 10, 16, 4, 17, 4, 2, 0, 17, 4, 18, 17,
    10, 3, 2, 12, 12, 16, 12, 1, 9, 19, 2, 10, 0, 1, 16, 12, 9, 13, 15, 13, 16, 19, 2, 4, 6, 19, 5, 5, 8, 19,
    18, 1, 2, 15, 6, 0, 17, 8, 14, 13,
], dtype=np.int64)

CIFAR100_COARSE_CLASSES = [
    "aquatic_mammals", "fish", "flowers", "food_containers", "fruit_and_vegetables",
    "household_electrical_devices", "household_furniture", "insects", "large_carnivores",
    "large_man-made_outdoor_things", "large_natural_outdoor_scenes", "large_omnivores_and_herbivores",
    "medium_mammals", "non-insect_invertebrates", "people", "reptiles", "small_mammals", "trees", "vehicles_1",
    "vehicles_2",
]

CIFAR100_FINE_CLASSES = [
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle", "bowl", "boy",
    "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar", "cattle", "chair", "chimpanzee", "clock",
    "cloud", "cockroach", "couch", "crab", "crocodile", "cup", "dinosaur", "dolphin", "elephant", "flatfish",
    "forest", "fox", "girl", "hamster", "house", "kangaroo", "keyboard", "lamp", "lawn_mower", "leopard", "lion",
    "lizard", "lobster", "man", "maple_tree", "motorcycle", "mountain", "mouse", "mushroom", "oak_tree", "orange",
    "orchid", "otter", "palm_tree", "pear", "pickup_truck", "pine_tree", "plain", "plate", "poppy", "porcupine",
    "possum", "rabbit", "raccoon", "ray", "road", "rocket", "rose", "sea", "seal", "shark", "shrew", "skunk",
    "skyscraper", "snail", "snake", "spider", "squirrel", "streetcar", "sunflower", "sweet_pepper", "table", "tank",
    "telephone", "television", "tiger", "tractor", "train", "trout", "tulip", "turtle", "wardrobe", "whale",
    "willow_tree", "wolf", "woman", "worm",
]

MD5 = {
    "cifar10": {
        "data_batch_1": "c99cafc152244af753f735de768cd75f",
        "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
        "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
        "data_batch_4": "634d18415352ddfa80567beed471001a",
        "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
        "test_batch": "40351d587109b95175f43aff81a1287e",
        "batches.meta": "5ff9c542aee3614f3951f8cda6e48888",  # torchvision's value (not in docs/datasets.md)
    },
    "cifar100": {
        "train": "16019d7e3df5f24257cddd939b257f8d",
        "test": "f0ef6b0ae62326f3e7ffdfab6717acfc",
        "meta": "7973b15100ade9c7d40fb424638fde48",
    },
}

LAYOUT = {
    "cifar10": dict(folder="cifar-10-batches-py", archive="cifar-10-python.tar.gz", sub=("cifar10", "CIFAR10"),
                    train=["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5"],
                    test=["test_batch"], meta="batches.meta", torchvision="CIFAR10"),
    "cifar100": dict(folder="cifar-100-python", archive="cifar-100-python.tar.gz", sub=("cifar100", "CIFAR100"),
                     train=["train"], test=["test"], meta="meta", torchvision="CIFAR100"),
}


def _numpy_reconstruct():
    try:
        from numpy._core.multiarray import _reconstruct  # numpy >= 2
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


class _CifarUnpickler(pickle.Unpickler):
    """Builds only what a CIFAR batch holds: dicts, lists, str/bytes, ints and numpy arrays. Any other global
    (the way a malicious pickle runs code) is refused."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
        ("numpy", "ndarray"): lambda: np.ndarray,
        ("numpy", "dtype"): lambda: np.dtype,
        ("_codecs", "encode"): lambda: __import__("_codecs").encode,  # bytes in protocol-2 pickles made by py3
    }

    def find_class(self, module: str, name: str):
        factory = self._ALLOWED.get((module, name))
        if factory is None:
            raise pickle.UnpicklingError(f"CIFAR batch refers to {module}.{name}, which a CIFAR batch never "
                                         f"needs; refusing to unpickle it")
        return factory()


def unpickle_batch(blob: bytes, name: str, expected_md5: str | None, verify_md5: bool) -> dict:
    """MD5-check (when asked) then unpickle one batch with the restricted unpickler; str keys."""
    if verify_md5:
        actual = hashlib.md5(blob).hexdigest()
        if expected_md5 is None or actual != expected_md5:
            raise DatasetError(
                f"{name}: MD5 {actual} is not the official {expected_md5}; the file is corrupt or not the "
                f"official CIFAR release, so it is not unpickled. Re-download it (--download true into an "
                f"empty folder) or, for a file you made or trust, set the dataset option verify_md5: false."
            )
    content = _CifarUnpickler(io.BytesIO(blob), encoding="latin1").load()
    if not isinstance(content, dict):
        raise DatasetError(f"{name}: expected a pickled dict, got {type(content).__name__}")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in content.items()}


class _BatchFiles:
    """The batch files of one CIFAR release, from an extracted folder or straight from the .tar.gz."""

    def __init__(self, location: str, names: list[str], is_archive: bool = False):
        self.location, self.names, self.is_archive = location, names, is_archive

    @classmethod
    def find(cls, folders: list[str], archives: list[str], names: list[str]) -> "_BatchFiles | None":
        for folder in folders:
            if all(os.path.isfile(os.path.join(folder, n)) for n in names):
                return cls(folder, names)
        for archive in archives:
            if os.path.isfile(archive):
                return cls(archive, names, is_archive=True)
        return None

    def read_all(self, optional: tuple[str, ...] = ()) -> dict[str, bytes]:
        wanted = list(self.names) + list(optional)
        if not self.is_archive:
            out = {}
            for n in wanted:
                path = os.path.join(self.location, n)
                if os.path.isfile(path):
                    with open(path, "rb") as f:
                        out[n] = f.read()
            return out
        out = {}
        with tarfile.open(self.location, "r:*") as tar:
            for member in tar.getmembers():
                base = os.path.basename(member.name)
                if member.isfile() and base in wanted and base not in out:
                    out[base] = tar.extractfile(member).read()
        missing = [n for n in self.names if n not in out]
        if missing:
            raise DatasetError(f"{self.location}: archive lacks {', '.join(missing)}")
        return out


def _batch_images(batch: dict, name: str) -> np.ndarray:
    data = np.asarray(batch["data"], dtype=np.uint8)
    if data.ndim != 2 or data.shape[1] != 3072:
        raise DatasetError(f"{name}: 'data' should be N x 3072 uint8, got {data.shape}")
    # Each row: 1024 red, 1024 green, 1024 blue values of a row-major 32x32 image.
    return np.ascontiguousarray(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))


def _read_cifar(name: str, root: str | None, download: bool, split: str, verify_md5: bool,
                label_key: str) -> tuple[np.ndarray, np.ndarray, dict, str, dict]:
    check_choice(name, "split", split, SPLITS)
    layout = LAYOUT[name]
    parts = ["train", "test"] if split == "all" else [split]
    names = [n for part in parts for n in layout[part]]
    subs = layout["sub"]
    folders = under(root, layout["folder"], *(f"{s}/{layout['folder']}" for s in subs), *subs, "")
    archives = under(root, layout["archive"], *(f"{s}/{layout['archive']}" for s in subs))
    source = _BatchFiles.find(folders, archives, names)
    if source is None and download:
        target = root_for_download(name, root)
        import torchvision

        getattr(torchvision.datasets, layout["torchvision"])(target, train=True, download=True)
        source = _BatchFiles.find([os.path.join(target, layout["folder"])], [], names)
    if source is None:
        raise not_found(
            name, folders + archives,
            f"{layout['folder']}/ with {', '.join(names)} (the extracted {layout['archive']}), or the archive "
            f"itself",
            f"Get it with --download true (torchvision's {layout['torchvision']} downloader, into <data_root>) "
            f"or put {layout['archive']} or its extracted {layout['folder']}/ in <data_root>.",
        )
    blobs = source.read_all(optional=(layout["meta"],))
    images, labels, batches = [], [], {}
    for n in names:
        batch = unpickle_batch(blobs[n], os.path.join(source.location, n), MD5[name].get(n), verify_md5)
        if label_key not in batch:
            raise DatasetError(f"{source.location}/{n}: no {label_key!r} in the batch (keys: {sorted(batch)})")
        images.append(_batch_images(batch, n))
        labels.append(np.asarray(batch[label_key], dtype=np.int64))
        if len(labels[-1]) != len(images[-1]):
            raise DatasetError(f"{source.location}/{n}: {len(labels[-1])} labels for {len(images[-1])} images")
        batches[n] = batch
    meta = {}
    if layout["meta"] in blobs:  # class names only; a meta file that fails its MD5 is skipped, not fatal
        try:
            meta = unpickle_batch(blobs[layout["meta"]], layout["meta"], MD5[name].get(layout["meta"]), verify_md5)
        except (ValueError, pickle.UnpicklingError) as error:
            log.warning("%s: ignoring %s (%s); using the built-in class names", name, layout["meta"], error)
    counts = " + ".join(f"{p} ({sum(len(batches[n]['data']) for n in layout[p])})" for p in parts)
    data = np.concatenate(images)
    description = f"{name}: {counts}{' merged' if len(parts) > 1 else ''} = {len(data)} images from {source.location}"
    return data, np.concatenate(labels), batches, description, meta


def _names(meta: dict, key: str, default: list[str]) -> list[str]:
    names = meta.get(key)
    if isinstance(names, list) and len(names) == len(default):
        return [n.decode("latin1") if isinstance(n, bytes) else str(n) for n in names]
    return list(default)


@register("cifar10")
def read_cifar10(root: str | None, *, download: bool = False, split: str = "all",
                 verify_md5: bool = True) -> RawData:
    """CIFAR-10 as uint8 [N, 32, 32, 3]; split 'all' = 50,000 + 10,000 merged (clustering protocol)."""
    data, labels, _, description, meta = _read_cifar("cifar10", expand_root(root), download, split, verify_md5,
                                                     "labels")
    log.info(description)
    return RawData(data, labels, description, _names(meta, "label_names", CIFAR10_CLASSES))


@register("cifar100")
def read_cifar100(root: str | None, *, download: bool = False, split: str = "all", labels: str = "coarse",
                  verify_md5: bool = True) -> RawData:
    """CIFAR-100 as uint8 [N, 32, 32, 3]; `labels='coarse'` (default): the 20 super-classes ("CIFAR-20"),
    `labels='fine'`: the 100 classes. split 'all' = 50,000 + 10,000 merged."""
    check_choice("cifar100", "labels", labels, ("coarse", "fine"))
    data, y, batches, description, meta = _read_cifar("cifar100", expand_root(root), download, split, verify_md5,
                                                   f"{labels}_labels")
    fine = [np.asarray(b.get("fine_labels", []), dtype=np.int64) for b in batches.values()]
    coarse = [np.asarray(b.get("coarse_labels", []), dtype=np.int64) for b in batches.values()]
    if all(len(f) and len(f) == len(c) for f, c in zip(fine, coarse)):
        fine_all, coarse_all = np.concatenate(fine), np.concatenate(coarse)
        if fine_all.min() >= 0 and fine_all.max() < 100 and not np.array_equal(
                CIFAR100_FINE_TO_COARSE[fine_all], coarse_all):
            log.warning("cifar100: the file's coarse_labels disagree with the official fine -> coarse table "
                        "(docs/datasets.md) for %d images; using the file's labels",
                        int((CIFAR100_FINE_TO_COARSE[fine_all] != coarse_all).sum()))
    class_names = _names(meta, f"{labels}_label_names",
                         CIFAR100_COARSE_CLASSES if labels == "coarse" else CIFAR100_FINE_CLASSES)
    description += f", {labels} labels ({20 if labels == 'coarse' else 100} classes)"
    log.info(description)
    return RawData(data, y, description, class_names)
