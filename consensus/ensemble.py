"""Input checking and label bookkeeping shared by the consensus functions (docs/methods/divclust.md).

An *ensemble* is C base clusterings of the same N points, given as a [C, N] integer tensor/array (or a
sequence of C equally long 1-D label vectors). Each row may use any integers; they are renumbered per row
to 0..k_c-1, so the bipartite incidence matrix has no empty cluster columns (docs/methods/divclust.md).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp
import torch


def as_label_matrix(labels: torch.Tensor | np.ndarray | Sequence, n_clusters: int) -> np.ndarray:
    """Validate an ensemble and the requested number of clusters -> int64 ndarray [C, N] as given."""
    if isinstance(labels, torch.Tensor):
        if labels.is_floating_point() or labels.is_complex():
            raise ValueError(f"labels must be integer cluster ids, got a tensor of dtype {labels.dtype}")
        array = labels.detach().cpu().numpy()
    elif isinstance(labels, np.ndarray):
        array = labels
    elif isinstance(labels, Sequence) and not isinstance(labels, (str, bytes)):
        rows = [np.asarray(row.detach().cpu() if isinstance(row, torch.Tensor) else row) for row in labels]
        lengths = sorted({row.shape[0] if row.ndim == 1 else -1 for row in rows})
        if any(row.ndim != 1 for row in rows):
            raise ValueError("labels given as a sequence must hold 1-D label vectors, one per clustering")
        if len(lengths) > 1:
            raise ValueError(
                f"the base clusterings have mismatched lengths {lengths}; all must label the same N points"
            )
        array = np.stack(rows) if rows else np.zeros((0, 0), dtype=np.int64)
    else:
        raise ValueError(f"labels must be a [C, N] tensor or array, got {type(labels).__name__}")
    if array.ndim != 2:
        raise ValueError(f"labels must be 2-D [C clusterings, N points], got shape {tuple(array.shape)}")
    if array.dtype.kind not in "iub":
        raise ValueError(f"labels must be integer cluster ids, got dtype {array.dtype}")
    num_clusterings, num_points = array.shape
    if num_clusterings < 1:
        raise ValueError(f"consensus needs at least 2 clusterings, got none (labels of shape {array.shape})")
    if num_points < 1:
        raise ValueError(f"labels must label at least one point, got shape {array.shape}")
    if num_clusterings == 1:
        # docs/methods/divclust.md: C = 1 returns that clustering renumbered; say that nothing was combined.
        warnings.warn("consensus needs at least 2 clusterings, got 1: nothing to combine, returning that "
                      "clustering renumbered", UserWarning, stacklevel=3)
    if isinstance(n_clusters, bool) or not isinstance(n_clusters, (int, np.integer)):
        raise ValueError(f"n_clusters must be an int, got {n_clusters!r}")
    if n_clusters < 1 or n_clusters > num_points:
        raise ValueError(f"n_clusters must be in [1, N={num_points}], got {n_clusters}")
    return array.astype(np.int64, copy=False)


def relabel_rows(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[C, N] labels -> (codes [C, N] int64 with row c in 0..k_c-1, sizes k [C] int64)."""
    codes = np.empty_like(labels, dtype=np.int64)
    sizes = np.empty(labels.shape[0], dtype=np.int64)
    for c, row in enumerate(labels):
        uniques, inverse = np.unique(row, return_inverse=True)
        codes[c] = inverse.reshape(-1)
        sizes[c] = uniques.size
    return codes, sizes


def incidence_matrix(codes: np.ndarray, sizes: np.ndarray) -> sp.csr_matrix:
    """Point-by-cluster incidence B [N, v] (v = sum k_c), clustering-major column order, one 1 per
    clustering in every row (docs/methods/divclust.md step 1)."""
    num_clusterings, num_points = codes.shape
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    columns = (codes + offsets[:, None]).T.reshape(-1)  # point-major: row i holds its C clusters
    rows = np.repeat(np.arange(num_points), num_clusterings)
    data = np.ones(columns.size, dtype=np.float64)
    return sp.csr_matrix((data, (rows, columns)), shape=(num_points, int(sizes.sum())))


def first_appearance_order(labels: np.ndarray) -> np.ndarray:
    """Renumber a 1-D labelling to 0..c'-1 in order of first appearance over the points."""
    labels = np.asarray(labels).reshape(-1)
    _, first_index, inverse = np.unique(labels, return_index=True, return_inverse=True)
    rank = np.empty(first_index.size, dtype=np.int64)
    rank[np.argsort(first_index, kind="stable")] = np.arange(first_index.size)
    return rank[inverse.reshape(-1)]
