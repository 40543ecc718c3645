"""Kingdra's graph pseudo-labels, alignment, balanced set, ensemble prediction and ACC (docs/methods/kingdra.md)."""
import itertools

import numpy as np
import pytest
import torch

from losses.kingdra import (_munkres_square, align_pseudo_labels, balanced_pseudo_label_set, cluster_acc,
                            ensemble_predict, kingdra_pseudo_labels)


def probs_from_ids(ids, k, *, top=0.95, unconfident=()):
    """(M, N, K) probabilities whose argmax is ids[m][i]; the points in `unconfident` (member, point) get a top
    probability of 0.6 instead of `top`."""
    ids = np.asarray(ids)
    m, n = ids.shape
    p = np.full((m, n, k), 0.0)
    for a in range(m):
        for i in range(n):
            hi = 0.6 if (a, i) in unconfident else top
            p[a, i, :] = (1 - hi) / (k - 1)
            p[a, i, ids[a, i]] = hi
    return torch.tensor(p, dtype=torch.float64)


def reference_pseudo_labels(probs, t_low, t_high, thresh):
    """The documented list algorithm written out literally, with the official sequential cleanup pass."""
    p = probs.numpy()
    m, n, k = p.shape
    ids = p.argmax(-1)
    conf = [all(p[a, i].max() > thresh for a in range(m)) for i in range(n)]
    agree = [[int((ids[:, i] == ids[:, j]).sum()) for j in range(n)] for i in range(n)]
    high = [[j for j in range(n) if agree[i][j] > t_high] if conf[i] else [] for i in range(n)]
    low = [[j for j in range(n) if agree[i][j] > t_low] for i in range(n)]
    labels = [-1] * n
    for group in range(k):
        degrees = [len(h) for h in high]
        if max(degrees) == 0:
            break
        seed = degrees.index(max(degrees))
        members = list(high[seed])
        for t in members:
            for j in low[t]:
                high[j] = []
        for i in range(n):
            high[i] = [j for j in high[i] if len(high[j]) > 0]
        for t in members:
            labels[t] = group
    return labels


# A graph whose answer is known: points 0-2 share the prediction (0,0,0), 3-5 share (1,1,1), point 6 is (0,1,1);
# point 1 is unconfident in member 2.
KNOWN_IDS = [[0, 0, 0, 1, 1, 1, 0],
             [0, 0, 0, 1, 1, 1, 1],
             [0, 0, 0, 1, 1, 1, 1]]


def test_known_graph_first_group_keeps_an_unconfident_member():
    probs = probs_from_ids(KNOWN_IDS, 3, unconfident={(2, 1)})
    labels = kingdra_pseudo_labels(probs, t_low=1, t_high=2, thresh=0.9)
    # H[0] = {0,1,2} (only the seed's confidence is checked, so 1 is in); group 0 removes 0-2; group 1 = {3,4,5}
    # removes 6 too, because 6 agrees with 3 in two members (> t_low = 1): no third group.
    assert labels.tolist() == [0, 0, 0, 1, 1, 1, -1]
    # With t_low = 2, 6 is not negatively linked to the second group and becomes a group of its own.
    assert kingdra_pseudo_labels(probs, t_low=2, t_high=2, thresh=0.9).tolist() == [0, 0, 0, 1, 1, 1, 2]
    # A "both endpoints confident" reading would have left point 1 out; a >= reading of t_high = 3 would group.
    assert kingdra_pseudo_labels(probs, t_low=1, t_high=3, thresh=0.9).tolist() == [-1] * 7


def test_known_graph_later_groups_hold_only_confident_points():
    # Point 4 unconfident: the first group (largest list, smallest index) is {0,1,2}; the second group's seed is 3
    # and, after the cleanup, 4 (whose own list is empty) is no longer in it.
    probs = probs_from_ids(KNOWN_IDS, 3, unconfident={(0, 4)})
    assert kingdra_pseudo_labels(probs, t_low=2, t_high=2, thresh=0.9).tolist() == [0, 0, 0, 1, -1, 1, 2]
    # thresh = 0: every point is confident.
    assert kingdra_pseudo_labels(probs, t_low=2, t_high=2, thresh=0.0).tolist() == [0, 0, 0, 1, 1, 1, 2]


def test_seed_is_the_smallest_index_among_the_largest_lists():
    ids = [[1, 1, 0, 0, 2], [1, 1, 0, 0, 2]]      # two groups of size 2, the one holding point 0 goes first
    labels = kingdra_pseudo_labels(probs_from_ids(ids, 3), t_low=0, t_high=1, thresh=0.0)
    # lists: {0,1}, {0,1}, {2,3}, {2,3}, {4}; points of different groups agree in 0 members (not > t_low = 0)
    assert labels.tolist() == [0, 0, 1, 1, 2]


def random_ensemble(rng, m, n, k, flip):
    truth = rng.integers(0, k, n)
    ids = np.stack([np.where(rng.random(n) < flip, rng.integers(0, k, n), rng.permutation(k)[truth])
                    for _ in range(m)])
    logits = rng.normal(size=(m, n, k))
    logits[np.arange(m)[:, None], np.arange(n)[None, :], ids] += rng.uniform(0.5, 4.0, size=(m, n))
    return torch.softmax(torch.tensor(logits), -1)


def random_case(case):
    rng = np.random.default_rng(case)
    m, n, k = [(5, 60, 4), (4, 50, 3), (6, 70, 5)][case % 3]
    probs = random_ensemble(rng, m, n, k, flip=[0.1, 0.3][case % 2])
    t_low = int(rng.integers(0, 3))
    t_high = int(rng.integers(m - 3, m))
    thresh = [0.0, 0.5, 0.7][case % 3]
    return probs, t_low, t_high, thresh


@pytest.mark.parametrize("case", range(12))
def test_matches_the_literal_list_algorithm_on_random_ensembles(case):
    probs, t_low, t_high, thresh = random_case(case)
    expected = reference_pseudo_labels(probs, t_low, t_high, thresh)
    got = kingdra_pseudo_labels(probs, t_low=t_low, t_high=t_high, thresh=thresh)
    assert got.tolist() == expected
    assert kingdra_pseudo_labels(probs.float(), t_low=t_low, t_high=t_high, thresh=thresh).tolist() == expected


def test_random_cases_exercise_the_traps():
    # guard: the random cases above contain first groups with unconfident members, later groups, and groups of
    # points whose predictions differ (t_high < M - 1), so a symmetric or same-signature-only reading would fail
    unconfident_in_first = later_groups = mixed_signatures = False
    for case in range(12):
        probs, t_low, t_high, thresh = random_case(case)
        labels = torch.tensor(reference_pseudo_labels(probs, t_low, t_high, thresh))
        unconfident = ~(probs.amax(-1) > thresh).all(0)
        unconfident_in_first |= bool((unconfident & (labels == 0)).any())
        later_groups |= bool((labels >= 1).any())
        ids = probs.argmax(-1).t()
        for g in range(int(labels.max()) + 1):
            mixed_signatures |= len(torch.unique(ids[labels == g], dim=0)) > 1
    assert unconfident_in_first and later_groups and mixed_signatures


def test_pseudo_labels_bad_input():
    with pytest.raises(ValueError, match=r"\(M, N, K\)"):
        kingdra_pseudo_labels(torch.rand(4, 3))


# ------------------------------------------------------------------------------------------ alignment

def test_align_renames_groups_to_the_model_ids():
    pseudo = torch.tensor([0, 0, 1, 1, -1, 2])
    model = torch.tensor([2, 2, 0, 1, 1, 1])
    # W[model id, group]: group 0 -> id 2 (2 points), group 1 -> id 0 or 1 (1 each), group 2 -> id 1
    assert align_pseudo_labels(pseudo, model).tolist() == [2, 2, 0, 0, -1, 1]


def test_align_breaks_ties_as_the_official_hungarian():
    # W (rows: model ids 0..3, columns: groups 0..3) = [[3,1,0,0],[0,0,0,0],[0,0,0,0],[0,0,2,0]]: group 1 can go
    # to id 1 or id 2 at equal weight. Munkres in scikit-learn 0.20's order (worked by hand) matches
    # id0-g0, id1-g3, id2-g1, id3-g2, so group 1 becomes id 2; scipy's solver picks id 1.
    pseudo = torch.tensor([0, 0, 0, 1, 2, 2])
    model = torch.tensor([0, 0, 0, 0, 3, 3])
    assert align_pseudo_labels(pseudo, model).tolist() == [0, 0, 0, 2, 3, 3]


def test_munkres_is_optimal():
    from scipy.optimize import linear_sum_assignment

    rng = np.random.default_rng(0)
    for size in range(1, 8):
        for _ in range(20):
            cost = rng.integers(0, 4, (size, size))
            cols = _munkres_square(cost)
            assert sorted(cols.tolist()) == list(range(size))
            r, c = linear_sum_assignment(cost)
            assert cost[np.arange(size), cols].sum() == cost[r, c].sum()


def test_align_keeps_unlabelled_and_checks_input():
    assert align_pseudo_labels(torch.tensor([-1, -1]), torch.tensor([3, 1])).tolist() == [-1, -1]
    with pytest.raises(ValueError, match="length"):
        align_pseudo_labels(torch.tensor([0, 1]), torch.tensor([0]))


# ---------------------------------------------------------------------------------------- balanced set

def test_balanced_set_round_robin_with_wrap_around():
    pseudo = torch.tensor([1, -1, 0, 1, 2, 0, 0, -1, 1])   # class 0: 2,5,6; class 1: 0,3,8; class 2: 4
    idx, y = balanced_pseudo_label_set(pseudo)
    assert y.tolist() == [0, 1, 2, 0, 1, 2, 0, 1, 2]
    assert idx.tolist() == [2, 0, 4, 5, 3, 4, 6, 8, 4]


def test_balanced_set_has_n_rows_and_near_equal_classes():
    rng = np.random.default_rng(3)
    pseudo = torch.tensor(rng.integers(-1, 4, 103))
    idx, y = balanced_pseudo_label_set(pseudo)
    assert len(idx) == 103
    counts = torch.bincount(y).tolist()
    assert counts == [26, 26, 26, 25]                        # the first N mod K classes get one more
    assert torch.equal(pseudo[idx], y)                       # every row's target is its point's class
    for c in range(4):                                       # members cycled in ascending order
        members = torch.nonzero(pseudo == c).flatten().tolist()
        taken = idx[y == c].tolist()
        assert taken == [members[r % len(members)] for r in range(len(taken))]


def test_balanced_set_needs_every_class():
    with pytest.raises(ValueError, match=r"classes \[1\]"):
        balanced_pseudo_label_set(torch.tensor([0, 2, 2, -1]))


# ------------------------------------------------------------------------------------ prediction, ACC

def test_ensemble_predict():
    probs = torch.tensor([[[0.6, 0.4], [0.1, 0.9]],
                          [[0.2, 0.8], [0.3, 0.7]]], dtype=torch.float64)
    assert ensemble_predict(probs).tolist() == [1, 1]       # mean [0.4, 0.6], [0.2, 0.8]
    assert ensemble_predict(probs, common_mapping=False).tolist() == [0, 1]


def test_cluster_acc_hand_case():
    y_true = torch.tensor([0, 0, 0, 1, 1, 2])
    y_pred = torch.tensor([1, 1, 0, 0, 0, 3])                # 1->0 (2), 0->1 (2), 3->2 (1): 5/6
    acc = cluster_acc(y_true, y_pred)
    assert acc.dtype == torch.float64 and acc.item() == pytest.approx(5 / 6)
    best = max(sum(int(p == perm[t]) for t, p in zip(y_true.tolist(), y_pred.tolist()))
               for perm in itertools.permutations(range(4)))
    assert acc.item() == pytest.approx(best / 6)
    with pytest.raises(ValueError):
        cluster_acc(torch.tensor([0, 1]), torch.tensor([0]))
