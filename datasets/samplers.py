"""Batch samplers: which samples form each training batch of an epoch, on each DDP rank.

Every sampler here is a batch sampler (it yields this rank's list of indices per batch), has `set_epoch(epoch)`
(the trainer calls it before every epoch) and a length in batches. The trainer builds its one DataLoader from the
sampler the method declares (`ClusteringMethod.batch_sampler`), `ShuffledBatches` by default. Each draws its
randomness from a generator seeded from (seed, epoch), so a resumed run and every rank draw the same batches.

- `ShuffledBatches`: a fresh permutation every epoch (torch's DistributedSampler), last partial batch dropped;
- `SequentialBatches`: the dataset in order every epoch, the last partial batch kept (IIC's official loaders);
- `PseudoLabelBalancedSampler`: draws with replacement, weight 1 / |pseudo-cluster| (ProPos `data_resample`);
- `ClassBalancedBatchSampler`: classes x images per batch from the ground truth (L2C supervised stages only).
"""
from __future__ import annotations

from typing import Callable, Iterator

import torch
from torch import Tensor
from torch.utils.data import BatchSampler, DistributedSampler

from engine.config import ConfigError
from engine.seeding import derive_seed


class ShuffledBatches:
    """Batches of `batch_size // world_size` indices of this rank from a per-epoch permutation (DistributedSampler
    with shuffle, seed `seed` + epoch, drop_last), the last partial batch dropped. `keep_last`: the last partial
    global batch is kept as well (split equally over the ranks: at most world_size - 1 samples are left out)."""

    def __init__(self, num_samples: int, *, batch_size: int, rank: int = 0, world_size: int = 1, seed: int = 0,
                 keep_last: bool = False):
        if batch_size % world_size:
            raise ConfigError(f"batch_size {batch_size} must be divisible by the number of processes ({world_size}).")
        self.sampler = DistributedSampler(range(num_samples), num_replicas=world_size, rank=rank, shuffle=True,
                                          seed=int(seed), drop_last=True)
        local = batch_size // world_size
        if len(self.sampler) < local:
            raise ConfigError(f"batch_size {batch_size} is larger than the training set ({num_samples} samples).")
        self.batches = BatchSampler(self.sampler, local, drop_last=not keep_last)

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(int(epoch))

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class SequentialBatches:
    """The dataset in index order in batches of `batch_size`, the last (partial) batch kept, every epoch alike (IIC's
    official `shuffle=False` loaders). Under DDP every global batch is split into equal contiguous slices, so the
    last batch keeps only a multiple of the number of processes (at most world_size - 1 samples are left out)."""

    def __init__(self, num_samples: int, *, batch_size: int, rank: int = 0, world_size: int = 1):
        if batch_size % world_size:
            raise ConfigError(f"batch_size {batch_size} must be divisible by the number of processes ({world_size}).")
        self.num_samples, self.batch_size, self.rank, self.world_size = num_samples, batch_size, rank, world_size

    def set_epoch(self, epoch: int) -> None:
        pass

    def __iter__(self) -> Iterator[list[int]]:
        for start in range(0, self.num_samples, self.batch_size):
            stop = min(start + self.batch_size, self.num_samples)
            local = (stop - start) // self.world_size
            if local == 0:
                return
            first = start + self.rank * local
            yield list(range(first, first + local))

    def __len__(self) -> int:
        full, rest = divmod(self.num_samples, self.batch_size)
        return full + (1 if rest >= self.world_size else 0)


class PseudoLabelBalancedSampler:
    """Class-balanced resampling by pseudo-cluster size (ProPos `data_resample`; HaDis CIFAR-20).

    Each image weighs N / |its pseudo-cluster|; an epoch draws (N // global_batch) * global_batch indices with
    replacement from that multinomial and deals them round-robin to the ranks, in batches of the local size.
    The weights are read from the method's pseudo-labels (`pseudo_labels()`) when an epoch starts, so they
    follow every refresh and a resumed run draws the same indices. Pseudo-labels only, never the ground truth.
    Difference from the official code: it builds the weights from `torch.unique` counts indexed by cluster id,
    which shifts them when a cluster is empty; here the counts come from `bincount`, so an empty cluster only
    means that no image carries its weight.
    """

    def __init__(self, pseudo_labels: Callable[[], Tensor], *, num_samples: int, batch_size: int, rank: int = 0,
                 world_size: int = 1, seed: int = 0):
        if num_samples < batch_size:
            raise ConfigError(f"batch_size {batch_size} is larger than the training set ({num_samples} samples).")
        if batch_size % world_size:
            raise ConfigError(f"batch_size {batch_size} must be divisible by the number of processes ({world_size}).")
        self.pseudo_labels, self.num_samples = pseudo_labels, num_samples
        self.total = (num_samples // batch_size) * batch_size
        self.local = batch_size // world_size
        self.rank, self.world_size, self.seed = rank, world_size, int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def weights(self) -> Tensor:
        labels = self.pseudo_labels().detach().cpu().long()
        counts = torch.bincount(labels).double()
        return labels.numel() / counts[labels]  # (N,)

    def indices(self) -> list[int]:
        """This rank's indices of the epoch, in order."""
        generator = torch.Generator().manual_seed(derive_seed(self.seed, "pseudo_label_resample", self.epoch))
        drawn = torch.multinomial(self.weights(), self.total, replacement=True, generator=generator)
        return drawn[self.rank::self.world_size].tolist()

    def __iter__(self) -> Iterator[list[int]]:
        mine = self.indices()
        for start in range(0, len(mine) - self.local + 1, self.local):
            yield mine[start:start + self.local]

    def __len__(self) -> int:
        return self.total // self.world_size // self.local


class ClassBalancedBatchSampler:
    """Batches of `classes_per_batch` random classes x `batch_size // classes_per_batch` random images each
    (both without replacement), grouped by class in the batch, `len(labels) // batch_size` batches per epoch
    (the official L2C `RandSubClassSampler`). It reads the ground truth: supervised stages only.

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
        if self.num_batches == 0:
            raise ConfigError(f"batch_size {batch_size} is larger than the training set ({len(labels)} samples).")
        self.seed, self.rank, self.world_size = int(seed), int(rank), int(world_size)
        self.local = batch_size // world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def global_batches(self) -> list[list[int]]:
        """Every batch of the current epoch, whole (all ranks)."""
        gen = torch.Generator().manual_seed(derive_seed(self.seed, "class_batches", self.epoch))
        batches = []
        for _ in range(self.num_batches):
            chosen = torch.randperm(len(self.classes), generator=gen)[: self.classes_per_batch]
            batch: list[int] = []
            for c in chosen.tolist():
                members = self.members[c]
                batch += members[torch.randperm(len(members), generator=gen)[: self.per_class]].tolist()
            batches.append(batch)
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.global_batches():
            yield batch[self.rank * self.local: (self.rank + 1) * self.local]

    def __len__(self) -> int:
        return self.num_batches
