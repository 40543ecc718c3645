"""Kingdra: ensemble pseudo-labels + Ladder-IM networks (Gupta et al., ICLR 2020). Docs: docs/methods/kingdra.md.

M fully connected ladder networks (Ladder-IM) are trained WITHOUT labels by the information-maximisation loss, the
ladder denoising cost and KL(clean || corrupted); their predictions build a similarity graph whose dense,
mutually distant groups become high-precision pseudo-labels; every member then also trains on a class-balanced
set of those labels; repeat.

How it fits the common trainer:
* The members are ONE module with stacked parameters (member axis first): every layer is one batched matmul and
  every loss is the documented pure function vmapped over the members, so an ensemble of M trains in one pass. The
  loss is the sum of the members' losses; Adam is elementwise, so this equals M separately optimised models.
* An outer iteration is a run of trainer epochs (`epochs_per_iter0` while no pseudo-labels exist, then
  `epochs_per_iter`); `on_epoch_end` closes it: full-data predictions, pseudo-labels, bookkeeping, balanced sets.
  The run length is the trainer's `epochs` (the presets use the official n_iter x epochs per iteration).
* Outer-iteration counter, pseudo-labels (current and best saved), the balanced supervised sets, the loss weights
  and the full-data normalisation statistics are buffers, so checkpoints hold them and a resume continues exactly.
* Prediction uses the normalisation statistics of the WHOLE dataset, as the official full-batch
  `predict_on_batch(X)`: they are recomputed, layer by layer in chunks, after every epoch.
* Evaluation heads: head 0 = the mean of the members' softmax (the official answer with common mapping), heads
  1..M = the members. `select_head()` picks the official answer (head 0, or member 0 = head 1 when
  `common_mapping` is false, CIFAR-10 config) without labels. k-means runs on the concatenated member softmaxes.

Differences from the official code (noted, not hidden):
* the unlabelled stream comes from the trainer's sampler: shuffled in every epoch, also in iteration 0 (official:
  natural order there), the same order for all members (official: each Keras fit shuffles on its own), last
  partial batch dropped. The supervised pairing is the official one: each member has its own shuffled balanced
  set, and unlabelled row i is paired with its row i, so each epoch's permutation moves the pairs jointly;
* torch Adam's eps is 1e-8 (Keras 1e-7, inside the same sqrt(v) + eps form);
* members are seeded from the run's seed (TF was unseeded in the official code); the shuffles of the balanced sets
  from derive_seed(seed, "kingdra_sets", outer iteration).
"""
from __future__ import annotations

import math
import os
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import vmap

from datasets import DataRequest
from datasets.registry import DatasetNotFoundError
from engine.config import ConfigError, Key, Section, at_least, each, in_range, non_negative, probability
from losses.kingdra import (BN_EPS, align_pseudo_labels, balanced_pseudo_label_set, denoising_cost, im_loss,
                            kingdra_pseudo_labels, ladder_batchnorm, ladder_combinator, noise_kl, sup_ce_loss)

from .base import ClusteringMethod, DataInfo

SECTION = Section("kingdra", "Kingdra (ensemble pseudo-labels + Ladder-IM networks, Gupta et al. ICLR 2020)", {
    "ensemble_size": Key(10, "M, Ladder-IM networks trained together (stacked parameters, one batched pass)",
                         at_least(1, integer=True), shape=True),
    "hidden_sizes": Key([1200, 1200], "hidden widths of each ladder network (the output layer has num_clusters "
                                      "units)", each(at_least(1, integer=True), min_length=1), shape=True),
    "epochs_per_iter0": Key(5, "epochs of an outer iteration while no pseudo-labels exist (iteration 1, or none "
                               "found yet)", at_least(1, integer=True)),
    "epochs_per_iter": Key(5, "epochs of an outer iteration that trains on pseudo-labels", at_least(1, integer=True)),
    "t_low": Key(1, "not-negative link: more than t_low members put both points in one cluster",
                 at_least(0, integer=True)),
    "t_high": Key(9, "positive link: more than t_high members put both points in one cluster",
                  at_least(0, integer=True)),
    "thresh": Key(0.9, "a seed needs every member's top probability > thresh (0: no condition)", probability),
    "noise_std": Key(0.3, "sigma of the Gaussian noise on every layer of the corrupted encoder pass", non_negative),
    "im_weight": Key(0.1, "w_mi, weight of the information-maximisation loss (clean + corrupted logits)",
                     non_negative),
    "im_weight_after_first": Key(-1.0, "w_mi from the second outer iteration on (negative: keep im_weight)",
                                 in_range()),
    "im_mu": Key(4.0, "mu, weight of the marginal entropy inside the IM loss", non_negative),
    "ladder_weight": Key(1.0, "w_lad, weight of the ladder denoising cost", non_negative),
    "noise_kl_weight": Key(1.0, "w_nkl, weight of KL(clean || corrupted)", non_negative),
    "denoising_cost": Key([1000.0, 10.0, 0.1, 0.1], "lambda_l of the ladder cost per layer, input first (length: "
                                                    "hidden layers + 2)", each(non_negative, min_length=1)),
    "last_layer_bn": Key(False, "batch-normalise the logits layer too", shape=True),
    "common_mapping": Key(True, "align pseudo-labels to the last member for all (true) or to each member (false: "
                                "the answer is member 0)"),
    "features": Key(None, ".npz of pre-extracted features (scripts/extract_features.py) for --dataset npz; sets "
                          "dataset_options.path"),
}, owners=("kingdra",))

PREDICT_CHUNK = 4096          # rows per chunk of the full-data statistics / predictions


def _glorot_normal_(weight: Tensor) -> Tensor:
    """Keras 2.1.4 `glorot_normal` for every member: truncated normal (re-drawn beyond 2 std) with
    std = sqrt(2 / (fan_in + fan_out)); weight is (M, fan_in, fan_out)."""
    std = math.sqrt(2.0 / (weight.shape[1] + weight.shape[2]))
    return nn.init.trunc_normal_(weight, mean=0.0, std=std, a=-2 * std, b=2 * std)


class LadderEnsemble(nn.Module):
    """M Ladder-IM networks as stacked tensors: encoder W_l (M, d_{l-1}, d_l), shifts beta_l (M, d_l),
    decoder V_l (M, d_{l+1}, d_l) and combinator parameters (M, 10, d_l). No biases, no BN gain."""

    def __init__(self, members: int, widths: list[int], *, last_layer_bn: bool):
        super().__init__()
        self.members, self.widths, self.last_layer_bn = members, list(widths), last_layer_bn
        self.layers = len(widths) - 1
        self.enc = nn.ParameterList(nn.Parameter(_glorot_normal_(torch.empty(members, widths[l - 1], widths[l])))
                                    for l in range(1, self.layers + 1))
        self.beta = nn.ParameterList(nn.Parameter(torch.zeros(members, widths[l]))
                                     for l in range(1, self.layers + 1))
        self.dec = nn.ParameterList(nn.Parameter(_glorot_normal_(torch.empty(members, widths[l + 1], widths[l])))
                                    for l in range(self.layers))
        combinators = []
        for width in widths:
            a = torch.zeros(members, 10, width)
            a[:, 1] = a[:, 6] = 1.0                                   # a2 = a7 = 1, the rest 0
            combinators.append(nn.Parameter(a))
        self.comb = nn.ParameterList(combinators)

    def normalised(self, layer: int) -> bool:
        """Whether encoder layer `layer` (1..L) batch-normalises its pre-activation."""
        return layer < self.layers or self.last_layer_bn

    def encode(self, x: Tensor, *, noise_std: float, stats: list | None = None) -> tuple[Tensor, list[Tensor]]:
        """Encoder pass of every member. x: (B, D) shared by the members or (M, B, D).

        Returns the logits (M, B, K) and z_0..z_L (z_0 is x, plus noise when noisy; z_l before beta), as the
        decoder needs them. `stats` = [(mean, var) (M, d_l)] per normalised layer: full-data statistics for
        prediction; None = batch statistics (training).
        """
        if noise_std:
            shape = (self.members,) + tuple(x.shape[-2:])
            h = x + noise_std * torch.randn(shape, device=x.device, dtype=x.dtype)
        else:
            h = x
        zs = [h]
        for layer in range(1, self.layers + 1):
            a = torch.matmul(h, self.enc[layer - 1]).float()          # (M, B, d_l)
            z = self._normalise(a, None if stats is None else stats[layer - 1]) if self.normalised(layer) else a
            if noise_std:
                z = z + noise_std * torch.randn_like(z)
            zs.append(z)
            h = z + self.beta[layer - 1].unsqueeze(1)
            if layer < self.layers:
                h = torch.relu(h)
        return h, zs

    @staticmethod
    def _normalise(a: Tensor, stats: tuple[Tensor, Tensor] | None) -> Tensor:
        if stats is None:
            return vmap(ladder_batchnorm)(a)
        mean, var = stats
        return (a - mean.unsqueeze(1)) / torch.sqrt(var.unsqueeze(1) + BN_EPS)

    def ladder_cost(self, corr_logits: Tensor, corr_z: list[Tensor], clean_z: list[Tensor],
                    weights: list[float]) -> Tensor:
        """(M,) sum_l lambda_l C_l: decoder from the corrupted logits down to the input."""
        cost = corr_logits.new_zeros(self.members)
        z_est = None
        for layer in range(self.layers, -1, -1):
            pre = corr_logits if layer == self.layers else torch.matmul(z_est, self.dec[layer]).float()
            u = vmap(ladder_batchnorm)(pre)                           # (M, B, d_l)
            z_est = vmap(ladder_combinator)(corr_z[layer].expand_as(u), u, self.comb[layer])
            target = clean_z[layer].expand_as(z_est)                  # clean x is shared by the members
            cost = cost + vmap(partial(denoising_cost, weight=float(weights[layer])))(z_est, target)
        return cost

    @torch.no_grad()
    def full_data_stats(self, data: Tensor, chunk: int = PREDICT_CHUNK) -> list:
        """The batch statistics of the whole of `data` (N, D) for every normalised layer, as one full batch would
        give them, computed layer by layer over chunks (float64 sums). [(mean, var) (M, d_l)] or None per layer."""
        stats: list = []
        n = data.shape[0]
        for layer in range(1, self.layers + 1):
            if not self.normalised(layer):
                stats.append(None)
                continue
            total = torch.zeros(self.members, self.widths[layer], dtype=torch.float64, device=data.device)
            square = torch.zeros_like(total)
            for part in data.split(chunk):
                h = part
                for below in range(1, layer):
                    h = torch.relu(self._normalise(torch.matmul(h, self.enc[below - 1]).float(), stats[below - 1])
                                   + self.beta[below - 1].unsqueeze(1))
                a = torch.matmul(h, self.enc[layer - 1]).double()
                total += a.sum(dim=1)
                square += (a * a).sum(dim=1)
            mean = total / n
            stats.append((mean.float(), (square / n - mean * mean).clamp_min(0).float()))
        return stats


class Kingdra(ClusteringMethod):
    config_sections = (SECTION,)
    has_cluster_heads = False        # its heads are the ensemble's members; DivClust does not apply
    num_views = 1
    backbone_names = ()              # no backbone: bf16 (amp on CUDA) covers the whole step

    @classmethod
    def check_config(cls, cfg) -> None:
        kc = cfg.kingdra
        widths = len(kc.hidden_sizes) + 2
        if len(kc.denoising_cost) != widths:
            raise ConfigError(f"kingdra.denoising_cost needs one weight per layer (input, {len(kc.hidden_sizes)} "
                              f"hidden, output): {widths} values, got {len(kc.denoising_cost)}.")
        if kc.features and cfg.dataset != "npz":
            raise ConfigError(f"--kingdra.features reads an .npz of features: use --dataset npz (not "
                              f"{cfg.dataset!r}).")

    @classmethod
    def data_request(cls, cfg) -> DataRequest:
        """One view; `--kingdra.features PATH` becomes the npz reader's `path` option, and a missing features file
        fails with how to make one."""
        options = {"path": str(cfg.kingdra.features)} if cfg.kingdra.features else {}
        _check_features_file(cfg, options)
        return DataRequest(views=1, options=options)

    def __init__(self, cfg, info: DataInfo):
        super().__init__(cfg, info)
        kc = cfg.kingdra
        self.kc = kc
        self.input_dim = info.input_dim if info.kind == "vector" else info.channels * info.image_size ** 2
        widths = [self.input_dim] + [int(w) for w in kc.hidden_sizes] + [info.num_clusters]
        self.members, self.num_clusters, self.num_samples = int(kc.ensemble_size), info.num_clusters, info.num_samples
        self.ladder = LadderEnsemble(self.members, widths, last_layer_bn=bool(kc.last_layer_bn))
        m, n = self.members, info.num_samples
        # Outer-loop state (checkpointed with the weights).
        self.register_buffer("outer_iteration", torch.zeros((), dtype=torch.long))
        self.register_buffer("epoch_in_iteration", torch.zeros((), dtype=torch.long))
        self.register_buffer("sup_weight", torch.zeros(()))                  # w_sup: 0 until K groups, then 1
        self.register_buffer("im_weight", torch.tensor(float(kc.im_weight)))  # w_mi
        self.register_buffer("min_labels", torch.zeros((), dtype=torch.long))
        self.register_buffer("best_min_labels", torch.zeros((), dtype=torch.long))
        self.register_buffer("pseudo_labels", torch.full((n,), -1, dtype=torch.long))
        self.register_buffer("saved_labels", torch.full((n,), -1, dtype=torch.long))
        self.register_buffer("sup_index", torch.zeros(m, n, dtype=torch.long))   # shuffled balanced set per member
        self.register_buffer("sup_target", torch.zeros(m, n, dtype=torch.long))
        self.register_buffer("stats_ready", torch.zeros((), dtype=torch.bool))
        for layer in range(1, self.ladder.layers + 1):
            self.register_buffer(f"stat_mean_{layer}", torch.zeros(m, widths[layer]))
            self.register_buffer(f"stat_var_{layer}", torch.ones(m, widths[layer]))
        self._data: Tensor | None = None        # the whole training set, flat, on the device (not checkpointed)
        self._supervised = False                # python mirror of sup_weight > 0

    # ----- data --------------------------------------------------------------------------------------------
    def _flat(self, x: Tensor) -> Tensor:
        return x.reshape(x.shape[0], -1).float()

    @torch.no_grad()
    def _load_data(self, ctx) -> Tensor:
        """Every training sample as the training step sees it (the deterministic view), flattened, in index
        order: the supervised stream and the full-data predictions read rows of it."""
        data = ctx.embed(ctx.data.eval, self._flat, batch_size=PREDICT_CHUNK, ranks="none")
        if data.shape != (self.num_samples, self.input_dim):
            raise RuntimeError(f"kingdra: the data are {tuple(data.shape)}, the model was built for "
                               f"({self.num_samples}, {self.input_dim})")
        return data

    # ----- statistics and predictions ------------------------------------------------------------------------
    def _stats(self) -> list | None:
        if not bool(self.stats_ready):
            return None
        return [(getattr(self, f"stat_mean_{l}"), getattr(self, f"stat_var_{l}")) if self.ladder.normalised(l)
                else None for l in range(1, self.ladder.layers + 1)]

    @torch.no_grad()
    def _refresh_stats(self) -> None:
        for layer, item in enumerate(self.ladder.full_data_stats(self._data), start=1):
            if item is not None:
                getattr(self, f"stat_mean_{layer}").copy_(item[0])
                getattr(self, f"stat_var_{layer}").copy_(item[1])
        self.stats_ready.fill_(True)

    @torch.no_grad()
    def member_probs(self, x: Tensor) -> Tensor:
        """(M, B, K) clean softmax of every member, normalised with the full-data statistics once they exist
        (before the first epoch ends: with the batch's own statistics)."""
        logits, _ = self.ladder.encode(self._flat(x), noise_std=0.0, stats=self._stats())
        return torch.softmax(logits.float(), dim=-1)

    @torch.no_grad()
    def _predict_all(self) -> Tensor:
        return torch.cat([self.member_probs(part) for part in self._data.split(PREDICT_CHUNK)], dim=1)

    # ----- training ----------------------------------------------------------------------------------------
    def training_step(self, batch: dict, step: int) -> dict:
        kc = self.kc
        x = self._flat(batch["views"][0])                                 # (B, D) unlabelled stream
        corr_logits, corr_z = self.ladder.encode(x, noise_std=float(kc.noise_std))
        clean_logits, clean_z = self.ladder.encode(x, noise_std=0.0)
        ladder = self.ladder.ladder_cost(corr_logits, corr_z, clean_z, list(kc.denoising_cost))      # (M,)
        im_fn = vmap(partial(im_loss, mu=float(kc.im_mu)))
        im = im_fn(clean_logits) + im_fn(corr_logits)                     # (M,)
        nkl = vmap(noise_kl)(clean_logits, corr_logits)                   # (M,)
        per_member = (float(kc.ladder_weight) * ladder + self.im_weight * im
                      + float(kc.noise_kl_weight) * nkl)
        out = {"ladder_loss": ladder.mean().detach(), "im_loss": im.mean().detach(), "noise_kl": nkl.mean().detach()}
        if self._supervised:
            if self._data is None:
                raise RuntimeError("kingdra: supervised steps need on_train_start(ctx) to load the data")
            index = batch["index"].to(self.sup_index.device)
            rows = self.sup_index[:, index]                               # (M, B) this member's paired rows
            sup_logits, _ = self.ladder.encode(self._data[rows], noise_std=float(kc.noise_std))
            target = F.one_hot(self.sup_target[:, index], self.num_clusters).float()
            sup = vmap(sup_ce_loss)(torch.softmax(sup_logits, dim=-1), target)   # (M,)
            per_member = per_member + self.sup_weight * sup
            out["sup_loss"] = sup.mean().detach()
        out["loss"] = per_member.sum()
        return out

    # ----- outer iterations --------------------------------------------------------------------------------
    def _iteration_length(self) -> int:
        no_labels = int(self.min_labels) == 0
        return int(self.kc.epochs_per_iter0 if no_labels else self.kc.epochs_per_iter)

    def on_train_start(self, ctx) -> None:
        self._data = self._load_data(ctx)
        self._supervised = bool(self.sup_weight > 0)
        kc = self.kc
        ctx.info(
            f"kingdra: {self.members} Ladder-IM networks {self.ladder.widths} trained as one batched ensemble; "
            f"outer iterations of {kc.epochs_per_iter0} epochs without pseudo-labels, {kc.epochs_per_iter} with "
            f"them ({ctx.epochs} epochs in all); now at iteration {int(self.outer_iteration) + 1}, "
            f"epoch {int(self.epoch_in_iteration)} of it")

    def on_epoch_end(self, ctx) -> None:
        if self._data is None:
            self._data = self._load_data(ctx)
        self.epoch_in_iteration += 1
        self._refresh_stats()
        if int(self.epoch_in_iteration) >= self._iteration_length():
            self._end_outer_iteration(ctx)

    @torch.no_grad()
    def _end_outer_iteration(self, ctx) -> None:
        """Steps 1 (predict) to 4: pseudo-labels, min_labels bookkeeping, alignment, balanced sets,
        loss weights."""
        kc, k, m, n = self.kc, self.num_clusters, self.members, self.num_samples
        probs = self._predict_all()                                       # (M, N, K), full-data statistics
        preds = probs.argmax(dim=-1)                                      # (M, N)
        labels = kingdra_pseudo_labels(probs, t_low=int(kc.t_low), t_high=int(kc.t_high), thresh=float(kc.thresh))
        counts = torch.bincount(labels[labels >= 0], minlength=k)[:k]
        groups = int((counts > 0).sum())
        found, min_labels = int((labels >= 0).sum()), int(counts.min()) if groups == k else 0
        if min_labels > int(self.best_min_labels):
            self.best_min_labels.fill_(min_labels)
            self.saved_labels.copy_(labels)
        reused = min_labels == 0 and int(self.best_min_labels) > 0
        if reused:
            labels, min_labels = self.saved_labels.clone(), int(self.best_min_labels)
        self.pseudo_labels.copy_(labels)
        self.min_labels.fill_(min_labels)
        if min_labels > 0:
            generator = torch.Generator().manual_seed(ctx.seed_for("kingdra_sets", int(self.outer_iteration)))
            common = bool(kc.common_mapping)
            shared = balanced_pseudo_label_set(align_pseudo_labels(labels, preds[m - 1])) if common else None
            for member in range(m):
                idx, y = shared if common else balanced_pseudo_label_set(align_pseudo_labels(labels, preds[member]))
                order = torch.randperm(n, generator=generator).to(idx.device)   # official: one shuffle per model
                self.sup_index[member] = idx[order]
                self.sup_target[member] = y[order]
            self.sup_weight.fill_(1.0)
            self._supervised = True
        if float(kc.im_weight_after_first) >= 0:
            self.im_weight.fill_(float(kc.im_weight_after_first))
        agreement = ensemble_agreement(preds)
        iteration = int(self.outer_iteration) + 1
        self.outer_iteration += 1
        self.epoch_in_iteration.zero_()
        reuse_note = (f"; fewer than {k} groups, so the saved set ({int(self.best_min_labels)} per smallest group) "
                      f"is used" if reused else "")
        ctx.info(
            f"kingdra outer iteration {iteration}: {found} pseudo-labelled points in {groups} group(s) "
            f"(smallest {int(counts.min()) if groups == k else 0}){reuse_note}; ensemble agreement "
            f"(mean pairwise NMI of the {m} members) {agreement:.4f}; supervised loss "
            f"{'on' if self._supervised else 'off'}; next iteration: {self._iteration_length()} epochs")
        ctx.log_metrics({"kingdra/outer_iteration": iteration, "kingdra/pseudo_labelled": found,
                         "kingdra/groups": groups, "kingdra/min_labels": min_labels,
                         "kingdra/agreement": agreement, "kingdra/im_weight": float(self.im_weight),
                         "kingdra/sup_weight": float(self.sup_weight)}, epoch=ctx.epoch + 1)

    # ----- evaluation --------------------------------------------------------------------------------------
    @torch.no_grad()
    def cluster_probs(self, x: Tensor) -> Tensor:
        probs = self.member_probs(x)                                      # (M, B, K)
        return torch.cat([probs.mean(dim=0, keepdim=True), probs])       # (1 + M, B, K)

    def select_head(self, ctx=None) -> int:
        return 0 if bool(self.kc.common_mapping) else 1

    @torch.no_grad()
    def features(self, x: Tensor) -> Tensor:
        probs = self.member_probs(x)
        return probs.permute(1, 0, 2).reshape(probs.shape[1], -1)        # (B, M*K)


def ensemble_agreement(preds: Tensor) -> float:
    """Mean pairwise NMI between the members' hard predictions (M, N): 1 when all members make the same
    partition (up to renaming), near 0 for unrelated ones. Label-free."""
    from metrics.diversity import inter_clustering_nmi

    if preds.shape[0] < 2:
        return 1.0
    matrix = torch.as_tensor(inter_clustering_nmi(preds))
    off = ~torch.eye(matrix.shape[0], dtype=torch.bool)
    return float(matrix[off].mean())


def _check_features_file(cfg, options: dict) -> None:
    """A missing features file (the CIFAR-10 and STL-10 presets) fails before anything is built, naming
    scripts/extract_features.py."""
    from datasets.lookup import expand_root

    if cfg.dataset != "npz":
        return
    root = expand_root(cfg.data_root)
    path = options.get("path", (cfg.dataset_options or {}).get("path"))
    if path is not None:
        path = os.path.expanduser(str(path))
        if not os.path.isabs(path) and root is not None:
            path = os.path.join(root, path)
    else:
        path = root
    if path is not None and not os.path.exists(path):
        preset = str(cfg.get("preset") or "")
        source = preset.split("_", 1)[1] if preset.startswith("kingdra_") else "cifar10"
        raise DatasetNotFoundError(
            f"Kingdra features not found at {path}. Kingdra clusters feature vectors: write them once with "
            f"`python scripts/extract_features.py --dataset {source} --data_root DIR --backbone resnet50 --weights "
            f"resnet50.pth --out {path}` (any torchvision backbone whose weights file you have; nothing is "
            f"downloaded), then pass --kingdra.features {path} (or --data_root with the file name the preset "
            f"expects). Any .npz with x (N x D) and optional y works.")


METHOD = Kingdra
