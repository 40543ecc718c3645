"""Ghost BatchNorm: one process normalising its batch in G groups, as G GPUs each with their own batch statistics.

The official ProPos runs on CIFAR-10/100 and ImageNet-Dogs use 4 GPUs x 128 images: every BatchNorm layer sees
the 128 images of its GPU, and the running statistics that evaluation uses are rank 0's (DistributedDataParallel
broadcasts rank 0's buffers before every forward). `use_ghost_batchnorm(module, groups)` makes every BatchNorm1d/2d
of `module` behave like that in one process: in training the rows g, g + G, g + 2G, ... of the batch (G = `groups`)
are normalised with their own statistics, and the running statistics follow group 0 only. Groups are strided
because the framework's samplers deal a global batch to the ranks that way (rank r holds rows r::world), so group g
of one process holds exactly the images rank g would hold. Evaluation (eval mode) is ordinary BatchNorm with those
running statistics. Parameters and buffers are the ordinary ones, so checkpoints do not change.

`shuffled_rows(n, generator)` is the permutation of the MoCo-style "shuffling BN" of the target network: the batch
is permuted before the target forward and restored after it, so each group mixes images of all groups;
`rank_major_to_global(t, world)` puts a gathered batch (rank 0's rows first) back into the global batch order.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class _GhostBatchNorm:
    """Mixin over nn.BatchNorm1d / nn.BatchNorm2d (set `ghost_groups` on the instance)."""

    ghost_groups = 1

    def forward(self, x: Tensor) -> Tensor:
        groups = int(self.ghost_groups)
        if not self.training or groups == 1:
            return super().forward(x)
        if x.shape[0] % groups:
            raise ValueError(f"ghost BatchNorm: a batch of {x.shape[0]} does not split into {groups} equal groups")
        self._check_input_dim(x)
        momentum = 0.0 if self.momentum is None else self.momentum
        if self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:              # cumulative moving average, as nn.BatchNorm
                momentum = 1.0 / float(self.num_batches_tracked)
        out = []
        for group in range(groups):
            first = group == 0 and self.track_running_stats    # rank 0's statistics are the ones kept
            out.append(F.batch_norm(x[group::groups], self.running_mean if first else None,
                                    self.running_var if first else None, self.weight, self.bias, True,
                                    momentum, self.eps))
        return torch.stack(out, dim=1).flatten(0, 1)             # row i of group g back to row i * groups + g


class GhostBatchNorm1d(_GhostBatchNorm, nn.BatchNorm1d):
    pass


class GhostBatchNorm2d(_GhostBatchNorm, nn.BatchNorm2d):
    pass


_GHOSTS = {nn.BatchNorm1d: GhostBatchNorm1d, nn.BatchNorm2d: GhostBatchNorm2d}


def use_ghost_batchnorm(module: nn.Module, groups: int) -> int:
    """Make every nn.BatchNorm1d / nn.BatchNorm2d of `module` normalise in `groups` groups (in place); returns how
    many layers changed."""
    changed = 0
    for layer in module.modules():
        ghost = _GHOSTS.get(type(layer))
        if ghost is not None or isinstance(layer, _GhostBatchNorm):
            if ghost is not None:
                layer.__class__ = ghost
            layer.ghost_groups = int(groups)
            changed += 1
    return changed


def shuffled_rows(n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """(permutation, its inverse) of n rows, drawn from `generator` (on the CPU)."""
    order = torch.randperm(n, generator=generator)
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(n)
    return order, inverse


def rank_major_to_global(gathered: Tensor, world: int) -> Tensor:
    """Rows of an all-gather (rank 0's b rows, then rank 1's, ...) in global batch order (rank r's row j is global
    row j * world + r)."""
    if world == 1:
        return gathered
    return gathered.reshape(world, -1, *gathered.shape[1:]).transpose(0, 1).reshape(gathered.shape)
