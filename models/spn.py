"""SPN: the similarity prediction network of L2C (Hsu, Lv & Kira, ICLR 2018), trained on a LABELLED source set.

Documentation: docs/methods/l2c.md. This is an explicitly SUPERVISED stage (`reads_labels = True`: the
trainer passes the ground truth and says so in the log). It learns, for every ordered pair of a batch (self-pairs
included), whether the two images show the same class: cross-entropy on the N^2 x 2 pair logits against the
labels' pairwise targets ("DPS" in the official code). Its checkpoint (`runs/<preset>/<run>/checkpoints/last.pt`) is
the artefact that the mcl / kcl transfer runs load with `--l2c.spn_checkpoint` and keep frozen.

At evaluation the framework clusters the trunk features with k-means; at the same epochs this method logs the
official KPI, the F1 score of the "similar" class on the evaluation set's pairs (`spn/similar_f1`, eval mode, batches
of batch_size, class-balanced when `l2c.classes_per_batch` is set, as the official evaluation loader).
Under DDP every rank scores the pairs of its own batch (as the official single-GPU code, per rank).
"""
from __future__ import annotations

import torch
from torch import Tensor

from datasets import DataRequest
from engine.config import ConfigError
from losses.l2c import spn_pair_loss

from .base import ClusteringMethod, DataInfo
from .l2c_family import SECTION, check_l2c_config, class_balanced_batches, l2c_data_request
from .l2c_networks import build_similarity_network, pair_confusion, score_similarity_network


class SPN(ClusteringMethod):
    config_sections = (SECTION,)
    has_cluster_heads = False
    num_views = 1
    reads_labels = True
    backbone_names = ("net.trunk",)

    @classmethod
    def check_config(cls, cfg) -> None:
        check_l2c_config(cfg, supervised=True)

    @classmethod
    def data_request(cls, cfg) -> DataRequest:
        return l2c_data_request(cfg)

    def __init__(self, cfg, info: DataInfo):
        super().__init__(cfg, info)
        self.net = build_similarity_network(cfg.backbone, info, int(cfg.l2c.spn_hidden))
        self.last_scores: dict[str, float] | None = None

    def batch_sampler(self, ctx):
        labels = ctx.train_labels()
        if bool((labels < 0).any()):
            raise ConfigError(f"the similarity network learns from labelled pairs, but {int((labels < 0).sum())} "
                              f"training samples of {self.cfg.dataset} have no label (-1).")
        return class_balanced_batches(self, ctx)

    def training_step(self, batch: dict, step: int) -> dict:
        x, labels = batch["views"][0], batch["label"]
        logits = self.net(x).float()                                          # (N^2, 2)
        loss = spn_pair_loss(logits, labels)
        with torch.no_grad():
            counts = pair_confusion(logits, labels)
            tp, fp, fn = counts[0], counts[1], counts[2]
            f1 = 2 * tp / (2 * tp + fp + fn).clamp(min=1)
        return {"loss": loss, "spn_loss": loss.detach(), "similar_f1": f1.float(),
                "similar_fraction": ((tp + fn) / counts.sum()).float()}

    def evaluate_pairs(self, ctx) -> dict[str, float]:
        """F1 of the similar class on the evaluation set's pairs (the official SPN KPI), in eval mode."""
        cfg = self.cfg
        return score_similarity_network(self.net, ctx, ctx.data.eval, ctx.data.labels, batch_size=int(cfg.batch_size),
                                        classes_per_batch=int(cfg.l2c.classes_per_batch))

    def on_epoch_end(self, ctx) -> None:
        done = ctx.epoch + 1
        if not (done == self.cfg.epochs or done % self.cfg.eval_every == 0):
            return
        scores = self.evaluate_pairs(ctx)
        self.last_scores = scores
        ctx.info("similarity network on the evaluation pairs: " + ", ".join(f"{k} {v:.4f}" for k, v in scores.items()))
        ctx.log_metrics({f"spn/{k}": v for k, v in scores.items()}, epoch=done)

    @torch.no_grad()
    def features(self, x: Tensor) -> Tensor:
        return self.net.trunk(x)


METHOD = SPN
