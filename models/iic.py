"""IIC: Invariant Information Clustering (Ji, Henriques, Vedaldi, ICCV 2019), image clustering.
Documentation: docs/methods/iic.md (with the DivClust composition, the framework's own definition).

Network: optional fixed Sobel front end on the ITU-R 601 luma of the [0, 1] image (`iic.sobel`; the
Table-1 runs use it, MNIST does not) -> trunk (`backbone`: `resnet34_5g` = ClusterNet5gTrunk, `vgg_6c` =
ClusterNet6cTrunk) -> head A (over-clustering, `iic.overcluster_k` clusters; 0 = no head A) and head B (main,
`num_clusters`), each with `iic.sub_heads` sub-heads `Linear(d, k) -> softmax` (init N(0, 0.01), bias 0).
`iic.bn_track false` makes every BatchNorm use batch statistics in training and evaluation, as the official
CIFAR-10 and MNIST runs (evaluation then depends on the batch: set `eval_batch_size` to the official batch).

Schedule: a cycle of `head_A_epochs` epochs of head A and `head_B_epochs` epochs of head B, in the
order `iic.head_order` (AB = the official `--head_A_first`). One epoch of the trainer = one full pass that
optimises only the active head's sub-heads (the trunk always trains), so the official "2000 epochs" of
A x1 + B x2 are 6,000 epochs here.

Step: `batch_size` = B distinct images; view 0 is tf1, views 1..r are r independent tf2 views
(r = `iic.repeats`); the original batch goes through the network once and its probabilities are tiled r times
(block layout), which equals the official forward of the r-fold repeated batch: BatchNorm's batch mean and biased
variance do not change when a batch is repeated (only the unbiased running-variance update differs, by a factor
(rB - 1)/(B - 1) / r). Loss = mean over sub-heads of `iic_loss(p_tf1.repeat(r, 1), p_tf2, lamb)`, on the batch
gathered from every DDP rank. The official step batch is r * B.

Evaluation: `cluster_probs` returns every head-B sub-head as a separate head, so the evaluator reports each one
and their mean; `select_head(ctx)` is the paper's "lowest-loss sub-head", chosen without labels as the official
analysis script chooses it: the IIC loss of every head-B sub-head summed over a fresh pass of the training data
(tf1 and tf2 views, batches of batch_size in order) with the network in eval mode (`iic.select_by: eval_loss`);
`train_loss` picks by the losses summed over the latest head-B training pass instead (no extra pass).
The paper's table also comes from the epoch with the best accuracy, which uses labels: the run's results.json
reports the final epoch, and the best-accuracy epoch only as `label_informed` analysis.

DivClust (`--clusterings C`): head B is C parallel K-way heads with no sub-heads (so C > 1 needs
`--iic.sub_heads 1`); head A, when present, stays single (with its sub-heads), as PICA's over-clustering heads.
`assignments` are head B's tf1 probabilities (C, b, K); detached during a head-A pass. The exact definition
(colour input, no Sobel, no head A, DivClust-PICA's data) is `--preset pica_cifar10 --method iic --iic.sobel false
--iic.overcluster_k 0 --iic.sub_heads 1 --iic.repeats 3 --clusterings C --NMI_target T` (the `pica` augmentation
then makes the clean view plus r perturbed views).

MNIST (a design decision): the official greyscale script calls `net(imgs)` without `head=`, so its "head A"
pass trains head B again (head A is never trained). The `iic_mnist` preset follows the intended schedule
(B x2 then A x1 with head A really trained).

Loaders: the official ones are sequential and unshuffled and keep the last partial batch (`iic.batch_order:
sequential`, the presets' default); `shuffled` draws a permutation per epoch and drops the last partial batch.

Other differences from the official code: no rounding of the grey image to 8 bits; augmentations from
datasets/batch_augment.py (one `grid_sample` for crop and resize instead of PIL's two steps); heads that are not trained in a pass get zero gradients (not None), as the official
`zero_grad()` of PyTorch 1.0 left them, so Adam keeps moving them by their decaying momentum exactly as there
(this also keeps every parameter in the graph, which DistributedDataParallel requires); the final epoch is
reported (no best-ACC checkpoint).
"""
from __future__ import annotations

import dataclasses

import torch
from torch import Tensor, nn

from datasets import DataRequest
from datasets.samplers import SequentialBatches
from engine.config import ConfigError, Key, Section, at_least, non_negative, one_of
from engine.distributed import gather_with_grad
from losses.iic import iic_loss

from .backbones import SobelFilter, build_backbone
from .base import ClusteringMethod, DataInfo
from .heads import ClusterHeads, LowestLossHeadSelection, gather_blocks, zero_touch

SECTION = Section("iic", "IIC (Invariant Information Clustering, Ji et al. ICCV 2019)", {
    "overcluster_k": Key(70, "clusters of the over-clustering head A (0: no head A)",
                         lambda v: None if isinstance(v, int) and (v == 0 or v >= 2) else "0 or an integer >= 2",
                         shape=True),
    "sub_heads": Key(5, "sub-heads per head (losses averaged); evaluation reports every head-B sub-head and selects "
                        "the lowest-loss one", at_least(1, integer=True), shape=True),
    "repeats": Key(5, "r: transformed views per image, the original view tiled r times (official step batch = "
                      "r * batch_size)", at_least(1, integer=True)),
    "head_order": Key("BA", "order of the head passes in a cycle: AB (official --head_A_first) or BA",
                      one_of("AB", "BA")),
    "head_A_epochs": Key(1, "consecutive epochs (full passes) of head A per cycle", at_least(0, integer=True)),
    "head_B_epochs": Key(1, "consecutive epochs of head B per cycle", at_least(1, integer=True)),
    "lamb": Key(1.0, "weight of the marginal-entropy terms of the IIC loss", non_negative),
    "bn_track": Key(True, "BatchNorm running statistics; false: batch statistics in training and evaluation "
                          "(official CIFAR-10, MNIST)", shape=True),
    "sobel": Key(True, "fixed Sobel front end on the ITU-R 601 luma of the [0, 1] image (official MNIST: false)",
                 shape=True),
    "select_by": Key("eval_loss", "the reported head-B sub-head: eval_loss (lowest IIC loss over an eval-mode pass "
                                  "of the training data, as the official analysis) or train_loss (lowest loss over "
                                  "the latest head-B training pass)", one_of("eval_loss", "train_loss")),
    "batch_order": Key("sequential", "training batches: sequential (the dataset in order, last partial batch kept, "
                                     "as the official loaders) or shuffled (a permutation per epoch, last partial "
                                     "batch dropped)", one_of("sequential", "shuffled")),
}, owners=("iic",))


def _sub_heads(dim: int, k: int, count: int) -> ClusterHeads:
    """`count` parallel Linear(dim, k) -> softmax heads with IIC's init: weights N(0, 0.01), bias 0."""
    heads = ClusterHeads(dim, k, count)
    nn.init.normal_(heads.out.weight, 0.0, 0.01)
    nn.init.zeros_(heads.out.bias)
    return heads


def _batch_statistics_only(module: nn.Module) -> None:
    """BatchNorm without running statistics (official `--batchnorm_track` off): batch statistics always."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.track_running_stats = False
            m.running_mean = m.running_var = m.num_batches_tracked = None


class IIC(LowestLossHeadSelection, ClusteringMethod):
    config_sections = (SECTION,)
    has_cluster_heads = True

    @classmethod
    def check_config(cls, cfg) -> None:
        if cfg.iic.batch_order == "sequential" and cfg.steps_per_epoch:
            raise ConfigError(f"iic.batch_order sequential with steps_per_epoch {cfg.steps_per_epoch} would train on "
                              f"the same first {cfg.steps_per_epoch} batches in every epoch; use --iic.batch_order "
                              f"shuffled (or a full pass per epoch).")
        if cfg.iic.batch_order == "sequential" and cfg.dataset == "image_folder":
            raise ConfigError("iic.batch_order sequential on an image_folder: its files are listed class folder by "
                              "class folder, so every sequential batch would hold one class (the official CIFAR "
                              "files are in a mixed order). Use --iic.batch_order shuffled.")
        if int(cfg.clusterings) > 1 and int(cfg.iic.sub_heads) != 1:
            raise ConfigError(
                f"IIC with --clusterings {cfg.clusterings} is DivClust-IIC: head B becomes {cfg.clusterings} "
                f"parallel clusterings without sub-heads. Add --iic.sub_heads 1 (got {cfg.iic.sub_heads}).")

    @classmethod
    def data_request(cls, cfg) -> DataRequest:
        return DataRequest(views=1 + int(cfg.iic.repeats))

    def __init__(self, cfg, info: DataInfo):
        super().__init__(cfg, info)
        c = cfg.iic
        if info.kind != "image" and c.sobel:
            raise ConfigError("iic.sobel needs images, and the data are vectors: use --iic.sobel false "
                              "--backbone mlp for vector data.")
        self.sobel = SobelFilter("luma") if c.sobel else None
        trunk_info = dataclasses.replace(info, channels=2) if c.sobel else info
        self.backbone, dim = build_backbone(cfg.backbone, trunk_info, zero_init_residual=cfg.zero_init_residual)
        k_a = int(c.overcluster_k)
        self.head_a = _sub_heads(dim, k_a, int(c.sub_heads)) if k_a else None
        self.head_b = _sub_heads(dim, info.num_clusters, int(c.sub_heads) * self.clusterings)
        if not c.bn_track:
            _batch_statistics_only(self)
            self.embeds_in_mixed_batches = True      # evaluation batches must not be runs of one class
        schedule_a = ["A"] * int(c.head_A_epochs) if self.head_a is not None else []
        schedule_b = ["B"] * int(c.head_B_epochs)
        self.schedule = schedule_a + schedule_b if c.head_order == "AB" else schedule_b + schedule_a
        self.active_head = "B"
        # Loss of every head-B sub-head summed over the latest head-B pass (label-free sub-head selection).
        self.init_head_loss(self.head_b.out.weight.shape[0])

    def batch_sampler(self, ctx):
        if self.cfg.iic.batch_order != "sequential":
            return None
        return SequentialBatches(len(ctx.data.train), batch_size=int(self.cfg.batch_size), rank=ctx.rank,
                                 world_size=ctx.world_size)

    # ----- label-free sub-head selection --------------------------------------------------------------------------
    @torch.no_grad()
    def eval_pass_losses(self, ctx) -> Tensor:
        """(S,) IIC loss of every head-B sub-head summed over an eval-mode pass of the training data: tf1 and the
        tf2 views of each batch of batch_size, in dataset order, augmented with a generator seeded per epoch."""
        lamb = float(self.cfg.iic.lamb)

        def batch_losses(views: list[Tensor]) -> Tensor:
            tf1, *tf2 = views
            p1 = self.head_b(self._trunk(tf1))                           # (S, b, k)
            p2 = self.head_b(self._trunk(torch.cat(tf2, dim=0)))         # (S, r*b, k)
            return torch.stack([iic_loss(p1[s].repeat(len(tf2), 1), p2[s], lamb=lamb)
                                for s in range(p1.shape[0])])[None]      # (1, S)

        rows = ctx.embed(ctx.data.train, batch_losses, batch_size=int(self.cfg.batch_size),
                         augment_seed=ctx.seed_for("subhead_selection", ctx.epoch))
        return rows.sum(dim=0)

    def select_head(self, ctx=None) -> int | None:
        if self.head_b.out.weight.shape[0] == 1:
            return None
        if self.cfg.iic.select_by == "train_loss" or ctx is None:
            return super().select_head(ctx)
        losses = self.eval_pass_losses(ctx)
        ctx.log_metrics({f"eval/subhead_loss/{s}": float(v) for s, v in enumerate(losses.tolist())})
        return int(torch.argmin(losses))

    # ----- schedule ----------------------------------------------------------------------------------------------
    def head_for_epoch(self, epoch: int) -> str:
        """"A" or "B": the head trained in `epoch` (0-based)."""
        return self.schedule[epoch % len(self.schedule)]

    def on_epoch_start(self, ctx) -> None:
        self.active_head = self.head_for_epoch(ctx.epoch)
        if self.active_head == "B":
            self.start_head_loss_pass()

    # ----- networks ----------------------------------------------------------------------------------------------
    def _trunk(self, x: Tensor) -> Tensor:
        return self.backbone(self.sobel(x) if self.sobel is not None else x)

    def training_step(self, batch: dict, step: int) -> dict:
        tf1, *tf2 = batch["views"]
        repeats = len(tf2)
        h1 = self._trunk(tf1)                                          # (b, d)
        h2 = self._trunk(torch.cat(tf2, dim=0))                         # (r*b, d), block layout
        head = self.head_b if self.active_head == "B" else self.head_a
        local1 = head(h1)                                               # (S, b, k), fp32 softmax
        p1 = gather_with_grad(local1, dim=1)                            # (S, B, k): the global batch
        p2 = gather_blocks(head(h2), repeats)                           # (S, r*B, k)
        lamb = float(self.cfg.iic.lamb)
        losses = torch.stack([iic_loss(p1[s].repeat(repeats, 1), p2[s], lamb=lamb) for s in range(p1.shape[0])])
        loss = losses.mean()
        idle = [h for h in (self.head_a, self.head_b) if h is not None and h is not head]
        out = {"loss": loss + zero_touch(idle).to(loss), f"head_{self.active_head}_loss": loss.detach()}
        if self.active_head == "B":
            self.record_head_loss(losses)
            out["assignments"] = local1                                 # (C, b, K) when C > 1 (S = 1)
        else:
            with torch.no_grad():
                out["assignments"] = self.head_b(h1)
        return out

    @torch.no_grad()
    def cluster_probs(self, x: Tensor) -> Tensor:
        """(S, N, K): every head-B sub-head (with C > 1: the C clusterings)."""
        return self.head_b(self._trunk(x))

    @torch.no_grad()
    def features(self, x: Tensor) -> Tensor:
        return self._trunk(x)


METHOD = IIC
