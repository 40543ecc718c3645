"""Per-image pipelines: uint8 HWC arrays in, tensors of the model's channel count and size out."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms

from datasets.transforms import ArrayToPIL, eval_transform, simclr_train_transform

RNG = np.random.default_rng(0)


def image(h=40, w=50, c=3) -> np.ndarray:
    return RNG.integers(0, 256, size=(h, w, c), dtype=np.uint8)


@pytest.mark.parametrize("in_channels, channels", [(3, 3), (1, 3), (3, 1), (1, 1)])
def test_train_view_shape_range_and_channels(in_channels, channels):
    torch.manual_seed(0)
    t = simclr_train_transform(24, color_strength=1.0, blur=True, channels=channels)
    out = t(image(c=in_channels))
    assert out.shape == (channels, 24, 24) and out.dtype == torch.float32
    assert 0.0 <= out.min() and out.max() <= 1.0


def test_grey_input_expanded_to_rgb_has_equal_channels_without_colour_jitter():
    torch.manual_seed(0)
    t = simclr_train_transform(16, color_strength=0.0, blur=False, channels=3)
    out = t(image(c=1))
    assert torch.equal(out[0], out[1]) and torch.equal(out[1], out[2])


def test_uniform_image_stays_uniform_under_crop_flip_and_blur():
    torch.manual_seed(1)
    colour = np.array([200, 100, 50], np.uint8)
    flat = np.broadcast_to(colour, (30, 30, 3)).copy()
    t = simclr_train_transform(20, color_strength=0.0, blur=True, channels=3)
    grey = round(0.299 * 200 + 0.587 * 100 + 0.114 * 50)  # PIL's 'L' conversion, used by RandomGrayscale
    seen = set()
    for _ in range(30):
        out = (t(flat) * 255).round().to(torch.int64)
        values = {tuple(out[:, i, j].tolist()) for i in range(0, 20, 7) for j in range(0, 20, 7)}
        assert len(values) == 1
        seen |= values
    assert seen <= {(200, 100, 50), (grey, grey, grey)} and (200, 100, 50) in seen


def test_train_views_are_random_and_normalisation_applies():
    x = image()
    t = simclr_train_transform(24, color_strength=0.5, blur=False, channels=3)
    torch.manual_seed(0)
    a = t(x)
    b = t(x)
    assert not torch.equal(a, b)
    normed = simclr_train_transform(24, color_strength=0.5, blur=False, channels=3, mean=(0.5, 0.5, 0.5),
                                    std=(0.25, 0.25, 0.25))
    torch.manual_seed(0)
    torch.testing.assert_close(normed(x), (a - 0.5) / 0.25)


def test_eval_view_is_deterministic_and_equals_a_bilinear_resize():
    x = image(37, 23)
    t = eval_transform(16, channels=3)
    first, second = t(x), t(x)
    assert torch.equal(first, second) and first.shape == (3, 16, 16)
    expected = np.asarray(Image.fromarray(x).resize((16, 16), Image.BILINEAR), dtype=np.float32) / 255.0
    torch.testing.assert_close(first, torch.from_numpy(expected).permute(2, 0, 1))
    grey = eval_transform(16, channels=1, mean=0.1307, std=0.3081)(x[..., :1])
    assert grey.shape == (1, 16, 16)


def test_bad_inputs_fail_clearly():
    with pytest.raises(ValueError, match="uint8"):
        ArrayToPIL(3)(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(ValueError, match="shape"):
        ArrayToPIL(3)(np.zeros((4, 4, 4), np.uint8))
    with pytest.raises(ValueError, match="channels"):
        ArrayToPIL(2)
    with pytest.raises(ValueError, match="both mean and std"):
        eval_transform(8, channels=3, mean=(0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="3 value"):
        eval_transform(8, channels=3, mean=(0.5,), std=(0.2,))
    with pytest.raises(ValueError, match="crop_scale"):
        simclr_train_transform(8, color_strength=0.5, blur=False, crop_scale=(0.5, 0.1))


def test_pipeline_matches_cc_spec_order():
    t = simclr_train_transform(224, color_strength=0.5, blur=True, channels=3)
    kinds = [type(step).__name__ for step in t.transforms]
    assert kinds == ["ArrayToPIL", "RandomResizedCrop", "RandomHorizontalFlip", "RandomApply", "RandomGrayscale",
                     "RandomApply", "ToTensor"]
    crop, jitter, blur = t.transforms[1], t.transforms[3], t.transforms[5]
    assert crop.scale == (0.08, 1.0) and crop.interpolation == transforms.InterpolationMode.BILINEAR
    assert jitter.p == 0.8 and jitter.transforms[0].brightness == (0.6, 1.4)
    assert jitter.transforms[0].hue == (-0.1, 0.1) and t.transforms[4].p == 0.2
    assert blur.p == 0.5 and blur.transforms[0].kernel_size == (23, 23) and blur.transforms[0].sigma == (0.1, 2.0)
