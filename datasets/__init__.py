"""`datasets.build(cfg)`: the registry's arrays wrapped for training and evaluation (ARCHITECTURE.md, Data).

Items are dicts: `views` (list of tensors), `index` (position in the dataset) and `label` (-1 when unknown).
Images stay uint8 in memory. With `augment_on: device` the training item holds the raw image once and the
trainer calls `bundle.train_views` on the training device to make the augmented views (batched, per-sample
random parameters); with `augment_on: loader` torchvision makes the views per image in DataLoader workers.
`augment_on: auto` is `device` on CUDA and `loader` on the CPU where the augmentation has a per-image pipeline
(`LOADER_PIPELINES`: simclr); the others (digits, pica, iic) run batched on the CPU too, and say so in the log.
Evaluation always uses one deterministic view (resize + normalise), batched on the device. The trainer sets
`bundle.memory_format` (channels-last on CUDA) and every image batch the bundle returns has that layout.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from models.base import DataInfo

from . import readers  # noqa: F401  (registers every reader)
from .batch_augment import BatchAugmenter, digits_spec, eval_images, iic_specs, pica_specs, simclr_spec
from .registry import DatasetNotFoundError, RawData, read

AUGMENTATIONS = ("simclr", "digits", "pica", "iic", "none")
# Augmentations with a torchvision per-image pipeline (datasets/transforms.py), i.e. that `augment_on: loader` can run.
LOADER_PIPELINES = ("simclr",)
AUGMENT_ON = ("auto", "device", "loader")

_log = logging.getLogger("datasets")


class ArrayDataset(Dataset):
    """Raw items: `views` = [the sample as a tensor] (uint8 CHW image or float vector)."""

    def __init__(self, raw: RawData):
        data = torch.from_numpy(np.ascontiguousarray(raw.data))
        self.data = data.permute(0, 3, 1, 2).contiguous() if raw.kind == "image" else data.float()
        self.labels = torch.from_numpy(raw.labels)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        return {"views": [self.data[i]], "index": i, "label": self.labels[i]}


class LoaderViewsDataset(Dataset):
    """Training items with V views made by a torchvision per-image transform (augment_on: loader)."""

    def __init__(self, raw: RawData, transform, views: int):
        self.raw, self.transform, self.views = raw, transform, views

    def __len__(self) -> int:
        return len(self.raw.labels)

    def __getitem__(self, i: int) -> dict:
        image = self.raw.data[i]
        return {"views": [self.transform(image) for _ in range(self.views)], "index": i,
                "label": int(self.raw.labels[i])}


@dataclass
class DataBundle:
    train: Dataset
    eval: Dataset
    num_classes: int
    info: DataInfo
    description: str
    augmenter: BatchAugmenter | None
    eval_size: int
    mean: tuple
    std: tuple
    eval_crop: float = 1.0     # centre crop (fraction of the side) of the evaluation view before the resize
    augment_on: str = "device"  # where the training augmentation runs: device or loader (resolved from auto)
    memory_format: torch.memory_format = torch.contiguous_format   # layout of image batches (trainer: channels-last)

    def train_views(self, batch: dict, device: torch.device, generator: torch.Generator, *, rank: int = 0,
                    world_size: int = 1) -> list[Tensor]:
        """The augmented views of a training batch, on `device`."""
        views = [v.to(device, non_blocking=True) for v in batch["views"]]
        if self.augmenter is None:
            views = [self._plain(v) for v in views] if self.info.kind == "image" and views[0].dtype == torch.uint8 \
                else views
        else:
            views = self.augmenter(views[0], generator, rank=rank, world_size=world_size)
        return [self._layout(v) for v in views]

    def eval_view(self, batch: dict, device: torch.device) -> Tensor:
        """The deterministic evaluation view of a batch, on `device`."""
        return self._layout(self._plain(batch["views"][0].to(device, non_blocking=True)))

    def _layout(self, x: Tensor) -> Tensor:
        if x.dim() == 4 and self.memory_format is not torch.contiguous_format:
            return x.contiguous(memory_format=self.memory_format)
        return x

    def _plain(self, x: Tensor) -> Tensor:
        if self.info.kind != "image":
            return x.float()
        return eval_images(x, image_size=self.eval_size, channels=self.info.channels, mean=self.mean, std=self.std,
                           crop=self.eval_crop)


def resolve_augment_on(setting: str, augmentation: str, device_type: str) -> tuple[str, str | None]:
    """(`device` or `loader`, a note for the log or None) for the `augment_on` setting on a `device_type` device.

    auto: the device on CUDA (batched, no per-image Python work); on the CPU the torchvision loader pipeline where
    the augmentation has one (LOADER_PIPELINES), else the batched pipeline on the CPU, with a note saying why."""
    if setting not in AUGMENT_ON:
        raise ValueError(f"augment_on must be {', '.join(AUGMENT_ON)}, not {setting!r}")
    if setting == "loader" and augmentation not in LOADER_PIPELINES:
        raise ValueError(f"augmentation {augmentation!r} has no per-image loader pipeline (only "
                         f"{', '.join(LOADER_PIPELINES)}); use --augment_on device or auto")
    if setting != "auto":
        return setting, None
    if device_type == "cuda" or augmentation == "none":
        return "device", None
    if augmentation in LOADER_PIPELINES:
        return "loader", None
    return "device", (f"augment_on auto: augmentation {augmentation!r} has no per-image loader pipeline (only "
                      f"{', '.join(LOADER_PIPELINES)}), so it runs batched on the CPU")


def _device_type(cfg, device) -> str:
    if device is not None:
        return torch.device(device).type
    if cfg.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return str(cfg.device)


def build(cfg, *, views: int = 2, device: torch.device | str | None = None) -> DataBundle:
    """Read `cfg.dataset` and wrap it for a method that needs `views` augmented views per image, for training on
    `device` (None: the device `cfg.device` names; it decides `augment_on: auto`)."""
    if cfg.augmentation not in AUGMENTATIONS:
        raise ValueError(f"augmentation must be one of {', '.join(AUGMENTATIONS)}, not {cfg.augmentation!r}")
    raw = read(cfg.dataset, cfg.data_root, download=cfg.download, options=cfg.dataset_options)
    mean, std = tuple(cfg.normalize_mean), tuple(cfg.normalize_std)
    if len(mean) != len(std):
        raise ValueError("normalize_mean and normalize_std must have the same length")
    if raw.kind == "image":
        native_channels = raw.data.shape[-1]
        channels = len(mean) if mean else native_channels
        if channels not in (1, 3) or (native_channels == 3 and channels == 1):
            raise ValueError(f"normalize_mean has {len(mean)} values but {cfg.dataset} images have "
                             f"{native_channels} channel(s)")
        size = int(cfg.image_size)
        info = DataInfo("image", channels, size, 0, len(raw.labels), int(cfg.num_clusters), cfg.backbone_norm)
    else:
        channels, size = 0, 0
        info = DataInfo("vector", 0, 0, int(raw.data.shape[1]), len(raw.labels), int(cfg.num_clusters),
                        cfg.backbone_norm)

    augmenter = None
    eval_crop = 1.0
    augment_on = "device"
    train: Dataset = ArrayDataset(raw)
    if raw.kind == "image" and cfg.augmentation != "none":
        augment_on, note = resolve_augment_on(cfg.augment_on, cfg.augmentation, _device_type(cfg, device))
        if note:
            _log.info(note)
        if augment_on == "device":
            first = None
            if cfg.augmentation == "simclr":
                spec = simclr_spec(size, color_strength=cfg.color_strength, blur=cfg.blur,
                                   crop_scale=cfg.crop_scale, mean=mean, std=std)
            elif cfg.augmentation == "pica":      # settings in the `pica` section (PICA's pipelines, pica.md §3)
                resize = int(cfg.pica.resize) or size
                first, spec = pica_specs(size, resize=resize, crop_scale=cfg.crop_scale, flip=cfg.pica.flip,
                                         mean=mean, std=std)
                eval_crop = size / resize
            elif cfg.augmentation == "iic":       # settings in the `iic` section, in pixels of the stored images
                side = raw.data.shape[2]
                crop = int(cfg.iic.crop) or side
                first, spec = iic_specs(size, crop=crop / side, tf2_crops=[c / side for c in cfg.iic.tf2_crops],
                                        tf1_center_p=cfg.iic.tf1_center_p, rotation=cfg.iic.rotation,
                                        flip=cfg.iic.flip)
                eval_crop = crop / side
            else:
                spec = digits_spec(size, crop_scale=cfg.crop_scale, mean=mean, std=std)
            augmenter = BatchAugmenter(spec, channels, views, first_spec=first)
        else:
            from .transforms import simclr_train_transform

            transform = simclr_train_transform(size, color_strength=cfg.color_strength, blur=cfg.blur,
                                               crop_scale=tuple(cfg.crop_scale), mean=mean or None,
                                               std=std or None, channels=channels)
            train = LoaderViewsDataset(raw, transform, views)
    return DataBundle(train, ArrayDataset(raw), raw.num_classes, info, raw.description, augmenter, size, mean, std,
                      eval_crop=eval_crop, augment_on=augment_on)


__all__ = ["DataBundle", "DatasetNotFoundError", "LOADER_PIPELINES", "RawData", "build", "resolve_augment_on"]
