"""ProPos losses: positive sampling alignment (PSA) and prototype scattering loss (PSL).

Paper: Huang et al., "Learning Representation for Clustering via Prototype Scattering and Positive Sampling",
TPAMI 2022 (arXiv 2111.11821). Documentation: docs/methods/propos.md.
Where paper and official code (``Hzzone/ProPos`` @ cc35d8c) differ, these functions follow the code:

* PSA in the default code path is ``-2 * mean cos`` (offset 0), not BYOL's ``2 - 2 cos``; ``offset=2.0`` gives the
  ``v2`` form. Same gradient.
* PSL negatives are online-online prototype similarities; only the diagonal (the positive) uses the target
  prototype. Columns of clusters absent from the batch are filled with the constant -10 (not -inf), so they still
  add ``exp(-10)`` to every present row's denominator; absent rows are dropped from the mean.
* The official code casts the PSL logits to float32 (an AMP leftover); here everything is computed in the input
  dtype, so float64 inputs give float64 results.

Every function is pure: no module state, no randomness (the Gaussian noise of positive sampling is an input).
HaDis (``losses/hadis.py``) and DigPro (``losses/digpro.py``) reuse the alignment, the PSL, their symmetrised
forms ``symmetric_alignment`` and ``symmetric_psl`` and the input checks; ``propos_objective`` (and
``hadis_objective``, ``digpro_objective``) is what the models call.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "gaussian_positive_sampling",
    "alignment_loss",
    "compute_prototypes",
    "prototype_scattering_loss",
    "symmetric_alignment",
    "symmetric_psl",
    "propos_objective",
]

# Logit written into every column of a cluster absent from the batch (official constant).
ABSENT_CLUSTER_LOGIT = -10.0


# ----------------------------------------------------------------------------------------------------------------
# input checks (shared with losses/hadis.py and losses/digpro.py)
# ----------------------------------------------------------------------------------------------------------------

def require_matrix(name: str, x: Tensor, *, min_rows: int = 1) -> None:
    """Raise ValueError unless ``x`` is a floating-point (N, D) tensor with N >= min_rows and D >= 1."""
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 2:
        raise ValueError(f"{name} must have shape (N, D), got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if x.shape[0] < min_rows or x.shape[1] < 1:
        raise ValueError(f"{name} must have at least {min_rows} row(s) and 1 column, got {tuple(x.shape)}")


def require_same_layout(reference_name: str, reference: Tensor, **others: Tensor) -> None:
    """Raise ValueError unless every tensor in ``others`` has the shape, dtype and device of ``reference``."""
    for name, x in others.items():
        require_matrix(name, x)
        if x.shape != reference.shape:
            raise ValueError(f"{name} must have the shape of {reference_name} {tuple(reference.shape)}, "
                             f"got {tuple(x.shape)}")
        if x.dtype != reference.dtype:
            raise ValueError(f"{name} has dtype {x.dtype} but {reference_name} has {reference.dtype}; "
                             f"pass both in the same dtype")
        if x.device != reference.device:
            raise ValueError(f"{name} is on {x.device} but {reference_name} is on {reference.device}")


def require_labels(name: str, labels: Tensor, *, num_clusters: int, length: int | None = None,
                   device: torch.device | None = None) -> None:
    """Raise ValueError unless ``labels`` is a 1-D integer tensor (of ``length`` entries, on ``device``) with values
    in [0, num_clusters)."""
    if not isinstance(labels, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(labels).__name__}")
    if device is not None and labels.device != device:
        raise ValueError(f"{name} is on {labels.device} but the features are on {device}")
    if labels.dim() != 1:
        raise ValueError(f"{name} must have shape (N,), got {tuple(labels.shape)}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"{name} must be an integer tensor (int64), got dtype {labels.dtype}")
    if length is not None and labels.shape[0] != length:
        raise ValueError(f"{name} must have {length} entries (one per feature row), got {labels.shape[0]}")
    # The range check reads values back to the host, so it runs on CPU tensors only: on a GPU it would be a
    # synchronisation per call (several per training step), and F.one_hot fails on out-of-range labels there anyway.
    if labels.numel() > 0 and labels.device.type == "cpu":
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or high >= num_clusters:
            raise ValueError(f"{name} must lie in [0, {num_clusters}), got values in [{low}, {high}]")


def require_num_clusters(num_clusters: int) -> None:
    if isinstance(num_clusters, bool) or not isinstance(num_clusters, int) or num_clusters < 1:
        raise ValueError(f"num_clusters must be a positive int, got {num_clusters!r}")


def require_positive(name: str, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")


# ----------------------------------------------------------------------------------------------------------------
# PSA: Gaussian positive sampling + alignment
# ----------------------------------------------------------------------------------------------------------------

def gaussian_positive_sampling(q: Tensor, noise: Tensor, *, latent_std: float = 0.001) -> Tensor:
    """: sample a positive around the raw online projection, ``q + latent_std * noise``.

    q: (B, D) raw (un-normalised) online projection; noise: (B, D) standard-normal draws made by the caller.
    Returns (B, D). The model passes ``latent_std=0.0`` during warm-up; the predictor is applied to the result.
    """
    require_matrix("q", q)
    require_same_layout("q", q, noise=noise)
    if not latent_std >= 0:
        raise ValueError(f"latent_std must be >= 0, got {latent_std!r}")
    return q + noise * latent_std  # (B, D)


def alignment_loss(pred: Tensor, target: Tensor, *, offset: float = 0.0) -> Tensor:
    """(one direction of PSA): ``offset - 2 * mean_i cos(pred_i, target_i)``.

    pred: (B, D) predictor output; target: (B, D) target projection, detached here (stop-gradient).
    ``offset=0`` is the official default path (values are negative); ``offset=2`` is the ``v2``/BYOL form.
    Cosine with ``F.cosine_similarity`` semantics (eps 1e-8). Returns a scalar.
    """
    require_matrix("pred", pred)
    require_same_layout("pred", pred, target=target)
    cosine = F.cosine_similarity(pred, target.detach(), dim=1)  # (B,)
    return offset - 2.0 * cosine.mean()


# ----------------------------------------------------------------------------------------------------------------
# PSL: prototypes and prototype scattering
# ----------------------------------------------------------------------------------------------------------------

def compute_prototypes(features: Tensor, labels: Tensor, *, num_clusters: int) -> Tensor:
    """: row c = L2-normalised mean of the feature rows labelled c; a zero row for an empty cluster.

    features: (N, D), used as given (not re-normalised here); labels: (N,) integers in [0, K).
    Returns (K, D), differentiable w.r.t. ``features`` (prototypes are not detached).
    """
    require_num_clusters(num_clusters)
    require_matrix("features", features)
    require_labels("labels", labels, num_clusters=num_clusters, length=features.shape[0], device=features.device)
    membership = F.one_hot(labels.long(), num_clusters).to(features.dtype).t()  # (K, N)
    counts = membership.sum(dim=1, keepdim=True)  # (K, 1)
    # 1/|cluster| weights (rows of an empty cluster stay 0); mean = weights @ features
    weights = membership / counts.clamp_min(1.0)  # (K, N)
    means = weights @ features  # (K, D)
    return F.normalize(means, dim=1)  # eps 1e-12: a zero row stays zero


def prototype_scattering_loss(q: Tensor, k: Tensor, labels: Tensor, present_labels: Tensor | None = None, *,
                              num_clusters: int, temperature: float = 0.5) -> Tensor:
    """(one direction of PSL), paper Eq. for the prototype scattering loss.

    q: (N, D) online projections (raw; rows L2-normalised here); k: (N, D) target projections (rows normalised
    here, detached); labels: (N,) pseudo-labels; present_labels: optional (M,) labels that define which clusters
    count as present (default ``labels``; in DDP the official code passes this rank's batch labels while q, k and
    labels are gathered over all ranks). Returns a scalar:

        S[c, j] = <Q_c, Q_j> / t (j != c),  S[c, c] = <Q_c, Kt_c> / t,  S[:, a] = -10 for every absent cluster a,
        PSL = sum over present c of (logsumexp_j S[c, j] - S[c, c]) / #present.
    """
    require_num_clusters(num_clusters)
    require_positive("temperature", temperature)
    require_matrix("q", q)
    require_same_layout("q", q, k=k)
    require_labels("labels", labels, num_clusters=num_clusters, length=q.shape[0], device=q.device)
    if present_labels is None:
        present_labels = labels
    else:
        require_labels("present_labels", present_labels, num_clusters=num_clusters)
        if present_labels.numel() == 0:
            raise ValueError("present_labels is empty: at least one cluster must be present")

    online_prototypes = compute_prototypes(F.normalize(q, dim=1), labels, num_clusters=num_clusters)  # (K, D)
    target_prototypes = compute_prototypes(F.normalize(k.detach(), dim=1), labels,
                                           num_clusters=num_clusters)  # (K, D)

    logits = online_prototypes @ online_prototypes.t() / temperature  # (K, K) online-online negatives
    positives = (online_prototypes * target_prototypes).sum(dim=1) / temperature  # (K,) online-target positives
    diagonal = torch.eye(num_clusters, dtype=torch.bool, device=q.device)  # (K, K)
    logits = torch.where(diagonal, positives.unsqueeze(0), logits)  # S[c, c] = positives[c]

    present = torch.zeros(num_clusters, dtype=torch.bool, device=q.device)  # (K,)
    present[present_labels.to(q.device).long()] = True
    logits = torch.where(present.unsqueeze(0), logits,
                         torch.full_like(logits, ABSENT_CLUSTER_LOGIT))  # absent columns -> -10

    per_cluster = torch.logsumexp(logits, dim=1) - logits.diagonal()  # (K,)
    per_cluster = torch.where(present, per_cluster, torch.zeros_like(per_cluster))
    return per_cluster.sum() / present.sum().to(per_cluster.dtype)


# ----------------------------------------------------------------------------------------------------------------
# symmetrised objective
# ----------------------------------------------------------------------------------------------------------------

def symmetric_alignment(p1: Tensor, p2: Tensor, k1: Tensor, k2: Tensor, *, offset: float = 0.0) -> Tensor:
    """PSA of both directions, each with weight 1/2: view 1's predictions against view 2's target and vice versa.

    p_v: (B, D) predictor output on the (noisy) online projection of view v; k_v: (B, D) target projection of
    view v. This rank's batch only (the official multi-GPU code aligns per GPU). Returns a scalar.
    """
    require_matrix("p1", p1)
    require_same_layout("p1", p1, p2=p2, k1=k1, k2=k2)
    return 0.5 * (alignment_loss(p1, k2, offset=offset) + alignment_loss(p2, k1, offset=offset))


def symmetric_psl(q1: Tensor, q2: Tensor, k1: Tensor, k2: Tensor, labels: Tensor, present_labels: Tensor | None = None,
                  *, num_clusters: int, temperature: float = 0.5) -> Tensor:
    """PSL of both directions, each with weight 1/2: prototypes of view 1's online projections against view 2's
    target prototypes and vice versa.

    q_v: (N, D) raw online projections, k_v: (N, D) target projections, labels: (N,) pseudo-labels, all gathered
    over the DDP ranks (q with gradient); present_labels: this rank's labels, which decide which clusters are
    present (the official multi-GPU behaviour; None: `labels`, as in one process). Returns a scalar.
    """
    require_matrix("q1", q1)
    require_same_layout("q1", q1, q2=q2, k1=k1, k2=k2)
    return 0.5 * (prototype_scattering_loss(q1, k2, labels, present_labels, num_clusters=num_clusters,
                                            temperature=temperature)
                  + prototype_scattering_loss(q2, k1, labels, present_labels, num_clusters=num_clusters,
                                              temperature=temperature))


def propos_objective(p1: Tensor, p2: Tensor, q1: Tensor, q2: Tensor, k1: Tensor, k2: Tensor, labels: Tensor, *,
                     num_clusters: int, temperature: float = 0.5, psl_weight: float = 0.1, offset: float = 0.0,
                     gathered: dict[str, Tensor] | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """ProPos's objective: ``total = PSA_sym + psl_weight * PSL_sym``; returns (total, alignment, psl).

    p_v = predictor(gaussian_positive_sampling(q_v, eps_v)); q_v raw online projection; k_v target projection of
    view v; labels: (B,) pseudo-labels of the batch; every tensor has B rows. During warm-up the model passes
    ``psl_weight=0.0`` (and latent_std 0 to the sampling). Under DDP the model passes ``gathered`` = {q1, q2, k1,
    k2, labels} of the global batch (q with gradient): the PSL then runs on them, this rank's labels deciding
    which clusters are present (the official multi-GPU behaviour); the alignment stays on this rank's batch.
    """
    alignment = symmetric_alignment(p1, p2, k1, k2, offset=offset)
    g = gathered or {"q1": q1, "q2": q2, "k1": k1, "k2": k2, "labels": labels}
    psl = symmetric_psl(g["q1"], g["q2"], g["k1"], g["k2"], g["labels"], labels if gathered else None,
                        num_clusters=num_clusters, temperature=temperature)
    return alignment + psl_weight * psl, alignment, psl
