"""HaDis: diffused sampling and hardness-aware self-distillation (Zhang & Huang, 2024). Spec: shared/specs/hadis.md.

ProPos (models/momentum_family.py: DSA = ProPos's PSA, the prototypical term = ProPos's PSL after warm-up) plus
the hardness-aware self-distillation loss: teacher = the normalised target projection k_w, student = the same
noisy predictor output p_v the alignment uses, on this rank's batch (official behaviour; k is not gathered),
weight `hsd_weight`, on from the first step (no warm-up), no parameters and no state.
Evaluation features: the L2-normalised target projector output. No cluster heads.
"""
from __future__ import annotations

from torch import Tensor

from losses.hadis import hardness_aware_self_distillation_loss

from .momentum_family import MomentumFamily


class HaDis(MomentumFamily):
    section = "hadis"

    def _extra_losses(self, ctx: dict, step: int) -> dict[str, tuple[Tensor, Tensor]]:
        tau = float(self.opts.hsd_tau)
        hsd = 0.5 * (hardness_aware_self_distillation_loss(ctx["k2"], ctx["p1"], tau=tau)
                     + hardness_aware_self_distillation_loss(ctx["k1"], ctx["p2"], tau=tau))
        return {"hsd": (float(self.opts.hsd_weight) * hsd, hsd)}


METHOD = HaDis
