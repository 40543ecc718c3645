"""Batched training augmentations on the training device, each sample with its own random parameters.

Random parameters are drawn for the *global* batch (all DDP ranks) from one seeded CPU generator, and each rank
takes the rows of its own samples, so a run on W processes sees exactly the augmentations of a one-process run
with the same global batch. The parameters of a view travel to the device as one packed (pinned, non-blocking)
copy, and the colour constants are cached per device, so a step makes no blocking host->device copy (each one
would synchronise the CUDA stream).

RandomResizedCrop follows torchvision's sampling: up to 10 trials of (area, log-aspect), the first box that fits
the image is taken, else the centre crop of the whole image with the aspect ratio clamped to the range; boxes and
offsets fall on the stored images' pixel grid as torchvision's do (at 32 px the grid spreads the crop centres
about 4% wider than continuous offsets would). The colour jitter draws torchvision's factors and the hue shift goes
through HSV as torchvision's. Differences from the torchvision per-image pipeline (datasets/transforms.py), with
the same parameter distributions and image statistics (tested in tests/test_fast_training.py and
tests/test_augmentation_paths.py):
- colour jitter applies the four factors in a random order per image, as torchvision (`jitter_order: fixed`
  keeps brightness, contrast, saturation, hue);
- crop, flip and a bilinear rotation are one bilinear `grid_sample` (one resampling instead of PIL's crop and
  resize), without PIL's rounding of every intermediate image to 8 bits; IIC's rotation is nearest-neighbour on
  the whole image first, then the crop (`rotation_interpolation: nearest`), as its torchvision pipeline.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class AugmentSpec:
    """Parameters of one pipeline; probabilities are per sample."""

    image_size: int
    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    rotation_deg: float = 0.0          # uniform in +-rotation_deg
    jitter_p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1
    grayscale_p: float = 0.2
    blur_p: float = 0.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    noise_std: float = 0.0             # additive Gaussian pixel noise (small grey images)
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    # Fixed-size crops (torchvision RandomCrop, then Resize to image_size) instead of RandomResizedCrop: the crop
    # side as a fraction of the image side, one of these chosen uniformly per sample; () keeps RandomResizedCrop.
    crop_sides: tuple[float, ...] = ()
    crop_center_p: float = 0.0         # probability that a fixed-size crop is centred (IIC's RandomChoice[Random, Center])
    rotation_p: float = 1.0            # probability that the rotation is applied (RandomApply)
    # The order of the four jitter factors: "random" (a permutation per image, as torchvision's ColorJitter) or
    # "fixed" (brightness, contrast, saturation, hue).
    jitter_order: str = "random"
    # "bilinear": the rotation is part of the one crop resampling; "nearest": the whole image is rotated first
    # with nearest-neighbour sampling (torchvision's RandomRotation), then cropped and resized.
    rotation_interpolation: str = "bilinear"


def simclr_spec(image_size: int, *, color_strength: float, blur: bool, crop_scale=(0.08, 1.0),
                mean=(), std=()) -> AugmentSpec:
    """SimCLR/CC pipeline (docs/methods/cc.md): crop, flip, jitter(0.8s, 0.8s, 0.8s, 0.2s) p 0.8, grayscale p 0.2, blur."""
    s = color_strength
    return AugmentSpec(image_size, tuple(crop_scale), flip_p=0.5, jitter_p=0.8, brightness=0.8 * s,
                       contrast=0.8 * s, saturation=0.8 * s, hue=0.2 * s, grayscale_p=0.2,
                       blur_p=0.5 if blur else 0.0, mean=tuple(mean), std=tuple(std))


def digits_spec(image_size: int, *, crop_scale=(0.5, 1.0), mean=(), std=()) -> AugmentSpec:
    """Small grey digits: no flips (a mirrored 2 is not a 2), small rotations, crops that keep most of the
    stroke, brightness/contrast jitter (brightness first: the framework's own pipeline, not a paper's, kept as
    its benchmarks were measured) and light pixel noise."""
    return AugmentSpec(image_size, tuple(crop_scale), crop_ratio=(0.8, 1.25), flip_p=0.0, rotation_deg=15.0,
                       jitter_p=0.8, brightness=0.4, contrast=0.4, saturation=0.0, hue=0.0, grayscale_p=0.0,
                       noise_std=0.05, mean=tuple(mean), std=tuple(std), jitter_order="fixed")


def pica_specs(image_size: int, *, resize: int, crop_scale=(0.2, 1.0), flip: bool = True, mean=(), std=()
               ) -> tuple[AugmentSpec, AugmentSpec]:
    """PICA's two pipelines (docs/methods/pica.md): the clean view `Resize(resize) -> RandomCrop(image_size)`, i.e. a fixed
    crop of image_size/resize of the side, and the perturbed view `RandomResizedCrop(image_size, crop_scale)` ->
    `ColorJitter(0.4, 0.4, 0.4, 0.4)` (always applied) -> `RandomGrayscale(0.2)` -> `RandomHorizontalFlip(0.5)`.
    `flip=False` drops the flip (digits: a mirrored 2 is not a 2). Returns (clean, perturbed)."""
    if resize < image_size:
        raise ValueError(f"pica.resize ({resize}) must be at least image_size ({image_size})")
    clean = AugmentSpec(image_size, crop_sides=(image_size / resize,), flip_p=0.0, jitter_p=0.0, grayscale_p=0.0,
                        mean=tuple(mean), std=tuple(std))
    perturbed = AugmentSpec(image_size, tuple(crop_scale), flip_p=0.5 if flip else 0.0, jitter_p=1.0,
                            brightness=0.4, contrast=0.4, saturation=0.4, hue=0.4, grayscale_p=0.2,
                            mean=tuple(mean), std=tuple(std))
    return clean, perturbed


def iic_specs(image_size: int, *, crop: float, tf2_crops=(), tf1_center_p: float = 0.0, rotation: float = 0.0,
              flip: bool = True) -> tuple[AugmentSpec, AugmentSpec]:
    """IIC's tf1 and tf2 (docs/methods/iic.md; fractions of the stored image side). tf1: `RandomCrop(crop)` (centred instead
    with probability tf1_center_p: MNIST's RandomChoice[RandomCrop, CenterCrop] is 0.5) -> `Resize(image_size)`.
    tf2: `RandomApply([RandomRotation(rotation)], p=0.5)` when rotation > 0 -> `RandomCrop` of a side chosen from
    tf2_crops (default: crop) -> `Resize` -> `RandomHorizontalFlip` when flip -> `ColorJitter(0.4, 0.4, 0.4, 0.125)`
    (always applied). No normalisation: IIC feeds [0, 1] images; the grey conversion and the Sobel filter are layers
    of the network (models/backbones.py::SobelFilter). Returns (tf1, tf2)."""
    tf1 = AugmentSpec(image_size, crop_sides=(crop,), crop_center_p=tf1_center_p, flip_p=0.0, jitter_p=0.0,
                      grayscale_p=0.0)
    tf2 = AugmentSpec(image_size, crop_sides=tuple(tf2_crops) or (crop,), flip_p=0.5 if flip else 0.0,
                      rotation_deg=rotation, rotation_p=0.5, jitter_p=1.0, brightness=0.4, contrast=0.4,
                      saturation=0.4, hue=0.125, grayscale_p=0.0, rotation_interpolation="nearest")
    return tf1, tf2


def crop_spec(image_size: int, crop_scale, mean=(), std=()) -> AugmentSpec:
    """RandomResizedCrop(image_size, scale=crop_scale, ratio=(3/4, 4/3)) and nothing else (L2C's Omniglot pipeline)."""
    return AugmentSpec(image_size, tuple(float(s) for s in crop_scale), flip_p=0.0, rotation_deg=0.0, jitter_p=0.0,
                       brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0, grayscale_p=0.0, blur_p=0.0,
                       noise_std=0.0, mean=tuple(mean), std=tuple(std))


# torchvision's RandomResizedCrop tries this many (area, aspect) draws before it falls back to the centre crop.
CROP_ATTEMPTS = 10


def _uniform(gen: torch.Generator, n: int | tuple, low: float, high: float) -> Tensor:
    size = (n,) if isinstance(n, int) else n
    return torch.rand(size, generator=gen, dtype=torch.float64).mul_(high - low).add_(low).float()


def _resized_crop_box(area: Tensor, log_ratio: Tensor, ratio_range: tuple[float, float],
                      size: tuple[int, int] | None) -> tuple[Tensor, Tensor, Tensor]:
    """torchvision's RandomResizedCrop box from (n, CROP_ATTEMPTS) draws of (area fraction, log aspect ratio): the
    first trial whose box fits the image, else the fallback (the whole image, its aspect ratio clamped to the
    range, centred). With the source `size` (H, W) the box is rounded to whole pixels as torchvision rounds it;
    with None it is continuous on a square image. Returns (w, h, fallback): box width and height as fractions of
    the image width and height, and which samples fell back."""
    ratio = log_ratio.exp()
    height, width = size if size is not None else (1, 1)
    w = (area * height * width * ratio).sqrt()           # box width in pixels (in image widths when size is None)
    h = (area * height * width / ratio).sqrt()
    if size is not None:
        w, h = w.round(), h.round()
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.to(torch.uint8).argmax(dim=1, keepdim=True)   # argmax returns the first maximal index
    fallback = ~fits.any(dim=1)
    low, high = ratio_range
    aspect = width / height
    if aspect < low:                                     # torchvision: full width, height from the smallest ratio
        fw, fh = width, width / low
    elif aspect > high:                                  # full height, width from the largest ratio
        fw, fh = height * high, height
    else:
        fw, fh = width, height
    if size is not None:
        fw, fh = float(round(fw)), float(round(fh))
    w = torch.where(fallback, fw, w.gather(1, first).squeeze(1)) / width
    h = torch.where(fallback, fh, h.gather(1, first).squeeze(1)) / height
    return w, h, fallback


def _centre(u: Tensor, extent: Tensor, pixels: int | None) -> Tensor:
    """Crop centre in [-1, 1] coordinates from uniform draws u in [0, 1) for a box of `extent` (fraction of the
    side): continuous, or on torchvision's pixel grid when the side has `pixels` pixels (offset
    randint(0, pixels - box + 1), which spreads the centres a little wider than the continuous uniform)."""
    if pixels is None:
        return (u * 2 - 1) * (1 - extent)
    box = (extent * pixels).round()
    offset = (u * (pixels - box + 1)).floor().minimum(pixels - box)
    return (2 * offset + box) / pixels - 1


def draw_params(spec: AugmentSpec, n: int, gen: torch.Generator, *, size: tuple[int, int] | None = None
                ) -> dict[str, Tensor]:
    """Per-sample parameters for n samples (CPU float32/bool tensors), in a fixed draw order. `size` is the (H, W)
    of the source images: crop boxes and offsets then fall on its pixel grid, as torchvision's; None: continuous
    boxes on a square image."""
    area = _uniform(gen, (n, CROP_ATTEMPTS), *spec.crop_scale)
    log_ratio = _uniform(gen, (n, CROP_ATTEMPTS), math.log(spec.crop_ratio[0]), math.log(spec.crop_ratio[1]))
    w, h, fallback = _resized_crop_box(area, log_ratio, spec.crop_ratio, size)
    rows, cols = size if size is not None else (None, None)
    cx = _centre(torch.rand(n, generator=gen), w, cols)      # crop centre in [-1, 1] coordinates
    cy = _centre(torch.rand(n, generator=gen), h, rows)
    if size is not None:                                 # torchvision's fallback offset: (W - w) // 2
        mid_x = (2 * ((cols - (w * cols).round()) / 2).floor() + (w * cols).round()) / cols - 1
        mid_y = (2 * ((rows - (h * rows).round()) / 2).floor() + (h * rows).round()) / rows - 1
    else:
        mid_x = mid_y = torch.zeros_like(cx)
    cx, cy = torch.where(fallback, mid_x, cx), torch.where(fallback, mid_y, cy)
    flip = torch.rand(n, generator=gen) < spec.flip_p
    angle = (torch.rand(n, generator=gen) * 2 - 1) * math.radians(spec.rotation_deg)
    jitter = torch.rand(n, generator=gen) < spec.jitter_p
    b = _uniform(gen, n, max(0.0, 1 - spec.brightness), 1 + spec.brightness)
    c = _uniform(gen, n, max(0.0, 1 - spec.contrast), 1 + spec.contrast)
    s = _uniform(gen, n, max(0.0, 1 - spec.saturation), 1 + spec.saturation)
    hue = _uniform(gen, n, -spec.hue, spec.hue)
    gray = torch.rand(n, generator=gen) < spec.grayscale_p
    blur = torch.rand(n, generator=gen) < spec.blur_p
    sigma = _uniform(gen, n, *spec.blur_sigma)
    # Options added later draw after the sequence above, and only when a spec uses them, so the existing
    # pipelines see exactly the random stream they always had.
    if spec.crop_sides:
        sides = _constant(tuple(spec.crop_sides), torch.device("cpu"), torch.float32)
        side = sides[torch.randint(len(sides), (n,), generator=gen)]
        w = h = side.clamp(max=1.0)
        cx = _centre(torch.rand(n, generator=gen), w, cols)
        cy = _centre(torch.rand(n, generator=gen), h, rows)
        if spec.crop_center_p:
            centred = torch.rand(n, generator=gen) < spec.crop_center_p
            cx, cy = torch.where(centred, 0.0, cx), torch.where(centred, 0.0, cy)
    if spec.rotation_p < 1.0 and spec.rotation_deg:
        angle = torch.where(torch.rand(n, generator=gen) < spec.rotation_p, angle, 0.0)
    params = dict(w=w, h=h, cx=cx, cy=cy, flip=flip, angle=angle, jitter=jitter, brightness=b, contrast=c,
                  saturation=s, hue=hue, gray=gray, blur=blur, sigma=sigma)
    if spec.jitter_p and spec.jitter_order == "random":   # torchvision: torch.randperm(4) per image
        order = torch.rand((n, 4), generator=gen).argsort(dim=1).float()
        params.update({f"jitter_op{slot}": order[:, slot] for slot in range(4)})
    return params


def _rotate_nearest(x: Tensor, angle: Tensor) -> Tensor:
    """The whole image rotated by `angle` (radians) about its centre with nearest-neighbour sampling and black
    corners, same size (torchvision's RandomRotation)."""
    cos, sin, zero = angle.cos(), angle.sin(), torch.zeros_like(angle)
    theta = torch.stack([torch.stack([cos, -sin, zero], dim=1), torch.stack([sin, cos, zero], dim=1)], dim=1).to(x)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)


def _geometry(x: Tensor, p: dict[str, Tensor], size: int, rotation: str = "bilinear") -> Tensor:
    if rotation == "nearest":                           # rotate first, then crop without the rotation
        x = _rotate_nearest(x, p["angle"])
        p = dict(p, angle=torch.zeros_like(p["angle"]))
    cos, sin = p["angle"].cos(), p["angle"].sin()
    sx = p["w"] * torch.where(p["flip"], -1.0, 1.0)
    theta = torch.stack([
        torch.stack([sx * cos, -p["h"] * sin, p["cx"]], dim=1),
        torch.stack([sx * sin, p["h"] * cos, p["cy"]], dim=1),
    ], dim=1).to(x)                                                     # (B, 2, 3)
    grid = F.affine_grid(theta, [x.shape[0], x.shape[1], size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _grey(x: Tensor) -> Tensor:
    if x.shape[1] == 1:
        return x
    return (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])


def _blend(a: Tensor, b: Tensor, factor: Tensor) -> Tensor:
    return (b + factor.view(-1, 1, 1, 1) * (a - b)).clamp_(0, 1)


@lru_cache(maxsize=64)
def _constant(values: tuple, device: torch.device, dtype: torch.dtype) -> Tensor:
    """A small constant tensor on `device`, made once per (values, device, dtype) and reused by every step."""
    return torch.tensor(values, dtype=dtype, device=device)


def _hue_shift(x: Tensor, shift: Tensor) -> Tensor:
    """Per-sample hue shift as torchvision's adjust_hue: RGB -> HSV, h <- (h + shift) mod 1, HSV -> RGB (shift in
    [-0.5, 0.5], in turns). The HSV -> RGB step uses the closed form c_n = v - v s clamp(min(k, 4 - k), 0, 1),
    k = (n + 6 h) mod 6 with n = 5, 3, 1 for R, G, B."""
    r, g, b = x.unbind(dim=1)                                              # (B, H, W) each
    value, _ = x.max(dim=1)
    chroma = value - x.min(dim=1).values
    grey = chroma <= 0
    saturation = torch.where(grey, torch.zeros_like(value), chroma / torch.where(grey, torch.ones_like(value), value))
    c = torch.where(grey, torch.ones_like(chroma), chroma)
    hue = torch.where(value == r, (g - b) / c,
                      torch.where(value == g, 2.0 + (b - r) / c, 4.0 + (r - g) / c))   # in sixths of a turn
    hue = torch.where(grey, torch.zeros_like(hue), hue) / 6.0
    hue = torch.remainder(hue + shift.to(x).view(-1, 1, 1), 1.0)
    channels = []
    for n in (5.0, 3.0, 1.0):
        k = torch.remainder(n + 6.0 * hue, 6.0)
        channels.append(value - value * saturation * torch.minimum(k, 4.0 - k).clamp(0.0, 1.0))
    return torch.stack(channels, dim=1)


def _jitter_ops(x: Tensor, p: dict[str, Tensor], spec: AugmentSpec) -> list:
    """The jitter's four operations in torchvision's numbering (0 brightness, 1 contrast, 2 saturation, 3 hue);
    None for an operation the spec does not use (or that has no effect on grey images)."""
    rgb = x.shape[1] == 3
    return [
        (lambda y: _blend(y, torch.zeros_like(y), p["brightness"].to(y))) if spec.brightness else None,
        (lambda y: _blend(y, _grey(y).mean(dim=(1, 2, 3), keepdim=True).expand_as(y), p["contrast"].to(y)))
        if spec.contrast else None,
        (lambda y: _blend(y, _grey(y).expand_as(y), p["saturation"].to(y))) if rgb and spec.saturation else None,
        (lambda y: _hue_shift(y, p["hue"])) if rgb and spec.hue else None,
    ]


def _colour(x: Tensor, p: dict[str, Tensor], spec: AugmentSpec) -> Tensor:
    on = p["jitter"].view(-1, 1, 1, 1)
    ops = _jitter_ops(x, p, spec)
    y = x
    if "jitter_op0" in p:              # a random order per image: slot k applies each image's k-th operation
        for slot in range(4):
            chosen = p[f"jitter_op{slot}"].view(-1, 1, 1, 1)
            for index, op in enumerate(ops):
                if op is not None:
                    y = torch.where(chosen == index, op(y), y)
    else:
        for op in ops:
            if op is not None:
                y = op(y)
    x = torch.where(on, y, x)
    if x.shape[1] == 3 and spec.grayscale_p:
        x = torch.where(p["gray"].view(-1, 1, 1, 1), _grey(x).expand_as(x), x)
    return x


def _gaussian_blur(x: Tensor, p: dict[str, Tensor], size: int) -> Tensor:
    """Per-sample Gaussian blur with a kernel of about 10% of the image side (23 px at 224, as CC's OpenCV blur)."""
    k = max(3, int(0.1 * size) // 2 * 2 + 1)
    radius = torch.arange(k, device=x.device, dtype=x.dtype) - k // 2
    sigma = p["sigma"].to(x).view(-1, 1)
    kernel = torch.exp(-radius[None] ** 2 / (2 * sigma ** 2))
    kernel = kernel / kernel.sum(dim=1, keepdim=True)                     # (B, k)
    b, c, hgt, wid = x.shape
    flat = x.reshape(1, b * c, hgt, wid)
    kx = kernel.repeat_interleave(c, dim=0)
    blurred = F.conv2d(F.pad(flat, (k // 2, k // 2, 0, 0), mode="reflect"), kx.view(b * c, 1, 1, k), groups=b * c)
    blurred = F.conv2d(F.pad(blurred, (0, 0, k // 2, k // 2), mode="reflect"), kx.view(b * c, 1, k, 1),
                       groups=b * c).view(b, c, hgt, wid)
    return torch.where(p["blur"].view(-1, 1, 1, 1), blurred, x)


def _normalise(x: Tensor, spec: AugmentSpec) -> Tensor:
    if not spec.mean:
        return x
    mean = _constant(tuple(spec.mean), x.device, x.dtype).view(1, -1, 1, 1)
    std = _constant(tuple(spec.std), x.device, x.dtype).view(1, -1, 1, 1)
    return (x - mean) / std


def to_float_images(x: Tensor, channels: int) -> Tensor:
    """uint8 (B, C, H, W) -> float32 in [0, 1], grey replicated to 3 channels when the network wants 3."""
    x = x.float().div_(255.0)
    if x.shape[1] == 1 and channels == 3:
        x = x.expand(-1, 3, -1, -1)
    return x


def params_to_device(params: dict[str, Tensor], device: torch.device) -> dict[str, Tensor]:
    """Move one view's parameters to `device` as one packed copy: pinned and non-blocking on CUDA, so the host
    never waits for the stream (a blocking host->device copy per parameter would synchronise it 14 times)."""
    if device.type == "cpu":
        return params
    keys = list(params)
    packed = torch.stack([params[k].float() for k in keys])              # (P, n) float32 on the host
    if device.type == "cuda":
        packed = packed.pin_memory()
    packed = packed.to(device, non_blocking=True)
    return {k: packed[i] > 0.5 if params[k].dtype == torch.bool else packed[i] for i, k in enumerate(keys)}


def noise_to_device(noise: Tensor, device: torch.device) -> Tensor:
    if device.type == "cuda":
        return noise.pin_memory().to(device, non_blocking=True)
    return noise.to(device)


def augment_batch(x: Tensor, spec: AugmentSpec, params: dict[str, Tensor], *, noise: Tensor | None = None) -> Tensor:
    """Apply one view's augmentation: float images (B, C, H, W) in [0, 1] -> (B, C, S, S), normalised. `params`
    may live on the host or on x's device (they are moved once, packed, when they are not there yet)."""
    if any(v.device != x.device for v in params.values()):
        params = params_to_device(params, x.device)
    x = _geometry(x, params, spec.image_size, spec.rotation_interpolation if spec.rotation_deg else "bilinear")
    if spec.jitter_p or spec.grayscale_p:
        x = _colour(x, params, spec)
    if spec.blur_p:
        x = _gaussian_blur(x, params, spec.image_size)
    if noise is not None:
        x = (x + spec.noise_std * noise_to_device(noise, x.device).to(x)).clamp_(0, 1)
    return _normalise(x, spec)


class BatchAugmenter:
    """Makes V augmented views of a batch of uint8 images on their device. With `first_spec`, view 0 follows that
    pipeline and views 1..V-1 follow `spec` (PICA's clean + perturbed views, IIC's tf1 + r tf2 views)."""

    def __init__(self, spec: AugmentSpec, channels: int, views: int, *, first_spec: AugmentSpec | None = None):
        self.spec, self.channels, self.views, self.first_spec = spec, channels, views, first_spec

    def __call__(self, images: Tensor, generator: torch.Generator, *, rank: int = 0, world_size: int = 1) -> list[Tensor]:
        x = to_float_images(images, self.channels)
        n_local = x.shape[0]
        source = (x.shape[-2], x.shape[-1])         # (H, W) of the stored images
        out = []
        for view in range(self.views):
            spec = self.first_spec if view == 0 and self.first_spec is not None else self.spec
            # Draw for the global batch; this rank's samples are rows rank, rank + W, ... (DistributedSampler order).
            params = {k: v[rank::world_size][:n_local] for k, v in
                      draw_params(spec, n_local * world_size, generator, size=source).items()}
            noise = None
            if spec.noise_std:
                size = (n_local * world_size, x.shape[1], spec.image_size, spec.image_size)
                noise = torch.randn(size, generator=generator)[rank::world_size][:n_local]
            out.append(augment_batch(x, spec, params_to_device(params, x.device), noise=noise))
        return out


def _resize(x: Tensor, size: int) -> Tensor:
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return x


def center_crop_resize(x: Tensor, *, image_size: int, crop: float) -> Tensor:
    """Centre crop of `crop` x the side, resized to image_size. When the crop is a whole number of pixels it is cut
    first and resized after (IIC: `CenterCrop(c) -> Resize(s)`); otherwise the image is resized to
    round(image_size / crop) and the centre image_size x image_size cut (PICA: `Resize(resize) -> CenterCrop(size)`)."""
    side = crop * x.shape[-1]
    if abs(side - round(side)) < 1e-6:
        c = int(round(side))
        top, left = (x.shape[-2] - c) // 2, (x.shape[-1] - c) // 2
        return _resize(x[..., top:top + c, left:left + c], image_size)
    x = _resize(x, int(round(image_size / crop)))
    top, left = (x.shape[-2] - image_size) // 2, (x.shape[-1] - image_size) // 2
    return x[..., top:top + image_size, left:left + image_size]


def eval_images(images: Tensor, *, image_size: int, channels: int, mean=(), std=(), crop: float = 1.0) -> Tensor:
    """Deterministic evaluation view: uint8 (B, C, H, W) -> float, resized to image_size (after a centre crop of
    `crop` x the side when crop < 1), normalised."""
    x = to_float_images(images, channels)
    if crop < 1.0:
        x = center_crop_resize(x, image_size=image_size, crop=crop)
    else:
        x = _resize(x, image_size)
    if mean:
        x = (x - x.new_tensor(mean).view(1, -1, 1, 1)) / x.new_tensor(std).view(1, -1, 1, 1)
    return x
