"""Give a consensus the number of clusters that was asked for.

SCCBG's result is the connected components of its learned graph; on few, diverse base clusterings some points
lose every edge and become components of their own, so the consensus can hold many more clusters than
requested (17-78 instead of 10 on digits with 3 clusterings). `restore_cluster_count` keeps the `n_clusters`
largest components and moves every point of the others to the kept cluster it agrees with most across the base
clusterings: with B [N, v] the point-by-base-cluster incidence, cluster L's profile is the mean row of B over its
points, and point i's agreement with L is B_i . profile_L, the expected number of base clusterings in which i
and a random point of L share a cluster. Ties go to the larger cluster. A consensus with at most n_clusters
clusters is returned unchanged.
"""
from __future__ import annotations

import numpy as np

from consensus.ensemble import as_label_matrix, first_appearance_order, incidence_matrix, relabel_rows


def restore_cluster_count(consensus: np.ndarray, base_labels, n_clusters: int) -> np.ndarray:
    """consensus [N] labels, base_labels [C, N] -> [N] labels with min(n_clusters, found) clusters, 0..K-1 in
    first-appearance order."""
    base = as_label_matrix(base_labels, n_clusters)
    consensus = np.asarray(consensus, dtype=np.int64).reshape(-1)
    if consensus.shape[0] != base.shape[1]:
        raise ValueError(f"the consensus labels {consensus.shape[0]} points, the base clusterings {base.shape[1]}")
    ids, dense, sizes = np.unique(consensus, return_inverse=True, return_counts=True)
    if ids.size <= n_clusters:
        return first_appearance_order(consensus)
    # The n_clusters largest components (stable: the earlier-numbered one wins a tie of sizes).
    kept = np.argsort(-sizes, kind="stable")[:n_clusters]
    kept_of = np.full(ids.size, -1, dtype=np.int64)
    kept_of[kept] = np.arange(n_clusters)
    assigned = kept_of[dense]                                  # -1: a point of a dropped component
    incidence = incidence_matrix(*relabel_rows(base))          # [N, v] sparse, C ones per row
    members = np.zeros((n_clusters, base.shape[1]))
    members[assigned[assigned >= 0], np.nonzero(assigned >= 0)[0]] = 1.0
    profiles = (incidence.T @ members.T).T / sizes[kept][:, None]   # [K, v] mean incidence of each kept cluster
    moved = np.nonzero(assigned < 0)[0]
    agreement = np.asarray(incidence[moved] @ profiles.T)           # [moved, K]
    # ties: the larger kept cluster (kept is sorted by size, so the first maximum)
    assigned[moved] = np.argmax(agreement, axis=1)
    return first_appearance_order(assigned)
