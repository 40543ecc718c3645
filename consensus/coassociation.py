"""Evidence accumulation: co-association matrix + average linkage (Fred & Jain, TPAMI 2005).

Implements docs/methods/divclust.md The co-association of two points is the fraction of base
clusterings that put them together; 1 - co-association is exactly the Hamming distance between the points'
label tuples, so the condensed distance matrix is ``scipy.spatial.distance.pdist(labels.T, "hamming")``.
Average linkage (UPGMA, ``scipy.cluster.hierarchy.linkage``) builds the dendrogram, deterministically.

The memory is O(N^2): for N = 20,000 the condensed matrix is 1.6 GB of float64 and the peak about 3.8 GB
(``linkage`` copies it; measured 31 s on 2 CPU cores). Above ``max_points`` the function refuses with a
message pointing to ``hbgf`` / ``sccbg``.

Cut: the tree is cut after its first N - c merges, which always leaves exactly c clusters. This equals
``fcluster(criterion="maxclust", t=c)`` except when several merges share the cut height, where ``fcluster``
returns fewer than c clusters (and the contract asks for exactly c).
"""

from __future__ import annotations

import numpy as np
from scipy.cluster.hierarchy import linkage
from scipy.spatial.distance import pdist

from consensus.ensemble import as_label_matrix, first_appearance_order, relabel_rows

__all__ = ["coassociation_average_linkage"]


def _cut_after_merges(merges: np.ndarray, num_points: int, n_clusters: int) -> np.ndarray:
    """Labels of the N leaves after applying the first N - c rows of a scipy linkage matrix."""
    parent = np.arange(2 * num_points - 1)

    def find(node: int) -> int:
        root = node
        while parent[root] != root:
            root = parent[root]
        while parent[node] != root:  # path compression
            parent[node], node = root, parent[node]
        return root

    for row in range(num_points - n_clusters):
        new_node = num_points + row
        parent[find(int(merges[row, 0]))] = new_node
        parent[find(int(merges[row, 1]))] = new_node
    roots = np.array([find(i) for i in range(num_points)])
    return first_appearance_order(roots)


def coassociation_average_linkage(labels, n_clusters: int, *, seed: int = 0,
                                  max_points: int = 20_000) -> np.ndarray:
    """Co-association consensus with average linkage (docs/methods/divclust.md).

    Args:
        labels: [C, N] integer labels (LongTensor or ndarray); any integers per row.
        n_clusters: number of consensus clusters c.
        seed: unused (the linkage is deterministic); accepted for a uniform interface.
        max_points: refuse N above this (the condensed N x N distance matrix would not fit).

    Returns:
        [N] int64 labels 0..c-1 in first-appearance order. C == 1 returns that clustering renumbered.
    """
    del seed
    label_matrix = as_label_matrix(labels, n_clusters)
    num_clusterings, num_points = label_matrix.shape
    if num_points > max_points:
        raise ValueError(
            f"coassociation_average_linkage needs an N x N distance matrix: N={num_points} is above "
            f"max_points={max_points} (~{8 * num_points * (num_points - 1) / 1e9:.1f} GB at peak); use "
            "method 'hbgf' or 'sccbg' for large N, or raise max_points if the memory is there"
        )
    if num_clusterings == 1:
        return first_appearance_order(label_matrix[0])
    if num_points == 1:
        return np.zeros(1, dtype=np.int64)
    codes, _ = relabel_rows(label_matrix)
    distance = pdist(codes.T, metric="hamming")  # 1 - co-association, condensed [N (N - 1) / 2]
    merges = linkage(distance, method="average")
    del distance
    return _cut_after_merges(merges, num_points, n_clusters)
