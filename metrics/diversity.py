"""Diversity between clusterings: pairwise NMI of C hard clusterings of the same samples.

the training-time NMI of the label bank and the measured diversity D^R (docs/methods/divclust.md).

The NMI is scikit-learn's ``normalized_mutual_info_score`` with the arithmetic mean normalisation and the
natural log, including its limit cases (both labellings constant, or empty -> 1.0; mutual information 0 ->
0.0), re-implemented in torch so that all C(C-1)/2 pairs are computed at once on the labels' device: one
``bincount`` of the codes ``pair * K*K + a * K + b`` gives every contingency table of a chunk of pairs.
Agrees with scikit-learn within 1e-12 in practice (tested against it to 1e-9).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

# Largest number of contingency cells (pairs x K x K) held at once by the dense path.
_DENSE_CELL_BUDGET = 1 << 22
_FLOAT64_EPS = float(np.finfo(np.float64).eps)


def _as_label_tensor(labels: Tensor | np.ndarray) -> Tensor:
    """[C, N] integer labels (tensor on any device, or ndarray) -> int64 tensor on the same device."""
    if isinstance(labels, np.ndarray):
        if labels.dtype.kind not in "iub":
            raise ValueError(f"labels must be an integer array, got dtype {labels.dtype}")
        labels = torch.from_numpy(np.ascontiguousarray(labels).astype(np.int64, copy=False))
    elif isinstance(labels, Tensor):
        if labels.is_floating_point() or labels.is_complex():
            raise ValueError(f"labels must be an integer tensor, got dtype {labels.dtype}")
        labels = labels.detach().to(torch.int64)
    else:
        raise ValueError(f"labels must be a torch.Tensor or numpy.ndarray, got {type(labels).__name__}")
    if labels.dim() != 2:
        raise ValueError(f"labels must have shape [C, N] (clusterings, samples), got {tuple(labels.shape)}")
    return labels


def _relabel_rows(labels: Tensor) -> tuple[Tensor, Tensor]:
    """Per row, map labels to 0..k_c-1. Returns (codes [C, N] int64, k [C] int64)."""
    codes = torch.empty_like(labels)
    sizes = []
    for c in range(labels.shape[0]):
        uniq, inverse = torch.unique(labels[c], return_inverse=True)
        codes[c] = inverse
        sizes.append(uniq.numel())
    return codes, torch.tensor(sizes, dtype=torch.int64)


def _entropies(codes: Tensor, sizes: Tensor, k_max: int) -> Tensor:
    """Entropy (nats) of every row, as scikit-learn's ``_entropy``: 0 for a single cluster. -> [C] float64."""
    num_rows, n = codes.shape
    offsets = torch.arange(num_rows, device=codes.device).unsqueeze(1) * k_max
    counts = torch.bincount((codes + offsets).reshape(-1), minlength=num_rows * k_max)
    counts = counts.reshape(num_rows, k_max).to(torch.float64)
    log_n = math.log(n)
    terms = torch.where(counts > 0, (counts / n) * (torch.log(counts.clamp_min(1)) - log_n), 0.0)
    entropy = -terms.sum(1)
    return torch.where(sizes.to(codes.device) <= 1, torch.zeros_like(entropy), entropy)


def _mutual_information_from_tables(tables: Tensor, n: int) -> Tensor:
    """[P, Ka, Kb] contingency counts of P pairs -> [P] mutual information (nats, float64), computed term by
    term as scikit-learn's ``mutual_info_score`` (terms below float64 eps set to 0, sum clipped at 0)."""
    tables = tables.to(torch.float64)
    row = tables.sum(2, keepdim=True)  # [P, Ka, 1]
    col = tables.sum(1, keepdim=True)  # [P, 1, Kb]
    nonzero = tables > 0
    safe = torch.where(nonzero, tables, torch.ones_like(tables))
    outer = torch.where(nonzero, row * col, torch.ones_like(tables))  # products of counts <= n**2: exact in float64
    log_n = math.log(n)
    p = safe / n
    terms = p * (torch.log(safe) - log_n) + p * (-torch.log(outer) + log_n + log_n)
    terms = torch.where(nonzero & (terms.abs() >= _FLOAT64_EPS), terms, torch.zeros_like(terms))
    return terms.sum((1, 2)).clamp_min(0.0)


def _pair_mutual_information(codes: Tensor, k_max: int, first: Tensor, second: Tensor) -> Tensor:
    """Mutual information of the pairs (first[p], second[p]) of rows of ``codes`` -> [P] float64."""
    n = codes.shape[1]
    num_pairs = first.numel()
    out = torch.empty(num_pairs, dtype=torch.float64, device=codes.device)
    cells = k_max * k_max
    if cells <= _DENSE_CELL_BUDGET:
        chunk = max(1, _DENSE_CELL_BUDGET // cells)
        for start in range(0, num_pairs, chunk):
            a, b = first[start:start + chunk], second[start:start + chunk]
            p = a.numel()
            pair_offset = torch.arange(p, device=codes.device).unsqueeze(1) * cells
            joint = pair_offset + codes[a] * k_max + codes[b]  # [p, N]
            tables = torch.bincount(joint.reshape(-1), minlength=p * cells).reshape(p, k_max, k_max)
            out[start:start + p] = _mutual_information_from_tables(tables, n)
        return out
    # Many clusters: only the (at most N) non-empty cells of each table are formed.
    for i in range(num_pairs):
        a, b = codes[first[i]], codes[second[i]]
        cell, count = torch.unique(a * k_max + b, return_counts=True)
        row_sizes = torch.bincount(a, minlength=k_max).to(torch.float64)
        col_sizes = torch.bincount(b, minlength=k_max).to(torch.float64)
        count = count.to(torch.float64)
        outer = row_sizes[cell // k_max] * col_sizes[cell % k_max]
        log_n = math.log(n)
        p = count / n
        terms = p * (torch.log(count) - log_n) + p * (-torch.log(outer) + log_n + log_n)
        terms = torch.where(terms.abs() >= _FLOAT64_EPS, terms, torch.zeros_like(terms))
        out[i] = terms.sum().clamp_min(0.0)
    return out


def _pairwise_nmi(labels: Tensor, first: Tensor, second: Tensor) -> Tensor:
    """NMI (arithmetic, scikit-learn limit cases) of the row pairs (first[p], second[p]) -> [P] float64."""
    n = labels.shape[1]
    num_pairs = first.numel()
    if num_pairs == 0:
        return torch.empty(0, dtype=torch.float64)
    if n == 0:  # scikit-learn: two empty labellings are a perfect match
        return torch.ones(num_pairs, dtype=torch.float64)
    codes, sizes = _relabel_rows(labels)
    k_max = int(sizes.max())
    first, second = first.to(codes.device), second.to(codes.device)
    entropy = _entropies(codes, sizes, k_max)
    mutual_info = _pair_mutual_information(codes, k_max, first, second)
    sizes = sizes.to(codes.device)
    both_constant = (sizes[first] == 1) & (sizes[second] == 1)
    any_constant = (sizes[first] == 1) | (sizes[second] == 1)
    normalizer = (entropy[first] + entropy[second]) / 2
    nmi = mutual_info / torch.where(normalizer > 0, normalizer, torch.ones_like(normalizer))
    nmi = torch.where(mutual_info == 0, torch.zeros_like(nmi), nmi)
    nmi = torch.where(any_constant, torch.zeros_like(nmi), nmi)  # MI with a constant labelling is 0
    nmi = torch.where(both_constant, torch.ones_like(nmi), nmi)
    return nmi.cpu()


def inter_clustering_nmi(labels: Tensor | np.ndarray) -> np.ndarray:
    """[C, N] hard labels -> [C, C] float64 matrix of pairwise NMI (docs/methods/divclust.md).

    Entry (a, b) is scikit-learn's ``normalized_mutual_info_score(labels[a], labels[b])`` (arithmetic
    normalisation, natural log); the diagonal is NMI(a, a) (= 1.0). Labels need not be contiguous. The
    computation runs on the device of ``labels`` (an ndarray runs on the CPU).
    """
    labels = _as_label_tensor(labels)
    num_clusterings = labels.shape[0]
    first, second = torch.triu_indices(num_clusterings, num_clusterings, offset=0)
    values = _pairwise_nmi(labels, first, second).numpy()
    matrix = np.zeros((num_clusterings, num_clusterings), dtype=np.float64)
    matrix[first.numpy(), second.numpy()] = values
    matrix[second.numpy(), first.numpy()] = values
    return matrix


def mean_inter_clustering_nmi(labels: Tensor | np.ndarray) -> float:
    """Mean over the pairs a < b of NMI(labels[a], labels[b]), unrounded: the measured diversity D^R
    (docs/methods/divclust.md; the training-time D on the label bank). ``nan`` when C < 2."""
    labels = _as_label_tensor(labels)
    num_clusterings = labels.shape[0]
    if num_clusterings < 2:
        return float("nan")
    first, second = torch.triu_indices(num_clusterings, num_clusterings, offset=1)
    return float(_pairwise_nmi(labels, first, second).mean())
