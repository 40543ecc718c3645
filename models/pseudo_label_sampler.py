"""Class-balanced resampling by pseudo-cluster size (ProPos `data_resample`, propos.md §3; HaDis CIFAR-20).

After every k-means each image weighs N / |its pseudo-cluster|; an epoch draws (N // global_batch) * global_batch
indices with replacement from that multinomial, with a generator seeded from (seed, epoch), and deals them
round-robin to the ranks. The weights are read from the method's pseudo-labels when an epoch starts, so they
follow every refresh and a resumed run draws the same indices. Labels are pseudo-labels only (never ground truth).

Difference from the official code: it builds the weights from `torch.unique(...)` counts indexed by cluster id,
which shifts the weights when a cluster is empty; here the counts come from `bincount`, so an empty cluster only
means that no image carries its weight.
"""
from __future__ import annotations

from typing import Callable, Iterator

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Sampler

from engine import distributed as dist_utils


class PseudoLabelBalancedSampler(Sampler[int]):
    """Indices of this rank for one epoch, drawn with replacement, weight N / |pseudo-cluster| per image."""

    def __init__(self, pseudo_labels: Callable[[], Tensor], *, num_samples: int, global_batch: int, rank: int,
                 world_size: int, seed: int):
        if num_samples < global_batch:
            raise ValueError(f"batch_size {global_batch} is larger than the training set ({num_samples})")
        self.pseudo_labels, self.num_samples = pseudo_labels, num_samples
        self.total = (num_samples // global_batch) * global_batch
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def weights(self) -> Tensor:
        labels = self.pseudo_labels().detach().cpu().long()
        counts = torch.bincount(labels).double()
        return labels.numel() / counts[labels]  # (N,)

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(int(self.seed) * 100_003 + self.epoch)
        drawn = torch.multinomial(self.weights(), self.total, replacement=True, generator=generator)
        return iter(drawn[self.rank::self.world_size].tolist())

    def __len__(self) -> int:
        return self.total // self.world_size


def install_balanced_sampler(trainer, pseudo_labels: Callable[[], Tensor]) -> None:
    """Replace the trainer's shuffling sampler (and its loader) by the balanced one, keeping the loader settings.

    The trainer iterates `trainer.loader` and calls `trainer.sampler.set_epoch(epoch)` every epoch; the new
    loader yields at most as many batches as the old one, and `steps_per_epoch` is lowered if it would be fewer.
    """
    old = trainer.loader
    sampler = PseudoLabelBalancedSampler(pseudo_labels, num_samples=len(trainer.data.train),
                                         global_batch=int(trainer.cfg.batch_size), rank=dist_utils.rank(),
                                         world_size=dist_utils.world_size(), seed=int(trainer.cfg.seed))
    trainer.sampler = sampler
    trainer.loader = DataLoader(trainer.data.train, batch_size=old.batch_size, sampler=sampler, drop_last=True,
                                num_workers=old.num_workers, pin_memory=old.pin_memory,
                                persistent_workers=old.num_workers > 0)
    if len(trainer.loader) < trainer.steps_per_epoch:
        trainer.steps_per_epoch = len(trainer.loader)
    trainer.log.info(f"data_resample: each epoch draws {sampler.total} images with replacement, weighted by "
                     f"1 / pseudo-cluster size")
