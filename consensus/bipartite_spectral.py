"""HBGF: hybrid bipartite graph formulation (Fern & Brodley, ICML 2004), spectral variant.

Implements docs/methods/divclust.md: the points and all base clusters form a bipartite graph
B [N, v] (v = total number of base clusters); its normalised form S~ = D1^{-1/2} B D2^{-1/2} (D1 = C I,
D2 = cluster sizes) is embedded with the top-c eigenvectors of the small v x v matrix S~^T S~ (so the
N x N cluster-size-weighted co-association B D2^{-1} B^T / C is never formed), rows are L2-normalised
(Ng-Jordan-Weiss) and k-means (k-means++, 10 restarts, ``seed``) splits them into c clusters.
Time O(N v^2 + v^3 + k-means), memory O(N v).
"""

from __future__ import annotations

import contextlib

import numpy as np
from sklearn.cluster import KMeans
from threadpoolctl import threadpool_limits

from consensus.ensemble import as_label_matrix, first_appearance_order, incidence_matrix, relabel_rows

__all__ = ["hbgf"]

# k-means on at most this many embedding entries (N * c) runs single-threaded: for such sizes OpenMP
# synchronisation costs more than it saves, badly so on a small machine shared with other jobs.
_SINGLE_THREAD_MAX_ENTRIES = 1 << 17


def hbgf(labels, n_clusters: int, *, seed: int = 0) -> np.ndarray:
    """Bipartite spectral consensus (docs/methods/divclust.md).

    Args:
        labels: [C, N] integer labels (LongTensor or ndarray); any integers per row.
        n_clusters: number of consensus clusters c.
        seed: k-means seed (k-means++ init, 10 restarts).

    Returns:
        [N] int64 labels 0..c-1 in first-appearance order (fewer than c only if the embedding has fewer
        than c distinct points). C == 1 returns that clustering renumbered.
    """
    label_matrix = as_label_matrix(labels, n_clusters)
    num_clusterings, num_points = label_matrix.shape
    if num_clusterings == 1:
        return first_appearance_order(label_matrix[0])
    codes, sizes = relabel_rows(label_matrix)
    incidence = incidence_matrix(codes, sizes)  # B [N, v], sparse
    cluster_sizes = np.asarray(incidence.sum(axis=0)).reshape(-1)  # D2 diagonal [v]
    column_scale = 1.0 / np.sqrt(num_clusterings * cluster_sizes)  # D1^{-1/2} = I / sqrt(C), D2^{-1/2}
    # S~^T S~ = D2^{-1/2} B^T B D2^{-1/2} / C  [v, v]
    co_occurrence = np.asarray((incidence.T @ incidence).todense(), dtype=np.float64)
    gram = column_scale[:, None] * co_occurrence * column_scale[None, :]
    gram = (gram + gram.T) / 2
    eigenvalues, eigenvectors = np.linalg.eigh(gram)  # ascending
    order = np.argsort(-eigenvalues, kind="stable")[: min(n_clusters, eigenvalues.size)]
    top_values, top_vectors = eigenvalues[order], eigenvectors[:, order]  # [c], [v, c]
    # U = S~ V diag(e)^{-1/2}  [N, c]
    embedding = incidence @ (column_scale[:, None] * top_vectors)
    embedding = embedding / np.sqrt(np.clip(top_values, 1e-12, None))[None, :]
    norms = np.linalg.norm(embedding, axis=1, keepdims=True)
    embedding = embedding / np.maximum(norms, 1e-12)
    kmeans = KMeans(n_clusters=n_clusters, init="k-means++", n_init=10, random_state=int(seed))
    small = embedding.size <= _SINGLE_THREAD_MAX_ENTRIES
    with threadpool_limits(limits=1) if small else contextlib.nullcontext():
        assignment = kmeans.fit_predict(embedding)
    return first_appearance_order(assignment)
