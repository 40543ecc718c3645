"""Tests of losses/digpro.py against docs/methods/digpro.md section 4, computed independently with loops."""

from __future__ import annotations

import inspect
import math

import pytest
import torch

from losses.digpro import (assign_groups, digpro_objective, dynamic_grouping_loss, momentum_group_update,
                           symmetric_grouping)
from losses.propos import propos_objective

# ---------------------------------------------------------------------------------------------------------------
# independent reference: explicit loops over (python floats)
# ---------------------------------------------------------------------------------------------------------------


def _cos(a: list[float], b: list[float]) -> float:
    na = max(math.sqrt(sum(v * v for v in a)), 1e-12)
    nb = max(math.sqrt(sum(v * v for v in b)), 1e-12)
    return sum(u * v for u, v in zip(a, b)) / (na * nb)


def ref_assign(x: list[list[float]], groups: list[list[float]]) -> list[int]:
    out = []
    for row in x:
        best, best_sim = 0, -math.inf
        for g, center in enumerate(groups):
            sim = _cos(row, center)
            if sim > best_sim:  # strict: ties keep the first index
                best, best_sim = g, sim
        out.append(best)
    return out


def ref_update(q: list[list[float]], groups: list[list[float]], beta: float) -> list[list[float]]:
    assignment = ref_assign(q, groups)
    new = []
    for g, center in enumerate(groups):
        members = [q[i] for i in range(len(q)) if assignment[i] == g]
        if not members:
            new.append(list(center))
            continue
        mean = [sum(m[d] for m in members) / len(members) for d in range(len(center))]
        new.append([beta * center[d] + (1 - beta) * mean[d] for d in range(len(center))])
    return new


def ref_grouping(q, k, p, groups, beta: float, temperature: float, targets_from_updated: bool = False):
    updated = ref_update(q, groups, beta)
    targets = ref_assign(k, updated if targets_from_updated else groups)
    total = 0.0
    for i in range(len(p)):
        logits = [_cos(p[i], center) / temperature for center in updated]
        total += -logits[targets[i]] + math.log(sum(math.exp(v) for v in logits))
    return total / len(p), updated


def _lists(t: torch.Tensor) -> list[list[float]]:
    return t.tolist()


def _case(seed: int, b: int = 10, d: int = 4, g: int = 3, scale: float = 1.0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(b, d, generator=gen, dtype=dtype) * scale
    k = torch.randn(b, d, generator=gen, dtype=dtype)
    p = torch.randn(b, d, generator=gen, dtype=dtype)
    groups = torch.rand(g, d, generator=gen, dtype=dtype)  # official init: uniform [0, 1)
    return q, k, p, groups


# ---------------------------------------------------------------------------------------------------------------
# assignment and momentum update
# ---------------------------------------------------------------------------------------------------------------


def test_assign_groups_hand_case():
    groups = torch.tensor([[2.0, 0.0], [0.0, 30.0], [-1.0, -1.0]], dtype=torch.float64)  # norms differ
    x = torch.tensor([[3.0, 1.0], [1.0, 4.0], [-1.0, -0.9], [5.0, 5.0]], dtype=torch.float64)
    # cosine, not dot product: [5, 5] ties between groups 0 and 1 -> first index
    assert assign_groups(x, groups).tolist() == [0, 1, 2, 0]
    assert assign_groups(x, groups).dtype == torch.int64


def test_momentum_group_update_hand_case():
    groups = torch.tensor([[2.0, 0.0], [0.0, 3.0], [-1.0, -1.0]], dtype=torch.float64)
    q = torch.tensor([[3.0, 1.0], [1.0, 4.0], [5.0, 0.0]], dtype=torch.float64)
    # q0, q2 -> group 0 (mean (4, 0.5)); q1 -> group 1; group 2 receives nothing and stays put
    expected = torch.tensor([[3.0, 0.25], [0.5, 3.5], [-1.0, -1.0]], dtype=torch.float64)
    assert torch.allclose(momentum_group_update(q, groups, beta=0.5), expected, rtol=0, atol=1e-15)


def test_momentum_group_update_matches_loop_reference_and_gradcheck():
    q, _, _, groups = _case(0, b=12, g=5, scale=3.0)
    expected = ref_update(_lists(q), _lists(groups), 0.99)
    assert torch.allclose(momentum_group_update(q, groups), torch.tensor(expected, dtype=torch.float64),
                          rtol=1e-12, atol=1e-14)
    qq = q.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: momentum_group_update(x, groups, beta=0.7), (qq,))
    g = groups.clone().requires_grad_(True)
    momentum_group_update(qq, g).sum().backward()
    assert g.grad is None  # the current groups are a constant


# ---------------------------------------------------------------------------------------------------------------
# dynamic grouping loss
# ---------------------------------------------------------------------------------------------------------------


def test_dynamic_grouping_loss_hand_case():
    groups = torch.tensor([[2.0, 0.0], [0.0, 3.0], [-1.0, -1.0]], dtype=torch.float64)
    q = torch.tensor([[3.0, 1.0], [1.0, 4.0], [5.0, 0.0]], dtype=torch.float64)
    k = torch.tensor([[0.0, 1.0], [1.0, 0.0], [2.0, 1.0]], dtype=torch.float64)  # targets [1, 0, 0] (old G)
    p = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=torch.float64)
    updated = [(3.0, 0.25), (0.5, 3.5), (-1.0, -1.0)]  # beta 0.5, see the update hand case
    targets = [1, 0, 0]
    expected = 0.0
    for i, (px, py) in enumerate(p.tolist()):
        logits = [(px * gx + py * gy) / (math.hypot(px, py) * math.hypot(gx, gy)) / 0.1 for gx, gy in updated]
        expected += -logits[targets[i]] + math.log(sum(math.exp(v) for v in logits))
    expected /= 3
    loss, new_groups = dynamic_grouping_loss(q, k, p, groups, beta=0.5)
    assert loss.item() == pytest.approx(expected, rel=1e-12, abs=1e-12)
    assert torch.allclose(new_groups, torch.tensor(updated, dtype=torch.float64), rtol=0, atol=1e-15)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_dynamic_grouping_loss_matches_loop_reference(seed: int):
    q, k, p, groups = _case(seed, b=12, g=4, scale=2.0)
    expected, updated = ref_grouping(_lists(q), _lists(k), _lists(p), _lists(groups), 0.99, 0.1)
    loss, new_groups = dynamic_grouping_loss(q, k, p, groups)
    assert loss.item() == pytest.approx(expected, rel=1e-12, abs=1e-12)
    assert torch.allclose(new_groups, torch.tensor(updated, dtype=torch.float64), rtol=1e-12, atol=1e-14)


def test_targets_use_old_groups():
    # with beta = 0.2 and large q the updated groups assign many targets differently
    q, k, p, groups = _case(4, b=32, d=8, g=6, scale=20.0)
    args = (_lists(q), _lists(k), _lists(p), _lists(groups), 0.2, 0.1)
    old_targets = ref_assign(_lists(k), _lists(groups))
    new_targets = ref_assign(_lists(k), ref_update(_lists(q), _lists(groups), 0.2))
    assert old_targets != new_targets  # the case can tell the two orders apart
    loss = dynamic_grouping_loss(q, k, p, groups, beta=0.2)[0].item()
    assert loss == pytest.approx(ref_grouping(*args)[0], rel=1e-12, abs=1e-12)
    assert abs(loss - ref_grouping(*args, targets_from_updated=True)[0]) > 1e-3


def test_dynamic_grouping_gradients():
    q, k, p, groups = _case(5, b=8, g=3, scale=2.0)
    qq = q.clone().requires_grad_(True)
    pp = p.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: dynamic_grouping_loss(a, k, b, groups)[0], (qq, pp))
    kk = k.clone().requires_grad_(True)
    gg = groups.clone().requires_grad_(True)
    loss, new_groups = dynamic_grouping_loss(qq, kk, pp, gg)
    loss.backward()
    assert kk.grad is None and gg.grad is None  # targets and current groups are constants
    assert qq.grad.abs().sum() > 0 and pp.grad.abs().sum() > 0  # q through the updated groups, p directly
    assert not new_groups.requires_grad


def test_dynamic_grouping_float32_matches_float64():
    q, k, p, groups = _case(6, b=16, d=8, g=5, scale=2.0)
    v64, g64 = dynamic_grouping_loss(q, k, p, groups)
    v32, g32 = dynamic_grouping_loss(q.float(), k.float(), p.float(), groups.float())
    assert v32.dtype == torch.float32 and g32.dtype == torch.float32
    assert v32.item() == pytest.approx(v64.item(), rel=1e-5, abs=1e-6)
    assert torch.allclose(g32.double(), g64, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------------------------
# objective
# ---------------------------------------------------------------------------------------------------------------


def _views(seed: int, n: int = 10, d: int = 6, k: int = 3):
    g = torch.Generator().manual_seed(seed)
    tensors = [torch.randn(n, d, generator=g, dtype=torch.float64) * 2 for _ in range(8)]
    labels = torch.randint(0, k, (n,), generator=g)
    groups = torch.rand(k, d, generator=g, dtype=torch.float64)
    return tensors, labels, groups


def test_symmetric_grouping_gradients():
    tensors, _, groups = _views(8)
    inputs = [t.clone().requires_grad_(True) for t in tensors[2:]]  # q1, q2, k1, k2, p1_clean, p2_clean
    q1, q2, k1, k2, c1, c2 = inputs
    grouping, _ = symmetric_grouping(q1, q2, k1, k2, c1, c2, groups)
    grads = dict(zip("q1 q2 k1 k2 c1 c2".split(), torch.autograd.grad(grouping, inputs, allow_unused=True)))
    assert grads["k1"] is None and grads["k2"] is None
    assert all(grads[n] is not None and grads[n].abs().sum() > 0 for n in ("q1", "q2", "c1", "c2"))


def test_digpro_objective_is_sequential_and_weighted():
    (p1, p2, q1, q2, k1, k2, c1, c2), labels, groups = _views(7)
    loss_1, g1 = ref_grouping(_lists(q1), _lists(k2), _lists(c1), _lists(groups), 0.99, 0.1)
    loss_2, g2 = ref_grouping(_lists(q2), _lists(k1), _lists(c2), g1, 0.99, 0.1)
    parallel_2, _ = ref_grouping(_lists(q2), _lists(k1), _lists(c2), _lists(groups), 0.99, 0.1)
    assert abs(loss_2 - parallel_2) > 1e-9  # direction 2 must see G1, and the case can tell
    total, alignment, psl, grouping, new_groups = digpro_objective(p1, p2, q1, q2, k1, k2, labels, groups, c1, c2,
                                                                   num_clusters=3)
    _, align_ref, psl_ref = propos_objective(p1, p2, q1, q2, k1, k2, labels, num_clusters=3)
    assert alignment.item() == align_ref.item() and psl.item() == psl_ref.item()
    assert grouping.item() == pytest.approx(0.5 * (loss_1 + loss_2), rel=1e-12, abs=1e-12)
    assert torch.allclose(new_groups, torch.tensor(g2, dtype=torch.float64), rtol=1e-12, atol=1e-14)
    assert symmetric_grouping(q1, q2, k1, k2, c1, c2, groups)[0].item() == grouping.item()
    assert total.item() == pytest.approx(alignment.item() + 0.1 * psl.item() + 0.3 * grouping.item(), rel=1e-12)
    # warm-up: PSL off, grouping stays on
    warm = digpro_objective(p1, p2, q1, q2, k1, k2, labels, groups, c1, c2, num_clusters=3, psl_weight=0.0)[0]
    assert warm.item() == pytest.approx(alignment.item() + 0.3 * grouping.item(), rel=1e-12)


def test_digpro_objective_gradients():
    tensors, labels, groups = _views(8)
    inputs = [t.clone().requires_grad_(True) for t in tensors]  # p1, p2, q1, q2, k1, k2, p1_clean, p2_clean
    p1, p2, q1, q2, k1, k2, c1, c2 = inputs
    total = digpro_objective(p1, p2, q1, q2, k1, k2, labels, groups, c1, c2, num_clusters=3)[0]
    grads = dict(zip("p1 p2 q1 q2 k1 k2 c1 c2".split(), torch.autograd.grad(total, inputs, allow_unused=True)))
    assert grads["k1"] is None and grads["k2"] is None
    assert all(grads[n] is not None and grads[n].abs().sum() > 0 for n in ("p1", "p2", "q1", "q2", "c1", "c2"))


def test_official_defaults():
    obj = inspect.signature(digpro_objective).parameters
    names = ("temperature", "psl_weight", "grouping_weight", "beta", "group_temperature", "offset")
    assert {n: obj[n].default for n in names} == {"temperature": 0.5, "psl_weight": 0.1, "grouping_weight": 0.3,
                                                  "beta": 0.99, "group_temperature": 0.1, "offset": 0.0}
    assert inspect.signature(momentum_group_update).parameters["beta"].default == 0.99
    dgl = inspect.signature(dynamic_grouping_loss).parameters
    assert (dgl["beta"].default, dgl["temperature"].default) == (0.99, 0.1)
    sym = inspect.signature(symmetric_grouping).parameters
    assert (sym["beta"].default, sym["temperature"].default) == (0.99, 0.1)


def test_bad_inputs_raise_value_error():
    q, k, p, groups = _case(9)
    with pytest.raises(ValueError, match="columns"):
        assign_groups(q, groups[:, :2])
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        assign_groups(q[0], groups)
    with pytest.raises(ValueError, match="beta"):
        momentum_group_update(q, groups, beta=1.5)
    with pytest.raises(ValueError, match="temperature"):
        dynamic_grouping_loss(q, k, p, groups, temperature=0.0)
    with pytest.raises(ValueError, match="shape"):
        dynamic_grouping_loss(q, k[:5], p, groups)
    with pytest.raises(ValueError, match="shape"):
        symmetric_grouping(q, q, k, k, p, p[:4], groups)
    with pytest.raises(ValueError, match="shape"):
        digpro_objective(q, q, q, q, k, k, torch.zeros(10, dtype=torch.long), groups, p, p[:4], num_clusters=3)
