"""Chunked nearest-centre search: the one hot loop of k-means, written around a single GEMM per chunk.

euclidean: ||x - c||^2 = ||x||^2 + (||c||^2 - 2 <x, c>). The bracket is one GEMM per chunk against -2 C^T (scaled
once per pass) with the centre norms as its bias (no cdist, no sqrt, no augmented copies); the argmin does not need
||x||^2, which is added to the chunk's minima only. cosine: rows are unit-normalised once, centres per pass, and the
distance is 1 - <x_hat, c_hat> (one `mm` and an argmax). The members' sums for the next centres are accumulated
(`index_add_`) while a chunk is still in cache.

Memory: per worker, one reusable (rows x K) block whose size is bounded by `memory_budget_mb` (and, on CPU, kept
near the cache size); nothing is N x K, N x N or N x K x D. On CPU, row ranges run in parallel threads
(`_parallel`); on GPU the chunks run in sequence on the device, with no host synchronisation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ._collectives import Collectives
from ._gemm import gemm_into, numpy_operand
from ._parallel import map_rows, workers

# CPU chunks: the distance block (rows x K) stays in cache between the GEMM and the argmin, and the rows of X
# (rows x D) between the GEMM and the centre-sum update. Measured on the 2-core EPYC (one thread, N = 20k, best of
# 3): 512-1024 rows best for D = 512 (K = 10: 23.7 ms against 30.8 ms at 8192 rows), 2048-4096 for D = 128.
CPU_BLOCK_BYTES = 4 << 20
CPU_ROWS_BYTES = 2 << 20
CPU_MIN_ROWS, CPU_MAX_ROWS = 256, 8192
UNIT_NORM_TOLERANCE = 1e-5  # |  ||x||^2 - 1 | below this: the row counts as already L2-normalised


def sq_norms_of_rows(x: torch.Tensor) -> torch.Tensor:
    """(n,) ||x_i||^2. (vector_norm then square: ~20x faster on CPU than einsum("nd,nd->n"), same float accuracy.)"""
    return torch.linalg.vector_norm(x, dim=1).square_()


def count_labels(labels: torch.Tensor, k: int) -> torch.Tensor:
    """(k,) int64 occurrences of 0..k-1 (CUDA's bincount reads the maximum back to the host; index_add_ does not)."""
    if labels.device.type == "cpu":
        return torch.bincount(labels, minlength=k)
    return torch.zeros(k, dtype=torch.int64, device=labels.device).index_add_(0, labels, torch.ones_like(labels))


def rows_per_chunk(n_rows: int, n_cols: int, itemsize: int, device: torch.device, *,
                   chunk_size: int | None, memory_budget_mb: float, n_workers: int = 1,
                   n_features: int | None = None) -> int:
    """Rows of one (rows x n_cols) block (n_cols = K for distances).

    An explicit `chunk_size` wins (still capped by the memory budget). Otherwise: on GPU, as many rows as the
    budget allows (large GEMMs keep the device busy); on CPU, per worker thread a block of at most ~4 MiB and a
    slice of X (rows x n_features) of at most ~2 MiB, 256 to 8192 rows, so both stay in cache. All workers'
    blocks together never exceed the budget.
    """
    budget_rows = max(1, int(memory_budget_mb * (1 << 20)) // max(1, n_cols * itemsize * max(1, n_workers)))
    if chunk_size is not None:
        rows = min(chunk_size, budget_rows)
    elif device.type == "cpu":
        cache_rows = CPU_BLOCK_BYTES // max(1, n_cols * itemsize)
        if n_features:
            cache_rows = min(cache_rows, CPU_ROWS_BYTES // (n_features * itemsize))
        rows = min(max(cache_rows, CPU_MIN_ROWS), CPU_MAX_ROWS, budget_rows)
    else:
        rows = budget_rows
    return max(1, min(rows, n_rows))


@dataclass
class Workspace:
    """The data in the form the distance kernels want, computed once per fit.

    X:        (n, D) local rows (read only); euclidean: the input, or the input centred on the global mean when
              that improves the float accuracy of the norm expansion; cosine: L2-normalised rows.
    shift:    (D,) global mean subtracted from X — add it back to centres; None when nothing was subtracted.
    sq_norms: (n,) ||x||^2 of the rows of X (euclidean); None for cosine.
    n_total:  number of points over all ranks (sharded data) or n.
    """

    X: torch.Tensor
    shift: torch.Tensor | None
    sq_norms: torch.Tensor | None
    metric: str
    n_total: int
    chunk_size: int | None
    memory_budget_mb: float
    mean_variance: float = 0.0  # mean over features of the (biased) per-feature variance: the tol scale
    finite: bool = True  # False when the data (on any rank) hold NaN/inf, or values too large for their squares

    def rows(self, n_cols: int) -> int:
        return rows_per_chunk(self.X.shape[0], n_cols, self.X.element_size(), self.X.device,
                              chunk_size=self.chunk_size, memory_budget_mb=self.memory_budget_mb,
                              n_workers=workers(self.X.device), n_features=self.X.shape[1])

    def map(self, fn):
        """fn(start, stop) over row ranges of X (parallel threads on CPU); list of results."""
        return map_rows(self.X.device, self.X.shape[0], fn)

    def chunks(self, start: int, stop: int, n_cols: int):
        rows = self.rows(n_cols)
        for s in range(start, stop, rows):
            yield s, min(s + rows, stop)

    def to_internal(self, centres: torch.Tensor) -> torch.Tensor:
        """User-space centres -> the workspace's coordinates."""
        centres = centres.to(device=self.X.device, dtype=self.X.dtype)
        return centres - self.shift if self.shift is not None else centres.clone()

    def to_user(self, centres: torch.Tensor) -> torch.Tensor:
        return centres + self.shift if self.shift is not None else centres


def prepare(X: torch.Tensor, metric: str, comm: Collectives, *, chunk_size: int | None,
            memory_budget_mb: float) -> Workspace:
    """Build the workspace in cache-sized chunks (row ranges in parallel on CPU): squared row norms, the mean
    per-feature variance (the tol scale) and, only where it is needed, one working copy of X:

    * euclidean: the rows are centred on the global mean when that mean is far from the origin compared with the
      spread (||mean||^2 > trace of the covariance), so the norm expansion keeps its float32 accuracy (scikit-learn
      always centres); otherwise X is used as it is, without a copy;
    * cosine: the rows are L2-normalised into a copy unless they already have unit norm (what the methods pass).

    For sharded data every statistic and decision is global (all-reduced). Non-finite input makes these sums
    non-finite (on every rank, through the all-reduce): `Workspace.finite`.
    """
    n_local, d = X.shape
    device = X.device
    X = X.contiguous()
    rows = rows_per_chunk(n_local, d, X.element_size(), device, chunk_size=None,
                          memory_budget_mb=memory_budget_mb, n_workers=workers(device), n_features=d)
    sq_norms = X.new_empty(n_local)

    def moments(start: int, stop: int, source: torch.Tensor, target: torch.Tensor | None,
                shift: torch.Tensor | None) -> torch.Tensor:
        """[sum of rows (D), sum of squared norms, rows whose norm is not 1] of rows [start, stop), float64,
        after centring them on `shift` or normalising them (cosine) into `target` when one is given."""
        out = torch.zeros(d + 2, dtype=torch.float64, device=device)
        for s in range(start, stop, rows):
            e = min(s + rows, stop)
            if target is None:
                chunk = source[s:e]
            elif shift is None:
                chunk = F.normalize(source[s:e], dim=1, out=target[s:e])
            else:
                chunk = torch.sub(source[s:e], shift, out=target[s:e])
            sq = sq_norms_of_rows(chunk)
            sq_norms[s:e] = sq
            out[:d] += chunk.sum(dim=0)
            out[d] += sq.sum(dtype=torch.float64)
            out[d + 1] += ((sq - 1.0).abs() > UNIT_NORM_TOLERANCE).sum()
        return out

    def global_moments(target: torch.Tensor | None, shift: torch.Tensor | None) -> tuple[torch.Tensor, float, float]:
        stats = comm.all_reduce_sum_(torch.stack(map_rows(device, n_local,
                                                          lambda s, e: moments(s, e, X, target, shift))).sum(0))
        mean = stats[:d] / n_total
        mean_sq, spread = (mean * mean).sum(), stats[d] / n_total
        return stats, float(mean_sq), float(spread - mean_sq)  # spread - mean_sq = trace of the covariance

    n_total = int(comm.all_reduce_sum_(torch.tensor([n_local], dtype=torch.int64, device=device)))
    stats, mean_sq, trace = global_moments(None, None)
    finite = bool(torch.isfinite(stats).all())
    work, shift = X, None
    if finite and metric == "cosine" and float(stats[d + 1]) > 0:
        work = torch.empty_like(X)
        _, _, trace = global_moments(work, None)
    elif finite and metric == "euclidean" and mean_sq > trace:
        shift = (stats[:d] / n_total).to(X.dtype)
        work = torch.empty_like(X)
        global_moments(work, shift)
    return Workspace(work, shift, sq_norms if metric == "euclidean" else None, metric, n_total, chunk_size,
                     memory_budget_mb, trace / d, finite)


def centre_operands(ws: Workspace, centres: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(matrix multiplied against the rows, per-centre bias): euclidean (C, ||c||^2); cosine (C_hat, None)."""
    if ws.metric == "cosine":
        return F.normalize(centres, dim=1), None
    return centres, sq_norms_of_rows(centres)


def gemm_operands(ws: Workspace, points: torch.Tensor):
    """(B (D, K), B as NumPy view or None, bias or None) with rows @ B + bias = the argmin-equivalent scores:
    euclidean: -2 C^T and ||c||^2 (||x||^2 is added to the minima only); cosine: C_hat^T, no bias."""
    P, bias = centre_operands(ws, points)
    B = P.t() if bias is None else (-2.0 * P).t()
    return B, numpy_operand(B), bias


def best_per_row(scores: torch.Tensor, values: torch.Tensor, labels: torch.Tensor, *, largest: bool,
                 numpy: bool) -> None:
    """values (m,), labels (m,) = min (or max) of each row of scores (m, K) and its column.

    On the CPU NumPy's SIMD arg-reductions beat `torch.min(dim=1)` on these row blocks (1024 x 100, one thread:
    1.3 ms against 5.0 ms), so they are used whenever the NumPy BLAS is (tensors are shared, nothing is copied).
    """
    if numpy:
        s, lab = scores.numpy(), labels.numpy()
        (s.argmax if largest else s.argmin)(axis=1, out=lab)
        values.numpy()[...] = np.take_along_axis(s, lab[:, None], axis=1)[:, 0]
    elif largest:
        torch.max(scores, 1, out=(values, labels))
    else:
        torch.min(scores, 1, out=(values, labels))


def add_rows_by_label(sums: torch.Tensor, labels: torch.Tensor, rows: torch.Tensor) -> None:
    """sums[labels[i]] += rows[i] for every i (sums (K, D), labels (m,), rows (m, D)).

    On the CPU a sparse one-hot (K x m) times the rows is faster than `index_add_`, which pays a per-row
    dispatch (60k x 512 into K = 100, one thread: 9.4 ms against 12.9 ms); GPUs keep `index_add_`.
    """
    if rows.device.type != "cpu" or rows.dtype not in (torch.float32, torch.float64):
        sums.index_add_(0, labels, rows)
        return
    m = labels.shape[0]
    one_hot = torch.sparse_coo_tensor(torch.stack((labels, torch.arange(m))), rows.new_ones(m),
                                      (sums.shape[0], m), check_invariants=False)
    sums.add_(torch.sparse.mm(one_hot, rows))


@dataclass
class PassStats:
    """Totals of one assignment pass over the local rows."""

    sums: torch.Tensor | None  # (K, D) members' coordinate sums (when asked for)
    counts: torch.Tensor  # (K,) int64 members
    inertia: torch.Tensor  # 0-dim float64, sum of the distances
    changed: torch.Tensor | None  # 0-dim int64, labels that differ from `previous` (when given)


def assign(ws: Workspace, centres: torch.Tensor, labels_out: torch.Tensor, dist_out: torch.Tensor, *,
           accumulate: bool = True, previous: torch.Tensor | None = None) -> PassStats:
    """Nearest centre of every local row: labels_out (n,) int64, dist_out (n,) squared-euclidean / cosine distance,
    plus the totals the Lloyd update needs. One GEMM + one fused min/argmin per chunk."""
    X = ws.X
    k, d = centres.shape
    B, B_np, bias = gemm_operands(ws, centres)

    def run(start: int, stop: int):
        block = X.new_empty((min(ws.rows(k), stop - start), k))
        sums = X.new_zeros((k, d)) if accumulate else None
        for s, e in ws.chunks(start, stop, k):
            xc, scores = X[s:e], block[: e - s]
            values, labels = dist_out[s:e], labels_out[s:e]
            gemm_into(scores, xc, B, B_np, bias)
            best_per_row(scores, values, labels, largest=bias is None, numpy=B_np is not None)
            if bias is None:  # cosine: 1 - max similarity
                values.neg_().add_(1.0).clamp_min_(0.0)
            else:  # ||c||^2 - 2<x, c>, minimised, then + ||x||^2
                values.add_(ws.sq_norms[s:e]).clamp_min_(0.0)
            if sums is not None:
                add_rows_by_label(sums, labels, xc)
        mine = labels_out[start:stop]
        counts = count_labels(mine, k)
        inertia = dist_out[start:stop].sum(dtype=torch.float64)
        changed = (mine != previous[start:stop]).sum() if previous is not None else None
        return sums, counts, inertia, changed

    parts = ws.map(run)
    sums, counts, inertia, changed = parts[0]
    for p_sums, p_counts, p_inertia, p_changed in parts[1:]:
        if sums is not None:
            sums += p_sums
        counts = counts + p_counts
        inertia = inertia + p_inertia
        if changed is not None:
            changed = changed + p_changed
    return PassStats(sums, counts, inertia, changed)


def distances_to(ws: Workspace, points: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """Distances (same metric as `assign`) from every local row to a few points: out (n, m), filled in chunks."""
    X = ws.X
    B, B_np, bias = gemm_operands(ws, points)

    def run(start: int, stop: int) -> None:
        for s, e in ws.chunks(start, stop, points.shape[0]):
            block = gemm_into(out[s:e], X[s:e], B, B_np, bias)
            if bias is None:
                block.neg_().add_(1.0)
            else:
                block.add_(ws.sq_norms[s:e, None])
            block.clamp_min_(0.0)

    ws.map(run)
    return out


def trial_potentials(ws: Workspace, candidates: torch.Tensor, closest: torch.Tensor,
                     out: torch.Tensor) -> torch.Tensor:
    """k-means++ step: out (n, m) = min(closest, distance to candidate j); returns the local potentials
    sum_i out[i, j] (m,) float64."""
    X = ws.X
    B, B_np, bias = gemm_operands(ws, candidates)

    def run(start: int, stop: int) -> torch.Tensor:
        for s, e in ws.chunks(start, stop, candidates.shape[0]):
            block = gemm_into(out[s:e], X[s:e], B, B_np, bias)
            if bias is None:
                block.neg_().add_(1.0)
            else:
                block.add_(ws.sq_norms[s:e, None])
            block.clamp_min_(0.0)
            torch.minimum(block, closest[s:e, None], out=block)
        return out[start:stop].sum(0, dtype=torch.float64)

    return torch.stack(ws.map(run)).sum(0)


def exact_inertia(ws: Workspace, centres: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Local sum of distances of rows to their assigned centres, computed directly (no norm expansion), float64.

    euclidean: sum ||x - c_label||^2; cosine: sum (1 - <x_hat, c_hat_label>). O(N D), chunked.
    """
    X = ws.X
    C, _ = centre_operands(ws, centres)

    def run(start: int, stop: int) -> torch.Tensor:
        total = torch.zeros((), dtype=torch.float64, device=X.device)
        buffer = X.new_empty((min(ws.rows(X.shape[1]), stop - start), X.shape[1]))  # reused: no allocation churn
        for s, e in ws.chunks(start, stop, X.shape[1]):
            assigned = torch.index_select(C, 0, labels[s:e], out=buffer[: e - s])
            if ws.metric == "cosine":
                sim = torch.linalg.vecdot(X[s:e], assigned, dim=1)
                total += (1.0 - sim).clamp_min(0.0).sum(dtype=torch.float64)
            else:
                total += sq_norms_of_rows(assigned.sub_(X[s:e])).sum(dtype=torch.float64)
        return total

    return torch.stack(ws.map(run)).sum()
