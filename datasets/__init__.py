"""`datasets.build(cfg, request)`: the registry's arrays wrapped for training and evaluation.

Items are dicts: `views` (list of tensors), `index` (position in the dataset) and `label` (-1 when unknown).
Images stay uint8 in memory. With `augment_on: device` the training item holds the raw image once and the
trainer calls `bundle.train_views` on the training device to make the augmented views (batched, per-sample
random parameters); with `augment_on: loader` torchvision makes the views per image in DataLoader workers.
`augment_on: auto` is `device` on CUDA and `loader` on the CPU where the augmentation has a per-image pipeline
(`LOADER_PIPELINES`: simclr, crop); the others (digits, pica, iic) run batched on the CPU too, and say so.
Evaluation always uses one deterministic view (resize + normalise), batched on the device. The trainer sets
`bundle.memory_format` (channels-last on CUDA) and every image batch the bundle returns has that layout.

What a method needs from its data beyond the config (views per image, a class subset, a replacement training
augmentation, reader options, extra streams) it declares in a `DataRequest` (models/base.py says how).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from engine.config import ConfigError, Key, Section, each, in_range, probability

from . import readers  # noqa: F401  (registers every reader)
from .batch_augment import BatchAugmenter, crop_spec, digits_spec, eval_images, iic_specs, pica_specs, simclr_spec
from .image_decoding import open_original
from .registry import READERS, DatasetError, DatasetNotFoundError, RawData, read

AUGMENTATIONS = ("simclr", "digits", "pica", "iic", "crop", "none")
# Augmentations with a torchvision per-image pipeline (datasets/transforms.py), i.e. that `augment_on: loader` can run.
LOADER_PIPELINES = ("simclr", "crop")
AUGMENT_ON = ("auto", "device", "loader")

# Settings of the augmentation families that have their own (they apply while `augmentation` names the family).
AUGMENTATION_SECTIONS = [
    Section("pica_augmentation", "PICA's pipelines (augmentation: pica)", {
        "resize": Key(0, "Resize(resize) before the clean view's RandomCrop(image_size) and the evaluation "
                         "CenterCrop (0: image_size, no crop)", in_range(0, integer=True)),
        "flip": Key(True, "horizontal flip (p 0.5) of the perturbed views"),
    }, owners=("pica",), owner="augmentation"),
    Section("iic_augmentation", "IIC's tf1 / tf2 (augmentation: iic), sides in pixels of the stored image", {
        "crop": Key(0, "RandomCrop side of tf1/tf2 and CenterCrop side of evaluation (0: whole image)",
                    in_range(0, integer=True)),
        "tf2_crops": Key([], "tf2 crop sides, one chosen per sample (official MNIST [16, 20, 24]; []: crop)",
                         each(in_range(1, integer=True))),
        "tf1_center_p": Key(0.0, "probability that tf1's crop is centred instead of random (official MNIST 0.5)",
                            probability),
        "rotation": Key(0.0, "tf2 rotation range in degrees, applied with p 0.5 (official MNIST 25)",
                        in_range(0, 180)),
        "flip": Key(True, "horizontal flip (p 0.5) of tf2 (official MNIST: false)"),
    }, owners=("iic",), owner="augmentation"),
]

_log = logging.getLogger("datasets")


@dataclass(frozen=True)
class DataInfo:
    """What a method may know about its data when it builds its networks (never the labels)."""

    kind: str                 # "image" or "vector"
    channels: int             # image channels after the pipeline (1 or 3); 0 for vectors
    image_size: int           # square network input size; 0 for vectors
    input_dim: int            # vector length; 0 for images
    num_samples: int          # training-set size (memory banks, pseudo-labels)
    num_clusters: int         # K
    norm: str = "batch"       # normalisation layers of the small backbones: batch, group or none


@dataclass(frozen=True)
class ExtraStream:
    """A second training stream per epoch (e.g. STL-10's 100,000 unlabelled images): the reader's
    `RawData.extra[name]`, trained on before the main stream in every epoch, with the run's augmentation."""

    name: str
    batch_size: int | None = None       # None: the run's batch_size


@dataclass(frozen=True)
class DataRequest:
    """What a method asks of its data (`ClusteringMethod.data_request(cfg)`), before the data are read."""

    views: int = 2                                      # augmented views of every training image
    classes: tuple[int, ...] = ()                       # keep only these ground-truth classes (train and eval)
    # replaces the configured training augmentation: (family, {key: value}), e.g. ("crop", {"crop_scale": [.85, 1]})
    augmentation: tuple[str, dict] | None = None
    options: dict = field(default_factory=dict)         # reader options over `dataset_options`
    extra_streams: tuple[ExtraStream, ...] = ()


class ArrayDataset(Dataset):
    """Raw items: `views` = [the sample as a tensor] (uint8 CHW image or float vector)."""

    def __init__(self, raw: RawData):
        self.labels = torch.from_numpy(raw.labels)
        self.mapped = raw.data if isinstance(raw.data, np.memmap) else None   # read per item (STL-10 unlabelled)
        if self.mapped is None:
            data = torch.from_numpy(np.ascontiguousarray(raw.data))
            self.data = data.permute(0, 3, 1, 2).contiguous() if raw.kind == "image" else data.float()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        if self.mapped is not None:
            sample = torch.from_numpy(np.array(self.mapped[i]))
            return {"views": [sample.permute(2, 0, 1) if sample.dim() == 3 else sample.float()], "index": i,
                    "label": self.labels[i]}
        return {"views": [self.data[i]], "index": i, "label": self.labels[i]}


class LoaderViewsDataset(Dataset):
    """Training items with V views made by a torchvision per-image transform (augment_on: loader)."""

    def __init__(self, raw: RawData, transform, views: int):
        self.raw, self.transform, self.views = raw, transform, views
        self.labels = torch.from_numpy(raw.labels)

    def __len__(self) -> int:
        return len(self.raw.labels)

    def __getitem__(self, i: int) -> dict:
        # the original file when the reader kept it (`originals`), else the stored copy
        image = open_original(self.raw.files[i]) if self.raw.files is not None else self.raw.data[i]
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
    class_names: list[str] | None = None                       # names of the label values, where the data have them
    sample_ids: list[str] | None = None                        # per-sample ids (file paths) for predictions.csv
    extra: dict[str, Dataset] = field(default_factory=dict)    # extra training streams (DataRequest.extra_streams)
    native_size: tuple[int, int] | None = None                 # (H, W) of the stored images

    @property
    def labels(self) -> Tensor:
        """Ground-truth labels of the evaluation set (int64, -1 unknown): for evaluation and supervised stages."""
        return self.eval.labels

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
        raise ConfigError(f"augment_on must be {', '.join(AUGMENT_ON)}, not {setting!r}")
    if setting == "loader" and augmentation not in LOADER_PIPELINES:
        raise ConfigError(f"augmentation {augmentation!r} has no per-image loader pipeline (only "
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


def keep_classes(raw: RawData, classes: tuple[int, ...], dataset: str) -> RawData:
    """The samples of `raw` whose label is one of `classes` (a class split that defines the dataset, e.g. L2C's
    source and target classes), in their order; labels keep their values."""
    wanted = sorted({int(c) for c in classes})
    keep = np.flatnonzero(np.isin(raw.labels, wanted))
    if keep.size == 0:
        present = sorted(set(raw.labels[raw.labels >= 0].tolist()))
        raise ConfigError(f"the class subset {wanted} selects no sample of {dataset} (its classes: "
                          f"{present[:20]}{' ...' if len(present) > 20 else ''}).")
    ids = [raw.ids[i] for i in keep] if raw.ids is not None else [str(i) for i in keep]
    files = [raw.files[i] for i in keep] if raw.files is not None else None
    return RawData(raw.data[keep], raw.labels[keep], f"{raw.description}; classes {wanted} only ({keep.size} samples)",
                   raw.class_names, {}, ids, files)


def read_raw(cfg, request: DataRequest) -> RawData:
    """The dataset of `cfg` as the method asked for it (reader options, class subset)."""
    options = {**dict(cfg.dataset_options or {}), **request.options}
    if getattr(cfg, "skip_unreadable", False) and "skip_unreadable" in _reader_options(cfg.dataset):
        options.setdefault("skip_unreadable", True)
    raw = read(cfg.dataset, cfg.data_root, download=cfg.download, options=options)
    if request.classes:
        extra = raw.extra
        raw = keep_classes(raw, request.classes, cfg.dataset)
        raw.extra = extra
    return raw


def _reader_options(name: str) -> list[str]:
    import inspect

    reader = READERS.get(name)
    return list(inspect.signature(reader).parameters) if reader is not None else []


def build(cfg, request: DataRequest | None = None, *, device: torch.device | str | None = None,
          raw: RawData | None = None) -> DataBundle:
    """Read `cfg.dataset` (or use `raw`, already read) and wrap it for a method that asks for `request`, for
    training on `device` (None: the device `cfg.device` names; it decides `augment_on: auto`)."""
    request = request or DataRequest()
    views = int(request.views)
    if cfg.augmentation not in AUGMENTATIONS:
        raise ConfigError(f"augmentation must be one of {', '.join(AUGMENTATIONS)}, not {cfg.augmentation!r}")
    raw = raw if raw is not None else read_raw(cfg, request)
    mean, std = tuple(cfg.normalize_mean), tuple(cfg.normalize_std)
    if len(mean) != len(std):
        raise ConfigError("normalize_mean and normalize_std must have the same length")
    native = None
    if raw.kind == "image":
        native_channels = raw.data.shape[-1]
        channels = len(mean) if mean else native_channels
        if channels not in (1, 3) or (native_channels == 3 and channels == 1):
            raise ConfigError(f"normalize_mean has {len(mean)} values but {cfg.dataset} images have "
                              f"{native_channels} channel(s)")
        size = int(cfg.image_size)
        native = (int(raw.data.shape[1]), int(raw.data.shape[2]))
        info = DataInfo("image", channels, size, 0, len(raw.labels), int(cfg.num_clusters), cfg.backbone_norm)
    else:
        channels, size = 0, 0
        info = DataInfo("vector", 0, 0, int(raw.data.shape[1]), len(raw.labels), int(cfg.num_clusters),
                        cfg.backbone_norm)

    augmenter = None
    eval_crop = 1.0
    augment_on = "device"
    train: Dataset = ArrayDataset(raw)
    family, settings = request.augmentation or (cfg.augmentation, {})
    if request.augmentation is not None and raw.kind != "image":
        raise ConfigError(f"method {cfg.method} trains with the {family} augmentation of images, but {cfg.dataset} "
                          f"holds vectors.")
    if raw.kind == "image" and family != "none":
        augment_on, note = resolve_augment_on(cfg.augment_on, family, _device_type(cfg, device))
        if raw.files is not None:     # training views from the original files: only the per-image pipeline can
            if family not in LOADER_PIPELINES or cfg.augment_on == "device":
                raise ConfigError(f"{cfg.dataset}: training from the original files (dataset option originals) "
                                  f"needs the per-image loader pipeline, which augmentation {family!r} "
                                  + ("has not" if family not in LOADER_PIPELINES else "has, but augment_on is "
                                     "device") + f": use --augment_on loader (pipelines: "
                                  f"{', '.join(LOADER_PIPELINES)}), or drop originals.")
            augment_on, note = "loader", None
        if note:
            _log.info(note)
        crop_scale = tuple(settings.get("crop_scale", cfg.crop_scale))
        if augment_on == "device":
            augmenter, eval_crop = _batch_augmenter(cfg, raw, family, crop_scale, size, channels, views, mean, std)
        else:
            from .transforms import crop_train_transform, simclr_train_transform

            if family == "crop":
                transform = crop_train_transform(size, crop_scale=crop_scale, mean=mean or None, std=std or None,
                                                 channels=channels)
            else:
                transform = simclr_train_transform(size, color_strength=cfg.color_strength, blur=cfg.blur,
                                                   crop_scale=crop_scale, mean=mean or None, std=std or None,
                                                   channels=channels)
            train = LoaderViewsDataset(raw, transform, views)
    if views > 1 and augmenter is None and not isinstance(train, LoaderViewsDataset):
        what = (f"{cfg.dataset} holds vectors, which have no augmentation here" if raw.kind != "image"
                else "augmentation none makes only the image itself")
        raise ConfigError(f"method {cfg.method} trains on {views} augmented views of every sample, but {what}. "
                          + ("Methods for vectors: kingdra (unsupervised), or mcl / kcl with --l2c.targets labels "
                             "(pairwise-supervised)." if raw.kind != "image"
                             else "Set --augmentation simclr (or the method's own family)."))
    extra: dict[str, Dataset] = {}
    for stream in request.extra_streams:
        if stream.name not in raw.extra:
            raise ConfigError(f"method {cfg.method} trains on the extra stream {stream.name!r}, which "
                              f"{cfg.dataset} does not provide (it has: {', '.join(raw.extra) or 'none'}).")
        part = raw.extra[stream.name]
        extra[stream.name] = (LoaderViewsDataset(part, train.transform, views) if isinstance(train, LoaderViewsDataset)
                              else ArrayDataset(part))
    present = raw.labels[raw.labels >= 0]
    num_classes = int(np.unique(present).size) if request.classes else raw.num_classes
    return DataBundle(train, ArrayDataset(raw), num_classes, info, raw.description, augmenter, size, mean, std,
                      eval_crop=eval_crop, augment_on=augment_on, class_names=raw.class_names,
                      sample_ids=raw.ids, extra=extra, native_size=native)


def _batch_augmenter(cfg, raw: RawData, family: str, crop_scale: tuple, size: int, channels: int, views: int,
                     mean: tuple, std: tuple) -> tuple[BatchAugmenter, float]:
    """The batched augmenter of augmentation `family` and the evaluation view's centre crop."""
    first, eval_crop = None, 1.0
    if family == "simclr":
        spec = simclr_spec(size, color_strength=cfg.color_strength, blur=cfg.blur, crop_scale=crop_scale,
                           mean=mean, std=std)
    elif family == "crop":
        spec = crop_spec(size, crop_scale, mean, std)
    elif family == "pica":
        opts = cfg.pica_augmentation
        resize = int(opts.resize) or size
        if resize < size:
            raise ConfigError(f"pica_augmentation.resize ({resize}) must be at least image_size ({size}).")
        first, spec = pica_specs(size, resize=resize, crop_scale=crop_scale, flip=opts.flip, mean=mean, std=std)
        eval_crop = size / resize
    elif family == "iic":       # sides in pixels of the stored images
        opts = cfg.iic_augmentation
        side = raw.data.shape[2]
        crop = int(opts.crop) or side
        if crop > side or any(int(c) > side for c in opts.tf2_crops):
            raise ConfigError(f"iic_augmentation crop sides ({crop}, {list(opts.tf2_crops)}) must fit the stored "
                              f"{side}-px images.")
        first, spec = iic_specs(size, crop=crop / side, tf2_crops=[c / side for c in opts.tf2_crops],
                                tf1_center_p=opts.tf1_center_p, rotation=opts.rotation, flip=opts.flip)
        eval_crop = crop / side
    else:
        spec = digits_spec(size, crop_scale=crop_scale, mean=mean, std=std)
    return BatchAugmenter(spec, channels, views, first_spec=first), eval_crop


def dataset_labels(dataset: Dataset) -> Tensor:
    """Ground-truth labels (int64, -1 unknown) of a dataset built here (supervised stages and evaluation only)."""
    if hasattr(dataset, "labels"):
        return torch.as_tensor(dataset.labels, dtype=torch.long)
    raise TypeError(f"cannot find the labels of a {type(dataset).__name__}")


__all__ = ["AUGMENTATION_SECTIONS", "DataBundle", "DataInfo", "DataRequest", "DatasetError", "DatasetNotFoundError",
           "ExtraStream", "LOADER_PIPELINES", "RawData", "build", "dataset_labels", "keep_classes", "read_raw",
           "resolve_augment_on"]
