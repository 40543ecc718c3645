"""The one interface every clustering method implements; the trainer knows nothing else about a method."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn


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


class ClusteringMethod(nn.Module):
    """Base class of a method (ARCHITECTURE.md, Method).

    A subclass owns its networks and its state (EMA encoders, queues, prototypes, pseudo-labels) and implements
    `training_step`, `cluster_probs` and `features`. `forward(batch, step)` calls `training_step` so that a
    DistributedDataParallel wrapper sees the training computation. Optional hooks are no-ops here.
    """

    #: True when the method has cluster heads and returns `assignments` (so DivClust composes with it).
    has_cluster_heads: bool = False
    #: number of augmented views of each image the method needs in a training batch.
    num_views: int = 2
    #: True only for explicitly supervised stages (L2C's similarity network on a labelled source set): the trainer
    #: then adds `label` to the batch and says so in the log. Unsupervised methods never see labels.
    reads_labels: bool = False
    #: metric of the evaluation k-means on `features` ('cosine' for methods whose papers cluster by cosine).
    kmeans_metric: str = "euclidean"

    @classmethod
    def views_for(cls, cfg) -> int:
        """Views per image for this configuration (override when a config key sets it, e.g. IIC's repeats)."""
        return cls.num_views

    def __init__(self, cfg, info: DataInfo):
        super().__init__()
        self.cfg = cfg
        self.info = info
        self.clusterings = int(cfg.clusterings)
        if self.clusterings < 1:
            raise ValueError("clusterings must be >= 1")
        if self.clusterings > 1 and not self.has_cluster_heads:
            raise ValueError(
                f"method {cfg.method!r} has no cluster heads, so it cannot train --clusterings "
                f"{self.clusterings}; use --clusterings 1."
            )

    def forward(self, batch: dict, step: int) -> dict:
        return self.training_step(batch, step)

    def training_step(self, batch: dict, step: int) -> dict:
        """Return {'loss': scalar, ...logs, 'assignments': (C, N, K) probabilities if the method has heads}."""
        raise NotImplementedError

    @torch.no_grad()
    def cluster_probs(self, x: Tensor) -> Tensor | None:
        """(C, N, K) soft assignments of a batch in eval mode, or None when the method clusters features."""
        return None

    @torch.no_grad()
    def features(self, x: Tensor) -> Tensor:
        """(N, D) representation that k-means / GMM cluster at evaluation."""
        raise NotImplementedError

    def select_head(self) -> int | None:
        """Label-free choice among the heads returned by `cluster_probs` (e.g. PICA/IIC: the sub-head with the
        lowest training loss), reported as `selected_head` at evaluation; None when the method makes no choice."""
        return None

    # ----- optional hooks -------------------------------------------------------------------------------------
    def param_groups(self) -> list[dict]:
        """Optimizer parameter groups (override for per-group learning rates)."""
        return [{"params": [p for p in self.parameters() if p.requires_grad]}]

    def on_train_start(self, trainer) -> None:
        """Called once before the first epoch (also after resuming)."""

    def on_epoch_start(self, epoch: int, trainer) -> None:
        """Called before each epoch (k-means refresh, head alternation, outer iterations)."""

    def on_epoch_end(self, epoch: int, trainer) -> None:
        """Called after each epoch."""

    def after_optimizer_step(self, step: int) -> None:
        """Called after every optimizer step (momentum/EMA updates, queues)."""
