"""HaDis losses: hardness-aware self-distillation (HSD) on top of ProPos's alignment and prototype loss.

Paper: Zhang & Huang, "Deep Clustering with Diffused Sampling and Hardness-aware Self-distillation",
arXiv 2401.14038. docs/methods/hadis.md section 4 (losses) and section 10 (API). Official code:
``Regan-Zhang/HaDis`` @ 36aab39 (class ``HSD``). The paper's diffused sampling alignment (DSA) and prototypical
contrastive loss are, in the official code, exactly ProPos's PSA and PSL: they are imported from
``losses/propos.py``, not re-implemented.

Official behaviour kept here: HSD rows are *teacher* anchors and columns *students*; an anchor's
negatives are the samples whose teacher-teacher distance strictly exceeds the anchor's own teacher-student
distance; squared distances are clamped at 1e-12 before the square root (distance floor 1e-6); a row without a
negative uses the constant 1e5 with weight 0; the hardness weights and the teacher carry no gradient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from losses.propos import propos_objective, require_matrix, require_positive, require_same_layout

__all__ = ["hardness_aware_self_distillation_loss", "symmetric_hsd", "hadis_objective"]

# Squared distances are clamped at this value before the square root (so no distance is below 1e-6).
SQUARED_DISTANCE_FLOOR = 1e-12
# Mined "hardest negative" distance of an anchor that has no negative (its hardness weight is then 0).
NO_NEGATIVE_DISTANCE = 1e5


def _pairwise_distances(anchors: Tensor, others: Tensor) -> Tensor:
    """(N, D) x (M, D) -> (N, M) Euclidean distances via ||a||^2 + ||b||^2 - 2<a, b>, clamped before the sqrt."""
    anchor_sq = anchors.pow(2).sum(dim=1, keepdim=True)  # (N, 1)
    other_sq = others.pow(2).sum(dim=1, keepdim=True)  # (M, 1)
    squared = torch.addmm(anchor_sq + other_sq.t(), anchors, others.t(), beta=1, alpha=-2)  # (N, M)
    return squared.clamp_min(SQUARED_DISTANCE_FLOOR).sqrt()


def hardness_aware_self_distillation_loss(teacher: Tensor, student: Tensor, *, tau: float = 0.5) -> Tensor:
    """HSD for one direction; returns a scalar.

    teacher: (B, D) target projection (a constant: detached here); student: (B, D) predictor output on the noisy
    online projection (the same tensor as the alignment uses). Rows of both are L2-normalised here. B >= 2.

    With t_i, s_i the normalised rows, Dt[i, j] = |t_i - t_j| and Dx[i, j] = |t_i - s_j|:
    negatives of anchor i are {j : Dt[i, j] > Dx[i, i]}, the rest are positives (always including i).
    d-_i = min over negatives of Dx[i, j] (1e5 if none), d+_i = max over positives of Dx[i, j];
    a-_i, a+_i = Dt at the same columns; weights w- = max(a- - d-, 0), w+ = max(d+ - a+, 0) (stop-gradient);
    HSD = mean_i CE([w-_i d-_i / tau, w+_i d+_i / tau], class 0) = mean_i log(1 + exp((w+ d+ - w- d-) / tau)).
    """
    require_positive("tau", tau)
    require_matrix("teacher", teacher, min_rows=2)
    require_same_layout("teacher", teacher, student=student)

    t = F.normalize(teacher.detach(), dim=1)  # (B, D)
    s = F.normalize(student, dim=1)  # (B, D)
    teacher_dist = _pairwise_distances(t, t)  # (B, B) constant
    cross_dist = _pairwise_distances(t, s)  # (B, B) rows: teacher anchors, columns: students

    anchor_dist = cross_dist.diagonal().detach()  # (B,) r_i = Dx[i, i]
    is_negative = teacher_dist > anchor_dist.unsqueeze(1)  # (B, B), strict

    negative_candidates = torch.where(is_negative, cross_dist, torch.full_like(cross_dist, NO_NEGATIVE_DISTANCE))
    positive_candidates = torch.where(is_negative, torch.zeros_like(cross_dist), cross_dist)  # distances >= 1e-6
    hard_negative, negative_index = negative_candidates.min(dim=1)  # (B,), (B,)
    hard_positive, positive_index = positive_candidates.max(dim=1)  # (B,), (B,)

    teacher_negative = teacher_dist.gather(1, negative_index.unsqueeze(1)).squeeze(1)  # (B,)
    teacher_positive = teacher_dist.gather(1, positive_index.unsqueeze(1)).squeeze(1)  # (B,)
    weight_negative = (teacher_negative - hard_negative.detach()).clamp_min(0.0)  # student's negative too close
    weight_positive = (hard_positive.detach() - teacher_positive).clamp_min(0.0)  # student's positive too far

    logits = torch.stack([weight_negative * hard_negative / tau,
                          weight_positive * hard_positive / tau], dim=1)  # (B, 2)
    targets = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)  # (B,)
    return F.cross_entropy(logits, targets)


def symmetric_hsd(k1: Tensor, k2: Tensor, p1: Tensor, p2: Tensor, *, tau: float = 0.5) -> Tensor:
    """HSD of both directions, each with weight 1/2: teacher = target projection of the other view, student =
    the (noisy) predictor output of this view, on this rank's batch (the official code does not gather k).
    k_v, p_v: (B, D). Returns a scalar."""
    return 0.5 * (hardness_aware_self_distillation_loss(k2, p1, tau=tau)
                  + hardness_aware_self_distillation_loss(k1, p2, tau=tau))


def hadis_objective(p1: Tensor, p2: Tensor, q1: Tensor, q2: Tensor, k1: Tensor, k2: Tensor, labels: Tensor, *,
                    num_clusters: int, temperature: float = 0.5, psl_weight: float = 0.1, tau: float = 0.5,
                    hsd_weight: float = 1.0, offset: float = 0.0, gathered: dict[str, Tensor] | None = None
                    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """HaDis's objective: ``total = DSA_sym + psl_weight * PSL_sym + hsd_weight * HSD_sym``; returns (total,
    alignment, psl, hsd).

    Inputs as ``losses.propos.propos_objective``: p_v = predictor(q_v + sigma * eps_v) (B, D), q_v raw online
    projection, k_v target projection of view v, labels (B,) pseudo-labels (``gathered``: the global batch for
    the PSL under DDP). HSD_sym = (HSD(k2, p1) + HSD(k1, p2)) / 2 on this rank's batch. HSD is on from the first
    epoch; during warm-up the model passes ``psl_weight=0.0``.
    """
    partial, alignment, psl = propos_objective(p1, p2, q1, q2, k1, k2, labels, num_clusters=num_clusters,
                                               temperature=temperature, psl_weight=psl_weight, offset=offset,
                                               gathered=gathered)
    hsd = symmetric_hsd(k1, k2, p1, p2, tau=tau)
    return partial + hsd_weight * hsd, alignment, psl, hsd
