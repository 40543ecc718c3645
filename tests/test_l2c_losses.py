"""L2C losses (losses/l2c.py) against hand-enumerated pairs and an independent per-pair reference of the official
semantics (docs/methods/l2c.md): all N^2 ordered pairs with self-pairs, 0 targets kept, eps inside, KCL target detached."""
import math

import pytest
import torch

from losses.l2c import (cluster_acc, kcl_loss, mcl_loss, pair_enum, pairwise_targets, spn_logits_to_simi,
                        spn_pair_loss)

EPS = 1e-7


def rand_prob(n, k, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(n, k, generator=g, dtype=dtype) * 2, dim=1)


# ----- an independent reference: one Python loop per ordered pair, as the official PairEnum orders them ----------
def pairs_in_official_order(n, mask=None):
    """(a, b) for k = a*N + b, row-major, keeping mask[a][b] != 0."""
    return [(a, b) for a in range(n) for b in range(n) if mask is None or mask[a][b] != 0]


def mcl_reference(prob, simi, mask=None):
    p, s = prob.tolist(), simi.tolist()
    terms = []
    for a, b in pairs_in_official_order(len(p), mask):
        inner = sum(x * y for x, y in zip(p[b], p[a]))
        big_p = inner * s[a][b] + (1.0 if s[a][b] == -1 else 0.0)
        terms.append(-math.log(big_p + EPS))
    return sum(terms) / len(terms)


def kl_reference(t, q):
    return sum((ti + EPS) * (math.log(ti + EPS) - math.log(qi + EPS)) for ti, qi in zip(t, q))


def kcl_reference(prob, simi, mask=None, margin=2.0):
    p, s = prob.tolist(), simi.tolist()
    terms = []
    for a, b in pairs_in_official_order(len(p), mask):
        kl = kl_reference(p[a], p[b])             # target p_a (row), prediction p_b (column)
        y = s[a][b]
        hinge = max(0.0, margin - kl)
        terms.append(kl if y == 1 else hinge if y == -1 else kl + hinge)
    return sum(terms) / len(terms)


def official_autograd_mcl(prob, simi_flat):
    """The official computation path (repeat-based pair enumeration, elementwise product) for gradient checks."""
    n = prob.shape[0]
    x1 = prob.repeat(n, 1)
    x2 = prob.repeat(1, n).view(-1, prob.shape[1])
    inner = (x1 * x2).sum(1)
    big_p = inner * simi_flat + (simi_flat == -1).to(prob.dtype)
    return -(big_p + EPS).log().mean()


def official_autograd_kcl(prob, simi_flat, margin=2.0):
    n = prob.shape[0]
    predict = prob.repeat(n, 1) + EPS
    target = prob.repeat(1, n).view(-1, prob.shape[1]).detach() + EPS
    kld = (target * (target.log() - predict.log())).sum(1)
    return torch.nn.functional.hinge_embedding_loss(kld, simi_flat, margin=margin)


# ----- pair enumeration and targets -------------------------------------------------------------------------------
def test_pair_enum_orders_pairs_row_major_with_self_pairs():
    x = torch.tensor([[10.0], [20.0], [30.0]])
    x1, x2 = pair_enum(x)
    assert x1.shape == (9, 1)
    for k, (a, b) in enumerate(pairs_in_official_order(3)):
        assert x1[k, 0] == x[b, 0] and x2[k, 0] == x[a, 0]          # x1 = x[b] (first operand), x2 = x[a]
    assert [tuple(r) for r in torch.cat([x2, x1], 1).tolist()][:4] == [(10, 10), (10, 20), (10, 30), (20, 10)]


def test_pair_enum_mask_keeps_row_major_order_any_dtype():
    x = torch.arange(6.0).view(3, 2)
    mask = [[0, 1, 1], [1, 0, 0], [0, 1, 0]]
    for m in (torch.tensor(mask), torch.tensor(mask, dtype=torch.bool), torch.tensor(mask, dtype=torch.float32) * 3):
        x1, x2 = pair_enum(x, m)
        expected = pairs_in_official_order(3, mask)
        assert len(x1) == len(expected) == 4
        for k, (a, b) in enumerate(expected):
            assert torch.equal(x1[k], x[b]) and torch.equal(x2[k], x[a])


def test_pairwise_targets_hand_case():
    y = torch.tensor([2, 0, 2, 1])
    hinge = pairwise_targets(y)
    assert hinge.dtype == torch.float64
    assert hinge.tolist() == [[1, -1, 1, -1], [-1, 1, -1, -1], [1, -1, 1, -1], [-1, -1, -1, 1]]
    cls = pairwise_targets(y, mode="cls")
    assert cls.dtype == torch.int64 and cls.tolist() == [[1, 0, 1, 0], [0, 1, 0, 0], [1, 0, 1, 0], [0, 0, 0, 1]]
    with pytest.raises(ValueError, match="mode"):
        pairwise_targets(y, mode="soft")
    with pytest.raises(ValueError, match="integer"):
        pairwise_targets(y.float())


def test_spn_logits_to_simi_binarises_row_major_without_zeros():
    # pairs (0,0) (0,1) (1,0) (1,1): similar, dissimilar, similar, dissimilar (an asymmetric, self-dissimilar case)
    logits = torch.tensor([[0.0, 1.0], [2.0, -1.0], [-3.0, 3.0], [0.5, 0.4]])
    simi = spn_logits_to_simi(logits)
    assert simi.tolist() == [[1, -1], [1, -1]] and simi.dtype == torch.float32
    assert spn_logits_to_simi(logits.double()).dtype == torch.float64
    big = spn_logits_to_simi(torch.randn(25, 2))
    assert big.shape == (5, 5) and set(big.unique().tolist()) <= {-1.0, 1.0}
    with pytest.raises(ValueError, match="N\\*N"):
        spn_logits_to_simi(torch.randn(6, 2))
    with pytest.raises(ValueError):
        spn_logits_to_simi(torch.randn(4, 3))


def test_spn_pair_loss_is_plain_cross_entropy_over_all_ordered_pairs():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(9, 2, generator=g, dtype=torch.float64)
    y = torch.tensor([1, 1, 0])
    total = 0.0
    for k, (a, b) in enumerate(pairs_in_official_order(3)):
        target = 1 if y[a] == y[b] else 0
        z = logits[k].tolist()
        total += -(z[target] - math.log(math.exp(z[0]) + math.exp(z[1])))
    assert spn_pair_loss(logits, y).item() == pytest.approx(total / 9, rel=1e-12)
    with pytest.raises(ValueError, match="labels"):
        spn_pair_loss(logits, torch.tensor([0, 1]))


# ----- MCL ---------------------------------------------------------------------------------------------------------
def test_mcl_hand_enumerated_two_samples():
    prob = torch.tensor([[0.8, 0.2], [0.3, 0.7]], dtype=torch.float64)
    simi = torch.tensor([[1, -1], [-1, 1]])
    # pairs: (0,0) s=.68 similar; (0,1),(1,0) s=.38 dissimilar -> 1-.38; (1,1) s=.58 similar
    expected = -(math.log(0.68 + EPS) + 2 * math.log(0.62 + EPS) + math.log(0.58 + EPS)) / 4
    assert mcl_loss(prob, simi).item() == pytest.approx(expected, rel=1e-12)


def test_mcl_unknown_pairs_add_minus_log_eps_and_are_not_ignored():
    prob = rand_prob(3, 4, 0)
    simi = pairwise_targets(torch.tensor([0, 1, 0]))
    unknown = simi.clone()
    unknown[0, 1] = 0
    base_terms = mcl_reference(prob, simi) * 9
    # the (0,1) term is replaced by -log(eps), and the denominator stays 9
    s01 = float(prob[0] @ prob[1])
    expected = (base_terms + math.log(1 - s01 + EPS) - math.log(EPS)) / 9
    assert mcl_loss(prob, unknown).item() == pytest.approx(expected, rel=1e-12)
    assert -math.log(EPS) == pytest.approx(16.118, abs=1e-3)
    # its gradient is zero, so 9 x grad(with the 0 pair) == 8 x grad(pair masked out): only the mask excludes it
    mask = torch.ones(3, 3)
    mask[0, 1] = 0
    p = prob.clone().requires_grad_(True)
    g_unknown = torch.autograd.grad(mcl_loss(p, unknown), p)[0]
    g_masked = torch.autograd.grad(mcl_loss(p, simi, mask), p)[0]
    assert torch.allclose(9 * g_unknown, 8 * g_masked, rtol=1e-10, atol=1e-12)
    assert mcl_loss(prob, simi, mask).item() == pytest.approx(mcl_reference(prob, simi, mask.tolist()), rel=1e-12)


@pytest.mark.parametrize("n,k,seed", [(1, 3, 0), (4, 3, 1), (7, 5, 2)])
def test_mcl_matches_per_pair_reference(n, k, seed):
    prob = rand_prob(n, k, seed)
    g = torch.Generator().manual_seed(seed + 10)
    simi = torch.randint(-1, 2, (n, n), generator=g).double()
    mask = (torch.rand(n, n, generator=g) > 0.3).int()
    mask[0, 0] = 1
    assert mcl_loss(prob, simi).item() == pytest.approx(mcl_reference(prob, simi), rel=1e-12)
    assert mcl_loss(prob, simi, mask).item() == pytest.approx(mcl_reference(prob, simi, mask.tolist()), rel=1e-12)


def test_mcl_gradient_matches_official_path_and_gradcheck():
    prob = rand_prob(5, 4, 4).requires_grad_(True)
    simi = pairwise_targets(torch.tensor([0, 1, 0, 2, 1]))
    simi[1, 3] = 0
    ours = torch.autograd.grad(mcl_loss(prob, simi), prob)[0]
    ref = torch.autograd.grad(official_autograd_mcl(prob, simi.reshape(-1)), prob)[0]
    assert torch.allclose(ours, ref, rtol=1e-10, atol=1e-12)
    mask = torch.rand(5, 5, generator=torch.Generator().manual_seed(0)) > 0.4
    assert torch.autograd.gradcheck(lambda p: mcl_loss(p, simi, mask), (prob,))


# ----- KCL ---------------------------------------------------------------------------------------------------------
def test_kcl_hand_enumerated_two_samples():
    p0, p1 = [0.8, 0.2], [0.3, 0.7]
    prob = torch.tensor([p0, p1], dtype=torch.float64)
    kl01 = sum((t + EPS) * (math.log(t + EPS) - math.log(q + EPS)) for t, q in zip(p0, p1))   # KL(p0 || p1)
    kl10 = sum((t + EPS) * (math.log(t + EPS) - math.log(q + EPS)) for t, q in zip(p1, p0))
    assert kl01 != pytest.approx(kl10)                                   # the direction matters
    # dissimilar off-diagonal pairs: hinge max(0, 2 - KL); similar self-pairs: KL(p||p) = 0
    simi = torch.tensor([[1, -1], [-1, 1]])
    expected = (max(0.0, 2 - kl01) + max(0.0, 2 - kl10)) / 4
    assert kcl_loss(prob, simi).item() == pytest.approx(expected, rel=1e-12)
    # pair (0,1) alone, as "similar": the value is KL(p_0 || p_1), row = target side
    only01 = torch.tensor([[0, 1], [0, 0]])
    assert kcl_loss(prob, torch.ones(2, 2), only01).item() == pytest.approx(kl01, rel=1e-12)
    # unknown (0): KL + max(0, margin - KL), not ignored
    assert kcl_loss(prob, torch.zeros(2, 2), only01).item() == pytest.approx(kl01 + max(0, 2 - kl01), rel=1e-12)
    assert kcl_loss(prob, -torch.ones(2, 2), only01, margin=0.5).item() == pytest.approx(max(0, 0.5 - kl01))


@pytest.mark.parametrize("n,k,seed", [(1, 2, 0), (4, 3, 1), (6, 5, 2)])
def test_kcl_matches_per_pair_reference(n, k, seed):
    prob = rand_prob(n, k, seed)
    g = torch.Generator().manual_seed(seed + 20)
    simi = torch.randint(-1, 2, (n, n), generator=g)
    mask = torch.rand(n, n, generator=g) > 0.5
    mask[0, 0] = True
    assert kcl_loss(prob, simi).item() == pytest.approx(kcl_reference(prob, simi), rel=1e-12)
    assert kcl_loss(prob, simi, mask, margin=1.5).item() == pytest.approx(
        kcl_reference(prob, simi, mask.tolist(), margin=1.5), rel=1e-12)


def test_kcl_detaches_the_target_side():
    prob = rand_prob(2, 3, 5).requires_grad_(True)
    only01 = torch.tensor([[0, 1], [0, 0]])                            # pair (0, 1): target p_0, prediction p_1
    grad = torch.autograd.grad(kcl_loss(prob, torch.ones(2, 2), only01), prob)[0]
    assert torch.all(grad[0] == 0) and grad[1].abs().sum() > 0
    # the gradient equals the official path's (target detached) and differs from a non-detached KL
    full = pairwise_targets(torch.tensor([0, 1]))
    ours = torch.autograd.grad(kcl_loss(prob, full), prob)[0]
    ref = torch.autograd.grad(official_autograd_kcl(prob, full.reshape(-1)), prob)[0]
    assert torch.allclose(ours, ref, rtol=1e-10, atol=1e-12)
    q = prob + EPS
    undetached = (q[0] * (q[0].log() - q[1].log())).sum()
    assert not torch.allclose(torch.autograd.grad(undetached, prob)[0], grad)


def test_kcl_gradient_matches_official_path_on_random_targets():
    prob = rand_prob(6, 4, 6).requires_grad_(True)
    simi = torch.randint(-1, 2, (6, 6), generator=torch.Generator().manual_seed(1)).double()
    ours = torch.autograd.grad(kcl_loss(prob, simi), prob)[0]
    ref = torch.autograd.grad(official_autograd_kcl(prob, simi.reshape(-1)), prob)[0]
    assert torch.allclose(ours, ref, rtol=1e-10, atol=1e-12)


def test_kcl_similar_self_pair_has_no_logit_gradient():
    logits = torch.randn(1, 4, dtype=torch.float64, requires_grad=True)
    loss = kcl_loss(torch.softmax(logits, 1), torch.ones(1, 1))
    assert loss.item() == 0.0
    assert torch.autograd.grad(loss, logits)[0].abs().max() < 1e-12


# ----- dtypes, devices, bad input ------------------------------------------------------------------------------------
def test_float32_agrees_with_float64():
    prob = rand_prob(8, 5, 7)
    simi = pairwise_targets(torch.tensor([0, 1, 2, 0, 1, 2, 3, 3]))
    for fn in (mcl_loss, kcl_loss):
        v64 = fn(prob, simi)
        v32 = fn(prob.float(), simi)
        assert v32.dtype == torch.float32 and v64.dtype == torch.float64
        assert v32.item() == pytest.approx(v64.item(), rel=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu():
    prob = rand_prob(6, 4, 8)
    simi = pairwise_targets(torch.tensor([0, 1, 0, 1, 2, 2]))
    mask = torch.rand(6, 6) > 0.3
    for fn in (mcl_loss, kcl_loss):
        assert fn(prob.cuda(), simi.cuda(), mask.cuda()).item() == pytest.approx(fn(prob, simi, mask).item(), rel=1e-9)


def test_bad_shapes_fail_fast():
    prob = rand_prob(3, 2, 0)
    for fn in (mcl_loss, kcl_loss):
        with pytest.raises(ValueError, match="simi"):
            fn(prob, torch.ones(3, 2))
        with pytest.raises(ValueError, match="mask"):
            fn(prob, torch.ones(3, 3), torch.ones(2, 2))
        with pytest.raises(ValueError, match="prob"):
            fn(prob[0], torch.ones(3, 3))
    with pytest.raises(ValueError, match="x must be"):
        pair_enum(torch.ones(3))


# ----- ACC as the official Confusion ------------------------------------------------------------------------------
def test_cluster_acc_hand_cases():
    target = torch.tensor([0, 0, 0, 1, 1, 2])
    pred = torch.tensor([2, 2, 1, 0, 0, 0])
    # best map: cluster 2 -> class 0 (2), cluster 0 -> class 1 (2), cluster 1 -> class 2 (0): 4 / 6
    acc = cluster_acc(pred, target, n_clusters=3)
    assert acc.dtype == torch.float64 and acc.item() == pytest.approx(4 / 6)
    # K = 5 > C = 3 (padded matrix): the over-segmented class 0 keeps one cluster only
    pred = torch.tensor([3, 3, 4, 1, 1, 2])
    assert cluster_acc(pred, target, n_clusters=5).item() == pytest.approx(5 / 6)
    with pytest.raises(ValueError, match="\\[0, 3\\)"):
        cluster_acc(torch.tensor([0, 3]), torch.tensor([0, 1]), n_clusters=3)
