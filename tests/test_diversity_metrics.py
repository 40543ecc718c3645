"""Inter-clustering NMI (docs/methods/divclust.md) against scikit-learn and a hand computation."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
import torch
from sklearn.metrics import normalized_mutual_info_score

from metrics.diversity import inter_clustering_nmi, mean_inter_clustering_nmi


def _sklearn_matrix(labels: np.ndarray) -> np.ndarray:
    c = len(labels)
    return np.array([[normalized_mutual_info_score(labels[a], labels[b]) for b in range(c)] for a in range(c)])


def _loop_nmi(x: list[int], y: list[int]) -> float:
    """NMI with arithmetic normalisation from explicit counts (no limit cases needed for this input)."""
    n = len(x)
    joint, cx, cy = Counter(zip(x, y)), Counter(x), Counter(y)
    mi = sum(nxy / n * math.log(n * nxy / (cx[a] * cy[b])) for (a, b), nxy in joint.items())
    hx = -sum(k / n * math.log(k / n) for k in cx.values())
    hy = -sum(k / n * math.log(k / n) for k in cy.values())
    return mi / ((hx + hy) / 2)


def test_hand_computed_pairs():
    labels = np.array([
        [0, 0, 1, 1],
        [5, 5, 2, 2],  # a renaming of row 0
        [0, 1, 0, 1],  # independent of row 0
        [0, 0, 0, 1],
    ])
    m = inter_clustering_nmi(labels)
    assert m[0, 1] == pytest.approx(1.0, abs=1e-12)
    assert m[0, 2] == pytest.approx(0.0, abs=1e-12)
    assert m[0, 3] == pytest.approx(_loop_nmi([0, 0, 1, 1], [0, 0, 0, 1]), abs=1e-12)
    assert m[2, 3] == pytest.approx(_loop_nmi([0, 1, 0, 1], [0, 0, 0, 1]), abs=1e-12)
    np.testing.assert_allclose(np.diag(m), 1.0, atol=1e-12)
    np.testing.assert_array_equal(m, m.T)


@pytest.mark.parametrize("seed", range(6))
def test_matches_sklearn_on_random_labellings(seed):
    rng = np.random.default_rng(seed)
    clusterings, samples = int(rng.integers(2, 7)), int(rng.integers(5, 300))
    labels = np.stack([rng.integers(0, rng.integers(1, 12), samples) for _ in range(clusterings)])
    labels[0] = labels[0] * 7 - 3  # non-contiguous, negative ids
    if clusterings > 2:
        labels[2] = 4  # a constant labelling: NMI 0 against non-constant rows, 1 against a constant one
    m = inter_clustering_nmi(labels)
    assert m.dtype == np.float64 and m.shape == (clusterings, clusterings)
    np.testing.assert_allclose(m, _sklearn_matrix(labels), rtol=0, atol=1e-9)


def test_limit_cases_match_sklearn():
    constant = np.array([[1, 1, 1], [7, 7, 7], [0, 1, 2]])
    np.testing.assert_allclose(inter_clustering_nmi(constant), _sklearn_matrix(constant), atol=1e-12)
    assert inter_clustering_nmi(constant)[0, 1] == 1.0  # constant vs constant
    assert inter_clustering_nmi(constant)[0, 2] == 0.0  # constant vs non-constant
    empty = np.zeros((2, 0), dtype=np.int64)
    assert inter_clustering_nmi(empty)[0, 1] == normalized_mutual_info_score([], [])  # 1.0


def test_many_clusters_path_matches_sklearn():
    # K = 3000 clusters: the contingency tables are formed sparsely (K^2 is above the dense budget).
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 3000, size=(3, 4000))
    labels[1, :2000] = labels[0, :2000]
    np.testing.assert_allclose(inter_clustering_nmi(labels), _sklearn_matrix(labels), rtol=0, atol=1e-9)


def test_mean_matches_sklearn_and_tensor_input():
    rng = np.random.default_rng(7)
    base = rng.integers(0, 10, 2000)
    labels = np.stack([np.where(rng.random(2000) < 0.3, rng.integers(0, 10, 2000), base) for _ in range(6)])
    expected = np.mean([normalized_mutual_info_score(labels[a], labels[b]) for a in range(6) for b in range(a + 1, 6)])
    assert mean_inter_clustering_nmi(labels) == pytest.approx(expected, abs=1e-9)
    assert mean_inter_clustering_nmi(torch.from_numpy(labels)) == pytest.approx(expected, abs=1e-9)
    assert mean_inter_clustering_nmi(torch.from_numpy(labels).int()) == pytest.approx(expected, abs=1e-9)
    np.testing.assert_allclose(inter_clustering_nmi(torch.from_numpy(labels)), inter_clustering_nmi(labels), atol=0)


def test_mean_is_nan_for_one_clustering():
    assert math.isnan(mean_inter_clustering_nmi(np.array([[0, 1, 1, 0]])))
    np.testing.assert_array_equal(inter_clustering_nmi(np.array([[0, 1, 1, 0]])), [[1.0]])


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match=r"\[C, N\]"):
        inter_clustering_nmi(np.array([0, 1, 2]))
    with pytest.raises(ValueError, match="integer"):
        mean_inter_clustering_nmi(np.zeros((2, 4)))
    with pytest.raises(ValueError, match="integer"):
        inter_clustering_nmi(torch.zeros(2, 4))
    with pytest.raises(ValueError):
        inter_clustering_nmi([[0, 1], [1, 0]])
