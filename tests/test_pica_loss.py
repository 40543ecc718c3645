"""Tests for losses.pica.pica_loss (docs/methods/pica.md)."""

from __future__ import annotations

import math

import pytest
import torch

from losses.pica import pica_loss

pytestmark = pytest.mark.usefixtures("one_thread")  # hundreds of tiny float64 steps: threads only add waiting


# ---------------------------------------------------------------------------------------------
# Independent reference: the formula of the official code written as explicit loops over scalar entries.
# Scalars stay 0-dim torch tensors so that autograd gives reference gradients too.
# ---------------------------------------------------------------------------------------------
def reference_pica(p: torch.Tensor, q: torch.Tensor, lamda: float, eps: float) -> torch.Tensor:
    n, k = p.shape
    rows = q.shape[0]

    def clean(row: int, c: int) -> torch.Tensor:
        # Block layout: perturbed row r*N + n is paired with clean image n.
        return p[row % n, c]

    def column_norm(entry, c: int) -> torch.Tensor:
        total = sum(entry(row, c) ** 2 for row in range(rows))
        norm = torch.sqrt(total)
        return norm if norm.item() > 1e-12 else torch.tensor(1e-12, dtype=p.dtype)

    def pert(row: int, c: int) -> torch.Tensor:
        return q[row, c]

    norm_p = [column_norm(clean, c) for c in range(k)]
    norm_q = [column_norm(pert, c) for c in range(k)]
    pui = [
        [sum(clean(row, a) * q[row, b] for row in range(rows)) / (norm_p[a] * norm_q[b]) for b in range(k)]
        for a in range(k)
    ]
    loss_ce = 0.0
    for a in range(k):
        log_sum_exp = torch.log(sum(torch.exp(pui[a][b]) for b in range(k)))
        loss_ce = loss_ce + (log_sum_exp - pui[a][a]) / k

    mass = [sum(clean(row, c) for row in range(rows)) for c in range(k)]
    total = sum(mass)
    loss_ne = math.log(k)
    for c in range(k):
        pi_c = mass[c] / total
        loss_ne = loss_ne + pi_c * torch.log(pi_c + eps)
    return loss_ce + lamda * loss_ne


def random_probs(rows: int, k: int, *, seed: int, dtype=torch.float64, sharpness: float = 2.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (sharpness * torch.randn(rows, k, generator=g, dtype=dtype)).softmax(dim=1)


# ---------------------------------------------------------------------------------------------
# Values against the loop reference and hand-computed cases
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("repeats", [1, 2, 3])
@pytest.mark.parametrize("lamda,eps", [(2.0, 0.0), (2.0, 1e-6), (0.5, 0.0)])
def test_value_and_gradients_match_loop_reference(repeats, lamda, eps):
    p = random_probs(4, 3, seed=1).requires_grad_()
    q = random_probs(4 * repeats, 3, seed=2).requires_grad_()

    got = pica_loss(p, q, lamda=lamda, eps=eps)
    want = reference_pica(p, q, lamda, eps)
    assert got.dim() == 0
    assert got.item() == pytest.approx(want.item(), abs=1e-12)

    got_grads = torch.autograd.grad(got, (p, q))
    want_grads = torch.autograd.grad(want, (p, q))
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g, w, atol=1e-12, rtol=0)


def test_one_hot_identity_partition_hits_lower_bound():
    # Clean = perturbed = identity: PUI = I, each row's CE = log(e + 1) - 1, balanced pi -> L_ne = 0.
    p = torch.eye(2, dtype=torch.float64)
    assert pica_loss(p, p.clone()).item() == pytest.approx(math.log(math.e + 1) - 1, abs=1e-14)
    # Lower bound log(e + K - 1) - 1 for K = 4, any lamda (balanced).
    p4 = torch.eye(4, dtype=torch.float64).repeat(3, 1)
    for lamda in (0.0, 2.0, 7.0):
        assert pica_loss(p4, p4.clone(), lamda=lamda).item() == pytest.approx(math.log(math.e + 3) - 1, abs=1e-14)


def test_hand_computed_soft_case():
    # Columns (0.75, 0.25) and (0.25, 0.75): cosines 1 on the diagonal, 0.375 / 0.625 = 0.6 off it.
    p = torch.tensor([[0.75, 0.25], [0.25, 0.75]], dtype=torch.float64)
    want_ce = math.log(math.e + math.exp(0.6)) - 1.0
    assert pica_loss(p, p.clone()).item() == pytest.approx(want_ce, abs=1e-14)  # pi uniform -> L_ne = 0

    # Unbalanced clean view: masses (1.4, 0.6) -> pi = (0.7, 0.3); perturbed = clean.
    p = torch.tensor([[0.9, 0.1], [0.5, 0.5]], dtype=torch.float64)
    c0, c1 = (0.9, 0.5), (0.1, 0.5)
    cos01 = (c0[0] * c1[0] + c0[1] * c1[1]) / (math.hypot(*c0) * math.hypot(*c1))
    want_ce = math.log(math.e + math.exp(cos01)) - 1.0  # both rows: diagonal 1, off-diagonal cos01
    want_ne = math.log(2) + 0.7 * math.log(0.7) + 0.3 * math.log(0.3)
    assert pica_loss(p, p.clone()).item() == pytest.approx(want_ce + 2.0 * want_ne, abs=1e-14)
    assert pica_loss(p, p.clone(), lamda=0.5).item() == pytest.approx(want_ce + 0.5 * want_ne, abs=1e-14)


# ---------------------------------------------------------------------------------------------
# Documented behaviour
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("k", [2, 5, 10])
def test_uniform_assignments_give_log_k_and_are_stationary(k):
    # All PUI entries equal -> L_ce = log K; pi uniform -> L_ne = 0.
    logits_i = torch.zeros(6, k, dtype=torch.float64, requires_grad=True)
    logits_j = torch.zeros(18, k, dtype=torch.float64, requires_grad=True)
    loss = pica_loss(logits_i.softmax(1), logits_j.softmax(1))
    assert loss.item() == pytest.approx(math.log(k), abs=1e-13)
    # Uniform assignments are a stationary point of the loss w.r.t. the logits (symmetry), and
    # strictly worse than a confident balanced partition.
    for grad in torch.autograd.grad(loss, (logits_i, logits_j)):
        assert grad.abs().max().item() < 1e-12
    assert math.log(k) > math.log(math.e + k - 1) - 1


def test_random_inputs_lie_in_stated_ranges():
    for seed in range(5):
        p = random_probs(8, 5, seed=seed)
        q = random_probs(24, 5, seed=100 + seed)
        loss_ce = pica_loss(p, q, lamda=0.0).item()
        loss_ne = (pica_loss(p, q, lamda=1.0) - pica_loss(p, q, lamda=0.0)).item()
        assert math.log(math.e + 4) - 1 <= loss_ce <= math.log(1 + 4 * math.e)
        assert 0.0 <= loss_ne <= math.log(5)


def test_balance_term_uses_clean_view_only():
    p = random_probs(6, 4, seed=3)
    q1 = random_probs(12, 4, seed=4)
    q2 = random_probs(12, 4, seed=5, sharpness=6.0)
    pi = p.sum(0) / p.sum()
    kl_to_uniform = sum(pi[c].item() * math.log(pi[c].item() * 4) for c in range(4))
    for q in (q1, q2):
        ne = (pica_loss(p, q, lamda=2.0) - pica_loss(p, q, lamda=0.0)).item()
        assert ne == pytest.approx(2.0 * kl_to_uniform, abs=1e-12)
    # Hence the loss is not symmetric in its arguments.
    a, b = random_probs(6, 4, seed=6), random_probs(6, 4, seed=7, sharpness=5.0)
    assert abs(pica_loss(a, b).item() - pica_loss(b, a).item()) > 1e-3


def test_block_tiling_pairs_row_r_n_with_image_n():
    n, k, r = 5, 3, 3
    p = random_probs(n, k, seed=8)
    q_block = random_probs(r * n, k, seed=9)
    # Explicitly tiled clean view gives the same value (how the official main.py calls PUILoss).
    assert pica_loss(p, q_block).item() == pytest.approx(pica_loss(p.repeat(r, 1), q_block).item(), abs=1e-14)
    # The same perturbed rows in interleaved order pair with repeat_interleave, not with block tiling.
    order = torch.arange(r * n).view(r, n).t().reshape(-1)  # interleaved position -> block row
    q_interleaved = q_block[order]
    assert pica_loss(p.repeat_interleave(r, 0), q_interleaved).item() == pytest.approx(
        pica_loss(p, q_block).item(), abs=1e-12
    )
    assert abs(pica_loss(p, q_interleaved).item() - pica_loss(p, q_block).item()) > 1e-4


def test_invariant_to_sample_order_and_cluster_relabelling():
    n, k, r = 6, 4, 2
    p = random_probs(n, k, seed=10)
    q = random_probs(r * n, k, seed=11)
    base = pica_loss(p, q).item()
    g = torch.Generator().manual_seed(0)
    perm_n = torch.randperm(n, generator=g)
    q_perm = q.view(r, n, k)[:, perm_n].reshape(r * n, k)  # same permutation inside every block
    assert pica_loss(p[perm_n], q_perm).item() == pytest.approx(base, abs=1e-12)
    perm_k = torch.randperm(k, generator=g)
    assert pica_loss(p[:, perm_k], q[:, perm_k]).item() == pytest.approx(base, abs=1e-12)


def test_empty_cluster_official_eps_gives_nan_divclust_eps_is_finite():
    # All clean mass in cluster 0: official eps = 0 evaluates 0 * log(0) = nan (as PUILoss does);
    # DivClust's eps = 1e-6 gives lamda * (log K + log(1 + 1e-6)) for the balance term.
    k = 3
    p = torch.zeros(4, k, dtype=torch.float64)
    p[:, 0] = 1.0
    q = random_probs(4, k, seed=12)
    assert math.isnan(pica_loss(p, q).item())
    loss_ce = pica_loss(p, q, lamda=0.0, eps=1e-6).item()
    want = loss_ce + 2.0 * (math.log(k) + math.log(1 + 1e-6))
    assert pica_loss(p, q, eps=1e-6).item() == pytest.approx(want, abs=1e-13)


# ---------------------------------------------------------------------------------------------
# Gradients, dtypes, devices
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("repeats,eps", [(1, 0.0), (3, 0.0), (2, 1e-6)])
def test_gradcheck_float64(repeats, eps):
    p = random_probs(4, 3, seed=13).requires_grad_()
    q = random_probs(4 * repeats, 3, seed=14).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: pica_loss(a, b, eps=eps), (p, q))


def test_gradients_flow_into_both_views():
    p = random_probs(5, 3, seed=15).requires_grad_()
    q = random_probs(15, 3, seed=16).requires_grad_()
    gp, gq = torch.autograd.grad(pica_loss(p, q), (p, q))
    assert gp.abs().sum().item() > 1e-3 and gq.abs().sum().item() > 1e-3


def test_float32_agrees_with_float64():
    p = random_probs(32, 10, seed=17)
    q = random_probs(96, 10, seed=18)
    for eps in (0.0, 1e-6):
        l64 = pica_loss(p, q, eps=eps)
        l32 = pica_loss(p.float(), q.float(), eps=eps)
        assert l32.dtype == torch.float32
        assert l32.item() == pytest.approx(l64.item(), abs=1e-5)


def test_half_precision_inputs_are_computed_in_float32():
    p = random_probs(16, 4, seed=19)
    q = random_probs(32, 4, seed=20)
    got = pica_loss(p.bfloat16(), q.bfloat16())
    assert got.dtype == torch.float32
    want = pica_loss(p.bfloat16().float(), q.bfloat16().float())
    assert got.item() == pytest.approx(want.item(), abs=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    p = random_probs(16, 5, seed=21)
    q = random_probs(48, 5, seed=22)
    assert pica_loss(p.cuda(), q.cuda()).item() == pytest.approx(pica_loss(p, q).item(), abs=1e-10)


# ---------------------------------------------------------------------------------------------
# Bad inputs
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "p_shape,q_shape,match",
    [
        ((4, 3), (10, 3), "multiple"),
        ((4, 3), (8, 4), "same number of clusters"),
        ((4,), (4, 3), "2-D"),
        ((4, 3), (2, 4, 3), "2-D"),
        ((0, 3), (0, 3), "at least one"),
    ],
)
def test_bad_shapes_raise_value_error(p_shape, q_shape, match):
    with pytest.raises(ValueError, match=match):
        pica_loss(torch.rand(p_shape), torch.rand(q_shape))


def test_integer_input_raises_value_error():
    with pytest.raises(ValueError, match="floating"):
        pica_loss(torch.ones(4, 3, dtype=torch.long), torch.rand(4, 3))


# ---------------------------------------------------------------------------------------------
# The loss does what the paper says: confident, balanced, augmentation-consistent partitions
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1])
def test_sgd_on_free_logits_finds_confident_balanced_consistent_partition(seed):
    # Tiny two-view problem: every image n has free logits theta_n; its clean view sees
    # theta_n + fixed noise, each of its R perturbed copies theta_n + different fixed noise.
    n, k, r = 60, 3, 2
    g = torch.Generator().manual_seed(seed)
    theta = (0.01 * torch.randn(n, k, generator=g, dtype=torch.float64)).requires_grad_()
    noise_clean = 0.5 * torch.randn(n, k, generator=g, dtype=torch.float64)
    noise_pert = 0.5 * torch.randn(r * n, k, generator=g, dtype=torch.float64)
    optimiser = torch.optim.SGD([theta], lr=30.0, momentum=0.9)

    def views():
        return (theta + noise_clean).softmax(1), (theta.repeat(r, 1) + noise_pert).softmax(1)

    initial = pica_loss(*views()).item()
    for _ in range(300):
        loss = pica_loss(*views())
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()

    with torch.no_grad():
        p, q = views()
        final = pica_loss(p, q).item()
        labels = p.argmax(1)
        confidence = torch.cat([p, q]).max(1).values.mean().item()
        sizes = torch.bincount(labels, minlength=k)
        agreement = (labels.repeat(r) == q.argmax(1)).double().mean().item()
    lower_bound = math.log(math.e + k - 1) - 1
    assert initial == pytest.approx(math.log(k), abs=0.05)  # near-uniform start
    assert final < lower_bound + 0.02
    assert confidence > 0.95
    assert agreement > 0.95
    assert sizes.min().item() >= 0.75 * n / k
