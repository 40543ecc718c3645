"""`image_folder` (your own images) and `npz` (your own arrays or feature vectors) (docs/datasets.md).

Both read from `--data_root`, or from the option `path` (absolute, or relative to `--data_root`).

`image_folder`: `<dir>/<class>/<image>` (extensions .jpg .jpeg .png .ppm .bmp .pgm .tif .tiff .webp, any depth
below the class folder), classes in sorted folder order as torchvision's `ImageFolder`. A folder whose only
sub-folders are `train/`, `val/` and/or `test/` is read level by level: `split="all"` merges every level
present (as ProPos does with train/ + val/), `split="train"` etc. reads one. A flat folder of images (no class
folders) is read with labels -1: evaluation then skips the metrics instead of inventing labels. Images are
decoded to RGB (`channels=3`, default) or grey (`channels=1`); images of different sizes need
`image_size` (every image is resized to a square, `resize="stretch"` or `"center_crop"`).

`npz`: an `.npz` with `x` and optional `y` (aliases `X`/`Y`, `data`/`labels`, `features`/`labels`,
`targets`), or Kingdra's `train_X.npy` + `train_Y.npy` pair. `x` N x D (any numeric dtype) is read as float32
vectors; N x H x W or N x H x W x C (C = 1 or 3) uint8 as images. `y` are integer labels with -1 for
unknown; labels that are not 0..K-1 (e.g. 1..10) are renumbered by sorted value. Arrays are loaded with
`allow_pickle=False`; a pickled file (such as DEC's `reutersidf10k.npy`) is refused with the one-off
conversion to run in a trusted session.
"""
from __future__ import annotations

import os

import numpy as np

from .image_decoding import RESIZE_MODES, decode_images, is_image_file, list_image_files
from .lookup import check_choice, check_image_size, expand_root, log, not_found
from .registry import DatasetError, RawData, register

SPLIT_LEVELS = ("train", "val", "test")
X_KEYS = ("x", "X", "data", "features")
Y_KEYS = ("y", "Y", "labels", "label", "targets")


def _resolve(name: str, root: str | None, path: str | None) -> str:
    if path is not None:
        path = os.path.expanduser(str(path))
        if not os.path.isabs(path) and root is not None:
            path = os.path.join(root, path)
        return os.path.normpath(path)
    if root is None:
        raise not_found(name, [], "see the dataset's documentation",
                        "Give --data_root (or the dataset option path) pointing at your data.")
    return os.path.normpath(root)


def _subdirs(folder: str) -> list[str]:
    return sorted(d for d in os.listdir(folder) if os.path.isdir(os.path.join(folder, d)) and not d.startswith("."))


def _scan_level(folder: str) -> tuple[dict[str, list[str]], list[str]]:
    """({class: sorted image paths} for class folders holding images, loose images directly in `folder`)."""
    classes = {}
    for name in _subdirs(folder):
        files = list_image_files(os.path.join(folder, name))
        if files:
            classes[name] = files
        else:
            log.warning("image_folder: %s holds no image files; it is not a class", os.path.join(folder, name))
    loose = sorted(os.path.join(folder, f) for f in os.listdir(folder)
                   if is_image_file(f) and os.path.isfile(os.path.join(folder, f)))
    return classes, loose


@register("image_folder")
def read_image_folder(root: str | None, *, download: bool = False, split: str = "all", path: str | None = None,
                      image_size: int | None = None, resize: str = "stretch", channels: int = 3,
                      skip_unreadable: bool = False) -> RawData:
    """Your images as uint8 [N, H, W, channels]; labels from class folders, or -1 for a flat folder. Each sample's
    id is its file path relative to the folder. `skip_unreadable`: leave files that cannot be decoded out (their
    number is logged) instead of stopping at the first."""
    check_image_size("image_folder", image_size, allow_none=True)
    check_choice("image_folder", "resize", resize, RESIZE_MODES)
    check_choice("image_folder", "channels", channels, (1, 3))
    folder = _resolve("image_folder", expand_root(root), path)
    layout = ("<dir>/<class>/<image> (classes = sorted folder names), optionally under train/ val/ test/ "
              "levels, or <dir>/<image> for unlabelled images")
    if not os.path.isdir(folder):
        raise not_found("image_folder", [folder], layout, "Point --data_root (or the option path) at your images.")
    subdirs = _subdirs(folder)
    levels = [lvl for lvl in SPLIT_LEVELS if lvl in subdirs]
    if levels and len(levels) == len(subdirs):
        check_choice("image_folder", "split", split, ("all",) + tuple(levels))
        chosen = levels if split == "all" else [split]
        scans = {lvl: _scan_level(os.path.join(folder, lvl)) for lvl in chosen}
    else:
        check_choice("image_folder", "split", split, ("all",))
        chosen, scans = [""], {"": _scan_level(folder)}
    labelled = [bool(classes) for classes, _ in scans.values()]
    for lvl, (classes, loose) in scans.items():
        where = os.path.join(folder, lvl)
        if classes and loose:
            raise DatasetError(f"image_folder: {where} mixes class folders with {len(loose)} loose images (e.g. "
                             f"{loose[0]}); put every image in a class folder, or use a flat folder without labels")
    if any(labelled) and not all(labelled):
        raise DatasetError(f"image_folder: in {folder} some of {', '.join(chosen)} have class folders and some not")
    files: list[str] = []
    labels: list[int] = []
    if all(labelled):
        class_names = sorted({c for classes, _ in scans.values() for c in classes})
        index = {c: i for i, c in enumerate(class_names)}
        for classes, _ in scans.values():
            for name, paths in classes.items():
                files.extend(paths)
                labels.extend([index[name]] * len(paths))
    else:
        class_names = None
        for _, loose in scans.values():
            files.extend(loose)
        labels = [-1] * len(files)
    if not files:
        raise not_found("image_folder", [os.path.join(folder, lvl) if lvl else folder for lvl in chosen], layout,
                        "The folder holds no image files with a known extension: point --data_root (or the "
                        "option path) at your images.")
    skipped: list[int] | None = [] if skip_unreadable else None
    data = decode_images(files, mode="RGB" if channels == 3 else "L", size=image_size, resize=resize,
                         desc="decoding image_folder", skipped=skipped)
    if skipped:
        kept = sorted(set(range(len(files))) - set(skipped))
        log.warning("image_folder: %d unreadable file(s) left out (skip_unreadable), e.g. %s", len(skipped),
                    files[skipped[0]])
        files, labels = [files[i] for i in kept], [labels[i] for i in kept]
    what = f"{len(class_names)} classes" if class_names else "no labels (flat folder: metrics are skipped)"
    levels_text = f", levels {' + '.join(chosen)}{' merged' if len(chosen) > 1 else ''}" if chosen != [""] else ""
    description = f"image_folder: {len(data)} images, {what}{levels_text}, from {folder}"
    log.info(description)
    ids = [os.path.relpath(f, folder) for f in files]
    return RawData(data, np.asarray(labels, dtype=np.int64), description, class_names, ids=ids)


def _load_array(path: str) -> np.ndarray | dict[str, np.ndarray]:
    try:
        loaded = np.load(path, allow_pickle=False)
    except ValueError as error:
        if "allow_pickle" not in str(error):
            raise
        raise DatasetError(
            f"npz: {path} holds pickled Python objects, which are not loaded (a pickle can run code). If you "
            f"trust it, convert it once in a separate session, e.g. d = np.load(path, allow_pickle=True).item(); "
            f"np.savez(out, x=d['data'], y=d['label']) for DEC's reutersidf10k.npy, and read the .npz."
        ) from None
    if isinstance(loaded, np.ndarray):
        return loaded
    with loaded:
        return {k: loaded[k] for k in loaded.files}


def _pick(arrays: dict[str, np.ndarray], keys: tuple[str, ...]) -> np.ndarray | None:
    return next((arrays[k] for k in keys if k in arrays), None)


def _labels(y: np.ndarray | None, n: int, source: str) -> tuple[np.ndarray, str]:
    if y is None:
        return np.full(n, -1, dtype=np.int64), "no labels"
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:  # a column vector
        y = y[:, 0]
    if y.ndim != 1 or len(y) != n:
        raise DatasetError(f"npz: {source}: labels have shape {y.shape}, expected ({n},)")
    if not np.issubdtype(y.dtype, np.integer):
        if not np.issubdtype(y.dtype, np.floating) or not np.all(np.isfinite(y)) or np.any(y != np.round(y)):
            raise DatasetError(f"npz: {source}: labels must be integers (-1 = unknown), got dtype {y.dtype}")
    y = y.astype(np.int64)
    if np.any(y < -1):
        raise DatasetError(f"npz: {source}: negative labels other than -1 (unknown): {sorted(set(y[y < -1]))[:5]}")
    known = np.unique(y[y >= 0])
    if known.size and not np.array_equal(known, np.arange(known.size)):
        remapped = y.copy()
        remapped[y >= 0] = np.searchsorted(known, y[y >= 0])
        return remapped, f"{known.size} classes (values {known[0]}..{known[-1]} renumbered 0..{known.size - 1})"
    return y, f"{known.size} classes"


@register("npz")
def read_npz(root: str | None, *, download: bool = False, split: str = "all", path: str | None = None) -> RawData:
    """Arrays from an .npz (or Kingdra's train_X.npy/train_Y.npy): float32 [N, D] vectors or uint8 images."""
    check_choice("npz", "split", split, ("all",))
    target = _resolve("npz", expand_root(root), path)
    layout = "a .npz file with x (and optional y), or a folder with one .npz, or train_X.npy + train_Y.npy"
    if os.path.isdir(target):
        kingdra = os.path.join(target, "train_X.npy")
        if os.path.isfile(kingdra):
            target = kingdra
        else:
            found = sorted(f for f in os.listdir(target) if f.endswith(".npz"))
            if len(found) > 1:
                raise DatasetError(f"npz: {target} holds several .npz files ({', '.join(found)}); choose one with "
                                 f"the dataset option path")
            if not found:
                raise not_found("npz", [target], layout, "Point --data_root (or the option path) at the file.")
            target = os.path.join(target, found[0])
    if not os.path.isfile(target):
        raise not_found("npz", [target], layout, "Point --data_root (or the option path) at the file.")
    loaded = _load_array(target)
    if isinstance(loaded, np.ndarray):  # a .npy: x alone, with a *_Y.npy / *_y.npy sibling for labels
        x, y = loaded, None
        stem = target[:-len("_X.npy")] if target.endswith(("_X.npy", "_x.npy")) else None
        for sibling in ((stem + "_Y.npy", stem + "_y.npy") if stem else ()):
            if os.path.isfile(sibling):
                y = _load_array(sibling)
                break
    else:
        x, y = _pick(loaded, X_KEYS), _pick(loaded, Y_KEYS)
        if x is None:
            raise DatasetError(f"npz: {target} has arrays {', '.join(loaded) or 'none'}; the data must be called "
                             f"one of {', '.join(X_KEYS)} (labels: {', '.join(Y_KEYS)})")
    x = np.asarray(x)
    if x.ndim == 2:
        if not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_):
            raise DatasetError(f"npz: {target}: vectors must be numeric, got {x.dtype}")
        data = x.astype(np.float32)
        if not np.all(np.isfinite(data)):
            raise DatasetError(f"npz: {target}: vectors contain NaN or infinite values")
        kind = f"{data.shape[1]}-d vectors"
    elif x.ndim in (3, 4):
        if x.dtype != np.uint8:
            raise DatasetError(f"npz: {target}: images must be uint8 0..255 (got {x.dtype}); e.g. convert with "
                             f"(x * 255).round().astype(np.uint8), or flatten them to N x D vectors")
        data = x[..., None] if x.ndim == 3 else x
        if data.shape[-1] not in (1, 3):
            raise DatasetError(f"npz: {target}: images must be N x H x W x C with C = 1 or 3 (channels last), got "
                             f"{x.shape}; for channels-first arrays use np.transpose(x, (0, 2, 3, 1))")
        kind = f"{data.shape[1]}x{data.shape[2]}x{data.shape[3]} images"
    else:
        raise DatasetError(f"npz: {target}: x must be N x D vectors or N x H x W[x C] images, got shape {x.shape}")
    labels, labels_text = _labels(y, len(data), target)
    description = f"npz: {len(data)} {kind}, {labels_text}, from {target}"
    log.info(description)
    return RawData(data, labels, description)
