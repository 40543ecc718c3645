"""scripts/extract_features.py: features from a local torchvision weights file, never a download."""
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

import extract_features as ef  # noqa: E402


pytestmark = pytest.mark.usefixtures("one_thread")  # small convolutions: one thread beats two on a shared machine


def save_random_weights(tmp_path, name):
    import torchvision

    torch.manual_seed(0)
    path = tmp_path / f"{name}.pth"
    torch.save(torchvision.models.get_model(name, weights=None).state_dict(), path)
    return path


def test_writes_classifier_inputs_of_every_image(tmp_path):
    import torchvision
    from sklearn.datasets import load_digits

    weights = save_random_weights(tmp_path, "mobilenet_v3_small")
    out = ef.main(["--dataset", "digits", "--backbone", "mobilenet_v3_small", "--weights", str(weights),
                   "--out", str(tmp_path / "f" / "digits.npz"), "--image_size", "32", "--batch_size", "512",
                   "--device", "cpu"])
    saved = np.load(out)
    digits = load_digits()
    assert saved["x"].shape == (1797, 576) and saved["x"].dtype == np.float32
    assert np.array_equal(saved["y"], digits.target)
    # independent recomputation of three images: same weights, classifier removed, the documented preprocessing
    model = torchvision.models.mobilenet_v3_small(weights=None)
    model.load_state_dict(torch.load(weights, weights_only=True))
    model.classifier = torch.nn.Identity()
    model.eval()
    images = torch.from_numpy(np.rint(digits.images[:3] * 255 / 16).astype(np.uint8)).float()[:, None] / 255
    x = F.interpolate(images.expand(-1, 3, -1, -1), size=(32, 32), mode="bilinear", align_corners=False,
                      antialias=True)
    x = (x - torch.tensor(ef.IMAGENET_MEAN)[:, None, None]) / torch.tensor(ef.IMAGENET_STD)[:, None, None]
    with torch.no_grad():
        expected = model(x).numpy()
    assert np.allclose(saved["x"][:3], expected, atol=1e-4)


def test_resnet_features_are_the_pooled_layer(tmp_path):
    model = ef.build_backbone("resnet18", save_random_weights(tmp_path, "resnet18"))
    with torch.no_grad():
        assert model(torch.rand(2, 3, 32, 32)).shape == (2, 512)


def test_missing_or_wrong_weights_fail_clearly(tmp_path):
    with pytest.raises(ef.WeightsError, match=r"never downloads.*resnet50"):
        ef.build_backbone("resnet50", tmp_path / "nothing.pth")
    with pytest.raises(ef.WeightsError, match="does not fit"):
        ef.build_backbone("resnet34", save_random_weights(tmp_path, "resnet18"))
    with pytest.raises(ValueError, match="unknown torchvision backbone"):
        ef.build_backbone("resnet_xyz", tmp_path / "nothing.pth")
