"""Clustering metrics as torch ops on the labels' device (no host synchronisation when the sizes are given).

docs/torch_clustering.md (Metrics). They equal the scikit-learn definitions that
`metrics.clustering` wraps (NMI with arithmetic normalisation, ARI), computed from a float64 contingency matrix.
Pairs in which either label is negative (e.g. ground truth -1 = unknown) are ignored.
"""

from __future__ import annotations

import torch


def _check_pair(labels_a: torch.Tensor, labels_b: torch.Tensor) -> None:
    for name, t in (("labels_a", labels_a), ("labels_b", labels_b)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 1:
            raise ValueError(f"{name} must be 1-D, got shape {tuple(t.shape)}")
        if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
            raise ValueError(f"{name} must hold integer labels, got dtype {t.dtype}")
    if labels_a.shape != labels_b.shape:
        raise ValueError(f"the labellings must have the same length, got {labels_a.shape[0]} and {labels_b.shape[0]}")
    if labels_a.device != labels_b.device:
        raise ValueError(f"the labellings must be on the same device, got {labels_a.device} and {labels_b.device}")


def contingency_matrix(labels_a: torch.Tensor, labels_b: torch.Tensor, num_a: int | None = None,
                       num_b: int | None = None) -> torch.Tensor:
    """(num_a, num_b) float64 counts: entry (i, j) = #{n : a_n = i and b_n = j}; pairs with a negative label skipped.

    Labels are values in [0, num). num_a / num_b default to max + 1 (one host sync each); pass them (e.g. the number
    of classes and of clusters) to stay asynchronous on GPU. Unused values give empty rows/columns, which change
    neither NMI nor ARI.
    """
    _check_pair(labels_a, labels_b)
    if num_a is None:
        num_a = int(labels_a.max()) + 1 if labels_a.numel() else 0
    if num_b is None:
        num_b = int(labels_b.max()) + 1 if labels_b.numel() else 0
    num_a, num_b = max(int(num_a), 0), max(int(num_b), 0)
    table = torch.zeros(num_a * num_b, dtype=torch.float64, device=labels_a.device)
    if labels_a.numel() and table.numel():
        a, b = labels_a.to(torch.int64), labels_b.to(torch.int64)
        valid = (a >= 0) & (b >= 0)
        flat = torch.where(valid, a * num_b + b, torch.zeros_like(a))
        table.index_add_(0, flat, valid.to(torch.float64))
    return table.view(num_a, num_b)


def _entropy(counts: torch.Tensor, total: torch.Tensor) -> torch.Tensor:
    p = counts / total.clamp_min(1.0)
    return -torch.where(p > 0, p * torch.log(p.clamp_min(1e-300)), torch.zeros_like(p)).sum()


def nmi_from_contingency(table: torch.Tensor) -> torch.Tensor:
    """NMI = MI / ((H(a) + H(b)) / 2) of a contingency matrix, as scikit-learn (1 when both labellings are constant,
    0 when MI is 0). 0-dim float64."""
    table = table.to(torch.float64)
    n = table.sum()
    rows, cols = table.sum(1), table.sum(0)
    safe_n = n.clamp_min(1.0)
    p = table / safe_n
    outer = (rows / safe_n).unsqueeze(1) * (cols / safe_n).unsqueeze(0)
    terms = torch.where(table > 0, p * (torch.log(p.clamp_min(1e-300)) - torch.log(outer.clamp_min(1e-300))),
                        torch.zeros_like(p))
    mi = terms.sum().clamp_min(0.0)
    h_a, h_b = _entropy(rows, n), _entropy(cols, n)
    normaliser = (h_a + h_b) / 2
    value = torch.where(mi > 0, mi / normaliser.clamp_min(1e-300), torch.zeros_like(mi))
    return torch.where((h_a == 0) & (h_b == 0), torch.ones_like(value), value)


def ari_from_contingency(table: torch.Tensor) -> torch.Tensor:
    """Adjusted Rand index of a contingency matrix through the pair-confusion counts (scikit-learn's formula;
    1 when no pair is split or merged differently). 0-dim float64."""
    table = table.to(torch.float64)
    n = table.sum()
    sum_squares = (table * table).sum()
    rows, cols = table.sum(1), table.sum(0)
    tp = sum_squares - n
    fp = (cols * cols).sum() - sum_squares
    fn = (rows * rows).sum() - sum_squares
    tn = n * n - fp - fn - sum_squares
    denominator = (tp + fn) * (fn + tn) + (tp + fp) * (fp + tn)
    value = 2.0 * (tp * tn - fn * fp) / torch.where(denominator == 0, torch.ones_like(denominator), denominator)
    return torch.where((fn == 0) & (fp == 0), torch.ones_like(value), value)


def nmi_torch(labels_true: torch.Tensor, labels_pred: torch.Tensor, num_true: int | None = None,
              num_pred: int | None = None) -> torch.Tensor:
    """Normalised mutual information (arithmetic mean normalisation), 0-dim float64 on the labels' device."""
    return nmi_from_contingency(contingency_matrix(labels_true, labels_pred, num_true, num_pred))


def ari_torch(labels_true: torch.Tensor, labels_pred: torch.Tensor, num_true: int | None = None,
              num_pred: int | None = None) -> torch.Tensor:
    """Adjusted Rand index, 0-dim float64 on the labels' device."""
    return ari_from_contingency(contingency_matrix(labels_true, labels_pred, num_true, num_pred))
