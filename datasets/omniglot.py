"""`omniglot`: the background / evaluation sets of Omniglot (docs/datasets.md, docs/methods/l2c.md).

Layout: `images_background/<Alphabet>/characterNN/*.png` and `images_evaluation/...` (105 x 105 binary
PNGs, black strokes on white, 20 drawings per character), extracted or still zipped
(`images_background.zip`, `images_evaluation.zip`, read in place). Every character is one class.

Options:
- `split`: `"background"` (30 alphabets, 964 characters, 19,280 images: L2C's labelled source set for the
  similarity network), `"evaluation"` (20 alphabets, 659 characters, 13,180 images), or `"all"` (default;
  both, background characters first). Labels count characters in sorted (subset, alphabet, character) order.
- `alphabet`: one alphabet only (L2C: each evaluation alphabet is its own clustering problem), its characters
  re-indexed 0..C-1. Matched by folder name (`Syriac_(Serto)`), or ignoring case and punctuation so the
  README spellings (`Syriac_Serto`, `Aurek_Besh`) work too; it is looked for in the subsets `split` selects.
- `image_size`: None (default) keeps 105 x 105; an int resizes on decoding. L2C's own pipeline (Resize /
  RandomResizedCrop to 32, inversion, Normalize(0.086, 0.235)) belongs in the method's transform.
Images are uint8 [N, H, W, 1] as stored (strokes dark); the inversion x -> 1 - x is the transform's job.

Lookup under `--data_root`: <root>/omniglot-py (torchvision's root), <root>/omniglot, <root>.
`--download true` (only when a needed subset is missing) uses torchvision's Omniglot downloader.
"""
from __future__ import annotations

import os
import re
import zipfile
from difflib import get_close_matches

import numpy as np

from .image_decoding import decode_images
from .lookup import check_choice, check_image_size, expand_root, log, not_found, root_for_download, under
from .registry import DatasetError, RawData, register

SUBSETS = ("background", "evaluation")

# {alphabet: {character: [image sources (paths, or bytes read from a zip)]}}
Index = dict[str, dict[str, list]]


def _index_folder(folder: str) -> Index:
    index: Index = {}
    for alphabet in sorted(os.listdir(folder)):
        alphabet_dir = os.path.join(folder, alphabet)
        if not os.path.isdir(alphabet_dir):
            continue
        characters = {}
        for character in sorted(os.listdir(alphabet_dir)):
            character_dir = os.path.join(alphabet_dir, character)
            if os.path.isdir(character_dir):
                files = sorted(f for f in os.listdir(character_dir) if f.lower().endswith(".png"))
                characters[character] = [os.path.join(character_dir, f) for f in files]
        index[alphabet] = characters
    return index


def _index_zip(path: str) -> Index:
    """Index a zip's PNG members as {alphabet: {character: [member names]}} (bytes are read later)."""
    index: Index = {}
    with zipfile.ZipFile(path) as archive:
        for member in sorted(archive.namelist()):
            parts = member.strip("/").split("/")
            if len(parts) >= 3 and parts[-1].lower().endswith(".png"):
                index.setdefault(parts[-3], {}).setdefault(parts[-2], []).append(member)
    return {a: dict(sorted(c.items())) for a, c in sorted(index.items())}


def _locate(root: str | None, subset: str) -> tuple[str | None, list[str]]:
    """Path of the extracted folder (preferred) or the zip of one subset, and every path tried."""
    bases = under(root, "omniglot-py", "omniglot", "")
    folders = [os.path.join(b, f"images_{subset}") for b in bases]
    zips = [f + ".zip" for f in folders]
    found = next((f for f in folders if os.path.isdir(f)), None) or next((z for z in zips if os.path.isfile(z)), None)
    return found, folders + zips


def _load_index(location: str) -> Index:
    return _index_zip(location) if location.endswith(".zip") else _index_folder(location)


def _normalise(name: str) -> str:
    return re.sub(r"[^0-9a-z]", "", name.lower())


def _match_alphabet(wanted: str, available: list[str]) -> str | None:
    if wanted in available:
        return wanted
    same = [a for a in available if _normalise(a) == _normalise(wanted)]
    return same[0] if len(same) == 1 else None


@register("omniglot")
def read_omniglot(root: str | None, *, download: bool = False, split: str = "all", alphabet: str | None = None,
                  image_size: int | None = None) -> RawData:
    """Omniglot as uint8 [N, 105, 105, 1] (or image_size^2); one class per character."""
    check_choice("omniglot", "split", split, ("all",) + SUBSETS)
    check_image_size("omniglot", image_size, allow_none=True)
    if alphabet is not None and not isinstance(alphabet, str):
        raise DatasetError(f"dataset 'omniglot': option alphabet must be a folder name or null, got {alphabet!r}")
    root = expand_root(root)
    subsets = list(SUBSETS) if split == "all" else [split]
    located, searched = {}, []
    for subset in subsets:
        location, tried = _locate(root, subset)
        if location is None and download:
            target = root_for_download("omniglot", root)
            import torchvision

            torchvision.datasets.Omniglot(target, background=subset == "background", download=True)
            location, _ = _locate(root, subset)
        searched += tried
        if location is not None:
            located[subset] = location
    # A named alphabet lives in one subset: with split='all' finding it in either is enough.
    if not located or (alphabet is None and len(located) < len(subsets)):
        missing = [s for s in subsets if s not in located]
        raise not_found(
            "omniglot", searched,
            f"images_<subset>/<Alphabet>/characterNN/*.png extracted from images_<subset>.zip (or the zip itself), "
            f"for the subset(s) {', '.join(missing)}",
            "Get it with --download true (torchvision's Omniglot downloader, into <data_root>/omniglot-py) or put "
            "images_background.zip / images_evaluation.zip (extracted or not) in <data_root>/omniglot-py.",
        )
    indexes = {s: _load_index(location) for s, location in located.items()}
    chosen: list[tuple[str, str, str, list]] = []  # (subset, alphabet, character, sources)
    if alphabet is None:
        for subset, index in indexes.items():
            chosen += [(subset, a, c, files) for a, chars in index.items() for c, files in chars.items()]
    else:
        available = {a: s for s, index in indexes.items() for a in index}
        name = _match_alphabet(alphabet, list(available))
        if name is None:
            close = get_close_matches(alphabet, list(available), n=3, cutoff=0.5)
            raise DatasetError(
                f"dataset 'omniglot': no alphabet {alphabet!r} in {', '.join(located.values())}"
                f"{' (did you mean ' + ', '.join(close) + '?)' if close else ''}. Available: "
                f"{', '.join(sorted(available))}."
            )
        subset = available[name]
        chosen = [(subset, name, c, files) for c, files in indexes[subset][name].items()]
    chosen = [entry for entry in chosen if entry[3]]
    if not chosen:
        raise DatasetError(f"dataset 'omniglot': no PNG files found in {', '.join(located.values())}")
    archives = {s: zipfile.ZipFile(loc) for s, loc in located.items() if loc.endswith(".zip")}
    sources, labels = [], []
    try:
        for label, (subset, _, _, files) in enumerate(chosen):
            if subset in archives:
                files = [archives[subset].read(member) for member in files]
            sources.extend(files)
            labels.extend([label] * len(files))
    finally:
        for archive in archives.values():
            archive.close()
    data = decode_images(sources, mode="L", size=image_size, desc="decoding omniglot")
    what = f"alphabet {chosen[0][1]} ({chosen[0][0]})" if alphabet is not None else " + ".join(
        f"{s} ({sum(len(f) for sub, _, _, f in chosen if sub == s)})" for s in located)
    description = (f"omniglot: {what}{' merged' if alphabet is None and len(located) > 1 else ''}, "
                   f"{len(data)} images, {len(chosen)} characters, from {', '.join(located.values())}")
    log.info(description)
    return RawData(data, np.asarray(labels, dtype=np.int64), description, [f"{a}/{c}" for _, a, c, _ in chosen])
