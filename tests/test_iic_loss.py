"""Tests for losses.iic.iic_joint / iic_loss (docs/methods/iic.md)."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest
import torch
from scipy.stats import entropy

from losses.iic import iic_joint, iic_loss

EPS = sys.float_info.epsilon


# ---------------------------------------------------------------------------------------------
# Independent reference: the official code as explicit loops over scalar entries. Scalars stay 0-dim
# torch tensors so that autograd gives reference gradients; the clamp is a Python branch that
# replaces a small entry by a constant (hence zero gradient through it).
# ---------------------------------------------------------------------------------------------
def reference_joint(p: torch.Tensor, q: torch.Tensor) -> list[list[torch.Tensor]]:
    n, k = p.shape
    raw = [[sum(p[i, a] * q[i, b] for i in range(n)) for b in range(k)] for a in range(k)]
    sym = [[(raw[a][b] + raw[b][a]) / 2 for b in range(k)] for a in range(k)]
    total = sum(sym[a][b] for a in range(k) for b in range(k))
    return [[sym[a][b] / total for b in range(k)] for a in range(k)]


def reference_iic(p: torch.Tensor, q: torch.Tensor, lamb: float, eps: float = EPS) -> torch.Tensor:
    k = p.shape[1]
    joint = reference_joint(p, q)
    m_row = [sum(joint[a][b] for b in range(k)) for a in range(k)]
    m_col = [sum(joint[a][b] for a in range(k)) for b in range(k)]

    def clamp(v: torch.Tensor) -> torch.Tensor:
        return torch.tensor(eps, dtype=p.dtype) if v.item() < eps else v

    loss = 0.0
    for a in range(k):
        for b in range(k):
            j = clamp(joint[a][b])
            loss = loss - j * (torch.log(j) - lamb * torch.log(clamp(m_col[b])) - lamb * torch.log(clamp(m_row[a])))
    return loss


def random_probs(rows: int, k: int, *, seed: int, dtype=torch.float64, sharpness: float = 2.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (sharpness * torch.randn(rows, k, generator=g, dtype=dtype)).softmax(dim=1)


# ---------------------------------------------------------------------------------------------
# Values against the loop reference and hand-computed cases
# ---------------------------------------------------------------------------------------------
def test_joint_matches_loop_reference():
    p, q = random_probs(6, 4, seed=1), random_probs(6, 4, seed=2)
    want = torch.stack([torch.stack(row) for row in reference_joint(p, q)])
    torch.testing.assert_close(iic_joint(p, q), want, atol=1e-15, rtol=0)


@pytest.mark.parametrize("lamb", [1.0, 2.0, 0.7])
def test_value_and_gradients_match_loop_reference(lamb):
    p = random_probs(6, 4, seed=3).requires_grad_()
    q = random_probs(6, 4, seed=4).requires_grad_()
    got = iic_loss(p, q, lamb=lamb)
    want = reference_iic(p, q, lamb)
    assert got.dim() == 0
    assert got.item() == pytest.approx(want.item(), abs=1e-13)
    for g, w in zip(torch.autograd.grad(got, (p, q)), torch.autograd.grad(want, (p, q))):
        torch.testing.assert_close(g, w, atol=1e-12, rtol=0)


def test_hand_computed_soft_case():
    # p = q = [[.75, .25], [.25, .75]]: p^T q = [[.625, .375], [.375, .625]], total 2,
    # J = [[.3125, .1875], [.1875, .3125]], marginals (.5, .5).
    p = torch.tensor([[0.75, 0.25], [0.25, 0.75]], dtype=torch.float64)
    want_joint = torch.tensor([[0.3125, 0.1875], [0.1875, 0.3125]], dtype=torch.float64)
    torch.testing.assert_close(iic_joint(p, p.clone()), want_joint, atol=1e-16, rtol=0)
    mutual_information = 2 * 0.3125 * math.log(0.3125 / 0.25) + 2 * 0.1875 * math.log(0.1875 / 0.25)
    assert iic_loss(p, p.clone()).item() == pytest.approx(-mutual_information, abs=1e-15)


def test_clamped_entries_stay_in_the_sum():
    # One-hot identity pairs: J = diag(.5, .5); the zero off-diagonal entries are clamped to eps
    # and still contribute -eps * (log eps - 2 log .5) each.
    p = torch.eye(2, dtype=torch.float64)
    want = -math.log(2) - 2 * EPS * (math.log(EPS) + 2 * math.log(2))
    got = iic_loss(p, p.clone()).item()
    assert got == pytest.approx(want, abs=1e-16)
    assert abs(got - (-math.log(2))) > 1e-14
    # A custom clamp value is honoured.
    assert iic_loss(p, p.clone(), eps=1e-6).item() == pytest.approx(
        -math.log(2) - 2e-6 * (math.log(1e-6) + 2 * math.log(2)), abs=1e-15
    )


def test_marginals_are_taken_before_clamping():
    # K = 3, joint with one zero row/column: m = (.5, .5, 0). The clamped marginal is eps, while a
    # marginal recomputed from the clamped joint would be 3 * eps; the two give different sums.
    p = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=torch.float64)
    got = iic_loss(p, p.clone(), lamb=1.0).item()
    # Entries: two diagonal .5 terms; off-diagonal clamped entries: (0,1),(1,0) with marginals .5/.5,
    # (0,2),(2,0),(1,2),(2,1) with marginals .5/eps, and (2,2) with eps/eps.
    want = -(2 * 0.5 * (math.log(0.5) - 2 * math.log(0.5)))
    want -= 2 * EPS * (math.log(EPS) - 2 * math.log(0.5))
    want -= 4 * EPS * (math.log(EPS) - math.log(0.5) - math.log(EPS))
    want -= EPS * (math.log(EPS) - 2 * math.log(EPS))
    assert got == pytest.approx(want, abs=1e-17)


# ---------------------------------------------------------------------------------------------
# Documented behaviour
# ---------------------------------------------------------------------------------------------
def test_joint_is_symmetric_normalised_by_total_and_loss_is_symmetric():
    p, q = random_probs(7, 5, seed=5), random_probs(7, 5, seed=6, sharpness=4.0)
    joint = iic_joint(p, q)
    torch.testing.assert_close(joint, joint.t(), atol=0, rtol=0)
    assert joint.sum().item() == pytest.approx(1.0, abs=1e-15)
    # Normalised by the total mass, not by N: scaling an input leaves J unchanged.
    torch.testing.assert_close(iic_joint(3.0 * p, q), joint, atol=1e-16, rtol=0)
    assert iic_loss(p, q).item() == pytest.approx(iic_loss(q, p).item(), abs=1e-15)


def test_lamb_one_is_minus_mutual_information_and_lamb_weights_marginal_entropies():
    p, q = random_probs(9, 4, seed=7), random_probs(9, 4, seed=8)
    joint = iic_joint(p, q).numpy()
    h_joint = entropy(joint.ravel())
    h_row, h_col = entropy(joint.sum(1)), entropy(joint.sum(0))
    mutual_information = h_row + h_col - h_joint
    assert iic_loss(p, q).item() == pytest.approx(-mutual_information, abs=1e-13)
    # L(lamb) = H(J) - lamb * (H(m_row) + H(m_col)): a sum over K x K, not a mean.
    for lamb in (0.0, 1.5, 3.0):
        assert iic_loss(p, q, lamb=lamb).item() == pytest.approx(h_joint - lamb * (h_row + h_col), abs=1e-13)


@pytest.mark.parametrize("k", [2, 5, 10])
def test_uniform_assignments_give_zero_and_are_stationary(k):
    logits_i = torch.zeros(8, k, dtype=torch.float64, requires_grad=True)
    logits_j = torch.zeros(8, k, dtype=torch.float64, requires_grad=True)
    loss = iic_loss(logits_i.softmax(1), logits_j.softmax(1))
    assert loss.item() == pytest.approx(0.0, abs=1e-14)
    for grad in torch.autograd.grad(loss, (logits_i, logits_j)):
        assert grad.abs().max().item() < 1e-12


@pytest.mark.parametrize("k", [2, 5, 10])
def test_confident_balanced_consistent_partition_reaches_minus_log_k(k):
    p = torch.eye(k, dtype=torch.float64).repeat(3, 1)
    got = iic_loss(p, p.clone()).item()
    assert got == pytest.approx(-math.log(k), abs=1e-12)
    # Collapse onto one cluster carries no information; an unbalanced partition is worse.
    collapsed = torch.zeros(3 * k, k, dtype=torch.float64)
    collapsed[:, 0] = 1.0
    assert iic_loss(collapsed, collapsed.clone()).item() == pytest.approx(0.0, abs=1e-12)
    unbalanced = torch.eye(k, dtype=torch.float64)[torch.tensor([0] * (2 * k) + list(range(k)))]
    assert got < iic_loss(unbalanced, unbalanced.clone()).item() < 0.0


# ---------------------------------------------------------------------------------------------
# Gradients (including through the clamp), dtypes, devices
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("lamb", [1.0, 2.0])
def test_gradcheck_float64(lamb):
    p = random_probs(5, 3, seed=9).requires_grad_()
    q = random_probs(5, 3, seed=10).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: iic_loss(a, b, lamb=lamb), (p, q))
    assert torch.autograd.gradcheck(iic_joint, (p, q))


def test_backward_through_clamped_entries_is_finite_and_matches_reference():
    # The official in-place clamp cannot back-propagate on current torch; ours must,
    # with zero gradient through the clamped entries.
    p = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.9, 0.1, 0.0]], dtype=torch.float64)
    q = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.8, 0.2], [1.0, 0.0, 0.0]], dtype=torch.float64)
    p.requires_grad_()
    q.requires_grad_()
    got = torch.autograd.grad(iic_loss(p, q), (p, q))
    want = torch.autograd.grad(reference_iic(p, q, 1.0), (p, q))
    for g, w in zip(got, want):
        assert torch.isfinite(g).all()
        torch.testing.assert_close(g, w, atol=1e-12, rtol=0)


def test_gradients_flow_into_both_views():
    p = random_probs(6, 3, seed=11).requires_grad_()
    q = random_probs(6, 3, seed=12).requires_grad_()
    gp, gq = torch.autograd.grad(iic_loss(p, q), (p, q))
    assert gp.abs().sum().item() > 1e-3 and gq.abs().sum().item() > 1e-3


def test_float32_agrees_with_float64_including_clamped_entries():
    p, q = random_probs(64, 10, seed=13), random_probs(64, 10, seed=14)
    l32 = iic_loss(p.float(), q.float())
    assert l32.dtype == torch.float32
    assert l32.item() == pytest.approx(iic_loss(p, q).item(), abs=1e-5)
    one_hot = torch.eye(4).repeat(2, 1)
    value = iic_loss(one_hot, one_hot.clone())
    assert torch.isfinite(value) and value.item() == pytest.approx(-math.log(4), abs=1e-6)


def test_half_precision_inputs_are_computed_in_float32():
    p, q = random_probs(16, 4, seed=15), random_probs(16, 4, seed=16)
    got = iic_loss(p.half(), q.half())
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(iic_loss(p.half().float(), q.half().float()).item(), abs=1e-7)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    p, q = random_probs(32, 6, seed=17), random_probs(32, 6, seed=18)
    assert iic_loss(p.cuda(), q.cuda()).item() == pytest.approx(iic_loss(p, q).item(), abs=1e-10)


# ---------------------------------------------------------------------------------------------
# Bad inputs
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "p_shape,q_shape,match",
    [
        ((4, 3), (5, 3), "same shape"),
        ((4, 3), (4, 2), "same shape"),
        ((4,), (4,), "2-D"),
        ((2, 4, 3), (2, 4, 3), "2-D"),
        ((0, 3), (0, 3), "at least one"),
    ],
)
@pytest.mark.parametrize("fn", [iic_loss, iic_joint])
def test_bad_shapes_raise_value_error(fn, p_shape, q_shape, match):
    with pytest.raises(ValueError, match=match):
        fn(torch.rand(p_shape), torch.rand(q_shape))


def test_integer_input_raises_value_error():
    with pytest.raises(ValueError, match="floating"):
        iic_loss(torch.ones(4, 3, dtype=torch.long), torch.rand(4, 3))


# ---------------------------------------------------------------------------------------------
# The loss does what the paper says: confident, balanced, transformation-invariant clusters
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1])
def test_sgd_on_free_logits_finds_confident_balanced_consistent_partition(seed):
    # Tiny two-view problem: image n has free logits theta_n; its original view sees
    # theta_n + fixed noise (repeated r times, as IIC repeats the original view), each of its r
    # transformed views theta_n + different fixed noise.
    n, k, r = 60, 3, 2
    g = torch.Generator().manual_seed(seed)
    theta = (0.01 * torch.randn(n, k, generator=g, dtype=torch.float64)).requires_grad_()
    noise_orig = 0.5 * torch.randn(n, k, generator=g, dtype=torch.float64)
    noise_tf = 0.5 * torch.randn(r * n, k, generator=g, dtype=torch.float64)
    optimiser = torch.optim.SGD([theta], lr=30.0, momentum=0.9)

    def views():
        return (theta + noise_orig).softmax(1).repeat(r, 1), (theta.repeat(r, 1) + noise_tf).softmax(1)

    initial = iic_loss(*views()).item()
    for _ in range(300):
        loss = iic_loss(*views())
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()

    with torch.no_grad():
        p, q = views()
        final = iic_loss(p, q).item()
        confidence = torch.cat([p, q]).max(1).values.mean().item()
        agreement = (p.argmax(1) == q.argmax(1)).double().mean().item()
        marginal = p[:n].mean(0)
        balance = entropy(marginal.numpy()) / math.log(k)
    assert abs(initial) < 0.01  # near-uniform start: almost no information
    assert final < -0.9 * math.log(k)
    assert confidence > 0.95
    assert agreement > 0.95
    # Once assignments saturate the balancing gradient of the MI fades, so balance is looser than
    # PICA's explicit KL term gives (over seeds 0-7: smallest cluster 15% of images, entropy >= 0.91).
    assert balance > 0.9
    assert np.all(marginal.numpy() > 0.3 / k)
