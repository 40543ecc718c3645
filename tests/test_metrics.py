"""metrics: reference values of docs/torch_clustering.md, rectangular Hungarian ACC against brute force, and the
torch NMI / ARI / contingency matrix against scikit-learn and explicit counting."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from metrics import (ari, ari_torch, cluster_acc, contingency_matrix, evaluate_clustering, nmi, nmi_torch)


def _r1000() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.RandomState(0)
    y = rng.randint(0, 10, 1000)
    noise = rng.rand(1000) < 0.7  # arguments evaluated left to right, as written
    p = np.where(noise, (y + 3) % 10, rng.randint(0, 10, 1000))
    return y, p


@pytest.mark.parametrize("y, pred, expected", [
    ([0, 0, 0, 1, 1, 1, 2, 2, 2, 2], [2, 2, 2, 0, 0, 1, 1, 1, 1, 1],
     {"nmi": 0.79176567, "acc": 0.9, "ari": 0.67625899}),
    (*_r1000(), {"nmi": 0.46000933, "acc": 0.698, "ari": 0.44083384}),
    # the reference reports ACC 0.0 here (2 clusters for 3 classes); the rectangular Hungarian gives 4/6
    ([0, 0, 1, 1, 2, 2], [0, 0, 1, 1, 1, 1], {"nmi": 0.73368044, "acc": 4 / 6, "ari": 0.44444444}),
])
def test_reference_values_of_evaluate_clustering(y, pred, expected):
    got = evaluate_clustering(y, pred)
    assert set(got) == {"acc", "nmi", "ari"}
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, abs=5e-8)


def _brute_force_acc(y: np.ndarray, p: np.ndarray) -> float:
    """Best accuracy over every one-to-one map of cluster values to class values (explicit enumeration)."""
    classes, clusters = np.unique(y), np.unique(p)
    best = 0
    if len(clusters) <= len(classes):
        maps = (dict(zip(clusters, perm)) for perm in itertools.permutations(classes, len(clusters)))
    else:  # more clusters than classes: each class receives at most one cluster
        maps = (dict(zip(chosen, classes)) for chosen in itertools.permutations(clusters, len(classes)))
    for mapping in maps:
        best = max(best, sum(int(mapping.get(pi, -10**9) == yi) for yi, pi in zip(y, p)))
    return best / len(y)


def test_rectangular_hungarian_acc_equals_brute_force():
    rng = np.random.RandomState(1)
    for n_classes, n_clusters in [(3, 3), (4, 2), (2, 4), (5, 3), (3, 5)]:
        for _ in range(4):
            y = rng.randint(0, n_classes, 25)
            p = rng.randint(0, n_clusters, 25) * 7 + 3  # arbitrary cluster ids
            assert cluster_acc(y, p) == pytest.approx(_brute_force_acc(y, p))


def test_unknown_labels_are_ignored_and_no_labels_gives_none():
    y, p = _r1000()
    base = evaluate_clustering(y, p)
    y_more = np.concatenate([y, -np.ones(200, dtype=np.int64)])
    p_more = np.concatenate([p, np.random.RandomState(2).randint(0, 10, 200)])
    assert evaluate_clustering(y_more, p_more) == base
    assert evaluate_clustering(torch.tensor(y_more), torch.tensor(p_more)) == base
    assert evaluate_clustering(None, p) is None
    assert evaluate_clustering(-np.ones(5, dtype=np.int64), np.arange(5)) is None


def test_reference_metrics_reject_bad_input():
    with pytest.raises(ValueError, match="same length"):
        evaluate_clustering([0, 1, 2], [0, 1])
    with pytest.raises(ValueError, match="1-D"):
        nmi(np.zeros((2, 2)), np.zeros((2, 2)))
    with pytest.raises(ValueError, match="integer"):
        ari([0.5, 1.0], [0, 1])


def _labelling_pairs():
    rng = np.random.RandomState(3)
    yield np.array([0, 0, 1, 1]), np.array([0, 0, 1, 1])              # identical
    yield np.array([0, 0, 1, 1]), np.array([1, 1, 0, 0])              # renamed
    yield np.array([0, 1, 2, 3]), np.array([0, 0, 0, 0])              # one cluster
    yield np.array([5, 5, 5, 5]), np.array([2, 2, 2, 2])              # both constant
    yield np.array([0, 1, 0, 1]), np.array([0, 0, 1, 1])              # independent
    yield np.array([0]), np.array([3])                                # one sample
    for n, a, b in [(50, 3, 7), (500, 10, 10), (2000, 20, 5), (1000, 2, 40)]:
        y = rng.randint(0, a, n)
        p = np.where(rng.rand(n) < 0.6, (y * 3) % b, rng.randint(0, b, n))
        yield y, p


@pytest.mark.parametrize("pair_index", range(10))
def test_torch_nmi_and_ari_equal_sklearn(pair_index):
    y, p = list(_labelling_pairs())[pair_index]
    ty, tp = torch.tensor(y), torch.tensor(p)
    expected_nmi = normalized_mutual_info_score(y, p, average_method="arithmetic")
    expected_ari = adjusted_rand_score(y, p)
    got_nmi, got_ari = nmi_torch(ty, tp), ari_torch(ty, tp)
    assert got_nmi.dtype == torch.float64 and got_nmi.dim() == 0
    assert abs(float(got_nmi) - expected_nmi) <= 1e-6
    assert abs(float(got_ari) - expected_ari) <= 1e-6
    # explicit sizes (no host sync), larger than needed: unused values do not change the scores
    num_y, num_p = int(y.max()) + 3, int(p.max()) + 2
    assert abs(float(nmi_torch(ty, tp, num_y, num_p)) - expected_nmi) <= 1e-6
    assert abs(float(ari_torch(ty, tp, num_y, num_p)) - expected_ari) <= 1e-6


def test_contingency_matrix_counts_pairs_and_skips_unknown():
    a = torch.tensor([0, 2, 2, 1, 0, -1, 2, 0])
    b = torch.tensor([1, 1, 0, 3, 1, 2, 1, 0])
    table = contingency_matrix(a, b)
    expected = torch.zeros(3, 4, dtype=torch.float64)
    for ai, bi in zip(a.tolist(), b.tolist()):
        if ai >= 0 and bi >= 0:
            expected[ai, bi] += 1
    assert torch.equal(table, expected)
    assert torch.equal(contingency_matrix(a, b, 4, 5)[:3, :4], expected)
    # NMI / ARI with unknown ground truth equal the scores on the known samples only
    known = a >= 0
    assert float(nmi_torch(a, b)) == pytest.approx(normalized_mutual_info_score(a[known], b[known]), abs=1e-12)
    assert float(ari_torch(a, b)) == pytest.approx(adjusted_rand_score(a[known], b[known]), abs=1e-12)


def test_torch_metrics_reject_bad_input():
    with pytest.raises(ValueError, match="same length"):
        nmi_torch(torch.tensor([0, 1, 2]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="integer labels"):
        ari_torch(torch.tensor([0.0, 1.0]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="1-D"):
        contingency_matrix(torch.zeros(2, 2, dtype=torch.long), torch.zeros(2, 2, dtype=torch.long))
