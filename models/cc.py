"""CC: Contrastive Clustering (Li et al., AAAI 2021). Spec: shared/specs/cc.md.

Backbone -> (a) instance projector Linear(d, h) -> ReLU -> Linear(h, 128), L2-normalised inside the network;
(b) C cluster heads Linear(d, h) -> ReLU -> Linear(h, K) -> softmax (C = 1 is plain CC; C > 1 composes with
DivClust as in its official re-implementation: instance loss once, cluster loss averaged over clusterings).
The two views go through the network in two separate calls (per-view BatchNorm statistics, as the official
code). Losses are computed in fp32 on the batch gathered from every DDP rank (official issue #36: without
gathering, multi-GPU CC loses about 10 points).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engine.distributed import gather_with_grad
from losses.cc import cluster_contrastive_loss, instance_contrastive_loss

from .backbones import build_backbone
from .base import ClusteringMethod, DataInfo
from .heads import ClusterHeads


class CC(ClusteringMethod):
    has_cluster_heads = True
    num_views = 2

    def __init__(self, cfg, info: DataInfo):
        super().__init__(cfg, info)
        self.backbone, dim = build_backbone(cfg.backbone, info)
        hidden = cfg.cc.hidden_dim or dim
        self.instance_projector = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(inplace=True),
                                                nn.Linear(hidden, cfg.cc.feature_dim))
        self.cluster_heads = ClusterHeads(dim, info.num_clusters, self.clusterings, hidden=hidden)

    def _forward_view(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.backbone(x)
        z = F.normalize(self.instance_projector(h).float(), dim=1)        # (B, 128)
        c = self.cluster_heads(h)                                         # (C, B, K), fp32 softmax
        return z, c

    def training_step(self, batch: dict, step: int) -> dict:
        x_a, x_b = batch["views"][:2]
        z_a, c_a = self._forward_view(x_a)
        z_b, c_b = self._forward_view(x_b)
        cfg = self.cfg.cc
        # Global batch across ranks (identity in one process); the losses are pure functions of it.
        gz_a, gz_b = gather_with_grad(z_a), gather_with_grad(z_b)
        gc_a, gc_b = gather_with_grad(c_a, dim=1), gather_with_grad(c_b, dim=1)
        instance = instance_contrastive_loss(gz_a, gz_b, temperature=cfg.instance_temperature)
        cluster = torch.stack([
            cluster_contrastive_loss(gc_a[h], gc_b[h], temperature=cfg.cluster_temperature,
                                     entropy_weight=cfg.entropy_weight)
            for h in range(self.clusterings)
        ]).mean()
        return {
            "loss": instance + cluster,
            "instance_loss": instance.detach(),
            "cluster_loss": cluster.detach(),
            # DivClust on CC uses both views, concatenated along the sample axis (divclust.md §3).
            "assignments": torch.cat([c_a, c_b], dim=1),
        }

    @torch.no_grad()
    def cluster_probs(self, x: Tensor) -> Tensor:
        return self.cluster_heads(self.backbone(x))

    @torch.no_grad()
    def features(self, x: Tensor) -> Tensor:
        return self.backbone(x)


METHOD = CC
