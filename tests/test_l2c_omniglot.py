"""The Omniglot transfer protocol end to end on a tiny generated Omniglot folder: spn_omniglot (class-balanced batches,
crop augmentation, inverted strokes), then scripts/l2c_omniglot.py over two evaluation alphabets and the average."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import main as entry

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import l2c_omniglot  # noqa: E402

SIDE = 24


def write_alphabets(folder: Path, alphabets: dict[str, int], images: int, rng) -> None:
    """<folder>/<Alphabet>/characterNN/*.png: black strokes (a random template per character) on white."""
    for alphabet, characters in alphabets.items():
        for c in range(characters):
            template = rng.random((SIDE, SIDE)) > 0.7
            target = folder / alphabet / f"character{c + 1:02d}"
            target.mkdir(parents=True)
            for i in range(images):
                strokes = template ^ (rng.random((SIDE, SIDE)) > 0.95)
                Image.fromarray(np.where(strokes, 0, 255).astype(np.uint8)).save(target / f"{c:02d}_{i:02d}.png")


@pytest.fixture(scope="module")
def omniglot_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("omniglot") / "omniglot-py"
    rng = np.random.default_rng(0)
    write_alphabets(root / "images_background", {"Alpha": 4, "Beta": 4}, 5, rng)
    write_alphabets(root / "images_evaluation", {"Angelic": 3, "Syriac_(Serto)": 2}, 5, rng)
    return root.parent


def test_similarity_network_then_every_alphabet_averaged(omniglot_root, tmp_path):
    out = tmp_path / "runs"
    small = ["--epochs", "1", "--output_dir", str(out), "--eval_every", "1", "--log_every", "1"]
    entry.main(["--preset", "spn_omniglot", "--data_root", str(omniglot_root), "--run_name", "reference",
                "--dataset_options", json.dumps({"split": "background", "image_size": 16}),
                "--batch_size", "10", "--image_size", "16", "--l2c.classes_per_batch", "2", "--l2c.spn_hidden", "32",
                *small])
    spn_dir = out / "spn_omniglot" / "reference"
    log = (spn_dir / "log.txt").read_text()
    assert "class-balanced batches, 2 classes x 5 images, 4 batches per epoch" in log
    assert "augmentation crop {'crop_scale': [0.85, 1.0]} (set by method spn)" in log and "SUPERVISED stage" in log

    summary = l2c_omniglot.main(["--data_root", str(omniglot_root), "--method", "kcl", "--k", "C",
                                 "--alphabets", "Angelic", "Syriac_(Serto)", "--image_size", "16",
                                 "--spn_checkpoint", str(spn_dir / "checkpoints" / "last.pt"),
                                 "--", *small, "--batch_size", "5", "--l2c.head_hidden", "16",
                                 "--eval_kmeans", "false"])
    runs = summary["runs"]
    assert [r["alphabet"] for r in runs] == ["Angelic", "Syriac_(Serto)"]
    assert [r["k"] for r in runs] == [20, 23]                         # K = the alphabet's real character count
    assert all(1 <= r["clusters_used"] <= r["k"] for r in runs)
    mean_acc = (runs[0]["acc"] + runs[1]["acc"]) / 2
    assert summary["average"]["acc"] == pytest.approx(mean_acc)
    run_dir = out / "kcl_omniglot" / "Angelic-k20-seed0"
    preds = np.load(run_dir / "predictions.npz")
    assert len(preds["labels"]) == 15 and set(preds["labels"].tolist()) == {0, 1, 2}   # one alphabet, re-indexed
    assert "labels of omniglot are not read" in (run_dir / "log.txt").read_text()
    assert (out / "kcl_omniglot" / "summary-kC.json").is_file()
