"""HaDis: diffused sampling and hardness-aware self-distillation (Zhang & Huang, 2024). Docs: docs/methods/hadis.md.

ProPos (models/momentum_family.py: DSA = ProPos's PSA, the prototypical term = ProPos's PSL after warm-up) plus
the hardness-aware self-distillation loss: teacher = the normalised target projection k_w, student = the same
noisy predictor output p_v the alignment uses, on this rank's batch (official behaviour; k is not gathered),
weight `hsd_weight`, on from the first step (no warm-up), no parameters and no state.
Evaluation features: the L2-normalised target projector output. No cluster heads.
"""
from __future__ import annotations

from torch import Tensor

from engine.config import Key, non_negative, positive
from losses.hadis import hadis_objective

from .momentum_family import MomentumFamily, family_section

SECTION = family_section("hadis", "HaDis (Zhang & Huang 2024) = ProPos keys + hardness-aware self-distillation", {
    "hsd_weight": Key(1.0, "weight of the hardness-aware self-distillation loss (always on)", non_negative),
    "hsd_tau": Key(0.5, "temperature tau_h of HSD", positive),
})


class HaDis(MomentumFamily):
    config_sections = (SECTION,)
    section = "hadis"

    def _objective(self, ctx: dict, *, psl_weight: float, offset: float) -> tuple[Tensor, dict[str, Tensor]]:
        total, alignment, psl, hsd = hadis_objective(
            ctx["p1"], ctx["p2"], ctx["q1"], ctx["q2"], ctx["k1"], ctx["k2"], ctx["labels"],
            num_clusters=self.num_clusters, temperature=float(self.opts.temperature), psl_weight=psl_weight,
            tau=float(self.opts.hsd_tau), hsd_weight=float(self.opts.hsd_weight), offset=offset,
            gathered=ctx["gathered"])
        return total, {"alignment": alignment, "psl": psl, "hsd": hsd}


METHOD = HaDis
