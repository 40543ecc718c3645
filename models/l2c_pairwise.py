"""The clustering network of MCL / KCL, trained from pairwise targets (docs/methods/l2c.md).

A backbone (`lenet`, `vgg_s` or any framework backbone), an optional Linear-BN-ReLU layer (`l2c.head_hidden`; the
official VGG-S has 512) and C linear cluster layers with a softmax (C > 1 composes with DivClust). The loss is the
mean over heads of `criterion(prob, S)` on all N^2 ordered pairs of the batch. Two sources of the target S:

* `l2c.targets: labels` - pairwise-SUPERVISED mode ("multi-class classification without multi-class labels", the
  MNIST demo): S from the ground truth (+1 same class, -1 otherwise; pairs with an unknown label masked out). The
  method then reads labels (`reads_labels`), which the trainer announces in the log. Under DDP the probabilities and
  labels of every rank are gathered, so the pairs are those of the global batch.
* `l2c.targets: spn` - TRANSFER mode (L2C): S from a frozen similarity network (`l2c.spn_checkpoint`, a `spn` run's
  checkpoint, loaded with weights_only=True and strict keys) applied to the same augmented batch, hard-binarised.
  The network is never optimised but stays in train mode, so its BatchNorm uses the target batch's statistics
  (official; its running statistics drift, unused). Labels are never read. Under DDP each rank uses its own pairs.

With K larger than the number of classes the loss leaves surplus clusters empty; how many clusters the evaluation
set actually uses is logged at every evaluation (`l2c/clusters_used`, also `cluster_sizes` in results.json). In
transfer mode the evaluation also scores the frozen network's pair predictions on the target set against the ground
truth (`l2c/spn_similar_f1`, ...): an analysis of what bounds the clustering, like the metrics it reads the labels.
Evaluation differs from the official script in one point: the framework re-fits the cluster->class map on the
evaluation pass instead of re-using the map of the last training epoch (equal or higher ACC).
"""
from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import torch
from torch import Tensor, nn

from datasets import DataRequest
from engine import checkpoint as ckpt
from engine.distributed import gather, gather_with_grad
from losses.l2c import kcl_loss, mcl_loss, pairwise_targets, spn_logits_to_simi

from .base import ClusteringMethod, DataInfo
from .heads import ClusterHeads
from .l2c_family import SECTION, check_l2c_config, class_balanced_batches, l2c_data_request
from .l2c_networks import SimilarityNetwork, build_similarity_network, build_trunk, score_similarity_network


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:12]


def load_similarity_network(path: str | None, cfg, info: DataInfo) -> tuple[SimilarityNetwork, str]:
    """The frozen similarity network of a `spn` run's checkpoint, and a description (path + sha256 prefix)."""
    if not path:
        raise ckpt.CheckpointError(
            "l2c.targets spn needs the trained similarity network: train one with a `spn` preset (e.g. python main.py "
            "--preset spn_digits --run_name reference) and pass --l2c.spn_checkpoint "
            "runs/spn_digits/reference/checkpoints/last.pt.")
    try:
        state = ckpt.load(path)
    except ckpt.CheckpointError as err:
        raise ckpt.CheckpointError(
            f"{err} l2c.spn_checkpoint must be a `spn` run's checkpoint; train it first, e.g. python main.py --preset "
            f"spn_digits --run_name reference (then runs/spn_digits/reference/checkpoints/last.pt).") from None
    saved = state.get("config") or {}
    if saved.get("method") != "spn":
        raise ckpt.CheckpointError(f"{path} was written by method {saved.get('method')!r}, not by a similarity "
                                   f"network (method spn).")
    for key in ("image_size", "normalize_mean", "normalize_std"):
        if saved.get(key) != cfg[key]:
            raise ckpt.CheckpointError(
                f"the similarity network in {path} was trained with {key} = {saved.get(key)!r} but this run uses "
                f"{cfg[key]!r}; its inputs must be prepared the same way.")
    spn_info = dataclasses.replace(info, norm=saved.get("backbone_norm", info.norm))
    net = build_similarity_network(saved["backbone"], spn_info, int(saved["l2c"]["spn_hidden"]))
    weights = {k[len("net."):]: v for k, v in state["model"].items() if k.startswith("net.")}
    ckpt.load_model_state(net, weights)
    net.requires_grad_(False)
    file = Path(path)
    file = file / "checkpoints" / "last.pt" if file.is_dir() else file
    return net, f"{file} (sha256 {_file_digest(file)}, epoch {state.get('epoch')}, backbone {saved['backbone']})"


class PairwiseClustering(ClusteringMethod):
    """Base of MCL and KCL; a subclass sets `criterion_name` and implements `criterion`."""

    config_sections = (SECTION,)
    has_cluster_heads = True
    num_views = 1
    criterion_name = "pairwise"

    @classmethod
    def check_config(cls, cfg) -> None:
        check_l2c_config(cfg, supervised=cfg.l2c.targets == "labels")

    @classmethod
    def data_request(cls, cfg) -> DataRequest:
        return l2c_data_request(cfg)

    def __init__(self, cfg, info: DataInfo):
        super().__init__(cfg, info)
        opts = cfg.l2c
        # The flag that makes the supervised mode visible: the trainer passes labels only when this is True.
        self.reads_labels = opts.targets == "labels"
        self.trunk, dim = build_trunk(cfg.backbone, info, zero_init_residual=cfg.zero_init_residual)
        hidden = int(opts.head_hidden)
        self.hidden = (nn.Sequential(nn.Linear(dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True))
                       if hidden else nn.Identity())
        self.cluster_heads = ClusterHeads(hidden or dim, info.num_clusters, self.clusterings)
        self.spn: SimilarityNetwork | None = None
        self.spn_description = ""
        if opts.targets == "spn":
            self.spn, self.spn_description = load_similarity_network(opts.spn_checkpoint, cfg, info)
        self.clusters_used: list[int] | None = None

    @property
    def backbone_names(self) -> tuple[str, ...]:
        return ("trunk", "spn.trunk") if self.spn is not None else ("trunk",)

    def criterion(self, prob: Tensor, simi: Tensor, mask: Tensor | None) -> Tensor:
        raise NotImplementedError

    # ----- hooks ------------------------------------------------------------------------------------------------
    def param_groups(self) -> list[dict]:
        return [{"params": [p for name, p in self.named_parameters() if not name.startswith("spn.")]}]

    def batch_sampler(self, ctx):
        # the official clustering loaders shuffle and keep the last partial batch
        return class_balanced_batches(self, ctx, keep_last=True)

    def on_train_start(self, ctx) -> None:
        if self.reads_labels:
            ctx.info(f"l2c: {self.criterion_name} with pairwise targets from the ground-truth LABELS of "
                     f"{self.cfg.dataset} (pairwise-supervised mode, l2c.targets labels)")
        else:
            ctx.info(f"l2c: {self.criterion_name} with pairwise targets from the frozen similarity network "
                     f"{self.spn_description}; the labels of {self.cfg.dataset} are not read in training")

    def on_epoch_end(self, ctx) -> None:
        done = ctx.epoch + 1
        if done == self.cfg.epochs or done % self.cfg.eval_every == 0:
            self.count_clusters(ctx, epoch=done)
            if self.spn is not None:
                self.score_targets(ctx, epoch=done)

    def score_targets(self, ctx, *, epoch: int) -> dict[str, float]:
        """Evaluation-time analysis (reads the evaluation labels, as the metrics do): how well the frozen network's
        pair predictions match the target classes, on un-augmented batches of batch_size, network in train mode as in
        training. This bounds what the clustering can reach. Logged as l2c/spn_*."""
        scores = score_similarity_network(self.spn, ctx, ctx.data.eval, ctx.data.labels,
                                          batch_size=int(self.cfg.batch_size), train_mode=True)
        ctx.info("l2c: similarity network on the target pairs (evaluation, scored with the labels): " +
                 ", ".join(f"{k} {v:.4f}" for k, v in scores.items()))
        ctx.log_metrics({f"l2c/spn_{k}": v for k, v in scores.items()}, epoch=epoch)
        return scores

    @torch.no_grad()
    def count_clusters(self, ctx, *, epoch: int) -> list[int]:
        """Non-empty clusters of each head over the evaluation set (argmax, eval mode), logged."""
        k = self.info.num_clusters
        heads = ctx.embed(ctx.data.eval, lambda x: self.cluster_probs(x).argmax(dim=-1).t())   # (N, C)
        sizes = [torch.bincount(heads[:, h].cpu(), minlength=k) for h in range(self.clusterings)]
        self.clusters_used = [int((s > 0).sum()) for s in sizes]
        used = self.clusters_used[0] if self.clusterings == 1 else self.clusters_used
        ctx.info(f"l2c: clusters used on the evaluation set: {used} of K = {k} ({ctx.data.num_classes} classes)")
        metrics = {"l2c/clusters_used": self.clusters_used[0]}
        if self.clusterings > 1:
            metrics.update({f"l2c/clusters_used/{h}": n for h, n in enumerate(self.clusters_used)})
        ctx.log_metrics(metrics, epoch=epoch)
        return self.clusters_used

    # ----- training ---------------------------------------------------------------------------------------------
    def targets(self, batch: dict, x: Tensor, probs: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """(probabilities (C, M, K), targets S (M, M), keep-mask or None) for the pairs this step trains on."""
        if self.reads_labels:
            labels = gather(batch["label"])
            probs = gather_with_grad(probs, dim=1)
            simi = pairwise_targets(labels).to(probs.dtype)
            known = labels >= 0
            mask = None if bool(known.all()) else known[:, None] & known[None, :]
            return probs, simi, mask
        with torch.no_grad():                      # frozen, in train mode (BN on the target batch), hard targets
            simi = spn_logits_to_simi(self.spn(x).float())
        return probs, simi, None

    def training_step(self, batch: dict, step: int) -> dict:
        x = batch["views"][0]
        probs = self.cluster_heads(self.hidden(self.trunk(x)))                 # (C, N, K), fp32 softmax
        pair_probs, simi, mask = self.targets(batch, x, probs)
        loss = torch.stack([self.criterion(pair_probs[h], simi, mask) for h in range(self.clusterings)]).mean()
        kept = simi if mask is None else simi[mask]
        return {
            "loss": loss,
            f"{self.criterion_name}_loss": loss.detach(),
            "similar_pairs": (kept > 0).float().mean(),                        # fraction of +1 targets
            "assignments": probs,
        }

    @torch.no_grad()
    def cluster_probs(self, x: Tensor) -> Tensor:
        return self.cluster_heads(self.hidden(self.trunk(x)))

    @torch.no_grad()
    def features(self, x: Tensor) -> Tensor:
        return self.hidden(self.trunk(x))


class MCL(PairwiseClustering):
    """Meta classification likelihood (Hsu et al., ICLR 2019)."""

    criterion_name = "mcl"

    def criterion(self, prob: Tensor, simi: Tensor, mask: Tensor | None) -> Tensor:
        return mcl_loss(prob, simi, mask)


class KCL(PairwiseClustering):
    """KL-divergence contrastive loss (Hsu & Kira, 2016); margin `l2c.kcl_margin`."""

    criterion_name = "kcl"

    def criterion(self, prob: Tensor, simi: Tensor, mask: Tensor | None) -> Tensor:
        return kcl_loss(prob, simi, mask, margin=float(self.cfg.l2c.kcl_margin))
