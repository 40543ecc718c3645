"""DigPro: dynamic grouping and prototype aggregation (Zhang & Huang, 2024). Docs: docs/methods/digpro.md.

ProPos (models/momentum_family.py: alignment with Gaussian positive sampling + PSL = "prototype aggregation"
after warm-up) plus the dynamic grouping loss (synchronous momentum grouping, weight `grouping_weight`, no
warm-up), with its state as buffers (checkpointed):
* group features (K, D), initialised uniform in [0, 1); every step the two directions update them in turn
  (losses.digpro.dynamic_grouping_loss) and the result is stored;
* a memory bank (D, bank_size), feature-major, initialised N(0, 1) with unit columns, and its pointer; after the
  losses the L2-normalised online projections of both views (gathered over ranks) are enqueued FIFO; when the
  write would reach the end only the rows that fit are written and the pointer wraps to 0;
* every `reset_every` steps (0: K; official: `it > 1 and it % K == 0`, it = step + 1), before the losses, the
  group features are reset to the L2-normalised centres of a k-means of the bank's 2560 vectors. The official
  code uses an unseeded scikit-learn KMeans; here torch_clustering's (euclidean, k-means++, n_init 10) seeded
  with derive_seed(seed, "group_reset", step), so runs are reproducible.
* two EMA updates per step: `first_momentum` (0.99) before the losses (skipped on reset steps), then the usual
  momentum_base (0.996) after them and the bank update: effective 0.98604 per normal step.
Under DDP the grouping loss runs on the batch gathered over ranks (q and predictor(q) with gradient), so every
rank keeps the same group features and the gradient equals a one-process run's; the official code is one-GPU only.
Evaluation features: the L2-normalised target projector output. No cluster heads.
"""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import Tensor

from engine.config import Key, at_least, in_range, non_negative, positive
from engine.distributed import gather_with_grad
from engine.seeding import derive_seed
from losses.digpro import digpro_objective

from .base import DataInfo
from .momentum_family import MomentumFamily, family_section

SECTION = family_section("digpro", "DigPro (Zhang & Huang 2024) = ProPos keys + dynamic grouping", {
    "grouping_weight": Key(0.3, "weight of the dynamic grouping loss (always on)", non_negative),
    "group_temperature": Key(0.1, "temperature of the grouping logits", positive),
    "group_beta": Key(0.99, "momentum of the synchronous group-feature update", in_range(0, 1)),
    "bank_size": Key(2560, "memory bank of recent online projections (group resets)", at_least(1, integer=True),
                     shape=True),
    "reset_every": Key(0, "reset the group features by k-means of the bank every N steps (0: num_clusters)",
                       at_least(0, integer=True)),
    "group_kmeans_n_init": Key(10, "k-means++ restarts of each group reset", at_least(1, integer=True)),
    "first_momentum": Key(0.99, "EMA momentum of the first of the two target updates per step", in_range(0, 1)),
})


class DigPro(MomentumFamily):
    config_sections = (SECTION,)
    section = "digpro"
    needs_clean_predictions = True

    def __init__(self, cfg, info: DataInfo):
        super().__init__(cfg, info)
        dim, size = int(self.opts.feature_dim), int(self.opts.bank_size)
        self.register_buffer("group_features", torch.rand(self.num_clusters, dim))
        self.register_buffer("memory_bank", F.normalize(torch.randn(dim, size), dim=0))
        self.register_buffer("bank_pointer", torch.zeros((), dtype=torch.long))
        # The same on every rank by construction (computed from gathered tensors).
        self._ddp_params_and_buffers_to_ignore += ["group_features", "memory_bank", "bank_pointer"]
        self.reset_seconds, self.resets = 0.0, 0
        self._pointer: int | None = None   # host copy of bank_pointer (read once, then kept: no sync per step)

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._pointer = None

    def reset_period(self) -> int:
        return int(self.opts.reset_every) or self.num_clusters

    def is_reset_step(self, step: int) -> bool:
        it = step + 1  # the official n_iter starts at 1
        return it > 1 and it % self.reset_period() == 0

    @torch.no_grad()
    def reset_groups(self, step: int) -> None:
        """Group features <- L2-normalised k-means centres of the memory bank (docs/methods/digpro.md)."""
        from torch_clustering import KMeans

        start = time.perf_counter()
        vectors = self.memory_bank.t().float()  # (bank_size, D)
        kmeans = KMeans(n_clusters=self.num_clusters, metric="euclidean", init="k-means++",
                        n_init=int(self.opts.group_kmeans_n_init), max_iter=300, tol=1e-4,
                        random_state=derive_seed(int(self.cfg.seed), "group_reset", step) % (2 ** 31))
        centres = kmeans.fit(vectors).cluster_centers_
        self.group_features.copy_(F.normalize(centres, dim=1).to(self.group_features))
        self.reset_seconds += time.perf_counter() - start
        self.resets += 1

    @torch.no_grad()
    def enqueue(self, rows: Tensor) -> None:
        """FIFO write of (n, D) rows into the feature-major bank (lightly v1.4.24 MemoryBankModule semantics)."""
        size = self.memory_bank.shape[1]
        if self._pointer is None:
            self._pointer = int(self.bank_pointer)
        pointer, n = self._pointer, rows.shape[0]
        if pointer + n >= size:
            self.memory_bank[:, pointer:] = rows[: size - pointer].t().to(self.memory_bank)
            pointer = 0
        else:
            self.memory_bank[:, pointer:pointer + n] = rows.t().to(self.memory_bank)
            pointer += n
        self._pointer = pointer
        self.bank_pointer.fill_(pointer)

    def _before_losses(self, step: int) -> None:
        if self.is_reset_step(step):
            self.reset_groups(step)
        else:
            self.ema_update(float(self.opts.first_momentum))
        super()._before_losses(step)

    def _objective(self, ctx: dict, *, psl_weight: float, offset: float) -> tuple[Tensor, dict[str, Tensor]]:
        gathered = dict(ctx["gathered"], p1_clean=gather_with_grad(ctx["p1_clean"]),
                        p2_clean=gather_with_grad(ctx["p2_clean"]))
        total, alignment, psl, grouping, groups = digpro_objective(
            ctx["p1"], ctx["p2"], ctx["q1"], ctx["q2"], ctx["k1"], ctx["k2"], ctx["labels"],
            self.group_features.float(), ctx["p1_clean"], ctx["p2_clean"], num_clusters=self.num_clusters,
            temperature=float(self.opts.temperature), psl_weight=psl_weight,
            grouping_weight=float(self.opts.grouping_weight), beta=float(self.opts.group_beta),
            group_temperature=float(self.opts.group_temperature), offset=offset, gathered=gathered)
        ctx["new_group_features"] = groups
        return total, {"alignment": alignment, "psl": psl, "grouping": grouping}

    def _after_losses(self, ctx: dict, step: int) -> None:
        with torch.no_grad():
            self.group_features.copy_(ctx["new_group_features"])
            self.enqueue(torch.cat([F.normalize(ctx["gathered"]["q1"].detach(), dim=1),
                                    F.normalize(ctx["gathered"]["q2"].detach(), dim=1)]))
        super()._after_losses(ctx, step)

    def on_epoch_end(self, ctx) -> None:
        if self.resets:
            ctx.info(f"group resets in epoch {ctx.epoch + 1}: {self.resets} k-means of the memory bank, "
                     f"{self.reset_seconds:.2f}s")
            ctx.log_metrics({"train/group_reset_seconds": self.reset_seconds})
        self.reset_seconds, self.resets = 0.0, 0
        super().on_epoch_end(ctx)


METHOD = DigPro
