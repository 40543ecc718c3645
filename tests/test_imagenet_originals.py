"""ImageNet subsets train from the original files (PIL's antialiased random-resized crop, as the official
ImageFolder loaders), evaluation from the antialiased stored copy; measured against the old path (views resampled
from a stretched 224-px copy by a non-antialiased grid_sample) on generated fine-texture JPEGs."""
import numpy as np
import pytest
import torch
from PIL import Image

import datasets
import models
from datasets.imagenet_subsets import IMAGENET10
from engine.config import ConfigError
from engine.run import load_config

PER_CLASS = 2


def make_imagenet10(root) -> str:
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:300, 0:400]
    for label, (wnid, _) in enumerate(IMAGENET10):
        folder = root / "imagenet10" / wnid
        folder.mkdir(parents=True)
        for i in range(PER_CLASS):
            # fine stripes (period 2.5 px) over a class colour: detail that an antialiased downscale averages out
            stripes = 0.5 + 0.5 * np.sin(2 * np.pi * (x + rng.uniform(0, 3)) / 2.5 + 0.3 * y)
            colour = np.array([label * 25, 120, 250 - label * 20], dtype=float)
            image = np.clip(colour * 0.5 + 110 * stripes[..., None], 0, 255).astype(np.uint8)
            Image.fromarray(image).save(folder / f"{wnid}_{i}.JPEG", quality=95)
    return str(root)


def bundle(root, *extra):
    cfg = load_config(["--preset", "digpro_imagenet10", "--data_root", root, "--image_size", "32",
                       "--num_workers", "0", *extra])
    request = models.method_class(cfg.method).data_request(cfg)
    return datasets.build(cfg, request, device="cpu")


def high_frequency(views: torch.Tensor) -> float:
    """Mean absolute difference of horizontally neighbouring pixels (B, C, H, W)."""
    return float((views[..., 1:] - views[..., :-1]).abs().mean())


def views_of(data, n: int = 60) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    items = [data.train[i % len(data.train)] for i in range(n)]
    batch = {"views": [torch.stack([it["views"][v] for it in items]) for v in range(len(items[0]["views"]))],
             "index": torch.tensor([it["index"] for it in items])}
    return torch.cat(data.train_views(batch, torch.device("cpu"), generator))


def test_training_views_come_from_the_originals_and_keep_their_statistics(tmp_path):
    root = make_imagenet10(tmp_path)
    torch.manual_seed(0)
    originals = bundle(root, "--dataset_options", "{image_size: 32, originals: true}")
    assert originals.augment_on == "loader" and "original files" in originals.description
    assert originals.train.raw.files is not None and originals.train.raw.data.shape[1:] == (32, 32, 3)
    torch.manual_seed(0)
    copy = bundle(root, "--dataset_options", "{image_size: 224}", "--augment_on", "device")
    a, b = views_of(originals), views_of(copy)
    assert a.shape == b.shape == (120, 3, 32, 32)
    # measured (normalised images): high-frequency energy 0.015 from the originals (PIL antialiased) vs 0.066 from
    # the 224-px copy resampled without antialiasing (aliased stripes); the mean level agrees (0.061 vs 0.065)
    assert high_frequency(b) > 3 * high_frequency(a)
    assert abs(float(a.mean()) - float(b.mean())) < 0.03
    # evaluation is the stored copy at the input size, resized with PIL's antialiasing in both setups
    assert high_frequency(originals.eval_view(next(iter(torch.utils.data.DataLoader(originals.eval, 20))),
                                              torch.device("cpu"))) < 0.04   # measured 0.022


def test_originals_need_the_per_image_pipeline(tmp_path):
    root = make_imagenet10(tmp_path)
    with pytest.raises(ConfigError, match="augment_on loader"):
        bundle(root, "--dataset_options", "{image_size: 32, originals: true}", "--augment_on", "device")
