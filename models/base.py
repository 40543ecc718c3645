"""The contract between a clustering method and the framework: the whole of what a method sees and declares.

A method is one `ClusteringMethod` subclass in `models/<name>.py`, exposed as `METHOD` (the file name is the
method name). It owns its networks and its state (EMA encoders, queues, prototypes, pseudo-labels: parameters
and buffers, so checkpoints hold them). The trainer owns the loop's machinery: one DataLoader, one optimizer,
one learning-rate scheduler, devices, precision, compilation, DDP, DivClust, checkpoints and evaluation. A
method never touches the trainer; they meet only here:

1. What the method declares (read by the framework while it builds the run, before any file is written):
   - `config_sections`: its config `Section`s (keys, defaults, one-line help, checks; a method family shares
     one, as MCL/KCL/SPN share `l2c`); `check_config(cfg)` for rules across keys;
   - `has_cluster_heads` (DivClust composes with it), `reads_labels` (an explicitly supervised stage),
     `kmeans_metric` (the evaluation k-means on `features`), `embeds_in_mixed_batches` (its networks normalise
     with batch statistics at evaluation, so `ctx.embed` passes over the data in a fixed shuffled order);
   - `data_request(cfg)`: views per image, a class subset, a replacement training augmentation, reader options,
     extra data streams per epoch (datasets.DataRequest);
   - `backbone_names`: the modules that run under bf16 autocast on CUDA and that `--compile true` compiles
     (everything else, projectors, heads and losses, stays fp32);
   - `param_groups()`: optimizer groups with an optional `lr_mult` and `weight_decay`;
   - `lr_factor(step, ctx)`: its learning-rate curve (a factor of the peak lr per step), or None for the
     trainer's schedule from the config;
   - `batch_sampler(ctx)`: which samples form each batch (datasets/samplers.py), or None for shuffled batches.
2. The training step: `training_step(batch, step)` (the trainer calls it through `forward`, so DDP sees it).
3. What the evaluation reads: `cluster_probs(x)`, `features(x)`, `select_head(ctx)`.
4. Hooks around the loop, each given the `RunContext` (models/context.py): `on_train_start`, `on_epoch_start`,
   `on_epoch_end`, `after_optimizer_step`. The context names what a hook may use: device, epoch, step, steps per
   epoch, the log, the precision scope, rank and world size, seeds, and `embed(dataset, fn)`, the one pass over
   a whole dataset in eval mode.

docs/adding_a_method.md walks through all of it with a complete example.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from datasets import DataInfo, DataRequest, ExtraStream
from engine.config import ConfigError, Section

from .context import RunContext

if TYPE_CHECKING:
    from engine.config import Config


class ClusteringMethod(nn.Module):
    """Base class of a method; every hook and declaration below has a default that does nothing special."""

    #: the method's config sections (each `Section(name, title, keys, owners=(method names,))`).
    config_sections: tuple[Section, ...] = ()
    #: True when the method has cluster heads and returns `assignments` (so DivClust composes with it).
    has_cluster_heads: bool = False
    #: number of augmented views of each image the method needs in a training batch (see data_request).
    num_views: int = 2
    #: True only for explicitly supervised stages (L2C's similarity network on a labelled source set): the trainer
    #: then adds `label` to the batch and says so in the log. Unsupervised methods never see labels.
    reads_labels: bool = False
    #: True when the method's evaluation outputs depend on the batch (BatchNorm on batch statistics, as IIC without
    #: running statistics): `ctx.embed` then visits the samples in a fixed, seeded shuffled order and returns the
    #: rows in dataset order, so a batch is never a run of similar samples (an image folder is sorted by class).
    embeds_in_mixed_batches: bool = False
    #: metric of the evaluation k-means on `features` ('cosine' for methods whose papers cluster by cosine).
    kmeans_metric: str = "euclidean"
    #: dotted names of the backbone network(s): bf16 autocast on CUDA (output back in fp32), `--compile true`.
    backbone_names: tuple[str, ...] = ("backbone",)

    def __init__(self, cfg: "Config", info: DataInfo):
        super().__init__()
        self.cfg = cfg
        self.info = info
        self.clusterings = int(cfg.clusterings)
        if self.clusterings > 1 and not self.has_cluster_heads:
            raise ConfigError(
                f"method {cfg.method!r} has no cluster heads, so it cannot train --clusterings "
                f"{self.clusterings}; use --clusterings 1 (DivClust composes with cc, pica, iic, mcl and kcl)."
            )

    # ----- declarations (class methods: read before the data and the method exist) -------------------------------
    @classmethod
    def check_config(cls, cfg: "Config") -> None:
        """Raise ConfigError for settings that are wrong together (single keys are checked by their Key)."""

    @classmethod
    def data_request(cls, cfg: "Config") -> DataRequest:
        """What the method needs from its data (default: `num_views` augmented views of every image)."""
        return DataRequest(views=cls.num_views)

    def backbone_modules(self) -> list[tuple[str, nn.Module]]:
        """(name, module) of every name in `backbone_names` that this instance has."""
        found = []
        for name in self.backbone_names:
            try:
                found.append((name, self.get_submodule(name)))
            except AttributeError:
                continue
        return found

    def param_groups(self) -> list[dict]:
        """Optimizer parameter groups (override for per-group learning rates: `lr_mult`, `weight_decay`)."""
        return [{"params": [p for p in self.parameters() if p.requires_grad]}]

    def lr_factor(self, step: int, ctx: RunContext) -> float | None:
        """The learning rate of step `step` (0-based) as a factor of each group's peak lr, or None to follow the
        config's schedule (`lr_schedule`, `warmup_epochs`). Called once per step by the trainer's scheduler."""
        return None

    def batch_sampler(self, ctx: RunContext):
        """A batch sampler over `ctx.data.train` (datasets/samplers.py: set_epoch, len, lists of this rank's
        indices), or None for the trainer's shuffled batches with the last partial batch dropped."""
        return None

    # ----- the step -------------------------------------------------------------------------------------------
    def forward(self, batch: dict, step: int) -> dict:
        return self.training_step(batch, step)

    def training_step(self, batch: dict, step: int) -> dict:
        """One step on `batch`: {'views': list of (B, ...) tensors on the device, 'index': (B,) positions in the
        dataset, 'stream': the extra stream's name (absent for the main stream), 'label' only when
        `reads_labels`}. Returns {'loss': scalar, scalar logs..., 'assignments': (C, N', K) probabilities when the
        method has cluster heads (DivClust's input)}."""
        raise NotImplementedError

    # ----- evaluation ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def cluster_probs(self, x: Tensor) -> Tensor | None:
        """(C, N, K) soft assignments of a batch in eval mode, or None when the method clusters features."""
        return None

    @torch.no_grad()
    def features(self, x: Tensor) -> Tensor:
        """(N, D) representation that k-means / GMM cluster at evaluation."""
        raise NotImplementedError

    def select_head(self, ctx: RunContext) -> int | None:
        """Label-free choice among the heads of `cluster_probs` (e.g. IIC: the sub-head with the lowest loss),
        reported as `selected_head`; None when the method makes no choice. Runs at every evaluation."""
        return None

    # ----- hooks ---------------------------------------------------------------------------------------------
    def on_train_start(self, ctx: RunContext) -> None:
        """Once before the first epoch (also after resuming)."""

    def on_epoch_start(self, ctx: RunContext) -> None:
        """Before each epoch (`ctx.epoch`: its 0-based index): head alternation, outer iterations."""

    def on_epoch_end(self, ctx: RunContext) -> None:
        """After each epoch (`ctx.epoch`: the epoch that just ended): k-means refreshes, pseudo-labels."""

    def after_optimizer_step(self, ctx: RunContext) -> None:
        """After every optimizer step (`ctx.step`: steps done, this one included)."""


__all__ = ["ClusteringMethod", "DataInfo", "DataRequest", "ExtraStream", "RunContext"]
