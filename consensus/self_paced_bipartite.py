"""SCCBG: Self-paced Consensus Clustering with Bipartite Graph (Zhou, Du, Li, IJCAI 2020).

Implements docs/methods/divclust.md: the alternation of the official MATLAB ``SCCBG.m``
(W-step: self-paced edge weights; spectral step: rank test of the normalised bipartite graph and update of
lambda; S-step: learned bipartite graph; sparsification; rho doubling), with the per-point QPs that the
official code hands to ``quadprog`` solved for all points at once by batched first-order methods
(docs/methods/divclust.md), so that N = 60,000 points fit in memory (only N x v and v x v arrays, v = total number
of base clusters):

- W-step (non-convex box QP per point): projected gradient with per-row step 1/L_i (Gershgorin bound),
  started from the previous W; monotone, so it stops at a local solution near the start point, as
  ``quadprog`` does (which local solution is found may differ from MATLAB's trust-region method);
- S-step (convex box QP per point, unique minimiser when every weight is > 0): for rows whose weights are
  all 1 (every row once the self-paced weights have saturated, which for the default gamma happens in the
  first W-step) all rows share one diagonally dominant Hessian, and projected Jacobi sweeps (one
  rows x v by v x v product each, the first ones in float32) converge to the minimiser in about 7 sweeps;
  other rows use FISTA with adaptive (gradient) restart, started from the previous S (``box_qp.py``);
- rows whose curvature bound is 0 have a linear objective: each coordinate goes to the bound that its
  gradient sign dictates;
- each row stops when its max |change| < 1e-10 (in a float64 sweep), or after 5,000 iterations;
- the rows are processed in cache-sized blocks on a small thread pool, each thread with one intra-op thread
  (``row_blocks.py``); the statistics of the spectral step (degrees and S^T D1^{-1} S) are accumulated
  from each block as the S-step finishes it, so S is read once per iteration.

Differences from the official code, none of which changes the output:
- columns of empty base clusters are not formed (the labels are renumbered per clustering);
- the spectral test of an iteration is evaluated before its W-step (the W-step does not affect it, and W is
  discarded when the test stops the loop), which saves one W-step.
The output is, as officially, the connected components of the final bipartite graph, which can number
c' != c (singleton points whose edges were all removed; or the loop ran out of iterations). The result is
returned as is, with a warning naming c' and c (never silently re-clustered).

Measured (CPU, 2 cores shared with other jobs at load average 12-16, 20 noisy copies with 30 % noise of a
10-cluster truth, default gamma; ``scripts/bench_consensus.py``, ``docs/benchmarks.md``): N = 6,000 ->
10 clusters, NMI 1.0, 4-6 s (the previous all-FISTA, 8192-row-chunk implementation: 67-77 s in the same
runs, same labels, S equal to 2e-11); N = 60,000 -> 10 clusters, NMI 1.0, 58.7 s (load 12.9) and 62.5 s
(load 15.4-16.2), against 961 s for the previous implementation in the same run (same labels);
the rank test was met at iteration 20 of 20 (the number of lambda doublings needed grows like log2(N C),
since dist scales like 1/(N C)). With gamma = 1e-3 at
N = 2,000 (beyond the breakdown scale) this solver still finds 10 clusters (NMI 1.0) where the documented
reference implementation found 291 components: in that regime the result depends on the local solution
of the non-convex W-step.

gamma: the official demo sweeps 1e-5 .. 1; the value DivClust used is undocumented. Default (``None``):
gamma = 0.05 * mean clusters per base clustering / (C * N), 10x below the scale where the W-step starts to
drop observed edges (docs/methods/divclust.md).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
from scipy.sparse.csgraph import connected_components
from torch import Tensor

from consensus.box_qp import solve_s_rows, solve_s_rows_unit_weights, solve_w_rows, unit_weight_jacobi
from consensus.ensemble import as_label_matrix, first_appearance_order, incidence_matrix, relabel_rows
from consensus.row_blocks import for_each_row_block, single_intra_op_thread

__all__ = ["sccbg", "sccbg_solve", "SCCBGResult", "default_gamma"]

# Constants of SCCBG.m (docs/methods/divclust.md).
_LAMBDA_INIT = 1.0
_RHO_INIT = 0.5
_SPARSIFY_BELOW = 1e-4
_EIGEN_TOL = 1e-7
_DEGREE_EPS = 2.220446049250313e-16  # MATLAB eps
# Problems with at most this many graph entries (N * v) run single-threaded on the CPU: their matrix
# products take microseconds, and thread synchronisation costs more than it saves (on a 2-core machine
# shared with other jobs, 60x more: 7 s instead of 0.1 s for N = 500, v = 60).
_SINGLE_THREAD_MAX_ENTRIES = 1 << 17


@dataclass
class SCCBGResult:
    """Everything ``sccbg_solve`` ends with (for inspection and tests)."""

    labels: np.ndarray  # [N] int64 consensus labels 0..c'-1, first-appearance order
    n_clusters_found: int  # c'
    stopped_on_rank: bool  # True when the spectral test found exactly c components (loop stopped early)
    iterations: int  # outer iterations run (the one that stopped included)
    gamma: float
    graph: np.ndarray  # [N, v] the learned bipartite graph S (float64)


def default_gamma(num_clusterings: int, num_points: int, num_base_clusters: int) -> float:
    """gamma = 0.05 * K_mean / (C * N), K_mean = v / C (docs/methods/divclust.md, framework default)."""
    mean_clusters = num_base_clusters / num_clusterings
    return 0.05 * mean_clusters / (num_clusterings * num_points)


# ---------------------------------------------------------------------------------------------------------
# Spectral step and components.
# ---------------------------------------------------------------------------------------------------------


class _GraphStatistics:
    """What the spectral step needs from S, gathered block by block while each block is in cache: point
    degrees d1 [N], cluster degrees d2 [v] and the unscaled Gram S^T D1^{-1} S [v, v]. Partial sums are
    added in block order, so the result does not depend on the thread count."""

    def __init__(self, num_points: int, like: Tensor) -> None:
        self.point_degrees = torch.empty(num_points, dtype=like.dtype, device=like.device)
        self._partials: dict[int, tuple[Tensor, Tensor]] = {}

    def add_block(self, rows: slice, block: Tensor) -> None:
        degrees = block.sum(dim=1)  # [n]
        self.point_degrees[rows] = degrees
        inv_d1 = 1.0 / degrees.sqrt().clamp_min(_DEGREE_EPS) ** 2  # [n], as (1/max(sqrt d1, eps))^2
        self._partials[rows.start] = (block.sum(dim=0), (block * inv_d1[:, None]).T @ block)

    def totals(self) -> tuple[Tensor, Tensor, Tensor]:
        starts = sorted(self._partials)
        cluster_degrees, gram = (t.clone() for t in self._partials[starts[0]])
        for start in starts[1:]:
            cluster_degrees += self._partials[start][0]
            gram += self._partials[start][1]
        return self.point_degrees, cluster_degrees, gram


@dataclass
class _Spectral:
    rank_sum: float  # fn1 = e_1 + ... + e_c
    rank_sum_next: float  # fn2 = e_1 + ... + e_{c+1}
    inv_point_degrees: Tensor  # D1^{-1} (as (1/max(sqrt d1, eps))^2)  [N]
    projection: Tensor  # D2^{-1/2} V diag(e)^{-1/2} / sqrt(2)  [v, c], so that U1 = D1^{-1} S projection
    cluster_embedding: Tensor  # V1 = D2^{-1/2} V / sqrt(2)  [v, c]

    def dist(self, rows: slice, graph_rows: Tensor) -> Tensor:
        """dist_ij = max(0, |U1_i|^2 + |V1_j|^2 - 2 U1_i . V1_j) for the given point rows -> [n, v], with
        U1 = D1^{-1/2} U = D1^{-1} S D2^{-1/2} V diag(e)^{-1/2} / sqrt(2) (docs/methods/divclust.md-c)."""
        u = (graph_rows * self.inv_point_degrees[rows, None]) @ self.projection  # [n, c]
        v = self.cluster_embedding
        dist = (u * u).sum(1, keepdim=True) + (v * v).sum(1)[None, :] - 2 * u @ v.T
        return dist.clamp_min_(0.0)


def _spectral_step(statistics: _GraphStatistics, n_clusters: int) -> _Spectral:
    """Normalised bipartite spectral embedding of S and the rank test sums (docs/methods/divclust.md-c):
    G = S~^T S~ with S~ = D1^{-1/2} S D2^{-1/2}, from the block-wise statistics of S."""
    point_degrees, cluster_degrees, gram = statistics.totals()
    inv_sqrt_d1 = 1.0 / point_degrees.sqrt().clamp_min(_DEGREE_EPS)  # [N]
    inv_sqrt_d2 = 1.0 / cluster_degrees.sqrt().clamp_min(_DEGREE_EPS)  # [v]
    gram = inv_sqrt_d2[:, None] * gram * inv_sqrt_d2[None, :]  # [v, v]
    gram = torch.maximum(gram, gram.T)
    eigenvalues, eigenvectors = torch.linalg.eigh(gram)  # ascending
    eigenvalues, eigenvectors = eigenvalues.flip(0), eigenvectors.flip(1)  # descending
    c = min(n_clusters, eigenvalues.numel())
    top_values, v_embed = eigenvalues[:c], eigenvectors[:, :c]  # [c], [v, c]
    scale = math.sqrt(2) / 2
    # An eigenvalue that is 0 up to rounding would blow up the division; its column of S~ V is as tiny.
    projection = inv_sqrt_d2[:, None] * v_embed * (scale / top_values.clamp_min(1e-12).sqrt())[None, :]
    return _Spectral(
        rank_sum=float(eigenvalues[:c].sum()),
        rank_sum_next=float(eigenvalues[: c + 1].sum()),
        inv_point_degrees=inv_sqrt_d1 * inv_sqrt_d1,
        projection=projection,
        cluster_embedding=inv_sqrt_d2[:, None] * (v_embed * scale),
    )


def _graph_components(graph: np.ndarray) -> np.ndarray:
    """Point labels = connected components of the bipartite graph {(i, j): S_ij > 0}, first-appearance
    order; a point without edges is its own component."""
    num_points, num_clusters = graph.shape
    rows, cols = np.nonzero(graph > 0)
    adjacency = sp.coo_matrix(
        (np.ones(rows.size, dtype=np.int8), (rows, num_points + cols)),
        shape=(num_points + num_clusters, num_points + num_clusters),
    )
    _, component = connected_components(adjacency, directed=False)
    return first_appearance_order(component[:num_points])


# ---------------------------------------------------------------------------------------------------------
# The algorithm.
# ---------------------------------------------------------------------------------------------------------


def _alternate(incidence: Tensor, n_clusters: int, gamma: float, max_iter: int, workers: int,
               unit_weight_solver: bool = True) -> tuple[Tensor, bool, int]:
    """The SCCBG loop (docs/methods/divclust.md) on the incidence B [N, v] -> (learned graph S, stopped on the rank
    test, iterations run). On a CPU, call it with one intra-op thread and ``workers`` row-block threads.
    ``unit_weight_solver=False`` solves every S-step row with the general FISTA solver (reference path)."""
    num_points = incidence.shape[0]
    affinity = incidence.T @ incidence  # A = B^T B [v, v], co-occurrence counts
    affinity_rowsum = affinity.sum(dim=1)  # [v]
    coupling, inv_diag = unit_weight_jacobi(affinity, gamma)  # S-step operators for rows whose weights are 1
    coupling_low = coupling.float() if incidence.dtype == torch.float64 else None  # float32 warm-up sweeps
    graph = incidence.clone()  # S
    weights = torch.zeros_like(incidence)  # W
    lam, rho = _LAMBDA_INIT, _RHO_INIT
    device = incidence.device
    statistics = _GraphStatistics(num_points, incidence)
    for_each_row_block(num_points, device, lambda rows: statistics.add_block(rows, graph[rows]), workers=workers)
    for iteration in range(1, max_iter + 1):
        spectral = _spectral_step(statistics, n_clusters)
        if spectral.rank_sum < n_clusters - _EIGEN_TOL:  # fewer than c components
            lam = 2 * lam
        elif spectral.rank_sum_next > n_clusters + 1 - _EIGEN_TOL:  # more than c components
            lam = lam / 2
        else:  # exactly c components: stop before the S-step (the W-step of this iteration is moot)
            return graph, True, iteration
        if bool((weights < 1).any()):  # W-step (uses rho, not lambda), skipped once every weight is 1

            def w_step(rows: slice, rho: float = rho) -> None:
                weights[rows] = solve_w_rows(graph[rows], incidence[rows], weights[rows], affinity,
                                             affinity_rowsum, gamma, rho)

            for_each_row_block(num_points, device, w_step, workers=workers)
        new_graph = torch.empty_like(graph)
        new_statistics = _GraphStatistics(num_points, incidence)

        def s_step(rows: slice, lam: float = lam, spectral: _Spectral = spectral,
                   new_statistics: _GraphStatistics = new_statistics) -> None:
            block_weights, start = weights[rows], graph[rows]
            dist = spectral.dist(rows, start)
            if unit_weight_solver and bool((block_weights == 1).all()):  # shared Hessian: projected Jacobi
                solved = solve_s_rows_unit_weights(incidence[rows], start, dist, coupling, inv_diag, lam,
                                                   coupling_low=coupling_low)
            else:
                solved = solve_s_rows(block_weights, incidence[rows], start, dist, affinity, gamma, lam)
            solved.masked_fill_(solved < _SPARSIFY_BELOW, 0.0)  # sparsify (step e)
            new_graph[rows] = solved
            new_statistics.add_block(rows, solved)  # for the next spectral step

        for_each_row_block(num_points, device, s_step, workers=workers)
        del spectral
        graph, statistics = new_graph, new_statistics
        rho = 2 * rho
    return graph, False, max_iter


def sccbg_solve(labels, n_clusters: int, *, gamma: float | None = None, max_iter: int = 20,
                device: str | torch.device = "cpu", unit_weight_solver: bool = True,
                workers: int | None = None) -> SCCBGResult:
    """Run SCCBG and return the labels together with the solver's state (see ``sccbg``).

    ``unit_weight_solver=False`` forces the general FISTA S-step for every row (the slower reference path,
    for tests); ``workers`` overrides the number of CPU row-block threads (default: PyTorch's thread count,
    1 for small problems); neither changes the result beyond rounding."""
    label_matrix = as_label_matrix(labels, n_clusters)
    if int(max_iter) < 1:
        raise ValueError(f"max_iter must be >= 1, got {max_iter}")
    codes, sizes = relabel_rows(label_matrix)
    num_clusterings, num_points = codes.shape
    incidence_np = incidence_matrix(codes, sizes)  # [N, v] sparse
    num_base_clusters = incidence_np.shape[1]
    if gamma is None:
        gamma = default_gamma(num_clusterings, num_points, num_base_clusters)
    gamma = float(gamma)
    if not gamma > 0 or not math.isfinite(gamma):
        raise ValueError(f"gamma must be a positive finite float, got {gamma}")

    device = torch.device(device)
    with single_intra_op_thread() as threads:
        # Small problems run on one thread: their products take microseconds, less than a thread hand-over.
        if workers is None:
            workers = 1 if num_points * num_base_clusters <= _SINGLE_THREAD_MAX_ENTRIES else threads
        incidence = torch.as_tensor(incidence_np.toarray(), dtype=torch.float64, device=device)  # B [N, v]
        graph, stopped, iterations = _alternate(incidence, n_clusters, gamma, int(max_iter), int(workers),
                                                unit_weight_solver)
    graph_np = graph.cpu().numpy()
    point_labels = _graph_components(graph_np)
    found = int(point_labels.max()) + 1
    return SCCBGResult(point_labels, found, stopped, iterations, gamma, graph_np)


def sccbg(labels, n_clusters: int, *, gamma: float | None = None, max_iter: int = 20, seed: int = 0,
          device: str | torch.device = "cpu") -> np.ndarray:
    """SCCBG consensus of C base clusterings (docs/methods/divclust.md).

    Args:
        labels: [C, N] integer labels (LongTensor or ndarray); any integers per row.
        n_clusters: requested number of consensus clusters c.
        gamma: SCCBG's hyper-parameter; ``None`` -> 0.05 * K_mean / (C * N) (framework rule, docs/methods/divclust.md).
        max_iter: outer iterations (official 20).
        seed: unused (SCCBG is deterministic); accepted for a uniform interface.
        device: where the batched solvers run (float64).

    Returns:
        [N] int64 labels 0..c'-1 in first-appearance order. c' can differ from c (warned, see module doc).
        C == 1 returns that clustering renumbered.
    """
    del seed
    label_matrix = as_label_matrix(labels, n_clusters)
    if label_matrix.shape[0] == 1:
        return first_appearance_order(label_matrix[0])
    result = sccbg_solve(label_matrix, n_clusters, gamma=gamma, max_iter=max_iter, device=device)
    if result.n_clusters_found != n_clusters:
        reason = ("the loop stopped on the rank test but some points lost all their edges"
                  if result.stopped_on_rank else f"the rank test never found {n_clusters} components in "
                  f"{result.iterations} iterations")
        warnings.warn(
            f"SCCBG found {result.n_clusters_found} clusters instead of the requested {n_clusters} ({reason}; "
            f"gamma={result.gamma:.3g}); returning the graph's connected components as the official code does",
            RuntimeWarning,
            stacklevel=2,
        )
    return result.labels
