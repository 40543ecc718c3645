"""SCCBG: Self-paced Consensus Clustering with Bipartite Graph (Zhou, Du, Li, IJCAI 2020).

Implements ``../shared/specs/consensus.md`` §1-§4: the alternation of the official MATLAB ``SCCBG.m``
(W-step: self-paced edge weights; spectral step: rank test of the normalised bipartite graph and update of
lambda; S-step: learned bipartite graph; sparsification; rho doubling), with the per-point QPs that the
official code hands to ``quadprog`` solved for all points at once by batched first-order methods
(consensus.md §4), so that N = 60,000 points fit in memory (only N x v and v x v arrays, v = total number
of base clusters):

- W-step (non-convex box QP per point): projected gradient with per-row step 1/L_i (Gershgorin bound),
  started from the previous W; monotone, so it stops at a local solution near the start point, as
  ``quadprog`` does (which local solution is found may differ from MATLAB's trust-region method);
- S-step (convex box QP per point): FISTA with adaptive (gradient) restart, started from the previous S;
- rows whose curvature bound is 0 have a linear objective: each coordinate goes to the bound that its
  gradient sign dictates;
- each row stops when its max |change| < 1e-10, or after 5,000 iterations.

Differences from the official code, none of which changes the output:
- columns of empty base clusters are not formed (the labels are renumbered per clustering);
- the spectral test of an iteration is evaluated before its W-step (the W-step does not affect it, and W is
  discarded when the test stops the loop), which saves one W-step.
The output is, as officially, the connected components of the final bipartite graph, which can number
c' != c (singleton points whose edges were all removed; or the loop ran out of iterations). The result is
returned as is, with a warning naming c' and c (never silently re-clustered).

Measured (CPU, 2 cores shared with other jobs, float64, 20 noisy copies with 30 % noise of a 10-cluster
truth, default gamma): N = 2,000 -> 10 clusters, NMI 1.0, ~1-2 s; N = 20,000 -> NMI 1.0, 139 s; N = 60,000
-> 10 clusters, NMI 1.0, 335 s, 1.5 GB peak RSS; the rank test was met at iteration 20 of 20 (the number of
lambda doublings needed grows like log2(N C), since dist scales like 1/(N C)). With gamma = 1e-3 at
N = 2,000 (beyond the breakdown scale) this solver still finds 10 clusters (NMI 1.0) where the spec's
reference implementation found 291 components: in that regime the result depends on the local solution
of the non-convex W-step.

gamma: the official demo sweeps 1e-5 .. 1; the value DivClust used is undocumented. Default (``None``):
gamma = 0.05 * mean clusters per base clustering / (C * N), 10x below the scale where the W-step starts to
drop observed edges (consensus.md §3).
"""

from __future__ import annotations

import contextlib
import math
import warnings
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
from scipy.sparse.csgraph import connected_components
from torch import Tensor

from consensus.ensemble import as_label_matrix, first_appearance_order, incidence_matrix, relabel_rows

__all__ = ["sccbg", "sccbg_solve", "SCCBGResult", "default_gamma"]

# Constants of SCCBG.m (consensus.md §3).
_LAMBDA_INIT = 1.0
_RHO_INIT = 0.5
_SPARSIFY_BELOW = 1e-4
_EIGEN_TOL = 1e-7
_DEGREE_EPS = 2.220446049250313e-16  # MATLAB eps
# Batched QP solver settings (consensus.md §4).
_QP_TOL = 1e-10
_QP_MAX_ITER = 5000
_ROW_CHUNK = 8192
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
    """gamma = 0.05 * K_mean / (C * N), K_mean = v / C (consensus.md §3, framework default)."""
    mean_clusters = num_base_clusters / num_clusterings
    return 0.05 * mean_clusters / (num_clusterings * num_points)


# ---------------------------------------------------------------------------------------------------------
# Batched box-constrained QP solvers. Every row is an independent problem; rows are solved in chunks and a
# row leaves the working set as soon as it has converged.
# ---------------------------------------------------------------------------------------------------------


def _linear_row_step(x: Tensor, grad: Tensor) -> Tensor:
    """Minimiser of a linear objective over [0, 1]: each coordinate goes to the bound its gradient sign
    dictates (unchanged where the gradient is 0)."""
    return torch.where(grad < 0, torch.ones_like(x), torch.where(grad > 0, torch.zeros_like(x), x))


def _solve_w_rows(s: Tensor, b: Tensor, w: Tensor, affinity: Tensor, affinity_rowsum: Tensor,
                  gamma: float, rho: float) -> Tensor:
    """W-step for a block of rows (consensus.md §2a): local minimiser over [0,1]^v, started from ``w``, of
    f(w) = sum_j (s_j - b_j)^2 w_j^2 + gamma sum_jk A_jk (s_j - s_k)^2 w_j w_k - rho sum_j w_j."""
    delta = (s - b) ** 2  # [n, v]
    s_sq = s * s
    # Gershgorin bound of the Hessian 2 (diag(delta) + gamma Q), Q_jk = A_jk (s_j - s_k)^2 >= 0.
    q_rowsum = (s_sq * affinity_rowsum - 2 * s * (s @ affinity) + s_sq @ affinity).clamp_min(0)
    lipschitz = 2 * (delta + gamma * q_rowsum).amax(dim=1)  # [n]

    def gradient(w_: Tensor, s_: Tensor, s_sq_: Tensor, delta_: Tensor) -> Tensor:
        coupling = s_sq_ * (w_ @ affinity) - 2 * s_ * ((s_ * w_) @ affinity) + (s_sq_ * w_) @ affinity
        return 2 * delta_ * w_ + 2 * gamma * coupling - rho

    out = w.clone()
    flat = lipschitz <= 0
    if flat.any():
        out[flat] = _linear_row_step(w[flat], gradient(w[flat], s[flat], s_sq[flat], delta[flat]))
    active = torch.nonzero(~flat).squeeze(1)
    step = 1.0 / lipschitz[active].clamp_min(1e-300)
    x, s, s_sq, delta = w[active], s[active], s_sq[active], delta[active]
    for _ in range(_QP_MAX_ITER):
        if active.numel() == 0:
            break
        x_new = (x - step[:, None] * gradient(x, s, s_sq, delta)).clamp_(0.0, 1.0)
        moving = (x_new - x).abs().amax(dim=1) >= _QP_TOL
        x = x_new
        if not bool(moving.all()):
            done = ~moving
            out[active[done]] = x[done]
            active, x, s, s_sq, delta, step = (t[moving] for t in (active, x, s, s_sq, delta, step))
    if active.numel():
        out[active] = x
    return out


def _solve_s_rows(w: Tensor, b: Tensor, x0: Tensor, dist: Tensor, affinity: Tensor,
                  gamma: float, lam: float) -> Tensor:
    """S-step for a block of rows (consensus.md §2d): minimiser over [0,1]^v, started from ``x0``, of
    g(x) = sum_j w_j^2 (x_j - b_j)^2 + gamma sum_jk A_jk w_j w_k (x_j - x_k)^2 + lam sum_j dist_j x_j
    (convex), by FISTA with adaptive restart."""
    w_affinity = w @ affinity  # [n, v]
    w_sq = w * w
    lipschitz = (2 * w_sq + 8 * gamma * w * w_affinity).amax(dim=1)  # [n], Gershgorin bound
    linear = lam * dist

    def gradient(x_: Tensor, w_: Tensor, w_sq_: Tensor, wa_: Tensor, b_: Tensor, lin_: Tensor) -> Tensor:
        smooth = w_ * wa_ * x_ - w_ * ((w_ * x_) @ affinity)
        return 2 * w_sq_ * (x_ - b_) + 4 * gamma * smooth + lin_

    out = x0.clone()
    flat = lipschitz <= 0
    if flat.any():
        i = flat
        out[i] = _linear_row_step(x0[i], gradient(x0[i], w[i], w_sq[i], w_affinity[i], b[i], linear[i]))
    active = torch.nonzero(~flat).squeeze(1)
    x = x0[active]
    y = x.clone()
    t = torch.ones(active.numel(), dtype=x.dtype, device=x.device)
    w, w_sq, w_affinity, b, linear = w[active], w_sq[active], w_affinity[active], b[active], linear[active]
    step = 1.0 / lipschitz[active].clamp_min(1e-300)
    for _ in range(_QP_MAX_ITER):
        if active.numel() == 0:
            break
        x_new = (y - step[:, None] * gradient(y, w, w_sq, w_affinity, b, linear)).clamp_(0.0, 1.0)
        change = x_new - x
        moving = change.abs().amax(dim=1) >= _QP_TOL
        # Adaptive restart (O'Donoghue & Candes): drop the momentum when it points uphill.
        restart = ((y - x_new) * change).sum(dim=1) > 0
        t_new = torch.where(restart, torch.ones_like(t), (1 + torch.sqrt(1 + 4 * t * t)) / 2)
        momentum = torch.where(restart, torch.zeros_like(t), (t - 1) / t_new)
        y = x_new + momentum[:, None] * change
        x, t = x_new, t_new
        if not bool(moving.all()):
            done = ~moving
            out[active[done]] = x[done]
            keep = moving
            active, x, y, t, w, w_sq, w_affinity, b, linear, step = (
                v[keep] for v in (active, x, y, t, w, w_sq, w_affinity, b, linear, step)
            )
    if active.numel():
        out[active] = x
    return out


# ---------------------------------------------------------------------------------------------------------
# Spectral step and components.
# ---------------------------------------------------------------------------------------------------------


@dataclass
class _Spectral:
    rank_sum: float  # fn1 = e_1 + ... + e_c
    rank_sum_next: float  # fn2 = e_1 + ... + e_{c+1}
    point_embedding: Tensor  # U1 = D1^{-1/2} U  [N, c]
    cluster_embedding: Tensor  # V1 = D2^{-1/2} V  [v, c]

    def dist(self, rows: slice) -> Tensor:
        """dist_ij = max(0, |U1_i|^2 + |V1_j|^2 - 2 U1_i . V1_j) for the given point rows -> [n, v]."""
        u, v = self.point_embedding[rows], self.cluster_embedding
        dist = (u * u).sum(1, keepdim=True) + (v * v).sum(1)[None, :] - 2 * u @ v.T
        return dist.clamp_min_(0.0)


def _spectral_step(graph: Tensor, n_clusters: int) -> _Spectral:
    """Normalised bipartite spectral embedding of S and the rank test sums (consensus.md §2b-c)."""
    inv_sqrt_d1 = 1.0 / graph.sum(dim=1).sqrt().clamp_min(_DEGREE_EPS)  # [N]
    inv_sqrt_d2 = 1.0 / graph.sum(dim=0).sqrt().clamp_min(_DEGREE_EPS)  # [v]
    normalized = inv_sqrt_d1[:, None] * graph * inv_sqrt_d2[None, :]  # S~ [N, v]
    gram = normalized.T @ normalized  # [v, v]
    gram = torch.maximum(gram, gram.T)
    eigenvalues, eigenvectors = torch.linalg.eigh(gram)  # ascending
    eigenvalues, eigenvectors = eigenvalues.flip(0), eigenvectors.flip(1)  # descending
    c = min(n_clusters, eigenvalues.numel())
    top_values, v_embed = eigenvalues[:c], eigenvectors[:, :c]  # [c], [v, c]
    # An eigenvalue that is 0 up to rounding would blow up the division; its column of S~ V is as tiny.
    u_embed = (normalized @ v_embed) / top_values.clamp_min(1e-12).sqrt()[None, :]  # [N, c]
    scale = math.sqrt(2) / 2
    return _Spectral(
        rank_sum=float(eigenvalues[:c].sum()),
        rank_sum_next=float(eigenvalues[: c + 1].sum()),
        point_embedding=inv_sqrt_d1[:, None] * (u_embed * scale),
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


@contextlib.contextmanager
def _cpu_threads_for(device: torch.device, entries: int):
    """Run small CPU problems with one intra-op thread (restored afterwards)."""
    previous = torch.get_num_threads()
    if device.type != "cpu" or entries > _SINGLE_THREAD_MAX_ENTRIES or previous == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


# ---------------------------------------------------------------------------------------------------------
# The algorithm.
# ---------------------------------------------------------------------------------------------------------


def _alternate(incidence: Tensor, n_clusters: int, gamma: float, max_iter: int) -> tuple[Tensor, bool, int]:
    """The SCCBG loop (consensus.md §2) on the incidence B [N, v] -> (learned graph S, stopped on the rank
    test, iterations run)."""
    num_points = incidence.shape[0]
    affinity = incidence.T @ incidence  # A = B^T B [v, v], co-occurrence counts
    affinity_rowsum = affinity.sum(dim=1)  # [v]
    graph = incidence.clone()  # S
    weights = torch.zeros_like(incidence)  # W
    lam, rho = _LAMBDA_INIT, _RHO_INIT
    for iteration in range(1, max_iter + 1):
        spectral = _spectral_step(graph, n_clusters)
        if spectral.rank_sum < n_clusters - _EIGEN_TOL:  # fewer than c components
            lam = 2 * lam
        elif spectral.rank_sum_next > n_clusters + 1 - _EIGEN_TOL:  # more than c components
            lam = lam / 2
        else:  # exactly c components: stop before the S-step (the W-step of this iteration is moot)
            return graph, True, iteration
        if bool((weights < 1).any()):  # W-step (uses rho, not lambda), skipped once every weight is 1
            for start in range(0, num_points, _ROW_CHUNK):
                rows = slice(start, start + _ROW_CHUNK)
                weights[rows] = _solve_w_rows(graph[rows], incidence[rows], weights[rows], affinity,
                                              affinity_rowsum, gamma, rho)
        new_graph = torch.empty_like(graph)
        for start in range(0, num_points, _ROW_CHUNK):
            rows = slice(start, start + _ROW_CHUNK)
            new_graph[rows] = _solve_s_rows(weights[rows], incidence[rows], graph[rows], spectral.dist(rows),
                                            affinity, gamma, lam)
        del spectral
        new_graph[new_graph < _SPARSIFY_BELOW] = 0.0  # sparsify
        graph = new_graph
        rho = 2 * rho
    return graph, False, max_iter


def sccbg_solve(labels, n_clusters: int, *, gamma: float | None = None, max_iter: int = 20,
                device: str | torch.device = "cpu") -> SCCBGResult:
    """Run SCCBG and return the labels together with the solver's state (see ``sccbg``)."""
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
    with _cpu_threads_for(device, num_points * num_base_clusters):
        incidence = torch.as_tensor(incidence_np.toarray(), dtype=torch.float64, device=device)  # B [N, v]
        graph, stopped, iterations = _alternate(incidence, n_clusters, gamma, int(max_iter))
    graph_np = graph.cpu().numpy()
    point_labels = _graph_components(graph_np)
    found = int(point_labels.max()) + 1
    return SCCBGResult(point_labels, found, stopped, iterations, gamma, graph_np)


def sccbg(labels, n_clusters: int, *, gamma: float | None = None, max_iter: int = 20, seed: int = 0,
          device: str | torch.device = "cpu") -> np.ndarray:
    """SCCBG consensus of C base clusterings (consensus.md §2, §6).

    Args:
        labels: [C, N] integer labels (LongTensor or ndarray); any integers per row.
        n_clusters: requested number of consensus clusters c.
        gamma: SCCBG's hyper-parameter; ``None`` -> 0.05 * K_mean / (C * N) (framework rule, §3).
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
