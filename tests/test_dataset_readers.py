"""Dataset readers on tiny files written in the real on-disk formats (no download needed).

Each fixture writes the official layout (CIFAR pickles, IDX, STL-10 binaries, ImageNet WNID folders,
Tiny-ImageNet, Omniglot, image folders, npz, 20news, RCV1 token files) into tmp_path; the tests read it back
through the registry and compare with the arrays that were written.
"""
from __future__ import annotations

import gzip
import hashlib
import logging
import os
import pickle
import struct
import tarfile
import zipfile

import numpy as np
import pytest
from PIL import Image

import datasets.readers  # noqa: F401  (registers every reader)
from datasets import idx as idx_module
from datasets.cifar import CIFAR100_FINE_TO_COARSE, MD5, unpickle_batch
from datasets.imagenet_subsets import IMAGENET10, IMAGENET_DOGS
from datasets.registry import DatasetNotFoundError, read

RNG = np.random.default_rng(0)


def random_images(n: int, h: int, w: int, c: int) -> np.ndarray:
    return RNG.integers(0, 256, size=(n, h, w, c), dtype=np.uint8)


def save_image(path, array: np.ndarray, **kwargs) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(array.squeeze(-1) if array.ndim == 3 and array.shape[-1] == 1 else array).save(path, **kwargs)


# ------------------------------------------------------------------------------------------------ CIFAR

def cifar_rows(images: np.ndarray) -> np.ndarray:
    """HWC images -> the official N x 3072 rows (1024 R, 1024 G, 1024 B, each row-major)."""
    return images.transpose(0, 3, 1, 2).reshape(len(images), 3072)


def write_pickle(path, obj) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def make_cifar10(folder):
    """cifar-10-batches-py with 5 train batches of 2 images and a test batch of 3."""
    images = random_images(13, 32, 32, 3)
    labels = RNG.integers(0, 10, size=13)
    batches = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    bounds = [0, 2, 4, 6, 8, 10, 13]
    for name, lo, hi in zip(batches, bounds[:-1], bounds[1:]):
        write_pickle(os.path.join(folder, name), {"batch_label": name, "data": cifar_rows(images[lo:hi]),
                                                  "labels": [int(v) for v in labels[lo:hi]],
                                                  "filenames": [f"{i}.png" for i in range(lo, hi)]})
    write_pickle(os.path.join(folder, "batches.meta"),
                 {"label_names": [f"class{i}" for i in range(10)], "num_cases_per_batch": 2, "num_vis": 3072})
    return images, labels


def make_cifar100(folder, consistent: bool = True):
    images = random_images(9, 32, 32, 3)
    fine = RNG.integers(0, 100, size=9)
    coarse = CIFAR100_FINE_TO_COARSE[fine].copy()
    if not consistent:
        coarse[0] = (coarse[0] + 1) % 20
    for name, lo, hi in (("train", 0, 6), ("test", 6, 9)):
        write_pickle(os.path.join(folder, name), {"data": cifar_rows(images[lo:hi]),
                                                  "fine_labels": [int(v) for v in fine[lo:hi]],
                                                  "coarse_labels": [int(v) for v in coarse[lo:hi]]})
    write_pickle(os.path.join(folder, "meta"), {"fine_label_names": [f"f{i}" for i in range(100)],
                                                "coarse_label_names": [f"c{i}" for i in range(20)]})
    return images, fine, coarse


def test_cifar10_merges_train_and_test_in_order(tmp_path):
    images, labels = make_cifar10(tmp_path / "cifar-10-batches-py")
    data = read("cifar10", str(tmp_path), options={"verify_md5": False})
    assert data.data.dtype == np.uint8 and data.data.shape == (13, 32, 32, 3)
    np.testing.assert_array_equal(data.data, images)
    np.testing.assert_array_equal(data.labels, labels)
    assert data.class_names == [f"class{i}" for i in range(10)]
    assert "merged" in data.description and "13" in data.description
    train = read("cifar10", str(tmp_path), options={"verify_md5": False, "split": "train"})
    test = read("cifar10", str(tmp_path), options={"verify_md5": False, "split": "test"})
    np.testing.assert_array_equal(train.data, images[:10])
    np.testing.assert_array_equal(test.labels, labels[10:])


def test_cifar10_reads_the_archive_without_extracting(tmp_path):
    images, labels = make_cifar10(tmp_path / "build" / "cifar-10-batches-py")
    with tarfile.open(tmp_path / "cifar-10-python.tar.gz", "w:gz") as tar:
        tar.add(tmp_path / "build" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    root = tmp_path / "root"
    root.mkdir()
    os.replace(tmp_path / "cifar-10-python.tar.gz", root / "cifar-10-python.tar.gz")
    data = read("cifar10", str(root), options={"verify_md5": False})
    np.testing.assert_array_equal(data.data, images)
    np.testing.assert_array_equal(data.labels, labels)


def test_cifar_refuses_files_whose_md5_is_not_official(tmp_path):
    make_cifar10(tmp_path / "cifar-10-batches-py")
    with pytest.raises(ValueError, match="MD5.*verify_md5"):
        read("cifar10", str(tmp_path))


def test_unpickle_batch_accepts_a_matching_md5_and_blocks_code_execution(tmp_path):
    blob = pickle.dumps({"data": np.zeros((1, 3072), np.uint8), "labels": [3]}, protocol=2)
    batch = unpickle_batch(blob, "x", hashlib.md5(blob).hexdigest(), verify_md5=True)
    assert batch["labels"] == [3]

    class Evil:
        def __reduce__(self):
            return (os.mkdir, (str(tmp_path / "pwned"),))

    with pytest.raises(pickle.UnpicklingError, match="posix.mkdir|os.mkdir|nt.mkdir"):
        unpickle_batch(pickle.dumps({"data": Evil()}), "evil", None, verify_md5=False)
    assert not (tmp_path / "pwned").exists()
    assert len(MD5["cifar10"]) == 7 and len(MD5["cifar100"]) == 3


def test_cifar100_coarse_labels_by_default_and_fine_on_request(tmp_path):
    images, fine, coarse = make_cifar100(tmp_path / "cifar100" / "cifar-100-python")
    data = read("cifar100", str(tmp_path), options={"verify_md5": False})
    np.testing.assert_array_equal(data.data, images)
    np.testing.assert_array_equal(data.labels, coarse)
    assert data.class_names == [f"c{i}" for i in range(20)]
    fine_data = read("cifar100", str(tmp_path), options={"verify_md5": False, "labels": "fine"})
    np.testing.assert_array_equal(fine_data.labels, fine)
    assert fine_data.class_names == [f"f{i}" for i in range(100)]
    with pytest.raises(ValueError, match="labels='super'.*coarse"):
        read("cifar100", str(tmp_path), options={"verify_md5": False, "labels": "super"})


def test_cifar100_warns_when_coarse_labels_disagree_with_the_official_table(tmp_path, caplog):
    _, _, coarse = make_cifar100(tmp_path / "cifar-100-python", consistent=False)
    with caplog.at_level(logging.WARNING, logger="datasets"):
        data = read("cifar100", str(tmp_path), options={"verify_md5": False})
    np.testing.assert_array_equal(data.labels, coarse)  # the file's labels are used
    assert "disagree" in caplog.text and "1 images" in caplog.text


# -------------------------------------------------------------------------------------------------- IDX

def idx_bytes(array: np.ndarray) -> bytes:
    return bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def make_idx(folder, compress: bool, n_train: int = 5, n_test: int = 3):
    os.makedirs(folder, exist_ok=True)
    images = random_images(n_train + n_test, 28, 28, 1)[..., 0]
    labels = RNG.integers(0, 10, size=n_train + n_test).astype(np.uint8)
    files = {"train-images-idx3-ubyte": images[:n_train], "train-labels-idx1-ubyte": labels[:n_train],
             "t10k-images-idx3-ubyte": images[n_train:], "t10k-labels-idx1-ubyte": labels[n_train:]}
    for name, array in files.items():
        blob = idx_bytes(array)
        if compress:
            with gzip.open(os.path.join(folder, name + ".gz"), "wb") as f:
                f.write(blob)
        else:
            with open(os.path.join(folder, name), "wb") as f:
                f.write(blob)
    return images[..., None], labels.astype(np.int64)


@pytest.mark.parametrize("compress", [False, True])
def test_mnist_idx_plain_and_gzipped(tmp_path, compress):
    images, labels = make_idx(tmp_path / "MNIST" / "raw", compress)
    data = read("mnist", str(tmp_path))
    assert data.data.shape == (8, 28, 28, 1) and data.data.dtype == np.uint8
    np.testing.assert_array_equal(data.data, images)
    np.testing.assert_array_equal(data.labels, labels)
    assert "train (5) + test (3) merged = 8" in data.description
    test = read("mnist", str(tmp_path), options={"split": "test"})
    np.testing.assert_array_equal(test.data, images[5:])


def test_idx_parser_rejects_bad_headers_and_sizes():
    good = idx_bytes(np.zeros((2, 3), np.uint8))
    assert idx_module.parse_idx(good).shape == (2, 3)
    with pytest.raises(ValueError, match="not an IDX"):
        idx_module.parse_idx(b"\x01" + good[1:])
    with pytest.raises(ValueError, match="bytes follow"):
        idx_module.parse_idx(good[:-1])
    wide = bytes([0, 0, 0x0C, 1]) + struct.pack(">I", 2) + struct.pack(">2i", -5, 70000)
    np.testing.assert_array_equal(idx_module.parse_idx(wide), [-5, 70000])


def test_fashion_mnist_prefers_data_root_over_the_debian_copy(tmp_path):
    images, labels = make_idx(tmp_path / "fashion-mnist", compress=True)
    data = read("fashion_mnist", str(tmp_path))
    np.testing.assert_array_equal(data.data, images)
    assert str(tmp_path / "fashion-mnist") in data.description
    assert data.class_names[0] == "T-shirt/top" and data.class_names[9] == "Ankle boot"


@pytest.mark.skipif(not os.path.isdir(idx_module.DEBIAN_FASHION_MNIST), reason="dataset-fashion-mnist not installed")
def test_real_fashion_mnist_from_the_debian_package():
    data = read("fashion_mnist", None)
    assert data.data.shape == (70000, 28, 28, 1) and data.data.dtype == np.uint8
    np.testing.assert_array_equal(np.bincount(data.labels), [7000] * 10)
    assert data.num_classes == 10 and idx_module.DEBIAN_FASHION_MNIST in data.description


# ----------------------------------------------------------------------------------------------- STL-10

def stl_bytes(images: np.ndarray) -> bytes:
    """HWC images -> the STL-10 layout: per image, per channel, column-major."""
    return images.transpose(0, 3, 2, 1).tobytes()


def make_stl10(folder, with_unlabeled: bool):
    os.makedirs(folder, exist_ok=True)
    images = random_images(5, 96, 96, 3)
    images[0] = 0
    images[0, 10:20, 50:90, 0] = 255  # an asymmetric red bar: rows 10-19, columns 50-89
    labels = np.array([1, 10, 3, 4, 5], dtype=np.uint8)
    for part, lo, hi in (("train", 0, 3), ("test", 3, 5)):
        (folder / f"{part}_X.bin").write_bytes(stl_bytes(images[lo:hi]))
        (folder / f"{part}_y.bin").write_bytes(labels[lo:hi].tobytes())
    unlabeled = random_images(2, 96, 96, 3)
    if with_unlabeled:
        (folder / "unlabeled_X.bin").write_bytes(stl_bytes(unlabeled))
    return images, labels.astype(np.int64) - 1, unlabeled


def test_stl10_is_not_transposed_and_merges_train_and_test(tmp_path):
    images, labels, _ = make_stl10(tmp_path / "stl10_binary", with_unlabeled=False)
    data = read("stl10", str(tmp_path))
    assert data.data.shape == (5, 96, 96, 3)
    np.testing.assert_array_equal(data.data, images)
    assert data.data[0, 15, 70, 0] == 255 and data.data[0, 70, 15, 0] == 0  # bar is horizontal, as written
    np.testing.assert_array_equal(data.labels, labels)
    assert data.extra == {} and "train (3) + test (2) merged = 5" in data.description
    assert read("stl10", str(tmp_path), options={"split": "train"}).data.shape[0] == 3


def test_stl10_unlabeled_stream_is_memory_mapped_with_labels_minus_one(tmp_path):
    images, labels, unlabeled = make_stl10(tmp_path / "stl10" / "stl10_binary", with_unlabeled=True)
    data = read("stl10", str(tmp_path), options={"unlabeled": True})
    stream = data.extra["unlabeled"]
    assert stream.data.shape == (2, 96, 96, 3)
    np.testing.assert_array_equal(np.asarray(stream.data), unlabeled)
    np.testing.assert_array_equal(stream.labels, [-1, -1])
    np.testing.assert_array_equal(data.data, images)


def test_stl10_requires_the_unlabeled_file_only_when_asked(tmp_path):
    make_stl10(tmp_path / "stl10_binary", with_unlabeled=False)
    with pytest.raises(DatasetNotFoundError, match="unlabeled_X.bin"):
        read("stl10", str(tmp_path), options={"unlabeled": True})


# ------------------------------------------------------------------------------------- ImageNet subsets

def make_wnid_folders(base, wnids, per_class=2, size=(40, 30)):
    for w in wnids:
        for i in range(per_class):
            save_image(os.path.join(base, w, f"{w}_{i}.JPEG"), random_images(1, size[1], size[0], 3)[0],
                       format="JPEG")


def test_imagenet10_from_a_full_imagenet_train_folder(tmp_path, caplog):
    wnids = [w for w, _ in IMAGENET10]
    make_wnid_folders(tmp_path / "imagenet" / "train", wnids + ["n01440764"])  # plus a class not in the subset
    grey = tmp_path / "imagenet" / "train" / wnids[3] / "grey.JPEG"
    Image.fromarray(random_images(1, 20, 25, 1)[0, ..., 0]).save(grey, format="JPEG")
    cmyk = tmp_path / "imagenet" / "train" / wnids[4] / "cmyk.JPEG"
    Image.fromarray(random_images(1, 20, 25, 3)[0]).convert("CMYK").save(cmyk, format="JPEG")
    with caplog.at_level(logging.WARNING, logger="datasets"):
        data = read("imagenet10", str(tmp_path), options={"image_size": 16})
    assert data.data.shape == (22, 16, 16, 3) and data.data.dtype == np.uint8
    expected = [0, 0, 1, 1, 2, 2, 3, 3, 3, 4, 4, 4] + [k for k in range(5, 10) for _ in range(2)]
    np.testing.assert_array_equal(data.labels, expected)
    assert data.class_names[0] == "king penguin" and data.num_classes == 10
    assert "expected 1300 images per class" in caplog.text


def test_imagenet_dogs_subset_folder_and_missing_wnids(tmp_path):
    wnids = [w for w, _ in IMAGENET_DOGS]
    make_wnid_folders(tmp_path / "ImageNet-dogs" / "train", wnids[:-1], per_class=1)
    with pytest.raises(DatasetNotFoundError, match=f"lacks {wnids[-1]}"):
        read("imagenet_dogs", str(tmp_path), options={"image_size": 8})
    make_wnid_folders(tmp_path / "ImageNet-dogs" / "train", wnids[-1:], per_class=1)
    data = read("imagenet_dogs", str(tmp_path), options={"image_size": 8})
    np.testing.assert_array_equal(data.labels, np.arange(15))


def test_resize_modes_stretch_and_center_crop(tmp_path):
    wnids = [w for w, _ in IMAGENET10]
    image = np.zeros((20, 40, 3), np.uint8)
    image[:, 8:32] = 255  # white centre band, black left and right fifths
    for w in wnids:
        save_image(os.path.join(tmp_path, w, "a.png"), image)
    crop = read("imagenet10", str(tmp_path), options={"image_size": 10, "resize": "center_crop"})
    stretch = read("imagenet10", str(tmp_path), options={"image_size": 10})
    assert crop.data[0].min() >= 250  # only the white centre survives the centre crop
    assert stretch.data[0, :, 0].max() <= 5 and stretch.data[0, :, 5].min() >= 250


# -------------------------------------------------------------------------------------- Tiny-ImageNet

def make_tiny(base):
    wnids = ["n03", "n01", "n02"]  # wnids.txt is not sorted
    (base / "train").mkdir(parents=True)
    (base / "wnids.txt").write_text("\n".join(wnids) + "\n")
    (base / "words.txt").write_text("n01\tone\nn02\ttwo\nn03\tthree\nn99\tother\n")
    images = {}
    for k, w in enumerate(wnids):
        for i in range(2):
            images[(w, i)] = np.full((64, 64, 3), (40 * k + 100 * i, 200 - 50 * k, 30 + 60 * i), np.uint8)
            save_image(str(base / "train" / w / "images" / f"{w}_{i}.JPEG"), images[(w, i)], format="JPEG",
                       quality=100)
        (base / "train" / w / f"{w}_boxes.txt").write_text(f"{w}_0.JPEG\t0\t0\t10\t10\n")
    rows = [("val_0.JPEG", "n02"), ("val_1.JPEG", "n01"), ("val_2.JPEG", "n03")]
    for name, _ in rows:
        save_image(str(base / "val" / "images" / name), random_images(1, 64, 64, 3)[0], format="JPEG")
    (base / "val" / "val_annotations.txt").write_text("".join(f"{n}\t{w}\t0\t0\t5\t5\n" for n, w in rows))
    return images


def test_tiny_imagenet_train_and_val(tmp_path):
    images = make_tiny(tmp_path / "tiny-imagenet-200")
    data = read("tiny_imagenet", str(tmp_path))
    assert data.data.shape == (6, 64, 64, 3)
    np.testing.assert_array_equal(data.labels, [0, 0, 1, 1, 2, 2])
    assert data.class_names == ["one", "two", "three"]
    for slot, key in enumerate([("n01", 0), ("n01", 1), ("n02", 0), ("n02", 1), ("n03", 0), ("n03", 1)]):
        assert np.abs(data.data[slot].astype(int) - images[key].astype(int)).max() <= 3  # JPEG rounding only
    val = read("tiny_imagenet", str(tmp_path), options={"split": "val"})
    np.testing.assert_array_equal(val.labels, [1, 0, 2])
    small = read("tiny_imagenet", str(tmp_path), options={"image_size": 32})
    assert small.data.shape == (6, 32, 32, 3)


# --------------------------------------------------------------------------------------------- Omniglot

def make_omniglot(base, subset, alphabets, zipped=False):
    folder = base / f"images_{subset}"
    for alphabet, n_chars in alphabets.items():
        for c in range(1, n_chars + 1):
            for d in range(2):
                stroke = np.full((105, 105), 255, np.uint8)
                stroke[c * 5:c * 5 + 3, 10 + d:60] = 0
                path = folder / alphabet / f"character{c:02d}" / f"{c:02d}{d:02d}_{d + 1:02d}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(stroke).convert("1").save(path)
    if zipped:
        with zipfile.ZipFile(base / f"images_{subset}.zip", "w") as archive:
            for path in sorted(folder.rglob("*.png")):
                archive.write(path, arcname=str(path.relative_to(base)))
        for path in sorted(folder.rglob("*"), reverse=True):
            path.unlink() if path.is_file() else path.rmdir()
        folder.rmdir()


@pytest.mark.parametrize("zipped", [False, True])
def test_omniglot_subsets_and_alphabets(tmp_path, zipped):
    base = tmp_path / "omniglot-py"
    make_omniglot(base, "background", {"Latin": 2, "Greek": 3})
    make_omniglot(base, "evaluation", {"Angelic": 2, "Syriac_(Serto)": 3}, zipped=zipped)
    every = read("omniglot", str(tmp_path))
    assert every.data.shape == (20, 105, 105, 1) and set(np.unique(every.data)) == {0, 255}
    np.testing.assert_array_equal(every.labels, np.repeat(np.arange(10), 2))
    assert every.class_names[0] == "Greek/character01" and every.class_names[5] == "Angelic/character01"
    evaluation = read("omniglot", str(tmp_path), options={"split": "evaluation"})
    assert len(evaluation.data) == 10 and evaluation.num_classes == 5
    syriac = read("omniglot", str(tmp_path), options={"alphabet": "Syriac_Serto"})  # README spelling
    np.testing.assert_array_equal(syriac.labels, [0, 0, 1, 1, 2, 2])
    assert syriac.data[2, 10, 30, 0] == 0 and syriac.data[2, 20, 30, 0] == 255  # character02's stroke row
    with pytest.raises(ValueError, match="Available: Angelic, Greek, Latin, Syriac_\\(Serto\\)"):
        read("omniglot", str(tmp_path), options={"alphabet": "Klingon"})


def test_omniglot_alphabet_found_when_only_its_subset_exists(tmp_path):
    make_omniglot(tmp_path, "evaluation", {"Angelic": 2})
    assert read("omniglot", str(tmp_path), options={"alphabet": "Angelic"}).num_classes == 2
    with pytest.raises(DatasetNotFoundError, match="images_background"):
        read("omniglot", str(tmp_path))


# ---------------------------------------------------------------------------------- image_folder, npz

def test_image_folder_with_classes_levels_and_flat(tmp_path):
    pixels = {name: random_images(1, 6, 5, 3)[0] for name in ("cat_a", "cat_b", "dog_a", "val_dog")}
    save_image(str(tmp_path / "classes" / "dog" / "a.png"), pixels["dog_a"])
    save_image(str(tmp_path / "classes" / "cat" / "b.png"), pixels["cat_b"])
    save_image(str(tmp_path / "classes" / "cat" / "a.png"), pixels["cat_a"])
    data = read("image_folder", str(tmp_path / "classes"))
    np.testing.assert_array_equal(data.data, np.stack([pixels["cat_a"], pixels["cat_b"], pixels["dog_a"]]))
    np.testing.assert_array_equal(data.labels, [0, 0, 1])
    assert data.class_names == ["cat", "dog"]
    grey = read("image_folder", None, options={"path": str(tmp_path / "classes"), "channels": 1})
    assert grey.data.shape == (3, 6, 5, 1)

    save_image(str(tmp_path / "split" / "train" / "dog" / "a.png"), pixels["dog_a"])
    save_image(str(tmp_path / "split" / "val" / "dog" / "b.png"), pixels["val_dog"])
    save_image(str(tmp_path / "split" / "val" / "cat" / "c.png"), pixels["cat_a"])
    merged = read("image_folder", str(tmp_path), options={"path": "split"})
    np.testing.assert_array_equal(merged.labels, [1, 0, 1])  # train/dog, then val/cat, val/dog
    assert "train + val merged" in merged.description
    assert len(read("image_folder", str(tmp_path / "split"), options={"split": "val"}).data) == 2

    save_image(str(tmp_path / "flat" / "x.png"), pixels["cat_a"])
    save_image(str(tmp_path / "flat" / "y.png"), pixels["dog_a"])
    flat = read("image_folder", str(tmp_path / "flat"))
    np.testing.assert_array_equal(flat.labels, [-1, -1])
    assert flat.class_names is None and flat.num_classes == 0


def test_image_folder_errors(tmp_path):
    save_image(str(tmp_path / "mixed" / "cat" / "a.png"), random_images(1, 6, 6, 3)[0])
    save_image(str(tmp_path / "mixed" / "loose.png"), random_images(1, 6, 6, 3)[0])
    with pytest.raises(ValueError, match="mixes class folders"):
        read("image_folder", str(tmp_path / "mixed"))
    save_image(str(tmp_path / "sizes" / "a" / "1.png"), random_images(1, 6, 6, 3)[0])
    save_image(str(tmp_path / "sizes" / "a" / "2.png"), random_images(1, 7, 6, 3)[0])
    with pytest.raises(ValueError, match="image_size"):
        read("image_folder", str(tmp_path / "sizes"))
    assert read("image_folder", str(tmp_path / "sizes"), options={"image_size": 4}).data.shape == (2, 4, 4, 3)
    with pytest.raises(ValueError, match="split='train'"):
        read("image_folder", str(tmp_path / "sizes"), options={"split": "train"})


def test_npz_vectors_images_aliases_and_kingdra_pairs(tmp_path):
    x = RNG.normal(size=(6, 4))
    np.savez(tmp_path / "vec.npz", features=x, labels=np.array([3, 1, 1, 3, 7, -1]))
    vectors = read("npz", str(tmp_path / "vec.npz"))
    assert vectors.kind == "vector" and vectors.data.dtype == np.float32
    np.testing.assert_allclose(vectors.data, x.astype(np.float32))
    np.testing.assert_array_equal(vectors.labels, [1, 0, 0, 1, 2, -1])  # 1, 3, 7 renumbered
    images = random_images(3, 5, 5, 1)[..., 0]
    (tmp_path / "img").mkdir()
    np.savez(tmp_path / "img" / "only.npz", X=images)
    image_data = read("npz", str(tmp_path / "img"))
    assert image_data.data.shape == (3, 5, 5, 1) and list(image_data.labels) == [-1, -1, -1]
    (tmp_path / "kingdra").mkdir()
    np.save(tmp_path / "kingdra" / "train_X.npy", x)
    np.save(tmp_path / "kingdra" / "train_Y.npy", np.array([0.0, 1, 1, 0, 1, 0]))
    pair = read("npz", str(tmp_path), options={"path": "kingdra"})
    np.testing.assert_array_equal(pair.labels, [0, 1, 1, 0, 1, 0])


def test_npz_refuses_pickles_and_bad_arrays(tmp_path):
    np.save(tmp_path / "pickled.npy", np.array([{"data": 1}], dtype=object))
    with pytest.raises(ValueError, match="pickled Python objects"):
        read("npz", str(tmp_path / "pickled.npy"))
    np.savez(tmp_path / "float_images.npz", x=np.zeros((2, 4, 4, 3), np.float32))
    with pytest.raises(ValueError, match="uint8"):
        read("npz", str(tmp_path / "float_images.npz"))
    np.savez(tmp_path / "nokey.npz", a=np.zeros((2, 3)))
    with pytest.raises(ValueError, match="must be called one of x, X, data, features"):
        read("npz", str(tmp_path / "nokey.npz"))


# ------------------------------------------------------------------------------------------------- text

def make_20news(base):
    docs = {
        "train": {"alt.atheism": ["god god belief", "belief faith god"], "sci.space": ["orbit rocket launch"]},
        "test": {"alt.atheism": ["faith god"], "sci.space": ["rocket orbit orbit", "zzz qqq"]},
    }
    for part, groups in docs.items():
        for group, texts in groups.items():
            for i, text in enumerate(texts):
                path = base / f"20news-bydate-{part}" / group / f"{50 + i}"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(text.encode("latin-1"))


def test_20news_from_folders_and_archive(tmp_path):
    make_20news(tmp_path / "20news")
    data = read("20news", str(tmp_path), options={"max_features": 6})
    assert data.data.shape == (5, 6) and data.data.dtype == np.float32  # "zzz qqq" has no kept word
    np.testing.assert_array_equal(data.labels, [0, 0, 1, 0, 1])
    np.testing.assert_allclose(np.linalg.norm(data.data, axis=1), 1.0, rtol=1e-6)
    assert "1 with no kept word dropped" in data.description and "train + test merged" in data.description
    with tarfile.open(tmp_path / "20news-bydate.tar.gz", "w:gz") as tar:
        tar.add(tmp_path / "20news" / "20news-bydate-train", arcname="20news-bydate-train")
        tar.add(tmp_path / "20news" / "20news-bydate-test", arcname="20news-bydate-test")
    archive_root = tmp_path / "archive_only"
    archive_root.mkdir()
    os.replace(tmp_path / "20news-bydate.tar.gz", archive_root / "20news-bydate.tar.gz")
    from_archive = read("20news", str(archive_root), options={"max_features": 6})
    np.testing.assert_allclose(from_archive.data, data.data)
    test_only = read("20news", str(tmp_path), options={"max_features": 6, "split": "test"})
    np.testing.assert_array_equal(test_only.labels, [0, 1, 1])  # vocabulary fitted on the test documents


def make_reuters(folder):
    folder.mkdir(parents=True, exist_ok=True)
    qrels = []
    topics = {1: ["CCAT", "C15"], 2: ["GCAT"], 3: ["MCAT", "ECAT"], 4: ["ECAT"], 5: ["E11"], 6: ["MCAT"],
              7: ["GCAT", "G15"], 8: ["CCAT"]}
    for did, cats in topics.items():
        qrels += [f"{cat} {did} 1" for cat in cats]
    (folder / "rcv1-v2.topics.qrels").write_text("\n".join(qrels) + "\n")
    words = {1: "compani share profit", 2: "govern elect vote", 3: "market price", 4: "econom growth rate",
             5: "other text", 6: "market stock price", 7: "govern minist", 8: "compani profit loss"}
    files = {"lyrl2004_tokens_test_pt0.dat": [1, 2], "lyrl2004_tokens_test_pt1.dat": [3],
             "lyrl2004_tokens_test_pt2.dat": [4, 5], "lyrl2004_tokens_test_pt3.dat": [6],
             "lyrl2004_tokens_train.dat": [7, 8]}
    for name, dids in files.items():
        text = "".join(f".I {d}\n.W\n{words[d]}\n\n" for d in dids)
        with gzip.open(folder / (name + ".gz"), "wt") as f:  # gzipped, as downloaded
            f.write(text)
    return {1: 0, 2: 1, 4: 3, 6: 2, 7: 1, 8: 0}  # single-root-topic documents -> class


def test_reuters_dec_recipe_on_tiny_token_files(tmp_path):
    kept = make_reuters(tmp_path / "reuters")
    data = read("reuters", str(tmp_path), options={"num_docs": None, "max_features": 5})
    assert data.data.shape == (6, 5)
    expected = np.array(list(kept.values()))[np.random.RandomState(1234).permutation(6)]
    np.testing.assert_array_equal(data.labels, expected)  # file order, then DEC's seeded permutation
    norms = np.linalg.norm(data.data, axis=1)
    np.testing.assert_allclose(norms[norms > 0], np.sqrt(5), rtol=1e-5)
    first4 = read("reuters", str(tmp_path), options={"num_docs": 4, "max_features": 5})
    np.testing.assert_allclose(first4.data, data.data[:4])
    with pytest.raises(ValueError, match="only 6 documents"):
        read("reuters", str(tmp_path), options={"num_docs": 7})


def test_text_readers_prefer_kingdra_matrices(tmp_path):
    folder = tmp_path / "ens_cluster_datasets" / "20_news"
    folder.mkdir(parents=True)
    np.save(folder / "train_X.npy", np.eye(3))
    np.save(folder / "train_Y.npy", np.array([0, 1, 2]))
    data = read("20news", str(tmp_path))
    assert data.data.shape == (3, 3) and "Kingdra" in data.description
    with pytest.raises(DatasetNotFoundError, match="20news-bydate"):
        read("20news", str(tmp_path), options={"source": "corpus"})


# ------------------------------------------------------------------------- missing data, options, download

@pytest.mark.parametrize("name, hint", [
    ("mnist", "--download true"), ("fashion_mnist", "--download true"), ("cifar10", "--download true"),
    ("cifar100", "--download true"), ("stl10", "--download true"), ("imagenet10", "image-net.org"),
    ("imagenet_dogs", "image-net.org"), ("tiny_imagenet", "tiny-imagenet-200.zip"),
    ("omniglot", "--download true"), ("image_folder", "--data_root"), ("npz", "--data_root"),
    ("20news", "--download true"), ("reuters", "lyrl2004_rcv1v2_README"),
])
def test_missing_data_message_names_the_searched_path_and_the_remedy(tmp_path, monkeypatch, name, hint):
    monkeypatch.setattr(idx_module, "DEBIAN_FASHION_MNIST", str(tmp_path / "no-debian"))
    monkeypatch.setenv("SCIKIT_LEARN_DATA", str(tmp_path / "no-sklearn-home"))
    root = tmp_path / "empty"
    root.mkdir()
    with pytest.raises(DatasetNotFoundError) as error:
        read(name, str(root))
    message = str(error.value)
    assert str(root) in message and hint in message and "\n" not in message
    assert "Expected layout" in message


def test_unknown_options_and_bad_values_fail_with_the_valid_choices(tmp_path):
    with pytest.raises(ValueError, match="no option.*lables.*accepts: split, verify_md5"):
        read("cifar10", str(tmp_path), options={"lables": "fine"})
    with pytest.raises(ValueError, match="split='val'.*'all', 'train', 'test'"):
        read("mnist", str(tmp_path), options={"split": "val"})
    with pytest.raises(ValueError, match="image_size"):
        read("imagenet10", str(tmp_path), options={"image_size": None})
    with pytest.raises(ValueError, match="--data_root"):
        read("mnist", None, download=True)


def test_download_calls_torchvision_only_when_files_are_missing_then_parses_them(tmp_path, monkeypatch):
    import torchvision

    calls = []

    def fake_mnist(root, train, download):  # stands in for torchvision's downloader (no network in tests)
        calls.append((root, train, download))
        make_idx(os.path.join(root, "MNIST", "raw"), compress=False)

    def fake_cifar10(root, train, download):
        calls.append((root, train, download))
        make_cifar10(os.path.join(root, "cifar-10-batches-py"))

    monkeypatch.setattr(torchvision.datasets, "MNIST", fake_mnist)
    monkeypatch.setattr(torchvision.datasets, "CIFAR10", fake_cifar10)
    root = tmp_path / "new"
    assert read("mnist", str(root), download=True).data.shape == (8, 28, 28, 1)
    assert read("mnist", str(root), download=True).data.shape == (8, 28, 28, 1)  # found: no second download
    assert read("cifar10", str(root), download=True, options={"verify_md5": False}).data.shape == (13, 32, 32, 3)
    assert calls == [(str(root), True, True), (str(root), True, True)]
