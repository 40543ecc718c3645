"""DigPro losses: dynamic grouping (synchronous momentum grouping) on top of ProPos's alignment and PSL.

Paper: Zhang & Huang, "Towards Efficient and Effective Deep Clustering with Dynamic Grouping and Prototype
Aggregation", arXiv 2401.13581. docs/methods/digpro.md section 4 (losses) and section 10 (API).
Official code: ``Regan-Zhang/DigPro`` @ dfa30b3, with ``SMoGPrototypes`` from ``lightly`` v1.4.24.
The alignment and the prototype aggregation (= ProPos's PSL) are imported from ``losses/propos.py``.

The group features are model state: they are passed in and the updated ones are returned (detached); nothing is
stored here. The periodic group reset (k-means on the memory bank, ) is model code, not a loss.

Official behaviour kept here: group targets come from the *target* embedding and the *old* group
features; the groups are then moved towards the mean of the *raw* online projections assigned to them
(beta = 0.99, empty groups unchanged), and the logits compare the predictor output on the *clean* projection with
the *updated* groups (differentiable w.r.t. q), temperature 0.1. The two directions are sequential.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from losses.propos import propos_objective, require_matrix, require_positive, require_same_layout

__all__ = ["assign_groups", "momentum_group_update", "dynamic_grouping_loss", "symmetric_grouping", "digpro_objective"]

# The official assignment takes the argmax of cosine / 0.1 (lightly's default logit temperature). Dividing by a
# positive constant never reorders values, but it can merge values 1 ulp apart into a tie; dividing the same way
# keeps tie-breaking (first index) identical to the official code.
_ASSIGNMENT_LOGIT_TEMPERATURE = 0.1


def _require_groups(group_features: Tensor, x: Tensor) -> Tensor:
    """Check (G, D) group features against (B, D) inputs; return them detached, in x's dtype and device."""
    require_matrix("group_features", group_features)
    if group_features.shape[1] != x.shape[1]:
        raise ValueError(f"group_features must have {x.shape[1]} columns (the feature dimension), "
                         f"got shape {tuple(group_features.shape)}")
    return group_features.detach().to(device=x.device, dtype=x.dtype)


def _require_beta(beta: float) -> None:
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must lie in [0, 1], got {beta!r}")


def assign_groups(x: Tensor, group_features: Tensor) -> Tensor:
    """: index of the most cosine-similar group for every row (ties -> first index). No gradient.

    x: (B, D); group_features: (G, D) (both L2-normalised here; group features are cast to x's dtype).
    Returns a (B,) int64 tensor.
    """
    require_matrix("x", x)
    groups = _require_groups(group_features, x)
    with torch.no_grad():
        cosine = F.normalize(x.detach(), dim=1) @ F.normalize(groups, dim=1).t()  # (B, G)
        return torch.argmax(cosine / _ASSIGNMENT_LOGIT_TEMPERATURE, dim=1)  # (B,)


def momentum_group_update(q: Tensor, group_features: Tensor, *, beta: float = 0.99) -> Tensor:
    """synchronous momentum update: G'_g = beta G_g + (1 - beta) mean_{i: a_i = g} q_i.

    q: (B, D) raw online projections (the mean is of the *un-normalised* rows); group_features: (G, D) current
    groups (a constant). a_i = assign_groups(q_i, G). Groups that receive no sample keep G'_g = G_g.
    Returns (G, D), differentiable w.r.t. q through the means.
    """
    _require_beta(beta)
    require_matrix("q", q)
    groups = _require_groups(group_features, q)  # (G, D) constant
    assignments = assign_groups(q, groups)  # (B,)
    membership = F.one_hot(assignments, groups.shape[0]).to(q.dtype).t()  # (G, B)
    counts = membership.sum(dim=1, keepdim=True)  # (G, 1)
    means = (membership @ q) / counts.clamp_min(1.0)  # (G, D), differentiable in q (deterministic on CUDA)
    moved = beta * groups + (1.0 - beta) * means  # (G, D)
    return torch.where(counts > 0, moved, groups)


def dynamic_grouping_loss(q: Tensor, k: Tensor, p: Tensor, group_features: Tensor, *, beta: float = 0.99,
                          temperature: float = 0.1) -> tuple[Tensor, Tensor]:
    """one direction of the dynamic grouping loss; returns (loss, new_group_features).

    q: (B, D) raw online projection of view v; k: (B, D) target projection of the other view (a constant);
    p: (B, D) predictor output on the clean q (no Gaussian noise); group_features: (G, D) current state.
      1. y_i = assign_groups(k_i, G) with the old G (no gradient);
      2. G' = momentum_group_update(q, G, beta);
      3. loss = mean_i CE(cos(p_i, G'_g) / temperature, y_i).
    Gradient reaches p and, through G', q. new_group_features = G' detached (the model stores it).
    """
    require_positive("temperature", temperature)
    _require_beta(beta)
    require_matrix("q", q)
    require_same_layout("q", q, k=k, p=p)
    groups = _require_groups(group_features, q)  # (G, D)
    targets = assign_groups(k, groups)  # (B,) with the old groups
    updated = momentum_group_update(q, groups, beta=beta)  # (G, D)
    logits = F.normalize(p, dim=1) @ F.normalize(updated, dim=1).t() / temperature  # (B, G)
    return F.cross_entropy(logits, targets), updated.detach()


def symmetric_grouping(q1: Tensor, q2: Tensor, k1: Tensor, k2: Tensor, p1_clean: Tensor, p2_clean: Tensor,
                       group_features: Tensor, *, beta: float = 0.99, temperature: float = 0.1
                       ) -> tuple[Tensor, Tensor]:
    """The dynamic grouping loss of both directions, in turn: (L1, G1) = grouping(q1, k2, p1_clean, G),
    (L2, G2) = grouping(q2, k1, p2_clean, G1); returns ((L1 + L2) / 2, G2 detached).

    q_v raw online projections, k_v target projections, p_v_clean = predictor(q_v) without noise, all (N, D);
    group_features (G, D). Under DDP the model passes tensors gathered over the ranks (q and p with gradient),
    so every rank keeps the same group features."""
    require_same_layout("q1", q1, q2=q2, k1=k1, k2=k2, p1_clean=p1_clean, p2_clean=p2_clean)
    loss_1, groups_1 = dynamic_grouping_loss(q1, k2, p1_clean, group_features, beta=beta, temperature=temperature)
    loss_2, groups_2 = dynamic_grouping_loss(q2, k1, p2_clean, groups_1, beta=beta, temperature=temperature)
    return 0.5 * (loss_1 + loss_2), groups_2


def digpro_objective(p1: Tensor, p2: Tensor, q1: Tensor, q2: Tensor, k1: Tensor, k2: Tensor, labels: Tensor,
                     group_features: Tensor, p1_clean: Tensor, p2_clean: Tensor, *, num_clusters: int,
                     temperature: float = 0.5, psl_weight: float = 0.1, grouping_weight: float = 0.3,
                     beta: float = 0.99, group_temperature: float = 0.1, offset: float = 0.0,
                     gathered: dict[str, Tensor] | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """DigPro's objective: ``total = alignment + psl_weight * PSL_sym + grouping_weight * grouping``; returns
    (total, alignment, psl, grouping, new_group_features).

    p_v = predictor(q_v + sigma * eps_v), p_v_clean = predictor(q_v); q_v raw online and k_v target projections of
    view v; labels (B,) pseudo-labels; group_features (G, D). Alignment and PSL as ``propos_objective``. The
    grouping directions are sequential (``symmetric_grouping``); new_group_features is detached. Under DDP the
    model passes ``gathered`` = {q1, q2, k1, k2, labels, p1_clean, p2_clean} of the global batch: the PSL and the
    grouping run on it, so every rank keeps the same group features. The grouping term has no warm-up; during
    warm-up the model passes ``psl_weight=0.0`` and sigma 0 (so p_v == p_v_clean).
    """
    partial, alignment, psl = propos_objective(p1, p2, q1, q2, k1, k2, labels, num_clusters=num_clusters,
                                               temperature=temperature, psl_weight=psl_weight, offset=offset,
                                               gathered=gathered)
    require_same_layout("p1", p1, p1_clean=p1_clean, p2_clean=p2_clean)
    g = gathered or {"q1": q1, "q2": q2, "k1": k1, "k2": k2, "p1_clean": p1_clean, "p2_clean": p2_clean}
    grouping, groups = symmetric_grouping(g["q1"], g["q2"], g["k1"], g["k2"], g["p1_clean"], g["p2_clean"],
                                          group_features, beta=beta, temperature=group_temperature)
    return partial + grouping_weight * grouping, alignment, psl, grouping, groups
