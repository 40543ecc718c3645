"""What the L2C methods change in the trainer's data when training starts (spec l2c.md §3, §5).

The framework builds one dataset per run and shuffled batches; the L2C protocols need three more things, which
the methods apply from their `on_train_start` hook through the functions below:

* `restrict_to_classes`: a class subset of the dataset (the source / target class split, e.g. digits 0-4 to train
  the similarity network and 5-9 to cluster). The subset is the *definition of the dataset*: it is chosen once from
  the ground truth, before training, for the training and the evaluation set alike; training steps never see the
  labels unless the method is a supervised stage. (A generic `classes` reader option would make this a data
  feature; until then it lives here.)
* `use_class_balanced_batches`: the official `RandSubClassSampler` (spec §3.3): every batch draws
  `classes_per_batch` classes without replacement, then batch_size / classes_per_batch images of each, without
  replacement; floor(N / batch_size) batches per epoch. It reads labels, so only supervised stages may use it.
* `use_crop_augmentation`: RandomResizedCrop(scale) as the only training augmentation (official Omniglot
  pipeline), on the device with the framework's batched augmentation, replacing the run's augmenter.
"""
from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset
from torch.utils.data.distributed import DistributedSampler

from datasets.batch_augment import AugmentSpec, BatchAugmenter
from engine.config import ConfigError


def dataset_labels(dataset: Dataset) -> Tensor:
    """Ground-truth labels (int64, -1 unknown) of a dataset built by `datasets.build`, or of a Subset of one."""
    if isinstance(dataset, Subset):
        return dataset_labels(dataset.dataset)[torch.as_tensor(dataset.indices, dtype=torch.long)]
    if hasattr(dataset, "labels"):
        return torch.as_tensor(dataset.labels, dtype=torch.long)
    if hasattr(dataset, "raw"):
        return torch.as_tensor(dataset.raw.labels, dtype=torch.long)
    raise TypeError(f"cannot find the labels of a {type(dataset).__name__}")


def class_subset(labels: Tensor, classes: list[int]) -> Tensor:
    """Positions (int64, ascending) of the samples whose label is one of `classes`."""
    wanted = torch.as_tensor(sorted({int(c) for c in classes}), dtype=torch.long)
    return torch.nonzero(torch.isin(labels, wanted)).flatten()


class ClassBalancedBatchSampler:
    """Batches of `classes_per_batch` random classes x `batch_size // classes_per_batch` random images each
    (both without replacement), grouped by class in the batch, `len(labels) // batch_size` batches per epoch.

    Draws come from a generator seeded by (seed, epoch), so every rank draws the same global batch and takes its
    own contiguous slice of it (whole classes when classes_per_batch is a multiple of the number of processes).
    """

    def __init__(self, labels: Tensor, *, classes_per_batch: int, batch_size: int, seed: int, rank: int = 0,
                 world_size: int = 1):
        labels = torch.as_tensor(labels, dtype=torch.long)
        if classes_per_batch < 1 or batch_size % classes_per_batch:
            raise ConfigError(f"batch_size {batch_size} must be a multiple of l2c.classes_per_batch "
                              f"({classes_per_batch}).")
        if batch_size % world_size:
            raise ConfigError(f"batch_size {batch_size} must be divisible by the number of processes ({world_size}).")
        if bool((labels < 0).any()):
            raise ConfigError("class-balanced batches need every training sample's label; some are unknown (-1).")
        self.classes = torch.unique(labels)
        self.members = [torch.nonzero(labels == c).flatten() for c in self.classes]
        self.classes_per_batch, self.batch_size = classes_per_batch, batch_size
        self.per_class = batch_size // classes_per_batch
        if classes_per_batch > len(self.classes):
            raise ConfigError(f"l2c.classes_per_batch {classes_per_batch} is more than the {len(self.classes)} "
                              f"classes of the training set.")
        small = min(len(m) for m in self.members)
        if small < self.per_class:
            raise ConfigError(f"class-balanced batches take {self.per_class} images per class, but a class has only "
                              f"{small}; lower batch_size or raise l2c.classes_per_batch.")
        self.num_batches = len(labels) // batch_size
        self.seed, self.rank, self.world_size = int(seed), int(rank), int(world_size)
        self.local = batch_size // world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def global_batches(self) -> list[list[int]]:
        """Every batch of the current epoch, whole (all ranks)."""
        gen = torch.Generator().manual_seed((self.seed * 1_000_003 + self.epoch * 7_919 + 29) % (2 ** 63))
        batches = []
        for _ in range(self.num_batches):
            chosen = torch.randperm(len(self.classes), generator=gen)[: self.classes_per_batch]
            batch: list[int] = []
            for c in chosen.tolist():
                members = self.members[c]
                batch += members[torch.randperm(len(members), generator=gen)[: self.per_class]].tolist()
            batches.append(batch)
        return batches

    def __iter__(self):
        for batch in self.global_batches():
            yield batch[self.rank * self.local: (self.rank + 1) * self.local]

    def __len__(self) -> int:
        return self.num_batches


def _install_loader(trainer, *, batch_sampler: ClassBalancedBatchSampler | None = None) -> None:
    """Rebuild the trainer's sampler / loader / steps_per_epoch for its (possibly new) training set."""
    cfg, dataset = trainer.cfg, trainer.data.train
    common = dict(num_workers=int(cfg.num_workers), pin_memory=trainer.device.type == "cuda",
                  persistent_workers=int(cfg.num_workers) > 0)
    if batch_sampler is None:
        local = cfg.batch_size // trainer.world
        sampler = DistributedSampler(dataset, num_replicas=trainer.world, rank=trainer.rank, shuffle=True,
                                     seed=int(cfg.seed), drop_last=True)
        if len(sampler) < local:
            raise ConfigError(f"batch_size {cfg.batch_size} is larger than the training set ({len(dataset)} samples "
                              f"after l2c.classes).")
        trainer.sampler = sampler
        trainer.loader = DataLoader(dataset, batch_size=local, sampler=sampler, drop_last=True, **common)
    else:
        if len(batch_sampler) == 0:
            raise ConfigError(f"batch_size {cfg.batch_size} is larger than the training set ({len(dataset)}).")
        trainer.sampler = batch_sampler
        trainer.loader = DataLoader(dataset, batch_sampler=batch_sampler, **common)
    steps = len(trainer.loader)
    trainer.steps_per_epoch = min(steps, int(cfg.steps_per_epoch)) if cfg.steps_per_epoch else steps


def restrict_to_classes(trainer, classes: list[int]) -> int:
    """Keep only the samples of `classes` in the training and evaluation sets; returns how many remain."""
    data = trainer.data
    labels = dataset_labels(data.eval)
    keep = class_subset(labels, classes)
    if len(keep) == 0:
        present = torch.unique(labels[labels >= 0]).tolist()
        raise ConfigError(f"l2c.classes {list(classes)} selects no sample of {trainer.cfg.dataset} "
                          f"(its classes: {present[:20]}{' ...' if len(present) > 20 else ''}).")
    index = keep.tolist()
    data.train, data.eval = Subset(data.train, index), Subset(data.eval, index)
    data.num_classes = int(torch.unique(labels[keep]).numel())
    _install_loader(trainer)
    return len(index)


def use_class_balanced_batches(trainer, classes_per_batch: int) -> ClassBalancedBatchSampler:
    """Replace the shuffled batches by class-balanced ones (reads the training labels: supervised stages only)."""
    sampler = ClassBalancedBatchSampler(dataset_labels(trainer.data.train), classes_per_batch=classes_per_batch,
                                        batch_size=int(trainer.cfg.batch_size), seed=int(trainer.cfg.seed),
                                        rank=trainer.rank, world_size=trainer.world)
    _install_loader(trainer, batch_sampler=sampler)
    return sampler


def crop_spec(image_size: int, crop_scale, mean=(), std=()) -> AugmentSpec:
    """RandomResizedCrop(image_size, scale=crop_scale, ratio=(3/4, 4/3)) and nothing else."""
    return AugmentSpec(image_size, tuple(float(s) for s in crop_scale), flip_p=0.0, rotation_deg=0.0, jitter_p=0.0,
                       brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0, grayscale_p=0.0, blur_p=0.0,
                       noise_std=0.0, mean=tuple(mean), std=tuple(std))


def use_crop_augmentation(trainer, crop_scale) -> None:
    """Make the run's only training augmentation a random resized crop of the stored image (on the device)."""
    cfg, data = trainer.cfg, trainer.data
    if len(crop_scale) != 2 or not 0 < float(crop_scale[0]) <= float(crop_scale[1]) <= 1:
        raise ConfigError(f"l2c.crop_scale must be [low, high] with 0 < low <= high <= 1, got {list(crop_scale)}.")
    if cfg.augmentation != "none" or data.info.kind != "image":
        raise ConfigError("l2c.crop_scale replaces the training augmentation of an image dataset: use it with "
                          f"--augmentation none (got {cfg.augmentation!r}, {data.info.kind} data).")
    data.augmenter = BatchAugmenter(crop_spec(data.info.image_size, crop_scale, data.mean, data.std),
                                    data.info.channels, views=1)


def prepare_data(trainer, opts, *, supervised: bool) -> None:
    """Apply the `l2c` data options of a run (classes, classes_per_batch, crop_scale) and log what changed."""
    if opts.classes:
        kept = restrict_to_classes(trainer, list(opts.classes))
        trainer.log.info(f"l2c: data restricted to classes {sorted(int(c) for c in opts.classes)} "
                         f"({kept} samples for training and evaluation; the class split defines the dataset)")
    if opts.classes_per_batch:
        if not supervised:
            raise ConfigError("l2c.classes_per_batch builds batches from the ground-truth classes, so only supervised "
                              "stages may use it (method spn, or mcl/kcl with l2c.targets labels).")
        sampler = use_class_balanced_batches(trainer, int(opts.classes_per_batch))
        trainer.log.info(f"l2c: class-balanced batches, {sampler.classes_per_batch} classes x {sampler.per_class} "
                         f"images, {len(sampler)} batches per epoch")
    if opts.crop_scale:
        use_crop_augmentation(trainer, opts.crop_scale)
        trainer.log.info(f"l2c: training augmentation = random resized crop, scale {list(opts.crop_scale)}")


def check_prepared(method) -> None:
    """Refuse to evaluate a class-restricted run whose data were never restricted (--eval_only skips the hook)."""
    if method.cfg.l2c.classes and not getattr(method, "data_prepared", False):
        raise ConfigError(
            "this run restricts its data with l2c.classes, which is applied when training starts; --eval_only skips "
            "that step and would evaluate every class. Evaluate a finished run with --resume PATH alone (no "
            "--eval_only): with nothing left to train it only evaluates."
        )
