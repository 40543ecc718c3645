"""PICA: deep semantic clustering by Partition Confidence Maximisation (Huang, Gong, Zhu, CVPR 2020).
Documentation: docs/methods/pica.md (DivClust composition: docs/methods/divclust.md).

Network: fixed Sobel front end on the channel mean of the normalised image (`pica.sobel`) -> trunk (`backbone`,
officially `resnet34_5g`) -> heads `Linear(d, k) -> softmax`: the over-clustering heads `pica.overcluster_heads`
(official [70]) and the main head of `num_clusters` clusters, last.

Schedule: the heads are trained in alternation, one head per epoch of the trainer, in the order
over-clustering heads then main head. An epoch is one full pass over the training set that optimises only that
head's loss (the trunk is trained in every pass), so the official "200 epochs" of a two-head model are 400 epochs
here. Each pass draws a fresh permutation (the trainer's sampler).

Step: view 0 is the clean view, views 1..R the perturbed views (R = `pica.repeats`, official 3);
the clean batch and the perturbed batch (block layout [x_1..x_B] x R) go through the network in two separate calls
(separate BatchNorm statistics); loss = `pica_loss(p_clean, p_perturbed, lamda, eps)` on the batch
gathered from every DDP rank.

DivClust (`--clusterings C`): only the main head is replicated C times (one Linear per clustering, `nn.Linear`'s
init, like DivClust's MultiheadLinear); its loss is the mean over the C clusterings; the over-clustering heads stay
single. `assignments` are the main heads' clean-view probabilities (PICA uses the clean view only).
During an over-clustering pass they are returned detached: that pass optimises only its own head, the label bank
and threshold still follow the main heads. The official DivClust code adds the diversity term twice (effective
weight 2/C); the trainer adds it once (`divclust.weight` 1.0 -> 1/C). DivClust's own PICA
(single K-way head, no alternation, eps 1e-6, Kaiming-init trunk) is `--preset pica_cifar10 --pica.overcluster_heads []
--pica.eps 1e-6 --pica.default_init false --clusterings C --NMI_target T` (its evaluation view is Resize(32) without
the crop: add `--pica_augmentation.resize 32` to match it, which also drops the clean view's crop).

Differences from the official code, on purpose or forced:
- the clean-view crop and the evaluation centre crop are taken from the stored image resized by a bilinear
  `grid_sample` / antialiased interpolation (datasets/batch_augment.py), not PIL;
- evaluation reports the final epoch (no best-ACC checkpoint);
- heads that are not trained in a pass get zero gradients (not None), as the official code's `zero_grad()` of
  PyTorch 1.0 left them, so Adam keeps moving them by their decaying momentum exactly as there; this also keeps
  every parameter in the graph, which DistributedDataParallel requires.
"""
from __future__ import annotations

import dataclasses

import torch
from torch import Tensor, nn

from datasets import DataRequest
from datasets.samplers import ShuffledBatches
from engine.config import ConfigError, Key, Section, at_least, each, non_negative
from engine.distributed import gather_with_grad
from losses.pica import pica_loss

from .backbones import SobelFilter, build_backbone
from .base import ClusteringMethod, DataInfo
from .heads import ClusterHeads, LowestLossHeadSelection, gather_blocks, zero_touch

SECTION = Section("pica", "PICA (Partition Confidence Maximisation, Huang et al. CVPR 2020)", {
    "overcluster_heads": Key([70], "sizes of the over-clustering heads, trained one epoch each before the main head "
                                   "(num_clusters) in every cycle; [] = main head only",
                             each(at_least(2, integer=True)), shape=True),
    "lamda": Key(2.0, "weight of the KL-to-uniform balance term of the PICA loss", non_negative),
    "eps": Key(0.0, "epsilon inside the balance term's log (0.0 official PICA; 1e-6 DivClust's PICALoss)",
               non_negative),
    "repeats": Key(3, "perturbed views per image (official data_nrepeat 3)", at_least(1, integer=True)),
    "sobel": Key(True, "fixed Sobel front end on the channel mean of the normalised image", shape=True),
    "keep_last_batch": Key(True, "train on each pass's last partial batch too (official drop_last False); false drops "
                                 "it, as pica_digits does: 1,797 digits leave a last batch of 5 images"),
    "default_init": Key(True, "PyTorch default init of the trunk's convolutions (official PICA); false keeps the "
                              "backbone's Kaiming init (DivClust's PICA_ResNet34)"),
}, owners=("pica",))


class PICA(LowestLossHeadSelection, ClusteringMethod):
    config_sections = (SECTION,)
    has_cluster_heads = True

    @classmethod
    def data_request(cls, cfg) -> DataRequest:
        return DataRequest(views=1 + int(cfg.pica.repeats))

    def batch_sampler(self, ctx):
        """Shuffled batches with the last partial batch kept, as the official loaders (drop_last False); a last
        batch of one image is dropped (BatchNorm cannot normalise one sample in training). With
        `pica.keep_last_batch false`: the trainer's default batches (the last partial batch dropped)."""
        if not self.cfg.pica.keep_last_batch:
            return None
        n, batch = len(ctx.data.train), int(self.cfg.batch_size)
        return ShuffledBatches(n, batch_size=batch, rank=ctx.rank, world_size=ctx.world_size, seed=ctx.seed,
                               keep_last=n % batch != 1)

    def __init__(self, cfg, info: DataInfo):
        super().__init__(cfg, info)
        p = cfg.pica
        if info.kind != "image" and p.sobel:
            raise ConfigError("pica.sobel needs images, and the data are vectors: use --pica.sobel false "
                              "--backbone mlp for vector data.")
        self.sobel = SobelFilter("mean") if p.sobel else None
        trunk_info = dataclasses.replace(info, channels=2) if p.sobel else info
        self.backbone, dim = build_backbone(cfg.backbone, trunk_info, zero_init_residual=cfg.zero_init_residual)
        if p.default_init:   # official PICA never calls its custom init: PyTorch's default conv init
            for m in self.backbone.modules():
                if isinstance(m, nn.Conv2d):
                    m.reset_parameters()
        sizes = [int(k) for k in p.overcluster_heads]
        self.overcluster = nn.ModuleList([ClusterHeads(dim, k, 1) for k in sizes])
        self.main_head = ClusterHeads(dim, info.num_clusters, self.clusterings)
        self.num_heads = len(sizes) + 1
        self.active_head = self.num_heads - 1
        # Main-head loss of each clustering, summed over the latest main-head pass (label-free head selection).
        self.init_head_loss(self.clusterings)

    # ----- schedule ----------------------------------------------------------------------------------------------
    def head_for_epoch(self, epoch: int) -> int:
        """Index of the head trained in `epoch` (0-based): over-clustering heads in order, then the main head."""
        return epoch % self.num_heads

    def on_epoch_start(self, ctx) -> None:
        self.active_head = self.head_for_epoch(ctx.epoch)
        if self.active_head == self.num_heads - 1:
            self.start_head_loss_pass()

    # ----- networks ----------------------------------------------------------------------------------------------
    def _trunk(self, x: Tensor) -> Tensor:
        return self.backbone(self.sobel(x) if self.sobel is not None else x)

    def _head(self, index: int) -> ClusterHeads:
        return self.main_head if index == self.num_heads - 1 else self.overcluster[index]

    def training_step(self, batch: dict, step: int) -> dict:
        clean, *perturbed = batch["views"]
        repeats = len(perturbed)
        h_clean = self._trunk(clean)                                   # (b, d)
        h_pert = self._trunk(torch.cat(perturbed, dim=0))               # (R*b, d), block layout
        active = self.active_head
        head = self._head(active)
        local_clean = head(h_clean)                                     # (C_h, b, k), fp32 softmax
        p_clean = gather_with_grad(local_clean, dim=1)                  # (C_h, B, k): the global batch
        p_pert = gather_blocks(head(h_pert), repeats)                   # (C_h, R*B, k)
        cfg = self.cfg.pica
        losses = torch.stack([pica_loss(p_clean[c], p_pert[c], lamda=cfg.lamda, eps=cfg.eps)
                              for c in range(p_clean.shape[0])])
        loss = losses.mean()
        idle = [self._head(i) for i in range(self.num_heads) if i != active]
        out = {"loss": loss + zero_touch(idle).to(loss), f"head{active}_loss": loss.detach()}
        if active == self.num_heads - 1:
            self.record_head_loss(losses)
            out["assignments"] = local_clean                            # clean view, (C, b, K); the trainer gathers
        else:
            with torch.no_grad():
                out["assignments"] = self.main_head(h_clean)
        return out

    @torch.no_grad()
    def cluster_probs(self, x: Tensor) -> Tensor:
        return self.main_head(self._trunk(x))

    @torch.no_grad()
    def features(self, x: Tensor) -> Tensor:
        return self._trunk(x)


METHOD = PICA
