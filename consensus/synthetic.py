"""The documented synthetic check for consensus clustering (docs/methods/divclust.md): noisy, renamed copies
of one planted labelling, where the right consensus is known. Used by the tests and ``scripts/bench_consensus.py``."""

from __future__ import annotations

import numpy as np


def planted_ensemble(num_points: int, num_clusters: int, num_clusterings: int, noise: float,
                     seed: int) -> tuple[np.ndarray, np.ndarray]:
    """-> (truth [N], labels [C, N]): C randomly renamed copies of a planted labelling, each with a
    fraction ``noise`` of the points moved to a uniformly random cluster."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, num_clusters, num_points)
    rows = []
    for _ in range(num_clusterings):
        row = rng.permutation(num_clusters)[truth]
        moved = rng.random(num_points) < noise
        row[moved] = rng.integers(0, num_clusters, int(moved.sum()))
        rows.append(row)
    return truth, np.stack(rows)
