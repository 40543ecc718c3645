"""Per-image torchvision pipelines for the loader path: uint8 HWC numpy array in, float tensor [C, S, S] out.

`simclr_train_transform` is the SimCLR-style view used by CC / ProPos / HaDis / DigPro (docs/methods/cc.md);
`eval_transform` is the one deterministic evaluation view. Both start with `ArrayToPIL`, which turns the
reader's array into a PIL image with the number of channels the model expects (`channels`): a grey image
is expanded to RGB only for a 3-channel model, and an RGB image converted to grey (ITU-R 601-2 luma, PIL's
'L') for a 1-channel model.

Mean/std normalisation is optional because it belongs to the method preset (docs/datasets.md: CC, DivClust-CC
and IIC use none; ProPos/HaDis/DigPro/PICA their own constants).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image
from torchvision import transforms

_MODES = {1: "L", 3: "RGB"}


class ArrayToPIL:
    """uint8 [H, W], [H, W, 1] or [H, W, 3] array (or a PIL image) -> PIL image in mode 'L' or 'RGB'."""

    def __init__(self, channels: int):
        if channels not in _MODES:
            raise ValueError(f"channels must be 1 or 3, got {channels!r}")
        self.mode = _MODES[channels]

    def __call__(self, image: np.ndarray | Image.Image) -> Image.Image:
        if not isinstance(image, Image.Image):
            array = np.asarray(image)
            if array.dtype != np.uint8:
                raise ValueError(f"expected a uint8 image array, got dtype {array.dtype}")
            if array.ndim == 3 and array.shape[-1] == 1:
                array = array[..., 0]
            if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] != 3):
                raise ValueError(f"expected an image array H x W, H x W x 1 or H x W x 3, got shape {array.shape}")
            image = Image.fromarray(np.ascontiguousarray(array))  # 2-D -> "L", H x W x 3 -> "RGB"
        return image if image.mode == self.mode else image.convert(self.mode)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(mode={self.mode!r})"


def _normalize(mean: Sequence[float] | float | None, std: Sequence[float] | float | None,
               channels: int) -> list:
    if mean is None and std is None:
        return []
    if mean is None or std is None:
        raise ValueError("give both mean and std, or neither")
    mean = [float(mean)] * channels if isinstance(mean, (int, float)) else [float(m) for m in mean]
    std = [float(std)] * channels if isinstance(std, (int, float)) else [float(s) for s in std]
    if len(mean) != channels or len(std) != channels:
        raise ValueError(f"mean and std need {channels} value(s) for {channels}-channel input, got {mean}, {std}")
    if any(s == 0 for s in std):
        raise ValueError(f"std must not be 0, got {std}")
    return [transforms.Normalize(mean, std)]


def simclr_train_transform(
    image_size: int,
    *,
    color_strength: float,
    blur: bool,
    channels: int = 3,
    crop_scale: tuple[float, float] = (0.08, 1.0),
    mean: Sequence[float] | float | None = None,
    std: Sequence[float] | float | None = None,
    blur_kernel: int = 23,
) -> transforms.Compose:
    """One random SimCLR-style view (docs/methods/cc.md); apply it twice, independently, for two views.

    RandomResizedCrop(image_size, scale=crop_scale, ratio (3/4, 4/3), bilinear) -> RandomHorizontalFlip(0.5)
    -> with p 0.8 ColorJitter(0.8s, 0.8s, 0.8s, 0.2s), s = `color_strength` (CC: 0.5 for CIFAR-10/100 and
    Tiny-ImageNet, 1.0 for STL-10 and the ImageNet subsets) -> RandomGrayscale(0.2) -> [blur] -> ToTensor
    (range [0, 1]) -> optional Normalize(mean, std).

    Blur (CC: ImageNet-10 / ImageNet-Dogs only): with p 0.5 a Gaussian blur, kernel `blur_kernel` = 23,
    sigma ~ U(0.1, 2.0). Difference from the official code: CC calls OpenCV's `cv2.GaussianBlur` on the uint8
    HWC array with numpy's RNG; here torchvision's `GaussianBlur` runs on the PIL image (float convolution
    with the same sampled-and-normalised Gaussian kernel and the same reflect-101 border, then rounding back
    to uint8) with torch's RNG. Pixels can differ from OpenCV's fixed-point result by about one grey level;
    the distribution of views is the same.

    On a 1-channel model (`channels=1`) saturation and hue jitter and RandomGrayscale leave the image
    unchanged, as they do for a grey image in torchvision.
    """
    if not (isinstance(image_size, int) and image_size > 0):
        raise ValueError(f"image_size must be a positive int, got {image_size!r}")
    if color_strength < 0:
        raise ValueError(f"color_strength must be >= 0, got {color_strength}")
    if len(crop_scale) != 2 or not 0 < crop_scale[0] <= crop_scale[1] <= 1:
        raise ValueError(f"crop_scale must be (low, high) with 0 < low <= high <= 1, got {crop_scale}")
    s = float(color_strength)
    steps = [
        ArrayToPIL(channels),
        transforms.RandomResizedCrop(image_size, scale=tuple(crop_scale)),
        transforms.RandomHorizontalFlip(p=0.5),
        transforms.RandomApply([transforms.ColorJitter(0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s)], p=0.8),
        transforms.RandomGrayscale(p=0.2),
    ]
    if blur:
        if blur_kernel % 2 == 0 or blur_kernel <= 0:
            raise ValueError(f"blur_kernel must be a positive odd int, got {blur_kernel}")
        steps.append(transforms.RandomApply([transforms.GaussianBlur(blur_kernel, sigma=(0.1, 2.0))], p=0.5))
    steps.append(transforms.ToTensor())
    steps += _normalize(mean, std, channels)
    return transforms.Compose(steps)


def crop_train_transform(image_size: int, *, crop_scale: tuple[float, float], channels: int = 1,
                         mean: Sequence[float] | float | None = None, std: Sequence[float] | float | None = None
                         ) -> transforms.Compose:
    """RandomResizedCrop(image_size, scale=crop_scale) of the stored image (PIL, antialiased) -> ToTensor ->
    optional Normalize: L2C's Omniglot training pipeline, from the 105-px originals."""
    if len(crop_scale) != 2 or not 0 < crop_scale[0] <= crop_scale[1] <= 1:
        raise ValueError(f"crop_scale must be (low, high) with 0 < low <= high <= 1, got {crop_scale}")
    steps = [ArrayToPIL(channels), transforms.RandomResizedCrop(image_size, scale=tuple(crop_scale)),
             transforms.ToTensor()]
    return transforms.Compose(steps + _normalize(mean, std, channels))


def eval_transform(
    image_size: int,
    *,
    channels: int = 3,
    mean: Sequence[float] | float | None = None,
    std: Sequence[float] | float | None = None,
) -> transforms.Compose:
    """The deterministic evaluation view: Resize((image_size, image_size)) (bilinear, aspect ratio not kept,
    as CC's and ProPos's test transforms) -> ToTensor -> optional Normalize(mean, std)."""
    if not (isinstance(image_size, int) and image_size > 0):
        raise ValueError(f"image_size must be a positive int, got {image_size!r}")
    steps = [ArrayToPIL(channels), transforms.Resize((image_size, image_size)), transforms.ToTensor()]
    steps += _normalize(mean, std, channels)
    return transforms.Compose(steps)


__all__ = ["ArrayToPIL", "crop_train_transform", "simclr_train_transform", "eval_transform"]
