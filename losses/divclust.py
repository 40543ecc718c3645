"""DivClust: controlling the diversity of C clusterings learned at once (Metaxas, Tzimiropoulos, Patras,
CVPR 2023).

Implements the diversity loss, the threshold and the label bank (docs/methods/divclust.md), i.e. the official ``DivClustLoss`` of ``ManiadisG/DivClust`` (``engine/criterion.py``),
split into pure functions. The paper's normalisation constants could not be verified; the official code's
are used:

- similarity of clustering a to clustering b: columns L2-normalised over the batch axis, then the mean over
  the clusters of a of the best cosine match among the clusters of b; asymmetric, both orders are used;
- the loss is a **sum** over the C(C-1) ordered pairs of relu(s_ab - d), not an average; the caller divides
  by C (model-side weighting, the official code / pitfall 3);
- the threshold d starts at 1 and is moved multiplicatively every ``interval`` steps according to the
  mean pairwise NMI of a bank of recent hard labels, *before* the loss of the same step (pitfall 5).

Difference from the official PICA model: it adds the diversity term twice (effective
weight 2/C). This module has no opinion on weights; the framework uses weight 1 for every method.

The training-state container ``DivClustState`` at the bottom of this file is not a loss; it lives here
until the trainer gives it a home (it only holds plain tensors/numbers for checkpointing).
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import Tensor

from metrics.diversity import mean_inter_clustering_nmi

__all__ = [
    "clustering_similarity",
    "divclust_loss",
    "update_threshold",
    "update_label_bank",
    "divclust_step",
    "DivClustState",
]

# F.normalize's default eps; an all-zero column stays zero.
_COLUMN_NORM_EPS = 1e-12
# Above this many similarity entries (C * C * K * K) the similarities are formed one clustering at a time.
_FULL_EINSUM_BUDGET = 1 << 24


def _check_assignments(assignments: Tensor) -> Tensor:
    """Validate [C, N, K] soft assignments; half precision is computed in float32."""
    if not isinstance(assignments, Tensor):
        raise ValueError(f"assignments must be a torch.Tensor, got {type(assignments).__name__}")
    if assignments.dim() != 3:
        raise ValueError(
            "assignments must have shape [C, N, K] (clusterings, samples, clusters), "
            f"got {tuple(assignments.shape)}"
        )
    if not torch.is_floating_point(assignments):
        raise ValueError(f"assignments must be floating-point probabilities, got dtype {assignments.dtype}")
    if assignments.shape[0] == 0 or assignments.shape[1] == 0 or assignments.shape[2] == 0:
        raise ValueError(f"assignments must be non-empty in every dimension, got {tuple(assignments.shape)}")
    if assignments.dtype in (torch.float16, torch.bfloat16):
        assignments = assignments.float()
    return assignments


def _full_precision(device: torch.device):
    """Context that switches autocast off, so the similarities are computed in the inputs' dtype (fp32 under
    fp16 autocast)."""
    if device.type in ("cpu", "cuda"):
        return torch.autocast(device_type=device.type, enabled=False)
    return contextlib.nullcontext()


def _pair_similarities(normalized: Tensor) -> Tensor:
    """[C, N, K] column-normalised assignments -> [C, C] raw pair similarities (diagonal not zeroed)."""
    num_clusterings, _, num_clusters = normalized.shape
    if num_clusterings * num_clusterings * num_clusters * num_clusters <= _FULL_EINSUM_BUDGET:
        # cosine[a, b, i, j]: cluster i of clustering a vs cluster j of clustering b, over the batch.
        cosine = torch.einsum("anc,bnd->abcd", normalized, normalized)  # [C, C, K, K]
        # max(dim) (not amax) sends the whole sub-gradient to one arg-max entry, as the official code.
        return cosine.max(dim=-1)[0].mean(dim=-1)  # [C, C]
    rows = []
    for a in range(num_clusterings):
        cosine_a = torch.einsum("nc,bnd->bcd", normalized[a], normalized)  # [C, K, K]
        rows.append(cosine_a.max(dim=-1)[0].mean(dim=-1))  # [C]
    return torch.stack(rows, dim=0)


def clustering_similarity(assignments: Tensor) -> Tensor:
    """Pairwise clustering similarity matrix (docs/methods/divclust.md).

    Args:
        assignments: [C, N, K] soft assignments (rows are probability vectors).

    Returns:
        [C, C] tensor M with M[a, b] = s_ab = (1/K) sum_i max_j cos(P_a[:, i], P_b[:, j]), the columns being
        L2-normalised over the N samples (``F.normalize(dim=1)``, eps 1e-12); M[a, a] = 0. Asymmetric.
        Differentiable with respect to ``assignments``.
    """
    assignments = _check_assignments(assignments)
    num_clusterings = assignments.shape[0]
    with _full_precision(assignments.device):
        normalized = F.normalize(assignments, p=2, dim=1, eps=_COLUMN_NORM_EPS)  # [C, N, K]
        similarity = _pair_similarities(normalized)  # [C, C]
    off_diagonal = ~torch.eye(num_clusterings, dtype=torch.bool, device=similarity.device)
    return similarity * off_diagonal


def _exact_zero(like: Tensor) -> Tensor:
    """A scalar 0 with no gradient path to the inputs. Like the official code it is a fresh leaf that
    requires grad (when autograd is recording), so calling ``backward`` on it alone is harmless."""
    record = torch.is_grad_enabled() and not torch.is_inference_mode_enabled()
    return torch.zeros((), dtype=like.dtype, device=like.device, requires_grad=record)


def divclust_loss(assignments: Tensor, *, threshold: float | Tensor) -> Tensor:
    """DivClust diversity loss L_div = sum_{a != b} relu(s_ab - threshold) (docs/methods/divclust.md).

    Args:
        assignments: [C, N, K] soft assignments of the batch (for CC both views concatenated on N).
        threshold: the current similarity upper bound d (float or 0-d tensor, carries no gradient).

    Returns:
        Scalar tensor, **not** divided by C (the model divides by C). An exact 0 with no gradient path to
        ``assignments`` when C == 1 or threshold >= 1 (DivClust off / threshold at its ceiling).
        Half-precision inputs are computed in float32.
    """
    assignments = _check_assignments(assignments)
    if isinstance(threshold, Tensor):
        if threshold.numel() != 1:
            raise ValueError(f"threshold must be a scalar, got shape {tuple(threshold.shape)}")
        threshold = threshold.detach()
    if assignments.shape[0] == 1 or float(threshold) >= 1.0:
        return _exact_zero(assignments)
    similarity = clustering_similarity(assignments)  # [C, C], zero diagonal
    num_clusterings = assignments.shape[0]
    off_diagonal = ~torch.eye(num_clusterings, dtype=torch.bool, device=similarity.device)
    # [C * (C - 1)] ordered pairs, in the official order (b outer, a inner: entry (b, a) holds s_ab).
    pair_similarity = similarity.t()[off_diagonal]
    if isinstance(threshold, Tensor):
        threshold = threshold.to(device=pair_similarity.device, dtype=pair_similarity.dtype)
    return F.relu(pair_similarity - threshold).sum()


def update_threshold(
    threshold: float | Tensor, measured_nmi: float | Tensor, *, target: float, rate: float = 0.99
) -> float:
    """Multiplicative threshold update (docs/methods/divclust.md step 3).

    d * rate if measured_nmi > target (strictly: equality raises d), else d * (2 - rate); then clipped to
    [0, 1]. Accepts floats or 0-d tensors; returns a float.
    """
    threshold_value = float(threshold)
    measured_value = float(measured_nmi)
    if measured_value > float(target):
        threshold_value = threshold_value * float(rate)
    else:
        threshold_value = threshold_value * (2.0 - float(rate))
    return min(1.0, max(0.0, threshold_value))


def update_label_bank(bank: Tensor | None, labels: Tensor, *, bank_size: int) -> Tensor:
    """Push the newest hard labels into the label bank (docs/methods/divclust.md step 2).

    Args:
        bank: [C, M] int64 labels of previous steps, newest first (None or M = 0 when empty).
        labels: [C, N] integer labels of the current step.
        bank_size: the most labels kept per clustering.

    Returns:
        [C, min(N + M, bank_size)] int64: the new labels first, then the old bank, truncated (the oldest
        labels are dropped). On the device of ``labels``.
    """
    if not isinstance(labels, Tensor) or labels.dim() != 2:
        raise ValueError(f"labels must be a [C, N] tensor, got {getattr(labels, 'shape', type(labels))}")
    if labels.is_floating_point():
        raise ValueError(f"labels must be integer class indices, got dtype {labels.dtype}")
    if int(bank_size) < 0:
        raise ValueError(f"bank_size must be >= 0, got {bank_size}")
    labels = labels.detach().to(torch.int64)
    if bank is None or (isinstance(bank, Tensor) and bank.dim() == 2 and bank.shape[1] == 0):
        bank = labels.new_empty((labels.shape[0], 0))  # empty bank (any row count, e.g. a fresh [0, 0])
    if not isinstance(bank, Tensor) or bank.dim() != 2:
        raise ValueError(f"bank must be a [C, M] tensor, got {getattr(bank, 'shape', type(bank))}")
    if bank.shape[0] != labels.shape[0]:
        raise ValueError(f"bank has {bank.shape[0]} clusterings but labels have {labels.shape[0]}")
    bank = bank.detach().to(device=labels.device, dtype=torch.int64)
    return torch.cat([labels, bank], dim=1)[:, : int(bank_size)]


def divclust_step(
    assignments: Tensor,
    label_bank: Tensor | None,
    threshold: float | Tensor,
    *,
    step: int,
    target: float,
    interval: int = 20,
    rate: float = 0.99,
    bank_size: int = 10_000,
) -> tuple[Tensor, float, Tensor]:
    """One training step of the official DivClust mechanism as a pure function.

    If C == 1 or target >= 1 (DivClust off): returns (exact 0, threshold, label_bank) with the bank
    untouched. Otherwise:
    1. labels = argmax_k assignments (no gradient); bank = update_label_bank(bank, labels, bank_size);
    2. if step % interval == 0: threshold = update_threshold(threshold, mean pairwise NMI of the bank);
    3. loss = divclust_loss(assignments, threshold=threshold) with the updated threshold.

    Args:
        assignments: [C, N, K] soft assignments of this step.
        label_bank: [C, M] int64 bank, newest first (None or [C, 0] at the start).
        threshold: current d (float or 0-d tensor; starts at 1.0).
        step: global 0-based training step t.
        target: NMI target D^T; >= 1 switches DivClust off.
        interval: NMI_interval (official YAML: 20).
        rate: threshold_rate r (0.99).
        bank_size: divclust_mbank_size (10,000).

    Returns:
        (loss, threshold as float, label bank [C, M'] int64 on the assignments' device).
    """
    loss, threshold_value, bank, _ = divclust_step_measured(assignments, label_bank, threshold, step, target,
                                                            interval, rate, bank_size)
    return loss, threshold_value, bank


def divclust_step_measured(assignments: Tensor, label_bank: Tensor | None, threshold: float | Tensor, step: int,
                           target: float, interval: int, rate: float, bank_size: int
                           ) -> tuple[Tensor, float, Tensor, float | None]:
    """`divclust_step` (same arguments, positional) that also returns the bank's measured mean NMI of an update
    step (None on the other steps), so the trainer logs the number the threshold moved by without computing it
    twice."""
    assignments = _check_assignments(assignments)
    if int(interval) < 1:
        raise ValueError(f"interval must be >= 1, got {interval}")
    if assignments.shape[0] == 1 or float(target) >= 1.0:
        return _exact_zero(assignments), float(threshold), label_bank, None
    with torch.no_grad():
        labels = assignments.detach().argmax(dim=-1)  # [C, N]
    bank = update_label_bank(label_bank, labels, bank_size=bank_size)
    threshold_value = float(threshold)
    measured = None
    if int(step) % int(interval) == 0:
        measured = float(mean_inter_clustering_nmi(bank))
        threshold_value = update_threshold(threshold_value, measured, target=target, rate=rate)
    loss = divclust_loss(assignments, threshold=threshold_value)
    return loss, threshold_value, bank, measured
