"""Kingdra's pure losses and ladder pieces (docs/methods/kingdra.md) against formulas written out with Python loops."""
import math

import pytest
import torch

from losses.kingdra import (denoising_cost, im_loss, ladder_batchnorm, ladder_combinator, noise_kl,
                            sup_ce_loss)

EPS = 1e-16


def softmax_rows(rows):
    out = []
    for r in rows:
        m = max(r)
        e = [math.exp(v - m) for v in r]
        s = sum(e)
        out.append([v / s for v in e])
    return out


def entropy(p):
    return -sum(v * math.log(v + EPS) for v in p)


def im_loops(logits, mu):
    p = softmax_rows(logits)
    n, k = len(p), len(p[0])
    mean_h = sum(entropy(r) for r in p) / n
    marginal = [sum(r[j] for r in p) / n for j in range(k)]
    return mean_h - mu * entropy(marginal)


def randn(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# --------------------------------------------------------------------------------------------------- IM

def test_im_loss_hand_case():
    # Two confident rows in different clusters: each row's entropy is small, the marginal is uniform (log 2).
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
    p = 1 / (1 + math.exp(-2))
    h_row = -(p * math.log(p + EPS) + (1 - p) * math.log(1 - p + EPS))
    expected = h_row - 4.0 * (-2 * 0.5 * math.log(0.5 + EPS))
    assert im_loss(logits).item() == pytest.approx(expected, rel=1e-12)


def test_im_loss_matches_loops_and_mu():
    logits = randn(7, 5, seed=1)
    for mu in (4.0, 1.0, 0.0):
        assert im_loss(logits, mu=mu).item() == pytest.approx(im_loops(logits.tolist(), mu), rel=1e-12)


def test_im_loss_gradient():
    logits = randn(6, 4, seed=2).requires_grad_()
    assert torch.autograd.gradcheck(lambda x: im_loss(x, mu=4.0), (logits,))


# -------------------------------------------------------------------------------------------------- NKL

def test_noise_kl_matches_loops():
    clean, corr = randn(5, 3, seed=3), randn(5, 3, seed=4)
    p, q = softmax_rows(clean.tolist()), softmax_rows(corr.tolist())
    expected = sum(sum(a * (math.log(a + EPS) - math.log(b + EPS)) for a, b in zip(pr, qr))
                   for pr, qr in zip(p, q)) / 5
    assert noise_kl(clean, corr).item() == pytest.approx(expected, rel=1e-12)
    assert noise_kl(clean, clean).item() == pytest.approx(0.0, abs=1e-15)


def test_noise_kl_stops_the_gradient_on_the_clean_side_only():
    clean = randn(5, 3, seed=5).requires_grad_()
    corr = randn(5, 3, seed=6).requires_grad_()
    (noise_kl(clean, corr) + 0 * clean.sum()).backward()   # the 0 * term materialises clean.grad
    assert torch.equal(clean.grad, torch.zeros_like(clean))
    assert corr.grad.abs().sum() > 0
    fixed = clean.detach()
    assert torch.autograd.gradcheck(lambda c: noise_kl(fixed, c), (corr.detach().requires_grad_(),))


# ------------------------------------------------------------------------------------ ladder batch norm

def test_ladder_batchnorm_uses_batch_stats_and_biased_variance():
    x = torch.tensor([[1.0, 10.0], [3.0, 10.0], [5.0, 13.0]], dtype=torch.float64)
    out = ladder_batchnorm(x)
    # column 0: mean 3, biased var 8/3; column 1: mean 11, var (1 + 1 + 4) / 3 = 2
    for i, row in enumerate(x.tolist()):
        assert out[i, 0].item() == pytest.approx((row[0] - 3) / math.sqrt(8 / 3 + 1e-10), rel=1e-12)
        assert out[i, 1].item() == pytest.approx((row[1] - 11) / math.sqrt(2 + 1e-10), rel=1e-12)
    # a constant column stays finite thanks to eps (0 / sqrt(1e-10) = 0)
    const = ladder_batchnorm(torch.ones(4, 2, dtype=torch.float64))
    assert torch.equal(const, torch.zeros(4, 2, dtype=torch.float64))


def test_ladder_batchnorm_gradient_flows_through_the_statistics():
    x = randn(6, 3, seed=7).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: ladder_batchnorm(t), (x,))


# ------------------------------------------------------------------------------------------ combinator

def test_ladder_combinator_matches_loops():
    z, u, params = randn(4, 3, seed=8), randn(4, 3, seed=9), randn(10, 3, seed=10)
    a = params.tolist()
    out = ladder_combinator(z, u, params)
    sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    for b in range(4):
        for d in range(3):
            uu, zz = u[b, d].item(), z[b, d].item()
            mu = a[0][d] * sig(a[1][d] * uu + a[2][d]) + a[3][d] * uu + a[4][d]
            v = a[5][d] * sig(a[6][d] * uu + a[7][d]) + a[8][d] * uu + a[9][d]
            assert out[b, d].item() == pytest.approx((zz - mu) * v + mu, rel=1e-12, abs=1e-14)


def test_ladder_combinator_is_zero_at_the_official_init():
    init = torch.zeros(10, 3, dtype=torch.float64)
    init[1] = init[6] = 1.0  # a2 = a7 = 1, everything else 0
    assert torch.equal(ladder_combinator(randn(4, 3, seed=11), randn(4, 3, seed=12), init),
                       torch.zeros(4, 3, dtype=torch.float64))


def test_ladder_combinator_gradient():
    args = (randn(3, 2, seed=13).requires_grad_(), randn(3, 2, seed=14).requires_grad_(),
            randn(10, 2, seed=15).requires_grad_())
    assert torch.autograd.gradcheck(ladder_combinator, args)


# ------------------------------------------------------------------------------------------- ladder cost

def test_denoising_cost_hand_case():
    z_est = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    z = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]], dtype=torch.float64)
    # rows: 1 + 4 + 9 = 14 and 3; mean 8.5; / D = 3; * weight 10
    assert denoising_cost(z_est, z, weight=10.0).item() == pytest.approx(10 * 8.5 / 3, rel=1e-12)


def test_denoising_cost_gradient_reaches_both_sides():
    z_est = randn(4, 3, seed=16).requires_grad_()
    z = randn(4, 3, seed=17).requires_grad_()
    denoising_cost(z_est, z, weight=2.0).backward()
    assert torch.allclose(z.grad, -z_est.grad) and z_est.grad.abs().sum() > 0
    assert torch.autograd.gradcheck(lambda a, b: denoising_cost(a, b, weight=0.1),
                                    (z_est.detach().requires_grad_(), z.detach().requires_grad_()))


# ----------------------------------------------------------------------------------------- Keras CE

def test_sup_ce_loss_keras_semantics():
    prob = torch.tensor([[0.2, 0.2, 0.4], [1.0, 0.0, 0.0], [0.5, 0.5, 0.0]], dtype=torch.float64)
    target = torch.tensor([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    # row 0 is renormalised (sum 0.8): p = 0.5; row 1: p = 0 clipped to 1e-7; row 2: all-zero target -> 0
    expected = (-math.log(0.5) - math.log(1e-7) + 0.0) / 3
    assert sup_ce_loss(prob, target).item() == pytest.approx(expected, rel=1e-12)
    assert sup_ce_loss(prob, torch.zeros_like(prob)).item() == 0.0


def test_sup_ce_loss_gradient_and_clipped_entries():
    prob = torch.softmax(randn(4, 3, seed=18), 1).requires_grad_()
    target = torch.eye(3, dtype=torch.float64)[[0, 2, 1, 1]]
    assert torch.autograd.gradcheck(lambda p: sup_ce_loss(p, target), (prob,))
    saturated = torch.tensor([[1.0, 0.0]], dtype=torch.float64, requires_grad=True)
    sup_ce_loss(saturated, torch.tensor([[0.0, 1.0]], dtype=torch.float64)).backward()
    assert torch.equal(saturated.grad, torch.zeros_like(saturated))  # clipped: no gradient, as tf.clip_by_value


# ------------------------------------------------------------------------------- dtypes, devices, errors

@pytest.mark.parametrize("fn", ["im", "nkl", "bn", "comb", "cost", "ce"])
def test_float32_agrees_with_float64(fn):
    a, b, params = randn(8, 4, seed=19), randn(8, 4, seed=20), randn(10, 4, seed=21)
    prob = torch.softmax(a, 1)
    target = torch.eye(4, dtype=torch.float64)[[0, 1, 2, 3, 0, 1, 2, 3]]
    calls = {
        "im": lambda d: im_loss(a.to(d)),
        "nkl": lambda d: noise_kl(a.to(d), b.to(d)),
        "bn": lambda d: ladder_batchnorm(a.to(d)),
        "comb": lambda d: ladder_combinator(a.to(d), b.to(d), params.to(d)),
        "cost": lambda d: denoising_cost(a.to(d), b.to(d), weight=10.0),
        "ce": lambda d: sup_ce_loss(prob.to(d), target.to(d)),
    }
    lo, hi = calls[fn](torch.float32), calls[fn](torch.float64)
    assert lo.dtype == torch.float32
    assert torch.allclose(lo.double(), hi, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu():
    a, b = randn(8, 4, seed=22), randn(8, 4, seed=23)
    assert torch.allclose(im_loss(a.cuda()).cpu(), im_loss(a))
    assert torch.allclose(noise_kl(a.cuda(), b.cuda()).cpu(), noise_kl(a, b))
    assert torch.allclose(ladder_batchnorm(a.cuda()).cpu(), ladder_batchnorm(a))


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="im_loss"):
        im_loss(torch.zeros(3))
    with pytest.raises(ValueError, match="noise_kl"):
        noise_kl(torch.zeros(3, 2), torch.zeros(3, 4))
    with pytest.raises(ValueError, match="ladder_batchnorm"):
        ladder_batchnorm(torch.zeros(2, 3, 4))
    with pytest.raises(ValueError, match="params"):
        ladder_combinator(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(9, 3))
    with pytest.raises(ValueError, match="denoising_cost"):
        denoising_cost(torch.zeros(2, 3), torch.zeros(3, 3))
    with pytest.raises(ValueError, match="sup_ce_loss"):
        sup_ce_loss(torch.zeros(0, 3), torch.zeros(0, 3))


def test_losses_work_under_vmap_over_members():
    # The ensemble computes every member's loss with torch.func.vmap: same values as a loop over members.
    logits = randn(3, 6, 4, seed=24)
    batched = torch.func.vmap(lambda x: im_loss(x, mu=4.0))(logits)
    assert torch.allclose(batched, torch.stack([im_loss(x) for x in logits]))
    z, u = randn(3, 6, 4, seed=25), randn(3, 6, 4, seed=26)
    params = randn(3, 10, 4, seed=27)
    assert torch.allclose(torch.func.vmap(ladder_combinator)(z, u, params),
                          torch.stack([ladder_combinator(*t) for t in zip(z, u, params)]))
