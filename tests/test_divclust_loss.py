"""DivClust loss and threshold mechanism (docs/methods/divclust.md)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import normalized_mutual_info_score

from losses.divclust import (
    clustering_similarity,
    divclust_loss,
    divclust_step,
    update_label_bank,
    update_threshold,
)


def _random_assignments(clusterings: int, samples: int, clusters: int, *, seed: int = 0,
                        dtype: torch.dtype = torch.float64, sharpness: float = 2.0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    logits = sharpness * torch.randn(clusterings, samples, clusters, generator=generator, dtype=torch.float64)
    return torch.softmax(logits, dim=-1).to(dtype)


def _loop_similarity(p: np.ndarray) -> np.ndarray:
    """s_ab by explicit loops: columns normalised over samples, mean over a's clusters of the best cosine
    with b's clusters; zero diagonal."""
    clusterings, samples, clusters = p.shape
    columns = [[None] * clusters for _ in range(clusterings)]
    for a in range(clusterings):
        for i in range(clusters):
            norm = math.sqrt(sum(p[a, n, i] ** 2 for n in range(samples)))
            columns[a][i] = [p[a, n, i] / max(norm, 1e-12) for n in range(samples)]
    out = np.zeros((clusterings, clusterings))
    for a in range(clusterings):
        for b in range(clusterings):
            if a == b:
                continue
            total = 0.0
            for i in range(clusters):
                best = -math.inf
                for j in range(clusters):
                    cosine = sum(columns[a][i][n] * columns[b][j][n] for n in range(samples))
                    best = max(best, cosine)
                total += best
            out[a, b] = total / clusters
    return out


def _loop_loss(p: np.ndarray, threshold: float) -> float:
    s = _loop_similarity(p)
    return sum(max(0.0, s[a, b] - threshold) for a in range(len(s)) for b in range(len(s)) if a != b)


# ----------------------------------------------------------------------------------------------- similarity


def test_similarity_hand_computed_two_by_two():
    # Clustering 0 puts sample 0 in cluster 0 and sample 1 in cluster 1; clustering 1 puts both in cluster 0
    # (its cluster 1 is empty). Normalised columns: c0 = (1,0), (0,1); c1 = (1,1)/sqrt2, (0,0).
    p = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [1.0, 0.0]]], dtype=torch.float64)
    s = clustering_similarity(p)
    r = 1 / math.sqrt(2)
    # s_01: each cluster of 0 best-matches (1,1)/sqrt2 with cosine 1/sqrt2 -> mean 1/sqrt2.
    # s_10: the full cluster matches either cluster of 0 with 1/sqrt2; the empty one contributes 0.
    expected = torch.tensor([[0.0, r], [r / 2, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(s, expected, rtol=0, atol=1e-15)
    # Hinge at d = 0.5: only the (0, 1) pair is above the threshold.
    assert divclust_loss(p, threshold=0.5).item() == pytest.approx(r - 0.5, abs=1e-15)


@pytest.mark.parametrize("shape", [(2, 5, 3), (3, 7, 4), (4, 6, 2)])
def test_similarity_matches_explicit_loops(shape):
    p = _random_assignments(*shape, seed=sum(shape))
    np.testing.assert_allclose(clustering_similarity(p).numpy(), _loop_similarity(p.numpy()), rtol=0, atol=1e-12)


def test_similarity_is_asymmetric_and_uses_batch_axis_normalisation():
    p = _random_assignments(3, 9, 4, seed=3)
    s = clustering_similarity(p)
    assert not torch.allclose(s, s.T)  # both orders are kept and differ
    # Rescaling one cluster column (over the samples) is invisible after column normalisation, whereas a
    # normalisation over clusters (rows) would change the value.
    scaled = p.clone()
    scaled[1, :, 2] *= 3.0
    torch.testing.assert_close(clustering_similarity(scaled), s, rtol=0, atol=1e-12)


def test_loss_is_sum_over_ordered_pairs_not_divided_by_c():
    p = _random_assignments(4, 8, 3, seed=11)
    for threshold in (0.0, 0.3, 0.6, 0.9):
        expected = _loop_loss(p.numpy(), threshold)
        assert divclust_loss(p, threshold=threshold).item() == pytest.approx(expected, abs=1e-12)
    # With d = 0 every one of the C(C-1) = 12 ordered pairs contributes s_ab.
    s = _loop_similarity(p.numpy())
    assert divclust_loss(p, threshold=0.0).item() == pytest.approx(s.sum(), abs=1e-12)


def test_gradcheck_float64():
    p = _random_assignments(3, 6, 4, seed=5).requires_grad_(True)
    s = clustering_similarity(p.detach())
    pairs = s[~torch.eye(3, dtype=torch.bool)].sort().values
    threshold = float(pairs[2] + pairs[3]) / 2  # half of the pairs above, half below (away from the kink)
    assert torch.autograd.gradcheck(lambda x: divclust_loss(x, threshold=threshold), (p,), eps=1e-6, atol=1e-7)
    assert torch.autograd.gradcheck(clustering_similarity, (p,), eps=1e-6, atol=1e-7)


def test_gradient_flows_only_through_active_pairs():
    p = _random_assignments(2, 10, 3, seed=8).requires_grad_(True)
    s = clustering_similarity(p.detach())
    above_both = float(s.max()) + 0.01
    (grad,) = torch.autograd.grad(divclust_loss(p, threshold=above_both), p, allow_unused=True)
    assert grad is None or torch.count_nonzero(grad) == 0
    (grad,) = torch.autograd.grad(divclust_loss(p, threshold=0.0), p)
    assert torch.count_nonzero(grad) > 0


def test_float32_matches_float64():
    p64 = _random_assignments(5, 32, 6, seed=2)
    for threshold in (0.2, 0.5):
        l64 = divclust_loss(p64, threshold=threshold)
        l32 = divclust_loss(p64.float(), threshold=threshold)
        assert l32.dtype == torch.float32
        assert l32.item() == pytest.approx(l64.item(), rel=1e-5, abs=1e-5)


def test_half_precision_is_computed_in_float32():
    p = _random_assignments(3, 16, 4, seed=4)
    loss = divclust_loss(p.half(), threshold=0.2)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(divclust_loss(p, threshold=0.2).item(), abs=5e-3)


def test_exact_zero_for_single_clustering_and_threshold_one():
    single = _random_assignments(1, 8, 3).requires_grad_(True)
    loss = divclust_loss(single, threshold=0.0)
    assert loss.item() == 0.0
    assert torch.autograd.grad(loss, single, allow_unused=True)[0] is None
    # Identical clusterings: s_ab = 1 up to rounding, so without the short-circuit threshold 1 could give a
    # tiny positive loss; it must be an exact zero with no path to the inputs.
    same = _random_assignments(1, 8, 3).repeat(3, 1, 1).requires_grad_(True)
    loss = divclust_loss(same, threshold=1.0)
    assert loss.item() == 0.0
    assert torch.autograd.grad(loss, same, allow_unused=True)[0] is None
    loss.backward()  # harmless on its own, like the official zero


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match=r"\[C, N, K\]"):
        divclust_loss(torch.rand(4, 3), threshold=0.5)
    with pytest.raises(ValueError, match="floating"):
        clustering_similarity(torch.ones(2, 3, 4, dtype=torch.int64))
    with pytest.raises(ValueError):
        update_label_bank(torch.zeros(3, 2, dtype=torch.int64), torch.zeros(2, 5, dtype=torch.int64), bank_size=10)


# ----------------------------------------------------------------------------------------------- threshold


def test_update_threshold_rules():
    assert update_threshold(0.5, 0.9, target=0.8) == pytest.approx(0.5 * 0.99)
    assert update_threshold(0.5, 0.7, target=0.8) == pytest.approx(0.5 * 1.01)
    assert update_threshold(0.5, 0.8, target=0.8) == pytest.approx(0.5 * 1.01)  # equality raises d
    assert update_threshold(1.0, 0.1, target=0.8) == 1.0  # clipped at 1
    assert update_threshold(0.995, 0.1, target=0.8) == 1.0
    assert update_threshold(0.4, 0.1, target=0.8, rate=2.5) == 0.0  # clipped at 0
    assert update_threshold(0.5, 0.9, target=0.8, rate=0.9) == pytest.approx(0.45)
    result = update_threshold(torch.tensor(0.5), torch.tensor(0.9, dtype=torch.float64), target=0.8)
    assert isinstance(result, float) and result == pytest.approx(0.495)


def test_label_bank_newest_first_and_truncated():
    bank = torch.empty(2, 0, dtype=torch.int64)
    batches = [torch.tensor([[1, 2, 3], [4, 5, 6]]), torch.tensor([[7, 8], [9, 10]]), torch.tensor([[11], [12]])]
    history: list[list[int]] = [[], []]
    for batch in batches:
        bank = update_label_bank(bank, batch, bank_size=4)
        for c in range(2):
            history[c] = batch[c].tolist() + history[c]
        assert bank.dtype == torch.int64
        assert bank.tolist() == [h[:4] for h in history]
    assert bank.tolist() == [[11, 7, 8, 1], [12, 9, 10, 4]]  # oldest labels (2, 3 / 5, 6) dropped
    # A batch larger than the bank keeps only its first bank_size labels.
    assert update_label_bank(bank, torch.arange(10).view(2, 5), bank_size=3).tolist() == [[0, 1, 2], [5, 6, 7]]
    assert update_label_bank(None, torch.tensor([[1], [2]]), bank_size=5).tolist() == [[1], [2]]


# ------------------------------------------------------------------------------------------------ step


def _one_hot_heads(labels: torch.Tensor, clusters: int, confidence: float = 0.9) -> torch.Tensor:
    """[C, N] labels -> [C, N, K] soft assignments whose argmax is the label."""
    rest = (1 - confidence) / (clusters - 1)
    p = torch.full((*labels.shape, clusters), rest, dtype=torch.float64)
    p.scatter_(-1, labels.unsqueeze(-1), confidence)
    return p


def test_step_interval_and_update_before_loss():
    generator = torch.Generator().manual_seed(0)
    shared = torch.randint(0, 4, (16,), generator=generator)
    agreeing = _one_hot_heads(shared.repeat(3, 1), 4)  # three identical heads: bank NMI = 1 > target
    bank, threshold = torch.empty(3, 0, dtype=torch.int64), 1.0
    thresholds, losses = [], []
    for step in range(7):
        loss, threshold, bank = divclust_step(agreeing, bank, threshold, step=step, target=0.8, interval=3,
                                              bank_size=40)
        thresholds.append(threshold)
        losses.append(loss.item())
    d1, d2, d3 = 0.99, 0.99**2, 0.99**3
    assert thresholds == pytest.approx([d1, d1, d1, d2, d2, d2, d3])
    assert bank.shape == (3, 40)
    # The loss of step 0 already uses the threshold updated at step 0: identical heads have s_ab = 1 for all
    # 6 ordered pairs, so L = 6 * (1 - 0.99).
    assert losses[0] == pytest.approx(6 * (1 - d1), abs=1e-9)
    assert losses[6] == pytest.approx(6 * (1 - d3), abs=1e-9)


def test_step_measures_the_bank_not_the_batch():
    generator = torch.Generator().manual_seed(1)
    history = torch.randint(0, 5, (500,), generator=generator).repeat(2, 1)  # two heads that always agreed
    batch_labels = torch.randint(0, 5, (2, 6), generator=generator)  # this batch alone: low agreement
    batch = _one_hot_heads(batch_labels, 5)
    batch_nmi = normalized_mutual_info_score(batch_labels[0].numpy(), batch_labels[1].numpy())
    assert batch_nmi < 0.8
    _, threshold, bank = divclust_step(batch, history, 0.7, step=0, target=0.8, bank_size=10_000)
    bank_nmi = normalized_mutual_info_score(bank[0].numpy(), bank[1].numpy())
    assert bank_nmi > 0.8
    assert threshold == pytest.approx(0.7 * 0.99)  # decreased: the bank's NMI is above the target


def test_step_with_disagreeing_heads_keeps_threshold_at_one_and_zero_loss():
    generator = torch.Generator().manual_seed(2)
    labels = torch.randint(0, 6, (4, 200), generator=generator)  # independent heads: NMI ~ 0.02
    p = _one_hot_heads(labels, 6).requires_grad_(True)
    loss, threshold, bank = divclust_step(p, None, 1.0, step=0, target=0.8)
    assert threshold == 1.0 and loss.item() == 0.0
    assert torch.autograd.grad(loss, p, allow_unused=True)[0] is None
    assert bank.tolist() == labels.tolist()


def test_step_disabled_leaves_state_untouched():
    bank = torch.zeros(3, 5, dtype=torch.int64)
    p = _random_assignments(3, 8, 4)
    loss, threshold, out_bank = divclust_step(p, bank, 0.7, step=0, target=1.0)
    assert loss.item() == 0.0 and threshold == 0.7 and out_bank is bank
    single_bank = torch.zeros(1, 5, dtype=torch.int64)
    loss, threshold, out_bank = divclust_step(_random_assignments(1, 8, 4), single_bank, 0.7, step=0, target=0.5)
    assert loss.item() == 0.0 and threshold == 0.7 and out_bank is single_bank


def test_step_gradient_matches_loss_gradient():
    p = _random_assignments(3, 12, 4, seed=9).requires_grad_(True)
    loss, threshold, _ = divclust_step(p, None, 0.3, step=1, target=0.5)  # no update at step 1
    assert threshold == 0.3
    (g_step,) = torch.autograd.grad(loss, p)
    (g_loss,) = torch.autograd.grad(divclust_loss(p, threshold=0.3), p)
    torch.testing.assert_close(g_step, g_loss)
