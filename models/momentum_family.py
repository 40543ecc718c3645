"""The structure ProPos, HaDis and DigPro share: BYOL with an EMA target and k-means pseudo-labels (EM loop).

Documentation: docs/methods/propos.md (the structure), hadis.md and digpro.md (the differences); the subclasses
in models/propos.py, models/hadis.py and models/digpro.py add their loss terms and state through the hooks below.

* online network = backbone -> projector (Linear(d, h) -> BN -> ReLU -> Linear(h, D)); predictor on top (same
  shape, Linear weights N(0, 0.01^2), biases 0); target network = a copy of backbone + projector that never gets
  gradients and follows the online parameters by EMA (parameters only: the target's BatchNorm statistics change
  through its own forward passes, as in the official code).
* one step (official v1 order): per direction v -> w: q_v = online(x_v), k_w = normalize(target(x_w)),
  p_v = predictor(q_v + sigma * eps_v); losses; then the EMA update with the online weights from *before* this
  step's optimizer update (the update runs inside the forward, not after the optimizer step). `v2` (ProPos on
  CIFAR-20 / ImageNet-Dogs): EMA first, both views through each network as one batch of 2B.
* E-step: before epoch 1 and after every `reassign` epochs, the L2-normalised target projections (eval mode, the
  evaluation view) of the whole training set are clustered by cosine k-means (`torch_clustering.KMeans`,
  k-means++, seeded); under DDP every rank embeds its own contiguous slice and the k-means runs sharded, so
  every rank ends with the same labels. The labels are a buffer (checkpointed, so a resume needs no re-run).
* randomness: the Gaussian noise of positive sampling is drawn per step from a generator seeded with
  `derive_seed(seed, "noise_view_<v>", step)`, for the global batch (each rank takes its rows, as the batched
  augmentations do), so resume and DDP reproduce one-process runs. The losses are the pure functions of losses/propos.py (+ hadis/digpro).
* lr: `scale_lr` multiplies every group's lr by global batch / 256, the predictor group by `predictor_lr_mult`
  more (param_groups `lr_mult`). With `official_schedule` the method declares the official curve as its
  `lr_factor`, which the trainer's one scheduler applies to every group: linear warm-up lr * e / warmup with
  e = (step + 1) / steps_per_epoch, then 0.5 * (1 + cos(pi * (e - warmup) / epochs)) (denominator `epochs`, not epochs - warmup: it never reaches 0).
  The trainer's cosine (lr_schedule: cosine) has the same warm-up but decays to 0 over epochs - warmup.
* warm-up (`warmup_epochs`, the same key as the lr warm-up, as in the official code): during epochs
  1..warmup_epochs the PSL weight and sigma are 0 (plain BYOL); HaDis's HSD and DigPro's grouping stay on.

Evaluation: cosine k-means (`kmeans_metric = "cosine"`, as the papers and the E-step) on the L2-normalised target
projector output (D = 256 in the paper settings), the features the papers cluster; there are no cluster heads
(cluster_probs is None, DivClust is refused). The papers report the E-step's k-means after the last epoch; the
framework's evaluation runs its own cosine k-means on the same features (seed `seed`, 10 restarts).
BatchNorm as the official multi-GPU runs: `bn_groups` G normalises every BatchNorm over G groups of the global
batch (ghost BatchNorm in one process, the ranks under DDP), and `shuffle_bn` permutes the target network's batch
across the groups before its forward (the official shuffling BN), so one process reproduces the statistics of the
official 4-GPU runs. DDP presence mask and gathers follow the official single-direction losses (q gathered with
gradient, this rank's labels decide which clusters are present); the k-means is torch_clustering's.
`data_resample` declares the pseudo-label-balanced batch sampler (datasets/samplers.py).
"""
from __future__ import annotations

import copy
import math
import time

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from datasets.samplers import PseudoLabelBalancedSampler
from engine import distributed as dist_utils
from engine.config import ConfigError, Key, Section, at_least, in_range, non_negative, positive
from engine.distributed import gather, gather_with_grad
from engine.seeding import derive_seed
from losses.propos import gaussian_positive_sampling, propos_objective

from .backbones import build_backbone
from .base import ClusteringMethod, DataInfo
from .ghost_batchnorm import rank_major_to_global, shuffled_rows, use_ghost_batchnorm


def mlp_head(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    """Linear(in, hidden) -> BatchNorm1d -> ReLU -> Linear(hidden, out): the projector and predictor shape."""
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
                         nn.Linear(hidden, out_dim))


# The keys ProPos, HaDis and DigPro share (each method's section holds them, plus its own).
FAMILY_KEYS = {
    "hidden_dim": Key(4096, "hidden width of the projector and the predictor", at_least(1, integer=True), shape=True),
    "feature_dim": Key(256, "projector/predictor output: the k-means pseudo-label and evaluation features",
                       at_least(1, integer=True), shape=True),
    "temperature": Key(0.5, "tau of the prototype scattering loss (PSL)", positive),
    "psl_weight": Key(0.1, "lambda_psl (official cluster_loss_weight), applied after warmup_epochs", non_negative),
    "latent_std": Key(0.001, "sigma of Gaussian positive sampling, applied after warmup_epochs", non_negative),
    "momentum_base": Key(0.996, "EMA momentum of the target network", in_range(0, 1)),
    "momentum_increase": Key(False, "cosine increase of the EMA momentum from momentum_base to 1 over training"),
    "predictor_lr_mult": Key(10.0, "predictor learning rate = this x the scheduled learning rate", positive),
    "scale_lr": Key(True, "multiply lr by batch_size / 256 (global batch), as the official code"),
    "official_schedule": Key(True, "lr per step as the official code (warm-up, then cosine over `epochs`, never 0); "
                                   "false: the trainer's lr_schedule"),
    "reassign": Key(1, "refresh the k-means pseudo-labels every N epochs (and before epoch 1)",
                    at_least(1, integer=True)),
    "kmeans_n_init": Key(10, "k-means++ restarts of each pseudo-label refresh", at_least(1, integer=True)),
    "kmeans_max_iter": Key(300, "Lloyd iterations per restart of each pseudo-label refresh",
                           at_least(1, integer=True)),
    "v2": Key(False, "official v2 path: EMA before the losses, both views in one batch, alignment 2 - 2 cos"),
    "data_resample": Key(False, "each epoch draws images with replacement, weighted by 1 / pseudo-cluster size"),
    "bn_groups": Key(1, "BatchNorm statistics per group of the global batch, as the official runs' GPUs: in one "
                        "process N groups (ghost BatchNorm); under DDP each rank is a group (bn_groups / processes "
                        "groups per rank)", at_least(1, integer=True)),
    "shuffle_bn": Key(True, "the target network's batch is shuffled across the BatchNorm groups (and ranks) before "
                            "its forward and restored after, as the official shuffling BN (no effect with one group)"),
}


def family_section(name: str, title: str, own_keys: dict[str, Key] | None = None) -> Section:
    """The config section of a member of the family: the shared keys, then the member's own."""
    return Section(name, title, {**FAMILY_KEYS, **(own_keys or {})}, owners=(name,))


class MomentumFamily(ClusteringMethod):
    """Online encoder + predictor, EMA target, k-means pseudo-labels; ProPos's alignment + PSL.

    Subclasses set `section` (the name of their config section, `config_sections` its declaration) and extend
    the hooks `_before_losses` (before any forward of the step), `_objective` (their loss: propos_objective here,
    hadis_objective, digpro_objective) and `_after_losses` (state updates after the losses).
    """

    has_cluster_heads = False
    num_views = 2
    kmeans_metric = "cosine"  # evaluation k-means as the papers (and the E-step): cosine on the target features
    section = "propos"
    #: DigPro needs predictor(q) without noise as well.
    needs_clean_predictions = False

    backbone_names = ("online_backbone", "target_backbone")

    @classmethod
    def check_config(cls, cfg) -> None:
        opts, world = cfg[cls.section], dist_utils.world_size()
        groups = int(opts.bn_groups)
        if groups % world and world % groups:
            raise ConfigError(f"{cls.section}.bn_groups {groups} does not fit {world} processes: use a multiple or a "
                              f"divisor of the number of processes.")
        per_rank = max(1, groups // world)
        if (int(cfg.batch_size) // world) % per_rank:
            raise ConfigError(f"{cls.section}.bn_groups {groups}: the batch of {int(cfg.batch_size) // world} per "
                              f"process does not split into {per_rank} equal BatchNorm groups.")

    def __init__(self, cfg, info: DataInfo):
        super().__init__(cfg, info)
        if info.kind != "image":
            raise ConfigError(f"method {cfg.method} needs images (two augmented views per sample), and the data are "
                              f"vectors; methods for vectors: kingdra (unsupervised), or mcl / kcl with --l2c.targets "
                              f"labels (pairwise-supervised).")
        self.opts = cfg[self.section]
        opts = self.opts
        backbone, dim = build_backbone(cfg.backbone, info, zero_init_residual=cfg.zero_init_residual)
        self.online_backbone = backbone
        self.online_projector = mlp_head(dim, opts.hidden_dim, opts.feature_dim)
        self.predictor = mlp_head(opts.feature_dim, opts.hidden_dim, opts.feature_dim)
        for m in self.predictor.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)
        self.target_backbone = copy.deepcopy(self.online_backbone)
        self.target_projector = copy.deepcopy(self.online_projector)
        for p in self._target_parameters():
            p.requires_grad_(False)
        # Ghost BatchNorm: the groups of this process (bn_groups GPUs of the official run over the processes here).
        self.bn_groups = max(1, int(opts.bn_groups) // dist_utils.world_size())
        if self.bn_groups > 1:
            use_ghost_batchnorm(self, self.bn_groups)
        self.num_clusters = int(info.num_clusters)
        self.register_buffer("pseudo_labels", torch.zeros(info.num_samples, dtype=torch.long))
        # Number of trained epochs when the pseudo-labels were last computed; -1: never (before the first E-step).
        self.register_buffer("pseudo_label_epoch", torch.tensor(-1, dtype=torch.long))
        # Identical on every rank by construction (the k-means result is shared): DDP need not broadcast them.
        self._ddp_params_and_buffers_to_ignore = ["pseudo_labels", "pseudo_label_epoch"]
        self.current_epoch = 0
        self.last_refresh_seconds = 0.0
        self._steps_per_epoch = 0

    # ----- networks ------------------------------------------------------------------------------------------
    def _online_parameters(self) -> list[nn.Parameter]:
        return list(self.online_backbone.parameters()) + list(self.online_projector.parameters())

    def _target_parameters(self) -> list[nn.Parameter]:
        return list(self.target_backbone.parameters()) + list(self.target_projector.parameters())

    def online(self, x: Tensor) -> Tensor:
        """Raw (un-normalised) online projection (B, D)."""
        return self.online_projector(self.online_backbone(x))

    @torch.no_grad()
    def target(self, x: Tensor) -> Tensor:
        """L2-normalised target projection (B, D), fp32, no gradient."""
        return F.normalize(self.target_projector(self.target_backbone(x)).float(), dim=1)

    @torch.no_grad()
    def ema_update(self, momentum: float) -> None:
        """theta_target <- m * theta_target + (1 - m) * theta_online, parameters only (not BN statistics)."""
        target, online = self._target_parameters(), self._online_parameters()
        torch._foreach_mul_(target, momentum)
        torch._foreach_add_(target, online, alpha=1.0 - momentum)

    def ema_momentum(self, step: int) -> float:
        """Official schedule: constant momentum_base, or its cosine increase to 1 over all steps (it = step + 1)."""
        base = float(self.opts.momentum_base)
        if not self.opts.momentum_increase or not self._steps_per_epoch:
            return base
        total = int(self.cfg.epochs) * self._steps_per_epoch
        return 1.0 - (1.0 - base) * (math.cos(math.pi * (step + 1) / total) + 1.0) / 2.0

    # ----- evaluation ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def features(self, x: Tensor) -> Tensor:
        """The papers' clustering features: L2-normalised target projector output (N, D)."""
        return self.target(x)

    # ----- optimisation ----------------------------------------------------------------------------------------
    def param_groups(self) -> list[dict]:
        scale = self.cfg.batch_size / 256.0 if self.opts.scale_lr else 1.0
        return [
            {"params": self._online_parameters(), "lr_mult": scale},
            {"params": list(self.predictor.parameters()), "lr_mult": scale * float(self.opts.predictor_lr_mult)},
        ]

    def official_lr_factor(self, step: int, steps_per_epoch: int) -> float:
        """Factor of the peak lr for global step `step` (0-based) as the official cosine_annealing_LR computes it."""
        epoch = (step + 1) / steps_per_epoch
        warmup = int(self.cfg.warmup_epochs)
        if epoch < warmup:
            return epoch / warmup
        if self.cfg.lr_schedule == "constant":
            return 1.0
        return 0.5 * (1.0 + math.cos(math.pi * (epoch - warmup) / int(self.cfg.epochs)))

    def lr_factor(self, step: int, ctx) -> float | None:
        if not self.opts.official_schedule:
            return None
        return self.official_lr_factor(step, ctx.steps_per_epoch)

    def batch_sampler(self, ctx):
        if not self.opts.data_resample:
            return None
        ctx.info("data_resample: each epoch draws images with replacement, weighted by 1 / pseudo-cluster size")
        return PseudoLabelBalancedSampler(lambda: self.pseudo_labels, num_samples=len(ctx.data.train),
                                          batch_size=int(self.cfg.batch_size), rank=ctx.rank,
                                          world_size=ctx.world_size, seed=ctx.seed)

    def in_warmup(self) -> bool:
        """Official `is_warmup = not epoch > warmup_epochs` with 1-based epochs."""
        return self.current_epoch + 1 <= int(self.cfg.warmup_epochs)

    # ----- hooks -----------------------------------------------------------------------------------------------
    def on_train_start(self, ctx) -> None:
        self._steps_per_epoch = int(ctx.steps_per_epoch)
        self.current_epoch = int(ctx.epoch)
        if int(self.pseudo_label_epoch) < 0:
            self.refresh_pseudo_labels(ctx, epochs_trained=0)

    def on_epoch_start(self, ctx) -> None:
        self.current_epoch = int(ctx.epoch)

    def on_epoch_end(self, ctx) -> None:
        if (ctx.epoch + 1) % int(self.opts.reassign) == 0:
            self.refresh_pseudo_labels(ctx, epochs_trained=ctx.epoch + 1)

    # ----- E-step ----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def refresh_pseudo_labels(self, ctx, *, epochs_trained: int) -> None:
        """Cosine k-means of the target features of the whole training set (evaluation view, eval mode); the
        time it takes goes to the console and to metrics.jsonl (`train/kmeans_refresh_seconds`)."""
        from torch_clustering import KMeans

        start = time.perf_counter()
        n = len(ctx.data.eval)
        feats = ctx.embed(ctx.data.eval, lambda x: self.features(x).float(), ranks="shard")  # this rank's rows
        first, last = ctx.shard_range(n)
        local_index = torch.arange(first, last, device=ctx.device)
        extracted = time.perf_counter()
        kmeans = KMeans(n_clusters=self.num_clusters, metric="cosine", init="k-means++",
                        n_init=int(self.opts.kmeans_n_init), max_iter=int(self.opts.kmeans_max_iter), tol=1e-4,
                        random_state=int(self.cfg.seed), distributed=True, sharded=True).fit(feats)
        # Sharded k-means returns every point's label, concatenated in rank order, on every rank.
        labels = kmeans.labels_.to(self.pseudo_labels.device)
        all_index = gather(local_index).to(self.pseudo_labels.device)
        self.pseudo_labels[all_index] = labels
        self.pseudo_label_epoch.fill_(epochs_trained)
        done = time.perf_counter()
        sizes = torch.bincount(labels, minlength=self.num_clusters)
        total = done - start
        self.last_refresh_seconds = total
        when = f"after epoch {epochs_trained}" if epochs_trained else "before epoch 1"
        ctx.info(f"k-means refresh {when}: {total:.2f}s (target features {extracted - start:.2f}s, "
                 f"k-means {done - extracted:.2f}s, {kmeans.n_iter_} iterations); cluster sizes "
                 f"{int(sizes.min())}-{int(sizes.max())}")
        ctx.log_metrics({"train/kmeans_refresh_seconds": total, "train/kmeans_inertia": float(kmeans.inertia_)})

    # ----- M-step ----------------------------------------------------------------------------------------------
    def _noise(self, step: int, stream: str, like: Tensor) -> Tensor:
        """Standard-normal draws for this rank's rows of the global batch, re-made identically on resume."""
        world, rank = dist_utils.world_size(), dist_utils.rank()
        generator = torch.Generator(device=like.device)
        generator.manual_seed(derive_seed(int(self.cfg.seed), stream, step))
        rows, dim = like.shape
        full = torch.randn((rows * world, dim), generator=generator, device=like.device, dtype=torch.float32)
        return full[rank::world]

    def _sample(self, q: Tensor, step: int, stream: str, sigma: float) -> Tensor:
        """Gaussian positive sampling of the raw projection q (fp32); sigma 0 (warm-up) returns q."""
        if sigma == 0.0:
            return q
        return gaussian_positive_sampling(q, self._noise(step, stream, q), latent_std=sigma)

    def _before_losses(self, step: int) -> None:
        if self.opts.v2:
            self.ema_update(self.ema_momentum(step))

    def _after_losses(self, ctx: dict, step: int) -> None:
        if not self.opts.v2:
            self.ema_update(self.ema_momentum(step))

    @torch.no_grad()
    def _target_of(self, x: Tensor, step: int, direction: int) -> Tensor:
        """The target projection of a batch; with several BatchNorm groups (or ranks) and `shuffle_bn`, the global
        batch is permuted before the forward and restored after (MoCo's shuffling BN), the permutation drawn from
        (seed, step, direction) so every rank draws the same one."""
        world = dist_utils.world_size()
        if not self.opts.shuffle_bn or (self.bn_groups == 1 and world == 1):
            return self.target(x)
        rank = dist_utils.rank()
        everything = rank_major_to_global(gather(x), world)               # (world * b, ...) global batch order
        generator = torch.Generator().manual_seed(derive_seed(int(self.cfg.seed), "shuffle_bn", 2 * step + direction))
        order, inverse = (t.to(x.device, non_blocking=True) for t in shuffled_rows(everything.shape[0], generator))
        projected = self.target(everything[order][rank::world])           # this rank's rows of the shuffled batch
        projected = rank_major_to_global(gather(projected), world)        # the whole shuffled batch
        return projected[inverse][rank::world]

    def _forward_views(self, x1: Tensor, x2: Tensor, step: int, sigma: float) -> dict:
        """q_v (raw online, fp32), k_v (normalised target), p_v (predictor on the noisy q_v) for both views."""
        ctx: dict = {}
        if self.opts.v2:  # both views in one batch of 2B through each network (official forward_v2)
            # (ghost BatchNorm groups are strided, so group g of the 2B rows holds its rows of both views)
            q = self.online(torch.cat([x1, x2])).float()
            k = self._target_of(torch.cat([x2, x1]), step, 0)
            ctx["q1"], ctx["q2"] = q.chunk(2)
            ctx["k2"], ctx["k1"] = k.chunk(2)
            noisy = torch.cat([self._sample(ctx["q1"], step, "noise_view_1", sigma),
                               self._sample(ctx["q2"], step, "noise_view_2", sigma)])
            if self.needs_clean_predictions:
                ctx["p1_clean"], ctx["p2_clean"] = self.predictor(q).float().chunk(2)
            ctx["p1"], ctx["p2"] = self.predictor(noisy).float().chunk(2)
            return ctx
        for v, w, x_v, x_w, stream in ((1, 2, x1, x2, "noise_view_1"), (2, 1, x2, x1, "noise_view_2")):
            q = self.online(x_v).float()
            ctx[f"k{w}"] = self._target_of(x_w, step, v)
            ctx[f"q{v}"] = q
            if self.needs_clean_predictions:
                ctx[f"p{v}_clean"] = self.predictor(q).float()
            ctx[f"p{v}"] = self.predictor(self._sample(q, step, stream, sigma)).float()
        return ctx

    def _objective(self, ctx: dict, *, psl_weight: float, offset: float) -> tuple[Tensor, dict[str, Tensor]]:
        """The method's loss of the step and its logged terms. `ctx` holds q1, q2 (raw online, fp32), k1, k2
        (normalised target), p1, p2 (predictor on the noisy q), p1_clean/p2_clean (when `needs_clean_predictions`),
        labels, and `gathered`: q1, q2 (with gradient), k1, k2, labels of the global batch."""
        total, alignment, psl = propos_objective(
            ctx["p1"], ctx["p2"], ctx["q1"], ctx["q2"], ctx["k1"], ctx["k2"], ctx["labels"],
            num_clusters=self.num_clusters, temperature=float(self.opts.temperature), psl_weight=psl_weight,
            offset=offset, gathered=ctx["gathered"])
        return total, {"alignment": alignment, "psl": psl}

    def training_step(self, batch: dict, step: int) -> dict:
        x1, x2 = batch["views"][:2]
        labels = self.pseudo_labels[batch["index"]]
        warm = self.in_warmup()
        sigma = 0.0 if warm else float(self.opts.latent_std)
        psl_weight = 0.0 if warm else float(self.opts.psl_weight)
        self._before_losses(step)
        ctx = self._forward_views(x1, x2, step, sigma)
        ctx["labels"] = labels
        offset = 2.0 if self.opts.v2 else 0.0
        # The alignment runs on this rank's batch; the PSL (and DigPro's grouping) on the batch gathered over
        # ranks (q with gradient), the presence of a cluster decided by this rank's labels (the official
        # multi-GPU behaviour; identical in one process).
        ctx["gathered"] = {"q1": gather_with_grad(ctx["q1"]), "q2": gather_with_grad(ctx["q2"]),
                           "k1": gather(ctx["k1"]), "k2": gather(ctx["k2"]), "labels": gather(labels)}
        loss, terms = self._objective(ctx, psl_weight=psl_weight, offset=offset)
        logs = {name: value.detach() for name, value in terms.items()}
        self._after_losses(ctx, step)
        with torch.no_grad():
            both = torch.cat([ctx["gathered"]["q1"], ctx["gathered"]["q2"]])
            logs["q_std"] = F.normalize(both, dim=1).std(dim=0).mean()
        return {"loss": loss, **logs}
