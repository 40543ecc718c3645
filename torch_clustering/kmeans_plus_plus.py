"""Initial centres: greedy k-means++ and seeded random choice, for local or sharded data.

Both work on global point indices: every rank draws the same random numbers from an identically seeded
`torch.Generator`, finds which rank owns the drawn point, and the owner contributes its row (an all-reduce of a
small zero-padded block). On one process the same code reduces to plain indexing, so the sharded result equals
the single-process result on the concatenated data (up to float rounding in the sums of potentials).
"""

from __future__ import annotations

import math

import torch

from ._collectives import Collectives
from ._distances import Workspace, distances_to, trial_potentials


def _shard_starts(ws: Workspace, comm: Collectives) -> torch.Tensor:
    """(world,) int64 index of each rank's first row in the concatenated data."""
    counts = comm.all_gather_cat(torch.tensor([ws.X.shape[0]], dtype=torch.int64, device=ws.X.device))
    return torch.cumsum(counts, 0) - counts


def _rows_by_owner(ws: Workspace, comm: Collectives, owner: torch.Tensor, local_index: torch.Tensor) -> torch.Tensor:
    """Rows X[local_index] of the ranks in `owner`, replicated on every rank: (m, D)."""
    X = ws.X
    local_index = local_index.clamp(0, X.shape[0] - 1)
    rows = X.index_select(0, local_index)
    if comm.world_size == 1:
        return rows
    rows = rows * (owner == comm.rank).unsqueeze(1).to(X.dtype)
    return comm.all_reduce_sum_(rows)


def _rows_by_global_index(ws: Workspace, comm: Collectives, index: torch.Tensor,
                          starts: torch.Tensor) -> torch.Tensor:
    ends = starts[1:]
    owner = torch.searchsorted(ends, index, right=True)
    return _rows_by_owner(ws, comm, owner, index - starts[owner])


def random_init(ws: Workspace, n_clusters: int, generator: torch.Generator, comm: Collectives) -> torch.Tensor:
    """The points at the first K entries of a seeded randperm(N) (global indices): (K, D)."""
    perm = torch.randperm(ws.n_total, generator=generator, device=ws.X.device)[:n_clusters]
    return _rows_by_global_index(ws, comm, perm, _shard_starts(ws, comm))


def kmeans_plus_plus(ws: Workspace, n_clusters: int, generator: torch.Generator, comm: Collectives) -> torch.Tensor:
    """Greedy k-means++ (Arthur & Vassilvitskii 2007; scikit-learn's greedy variant): (K, D) centres.

    First centre uniform; each next centre: draw 2 + floor(ln K) candidates with probability proportional to the
    current closest distance (squared euclidean — D^2 weighting — or 1 - cos; inverse CDF on a float64 cumulative
    sum, index clipped to the last point), keep the candidate giving the lowest potential (sum of closest
    distances). Spec docs/torch_clustering.md; the reference weights by un-squared euclidean distance instead.
    Cost per centre: one (N x n_trials) GEMM, chunked; no host synchronisation.
    """
    X = ws.X
    n, dim = X.shape
    device = X.device
    n_trials = 2 + int(math.log(n_clusters))
    starts = _shard_starts(ws, comm)

    centres = X.new_empty((n_clusters, dim))
    first = torch.randint(ws.n_total, (1,), generator=generator, device=device)
    centres[0] = _rows_by_global_index(ws, comm, first, starts)[0]
    closest = distances_to(ws, centres[:1], X.new_empty((n, 1)))[:, 0].clone()  # (n,)
    trial_dist = X.new_empty((n, n_trials))

    for c in range(1, n_clusters):
        cumulative = torch.cumsum(closest, 0, dtype=torch.float64)  # (n,)
        rank_totals = comm.all_gather_cat(cumulative[-1:])  # (world,)
        rank_ends = torch.cumsum(rank_totals, 0)
        targets = torch.rand(n_trials, generator=generator, device=device).to(torch.float64) * rank_ends[-1]
        owner = torch.searchsorted(rank_ends, targets, right=True).clamp_max(comm.world_size - 1)
        local = torch.searchsorted(cumulative, targets - (rank_ends - rank_totals)[owner], right=True)
        candidates = _rows_by_owner(ws, comm, owner, local)  # (n_trials, D)

        potentials = comm.all_reduce_sum_(trial_potentials(ws, candidates, closest, trial_dist))  # (n_trials,)
        best = torch.argmin(potentials).view(1)
        centres[c] = candidates.index_select(0, best)[0]
        closest = trial_dist.index_select(1, best)[:, 0]
    return centres
