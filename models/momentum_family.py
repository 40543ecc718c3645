"""The structure ProPos, HaDis and DigPro share: BYOL with an EMA target and k-means pseudo-labels (EM loop).

Specs: shared/specs/propos.md §2-§7 (the structure), hadis.md and digpro.md (the differences); the subclasses in
models/propos.py, models/hadis.py and models/digpro.py add their loss terms and state through the hooks below.

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
* randomness: the Gaussian noise of positive sampling is drawn per step from a generator re-seeded from
  (seed, step), for the global batch (each rank takes its rows, as the batched augmentations do), so resume and
  DDP reproduce one-process runs. The losses are the pure functions of losses/propos.py (+ hadis/digpro).
* lr: `scale_lr` multiplies every group's lr by global batch / 256, the predictor group by `predictor_lr_mult`
  more (param_groups `lr_mult`). With `official_schedule` the method sets the lrs before every step to the
  official curve: linear warm-up lr * e / warmup with e = (step + 1) / steps_per_epoch, then
  0.5 * (1 + cos(pi * (e - warmup) / epochs)) (denominator `epochs`, not epochs - warmup: it never reaches 0).
  The trainer's cosine (lr_schedule: cosine) has the same warm-up but decays to 0 over epochs - warmup.
* warm-up (`warmup_epochs`, the same key as the lr warm-up, as in the official code): during epochs
  1..warmup_epochs the PSL weight and sigma are 0 (plain BYOL); HaDis's HSD and DigPro's grouping stay on.

Evaluation: cosine k-means (`kmeans_metric = "cosine"`, as the papers and the E-step) on the L2-normalised target
projector output (D = 256 in the paper settings), the features the papers cluster; there are no cluster heads
(cluster_probs is None, DivClust is refused). The papers report the E-step's k-means after the last epoch; the
framework's evaluation runs its own cosine k-means on the same features (seed `seed`, 10 restarts).
Differences from the official code: DDP presence mask and gathers follow the official single-direction losses
(q gathered with gradient, this rank's labels decide which clusters are present); the "shuffling BN" trick of
the target forward is not implemented (a no-op on one GPU); the k-means is torch_clustering's (see its docs).
"""
from __future__ import annotations

import copy
import math
import time

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Subset

from engine import distributed as dist_utils
from engine.distributed import gather, gather_with_grad
from losses.propos import alignment_loss, gaussian_positive_sampling, prototype_scattering_loss

from .backbones import build_backbone
from .base import ClusteringMethod, DataInfo


def mlp_head(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    """Linear(in, hidden) -> BatchNorm1d -> ReLU -> Linear(hidden, out): the projector and predictor shape."""
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
                         nn.Linear(hidden, out_dim))


def derived_seed(seed: int, step: int, stream: int) -> int:
    """A seed for random stream `stream` at global step `step`, so any step's draws can be re-made on resume."""
    return (int(seed) * 1_000_003 + int(step) * 7_919 + int(stream) * 104_729 + 13) % (2 ** 63)


# Random streams drawn by the family (each re-seeded per step).
NOISE_VIEW_1, NOISE_VIEW_2 = 1, 2


class MomentumFamily(ClusteringMethod):
    """Online encoder + predictor, EMA target, k-means pseudo-labels; ProPos's alignment + PSL.

    Subclasses set `section` (their config section) and extend the hooks `_before_losses` (before any forward of
    the step), `_extra_losses` (terms added to the loss) and `_after_losses` (state updates after the losses).
    """

    has_cluster_heads = False
    num_views = 2
    kmeans_metric = "cosine"  # evaluation k-means as the papers (and the E-step): cosine on the target features
    section = "propos"
    #: DigPro needs predictor(q) without noise as well.
    needs_clean_predictions = False

    def __init__(self, cfg, info: DataInfo):
        super().__init__(cfg, info)
        if info.kind != "image":
            raise ValueError(f"method {cfg.method} needs images (two augmented views per sample)")
        self.opts = cfg[self.section]
        opts = self.opts
        backbone, dim = build_backbone(cfg.backbone, info)
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
        self.num_clusters = int(info.num_clusters)
        self.register_buffer("pseudo_labels", torch.zeros(info.num_samples, dtype=torch.long))
        # Number of trained epochs when the pseudo-labels were last computed; -1: never (before the first E-step).
        self.register_buffer("pseudo_label_epoch", torch.tensor(-1, dtype=torch.long))
        # Identical on every rank by construction (the k-means result is shared): DDP need not broadcast them.
        self._ddp_params_and_buffers_to_ignore = ["pseudo_labels", "pseudo_label_epoch"]
        self.current_epoch = 0
        self.last_refresh_seconds = 0.0
        self._optimizer = None
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

    def official_lr_factor(self, step: int) -> float:
        """Factor of the peak lr for global step `step` (0-based) as the official cosine_annealing_LR computes it."""
        epoch = (step + 1) / self._steps_per_epoch
        warmup = int(self.cfg.warmup_epochs)
        if epoch < warmup:
            return epoch / warmup
        if self.cfg.lr_schedule == "constant":
            return 1.0
        return 0.5 * (1.0 + math.cos(math.pi * (epoch - warmup) / int(self.cfg.epochs)))

    def _set_lr(self, step: int) -> None:
        if self._optimizer is None or not self.opts.official_schedule:
            return
        factor = self.official_lr_factor(step)
        for group in self._optimizer.param_groups:
            group["lr"] = group["initial_lr"] * factor

    def in_warmup(self) -> bool:
        """Official `is_warmup = not epoch > warmup_epochs` with 1-based epochs."""
        return self.current_epoch + 1 <= int(self.cfg.warmup_epochs)

    # ----- hooks -----------------------------------------------------------------------------------------------
    def on_train_start(self, trainer) -> None:
        if self.opts.data_resample:
            from .pseudo_label_sampler import install_balanced_sampler

            install_balanced_sampler(trainer, lambda: self.pseudo_labels)
        self._optimizer = trainer.optimizer
        self._steps_per_epoch = int(trainer.steps_per_epoch)
        self.current_epoch = int(trainer.epoch)
        self._set_lr(int(trainer.step))
        if int(self.pseudo_label_epoch) < 0:
            self.refresh_pseudo_labels(trainer, epochs_trained=0)

    def on_epoch_start(self, epoch: int, trainer) -> None:
        self.current_epoch = int(epoch)

    def on_epoch_end(self, epoch: int, trainer) -> None:
        if (epoch + 1) % int(self.opts.reassign) == 0:
            self.refresh_pseudo_labels(trainer, epochs_trained=epoch + 1)

    def after_optimizer_step(self, step: int) -> None:
        self._set_lr(step + 1)

    # ----- E-step ----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def refresh_pseudo_labels(self, trainer, *, epochs_trained: int) -> None:
        """Cosine k-means of the target features of the whole training set (evaluation view, eval mode); the
        time it takes goes to the console and to metrics.jsonl (`train/kmeans_refresh_seconds`)."""
        from torch_clustering import KMeans

        start = time.perf_counter()
        data = trainer.data
        n = len(data.eval)
        rank, world = dist_utils.rank(), dist_utils.world_size()
        shard = Subset(data.eval, range(n * rank // world, n * (rank + 1) // world))
        loader = DataLoader(shard, batch_size=int(self.cfg.eval_batch_size), shuffle=False, num_workers=0)
        self._share_target_statistics()
        was_training = self.training
        self.eval()
        indices, feats = [], []
        for batch in loader:
            x = data.eval_view(batch, trainer.device)
            with trainer.autocast():
                feats.append(self.features(x).float())
            indices.append(batch["index"].to(trainer.device))
        self.train(was_training)
        feats = torch.cat(feats) if feats else torch.zeros((0, int(self.opts.feature_dim)), device=trainer.device)
        local_index = torch.cat(indices) if indices else torch.zeros(0, dtype=torch.long, device=trainer.device)
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
        trainer.log.info(f"k-means refresh {when}: {total:.2f}s (target features {extracted - start:.2f}s, "
                         f"k-means {done - extracted:.2f}s, {kmeans.n_iter_} iterations); cluster sizes "
                         f"{int(sizes.min())}-{int(sizes.max())}")
        trainer.log.log_metrics({"train/kmeans_refresh_seconds": total,
                                 "train/kmeans_inertia": float(kmeans.inertia_)}, step=int(trainer.step),
                                epoch=int(trainer.epoch))

    @torch.no_grad()
    def _share_target_statistics(self) -> None:
        """Under DDP each rank's last forward updated its own BatchNorm statistics (DDP re-broadcasts them only at
        the next forward); give every rank rank 0's target statistics so that all shards are embedded alike."""
        if not dist_utils.is_distributed():
            return
        import torch.distributed as dist

        for buffer in list(self.target_backbone.buffers()) + list(self.target_projector.buffers()):
            dist.broadcast(buffer, src=0)

    # ----- M-step ----------------------------------------------------------------------------------------------
    def _noise(self, step: int, stream: int, like: Tensor) -> Tensor:
        """Standard-normal draws for this rank's rows of the global batch, re-made identically on resume."""
        world, rank = dist_utils.world_size(), dist_utils.rank()
        generator = torch.Generator(device=like.device)
        generator.manual_seed(derived_seed(int(self.cfg.seed), step, stream))
        rows, dim = like.shape
        full = torch.randn((rows * world, dim), generator=generator, device=like.device, dtype=torch.float32)
        return full[rank::world]

    def _sample(self, q: Tensor, step: int, stream: int, sigma: float) -> Tensor:
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

    def _forward_views(self, x1: Tensor, x2: Tensor, step: int, sigma: float) -> dict:
        """q_v (raw online, fp32), k_v (normalised target), p_v (predictor on the noisy q_v) for both views."""
        ctx: dict = {}
        if self.opts.v2:  # both views in one batch of 2B through each network (official forward_v2)
            q = self.online(torch.cat([x1, x2])).float()
            k = self.target(torch.cat([x2, x1]))
            ctx["q1"], ctx["q2"] = q.chunk(2)
            ctx["k2"], ctx["k1"] = k.chunk(2)
            noisy = torch.cat([self._sample(ctx["q1"], step, NOISE_VIEW_1, sigma),
                               self._sample(ctx["q2"], step, NOISE_VIEW_2, sigma)])
            if self.needs_clean_predictions:
                ctx["p1_clean"], ctx["p2_clean"] = self.predictor(q).float().chunk(2)
            ctx["p1"], ctx["p2"] = self.predictor(noisy).float().chunk(2)
            return ctx
        for v, w, x_v, x_w, stream in ((1, 2, x1, x2, NOISE_VIEW_1), (2, 1, x2, x1, NOISE_VIEW_2)):
            q = self.online(x_v).float()
            ctx[f"k{w}"] = self.target(x_w)
            ctx[f"q{v}"] = q
            if self.needs_clean_predictions:
                ctx[f"p{v}_clean"] = self.predictor(q).float()
            ctx[f"p{v}"] = self.predictor(self._sample(q, step, stream, sigma)).float()
        return ctx

    def _extra_losses(self, ctx: dict, step: int) -> dict[str, tuple[Tensor, Tensor]]:
        """Additional loss terms of a subclass: {name: (weighted term added to the loss, unweighted value logged)}.
        `ctx` holds q1, q2 (raw online, fp32), k1, k2 (normalised target), p1, p2 (predictor on the noisy q),
        p1_clean/p2_clean (when `needs_clean_predictions`), labels, and the gathered all_q1, all_q2 (with
        gradient), all_k1, all_k2, all_labels."""
        return {}

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
        # PSA / DSA on this rank's batch; PSL on the batch gathered over ranks (q with gradient), the presence
        # of a cluster decided by this rank's labels (official multi-GPU behaviour; identical in one process).
        alignment = 0.5 * (alignment_loss(ctx["p1"], ctx["k2"], offset=offset)
                           + alignment_loss(ctx["p2"], ctx["k1"], offset=offset))
        all_labels = gather(labels)
        ctx["all_q1"], ctx["all_q2"] = gather_with_grad(ctx["q1"]), gather_with_grad(ctx["q2"])
        ctx["all_k1"], ctx["all_k2"] = gather(ctx["k1"]), gather(ctx["k2"])
        ctx["all_labels"] = all_labels
        temperature = float(self.opts.temperature)
        psl = 0.5 * (prototype_scattering_loss(ctx["all_q1"], ctx["all_k2"], all_labels, labels,
                                               num_clusters=self.num_clusters, temperature=temperature)
                     + prototype_scattering_loss(ctx["all_q2"], ctx["all_k1"], all_labels, labels,
                                                 num_clusters=self.num_clusters, temperature=temperature))
        loss = alignment + psl_weight * psl
        logs = {"alignment": alignment.detach(), "psl": psl.detach()}
        for name, (weighted, value) in self._extra_losses(ctx, step).items():
            loss = loss + weighted
            logs[name] = value.detach()
        self._after_losses(ctx, step)
        with torch.no_grad():
            both = torch.cat([ctx["all_q1"], ctx["all_q2"]])
            logs["q_std"] = F.normalize(both, dim=1).std(dim=0).mean()
        return {"loss": loss, **logs}
