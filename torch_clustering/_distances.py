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

import torch
import torch.nn.functional as F

from ._collectives import Collectives
from ._gemm import gemm_into, numpy_operand
from ._parallel import map_rows, workers

CPU_BLOCK_BYTES = 4 << 20  # a distance block of about this size stays in cache between the GEMM and the argmin
CPU_MIN_ROWS, CPU_MAX_ROWS = 256, 8192


def sq_norms_of_rows(x: torch.Tensor) -> torch.Tensor:
    """(n,) ||x_i||^2. (vector_norm then square: ~20x faster on CPU than einsum("nd,nd->n"), same float accuracy.)"""
    return torch.linalg.vector_norm(x, dim=1).square_()


def count_labels(labels: torch.Tensor, k: int) -> torch.Tensor:
    """(k,) int64 occurrences of 0..k-1 (CUDA's bincount reads the maximum back to the host; index_add_ does not)."""
    if labels.device.type == "cpu":
        return torch.bincount(labels, minlength=k)
    return torch.zeros(k, dtype=torch.int64, device=labels.device).index_add_(0, labels, torch.ones_like(labels))


def rows_per_chunk(n_rows: int, n_cols: int, itemsize: int, device: torch.device, *,
                   chunk_size: int | None, memory_budget_mb: float, n_workers: int = 1) -> int:
    """Rows of one (rows x n_cols) distance block.

    An explicit `chunk_size` wins (still capped by the memory budget). Otherwise: on GPU, as many rows as the
    budget allows (large GEMMs keep the device busy); on CPU, a block of about 4 MiB (256 to 8192 rows) per worker
    thread, so the argmin reads it from cache. All workers' blocks together never exceed the budget.
    """
    budget_rows = max(1, int(memory_budget_mb * (1 << 20)) // max(1, n_cols * itemsize * max(1, n_workers)))
    if chunk_size is not None:
        rows = min(chunk_size, budget_rows)
    elif device.type == "cpu":
        rows = min(max(CPU_BLOCK_BYTES // max(1, n_cols * itemsize), CPU_MIN_ROWS), CPU_MAX_ROWS, budget_rows)
    else:
        rows = budget_rows
    return max(1, min(rows, n_rows))


@dataclass
class Workspace:
    """The data in the form the distance kernels want, computed once per fit.

    X:        (n, D) local rows; euclidean: centred on the global mean (better float32 accuracy of the norm
              expansion, as scikit-learn does); cosine: L2-normalised rows.
    shift:    (D,) global mean subtracted from X (euclidean) — add it back to centres; None for cosine.
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
                              n_workers=workers(self.X.device))

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
    """Build the workspace: one copy of X (centred or normalised), the squared row norms and the mean per-feature
    variance, in cache-sized chunks (row ranges in parallel on CPU). For sharded data the mean and the variance
    are global (all-reduced).

    Non-finite input is detected from these sums (a NaN/inf anywhere makes them non-finite, and with sharded data
    the all-reduce carries it to every rank): `Workspace.finite`.
    """
    n_local, d = X.shape
    device = X.device
    work = torch.empty_like(X, memory_format=torch.contiguous_format)
    rows = rows_per_chunk(n_local, d, X.element_size(), device, chunk_size=None,
                          memory_budget_mb=memory_budget_mb, n_workers=workers(device))

    def moments(start: int, stop: int, write: bool, sq_norms: torch.Tensor | None,
                shift: torch.Tensor | None) -> torch.Tensor:
        """[sum of the rows (D), sum of their squared norms] over rows [start, stop), float64. With `write`, the
        rows are first centred on `shift` (euclidean) or L2-normalised (cosine) into the workspace copy."""
        out = torch.zeros(d + 1, dtype=torch.float64, device=device)
        for s in range(start, stop, rows):
            e = min(s + rows, stop)
            if not write:
                chunk = X[s:e]
            elif shift is None:
                chunk = F.normalize(X[s:e], dim=1, out=work[s:e])
            else:
                chunk = torch.sub(X[s:e], shift, out=work[s:e])
            sq = sq_norms_of_rows(chunk)
            if sq_norms is not None:
                sq_norms[s:e] = sq
            out[:d] += chunk.sum(dim=0)
            out[d] += sq.sum(dtype=torch.float64)
        return out

    n_total = int(comm.all_reduce_sum_(torch.tensor([n_local], dtype=torch.int64, device=device)))
    shift = sq_norms = None
    if metric == "euclidean":
        first = map_rows(device, n_local, lambda s, e: moments(s, e, False, None, None))
        total = comm.all_reduce_sum_(torch.stack(first).sum(0))
        shift = (total[:d] / n_total).to(X.dtype)
        sq_norms = X.new_empty(n_local)
    second = map_rows(device, n_local, lambda s, e: moments(s, e, True, sq_norms, shift))
    stats = comm.all_reduce_sum_(torch.stack(second).sum(0))
    finite = bool(torch.isfinite(stats).all()) and (shift is None or bool(torch.isfinite(shift).all()))
    mean = stats[:d] / n_total
    variance = float((stats[d] / n_total - (mean * mean).sum()) / d)
    return Workspace(work, shift, sq_norms, metric, n_total, chunk_size, memory_budget_mb, variance, finite)


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
            if bias is None:  # cosine: 1 - max similarity
                torch.max(scores, 1, out=(values, labels))
                values.neg_().add_(1.0).clamp_min_(0.0)
            else:  # ||c||^2 - 2<x, c>, minimised, then + ||x||^2
                torch.min(scores, 1, out=(values, labels))
                values.add_(ws.sq_norms[s:e]).clamp_min_(0.0)
            if sums is not None:
                sums.index_add_(0, labels, xc)
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
        for s, e in ws.chunks(start, stop, X.shape[1]):
            assigned = C.index_select(0, labels[s:e])
            if ws.metric == "cosine":
                sim = torch.linalg.vecdot(X[s:e], assigned, dim=1)
                total += (1.0 - sim).clamp_min(0.0).sum(dtype=torch.float64)
            else:
                diff = X[s:e] - assigned
                total += sq_norms_of_rows(diff).sum(dtype=torch.float64)
        return total

    return torch.stack(ws.map(run)).sum()
