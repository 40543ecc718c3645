"""CC: Contrastive Clustering (Li et al., AAAI 2021). Documentation: docs/methods/cc.md.

Backbone -> (a) instance projector Linear(d, h) -> ReLU -> Linear(h, 128), L2-normalised inside the network;
(b) C cluster heads Linear(d, h) -> ReLU -> Linear(h, K) -> softmax (C = 1 is plain CC; C > 1 composes with
DivClust as in its official re-implementation: instance loss once, cluster loss averaged over clusterings).
The two views go through the network in two separate calls (per-view BatchNorm statistics, as the official
code). Losses are computed in fp32 on the batch gathered from every DDP rank (without gathering, multi-GPU CC
loses about 10 points, as the official repository's issue tracker reports).

STL-10 (`cc.unlabeled_pass: true`, the `cc_stl10` preset): every epoch first trains the instance loss alone on
the 100,000 unlabelled images (an extra data stream of the trainer), then both losses on the 13,000 labelled
ones, as the official `train_STL10.py`. In the unlabelled steps the cluster heads get zero gradients, as the
official code's `zero_grad()` left them (so Adam keeps moving them by momentum, as there).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from datasets import DataRequest, ExtraStream
from engine.config import ConfigError, Key, Section, at_least, non_negative, positive
from engine.distributed import gather_with_grad
from losses.cc import cc_loss, instance_contrastive_loss

from .backbones import build_backbone
from .base import ClusteringMethod, DataInfo
from .heads import ClusterHeads, zero_touch

SECTION = Section("cc", "CC (Contrastive Clustering, Li et al. AAAI 2021)", {
    "instance_temperature": Key(0.5, "tau_I of the instance-level contrastive loss", positive),
    "cluster_temperature": Key(1.0, "tau_C of the cluster-level contrastive loss", positive),
    "entropy_weight": Key(1.0, "weight of the cluster-marginal entropy regulariser", non_negative),
    "feature_dim": Key(128, "instance projector output dimension", at_least(1, integer=True), shape=True),
    "hidden_dim": Key(0, "width of both projectors' hidden layer (0: the backbone's feature dimension)",
                      at_least(0, integer=True), shape=True),
    "unlabeled_pass": Key(False, "STL-10: every epoch, first the instance loss alone over the 100k unlabelled "
                                 "images (official train_STL10.py), then both losses on the labelled set"),
}, owners=("cc",))


class CC(ClusteringMethod):
    config_sections = (SECTION,)
    has_cluster_heads = True
    num_views = 2

    @classmethod
    def check_config(cls, cfg) -> None:
        if cfg.cc.unlabeled_pass and cfg.dataset != "stl10":
            raise ConfigError(f"cc.unlabeled_pass trains on STL-10's unlabelled images; dataset {cfg.dataset!r} "
                              f"has none (use --dataset stl10, or --cc.unlabeled_pass false).")

    @classmethod
    def data_request(cls, cfg) -> DataRequest:
        if cfg.cc.unlabeled_pass:
            return DataRequest(views=2, options={"unlabeled": True}, extra_streams=(ExtraStream("unlabeled"),))
        return DataRequest(views=2)

    def __init__(self, cfg, info: DataInfo):
        super().__init__(cfg, info)
        self.backbone, dim = build_backbone(cfg.backbone, info, zero_init_residual=cfg.zero_init_residual)
        hidden = cfg.cc.hidden_dim or dim
        self.instance_projector = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(inplace=True),
                                                nn.Linear(hidden, cfg.cc.feature_dim))
        self.cluster_heads = ClusterHeads(dim, info.num_clusters, self.clusterings, hidden=hidden)

    def _forward_view(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.backbone(x)
        z = F.normalize(self.instance_projector(h).float(), dim=1)        # (B, 128)
        c = self.cluster_heads(h)                                         # (C, B, K), fp32 softmax
        return z, c

    def _instance_only(self, x_a: Tensor, x_b: Tensor) -> dict:
        z_a = F.normalize(self.instance_projector(self.backbone(x_a)).float(), dim=1)
        z_b = F.normalize(self.instance_projector(self.backbone(x_b)).float(), dim=1)
        instance = instance_contrastive_loss(gather_with_grad(z_a), gather_with_grad(z_b),
                                             temperature=self.cfg.cc.instance_temperature)
        return {"loss": instance + zero_touch([self.cluster_heads]).to(instance), "instance_loss": instance.detach()}

    def training_step(self, batch: dict, step: int) -> dict:
        x_a, x_b = batch["views"][:2]
        if batch.get("stream") == "unlabeled":
            return self._instance_only(x_a, x_b)
        z_a, c_a = self._forward_view(x_a)
        z_b, c_b = self._forward_view(x_b)
        cfg = self.cfg.cc
        # Global batch across ranks (identity in one process); the losses are pure functions of it.
        gz_a, gz_b = gather_with_grad(z_a), gather_with_grad(z_b)
        gc_a, gc_b = gather_with_grad(c_a, dim=1), gather_with_grad(c_b, dim=1)
        loss, instance, cluster = cc_loss(gz_a, gz_b, gc_a, gc_b, instance_temperature=cfg.instance_temperature,
                                          cluster_temperature=cfg.cluster_temperature,
                                          entropy_weight=cfg.entropy_weight)
        return {
            "loss": loss,
            "instance_loss": instance.detach(),
            "cluster_loss": cluster.detach(),
            # DivClust on CC uses both views, concatenated along the sample axis.
            "assignments": torch.cat([c_a, c_b], dim=1),
        }

    @torch.no_grad()
    def cluster_probs(self, x: Tensor) -> Tensor:
        return self.cluster_heads(self.backbone(x))

    @torch.no_grad()
    def features(self, x: Tensor) -> Tensor:
        return self.backbone(x)


METHOD = CC
