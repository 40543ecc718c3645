"""Consensus clustering: combine C clusterings of the same N points into one (docs/methods/divclust.md).

Every function takes ``labels`` [C, N] (integer LongTensor or ndarray, any integers per row) and
``n_clusters`` and returns an int64 ndarray [N] with labels 0..c'-1 in first-appearance order:

- ``sccbg``: Self-paced Consensus Clustering with Bipartite Graph (default; what DivClust used);
- ``hbgf``: bipartite spectral consensus (fast baseline, O(N v^2));
- ``coassociation_average_linkage`` (alias ``coassoc``): evidence accumulation, O(N^2) memory.

``run_consensus`` picks one by name (the ``consensus.method`` config key).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from consensus.coassociation import coassociation_average_linkage
from consensus.bipartite_spectral import hbgf
from consensus.self_paced_bipartite import sccbg

__all__ = ["sccbg", "hbgf", "coassociation_average_linkage", "run_consensus", "CONSENSUS_METHODS"]

CONSENSUS_METHODS: dict[str, Callable[..., np.ndarray]] = {
    "sccbg": sccbg,
    "hbgf": hbgf,
    "coassociation_average_linkage": coassociation_average_linkage,
    "coassoc": coassociation_average_linkage,
}


def run_consensus(labels, n_clusters: int, *, method: str = "sccbg", seed: int = 0, **kwargs) -> np.ndarray:
    """Run the consensus method named ``method`` on ``labels`` [C, N]; extra keyword arguments go to it
    (e.g. ``gamma``/``device`` for sccbg, ``max_points`` for the co-association). -> [N] int64 labels."""
    try:
        function = CONSENSUS_METHODS[method]
    except (KeyError, TypeError):
        valid = ", ".join(repr(name) for name in CONSENSUS_METHODS)
        raise ValueError(f"unknown consensus method {method!r}; valid methods: {valid}") from None
    return function(labels, n_clusters, seed=seed, **kwargs)
