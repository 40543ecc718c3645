"""Tests of losses/hadis.py against docs/methods/hadis.md section 4.2, computed independently with loops."""

from __future__ import annotations

import inspect
import math

import numpy as np
import pytest
import torch

from losses.hadis import hadis_objective, hardness_aware_self_distillation_loss, symmetric_hsd
from losses.propos import propos_objective

# ---------------------------------------------------------------------------------------------------------------
# independent reference: explicit loops over (python floats)
# ---------------------------------------------------------------------------------------------------------------


def _unit_rows(x: np.ndarray) -> list[list[float]]:
    rows = []
    for r in x:
        n = max(math.sqrt(sum(float(v) ** 2 for v in r)), 1e-12)
        rows.append([float(v) / n for v in r])
    return rows


def _dist(a: list[float], b: list[float]) -> float:
    sq = sum(v * v for v in a) + sum(v * v for v in b) - 2 * sum(u * v for u, v in zip(a, b))
    return math.sqrt(max(sq, 1e-12))


def ref_hsd_mining(teacher: np.ndarray, student: np.ndarray) -> list[dict]:
    """Per anchor: mined columns, their distances and the hardness weights (all plain numbers)."""
    t, s = _unit_rows(teacher), _unit_rows(student)
    b = len(t)
    rows = []
    for i in range(b):
        r = _dist(t[i], s[i])
        negatives = [j for j in range(b) if _dist(t[i], t[j]) > r]
        positives = [j for j in range(b) if j not in negatives]
        if negatives:
            jn = min(negatives, key=lambda j: _dist(t[i], s[j]))
            dn, wn = _dist(t[i], s[jn]), max(_dist(t[i], t[jn]) - _dist(t[i], s[jn]), 0.0)
        else:
            jn, dn, wn = None, 1e5, 0.0
        jp = max(positives, key=lambda j: _dist(t[i], s[j]))
        dp, wp = _dist(t[i], s[jp]), max(_dist(t[i], s[jp]) - _dist(t[i], t[jp]), 0.0)
        rows.append(dict(jn=jn, dn=dn, wn=wn, jp=jp, dp=dp, wp=wp))
    return rows


def ref_hsd(teacher: np.ndarray, student: np.ndarray, tau: float = 0.5) -> float:
    rows = ref_hsd_mining(teacher, student)
    return sum(math.log(1 + math.exp((r["wp"] * r["dp"] - r["wn"] * r["dn"]) / tau)) for r in rows) / len(rows)


def ref_hsd_frozen(teacher: np.ndarray, student: np.ndarray, mining: list[dict], tau: float) -> float:
    """HSD with mined columns and hardness weights frozen (what the stop-gradient differentiates)."""
    t, s = _unit_rows(teacher), _unit_rows(student)
    total = 0.0
    for i, r in enumerate(mining):
        dn = _dist(t[i], s[r["jn"]]) if r["jn"] is not None else 1e5
        dp = _dist(t[i], s[r["jp"]])
        total += math.log(1 + math.exp((r["wp"] * dp - r["wn"] * dn) / tau))
    return total / len(mining)


def _pair(seed: int, b: int = 7, d: int = 5, noise: float = 0.6, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    teacher = torch.randn(b, d, generator=g, dtype=dtype)
    student = teacher + noise * torch.randn(b, d, generator=g, dtype=dtype)  # mix of positives and negatives
    return teacher, student


# ---------------------------------------------------------------------------------------------------------------
# HSD value
# ---------------------------------------------------------------------------------------------------------------


def test_hsd_hand_case():
    # t1 = e1, t2 = e2; s1 = (1/2, sqrt3/2) (60 degrees off t1), s2 = t2 (unnormalised inputs on purpose)
    teacher = torch.tensor([[3.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
    student = torch.tensor([[0.5, math.sqrt(3) / 2], [0.0, 7.0]], dtype=torch.float64)
    # anchor 1: r = |t1 - s1| = 1; negative {2} (Dt = sqrt2 > 1) with d- = |t1 - s2| = sqrt2 = a- -> w- = 0;
    #           positive {1}: d+ = 1, a+ = 1e-6 (distance floor) -> w+ = 1 - 1e-6
    # anchor 2: r = 1e-6 (s2 = t2, floor); negative {1}: d- = |t2 - s1| = sqrt(2 - sqrt3), a- = sqrt2;
    #           positive {2}: d+ = a+ = 1e-6 -> w+ = 0
    wp1 = 1 - 1e-6
    dn2 = math.sqrt(2 - math.sqrt(3))
    wn2 = math.sqrt(2) - dn2
    expected = 0.5 * (math.log(1 + math.exp(wp1 * 1.0 / 0.5)) + math.log(1 + math.exp(-wn2 * dn2 / 0.5)))
    value = hardness_aware_self_distillation_loss(teacher, student).item()
    assert value == pytest.approx(expected, rel=1e-12, abs=1e-12)


def test_hsd_perfect_student_is_log2():
    # student == teacher: every weight is 0, both logits 0 -> CE = log 2
    teacher, _ = _pair(0)
    assert hardness_aware_self_distillation_loss(teacher, teacher.clone()).item() == pytest.approx(math.log(2))


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
@pytest.mark.parametrize("tau", [0.5, 0.1])
def test_hsd_matches_loop_reference(seed: int, tau: float):
    teacher, student = _pair(seed)
    expected = ref_hsd(teacher.numpy(), student.numpy(), tau)
    value = hardness_aware_self_distillation_loss(teacher, student, tau=tau).item()
    assert value == pytest.approx(expected, rel=1e-10, abs=1e-12)


def test_hsd_anchor_without_negative():
    # teachers nearly identical; student 0 points away, so no teacher is farther from t0 than s0 is
    teacher = torch.tensor([[1.0, 0.0], [1.0, 0.1], [1.0, -0.1]], dtype=torch.float64)
    student = torch.tensor([[-1.0, 0.05], [1.0, 0.3], [0.9, -0.2]], dtype=torch.float64)
    mining = ref_hsd_mining(teacher.numpy(), student.numpy())
    assert mining[0]["jn"] is None and any(r["jn"] is not None for r in mining[1:])
    value = hardness_aware_self_distillation_loss(teacher, student).item()
    assert value == pytest.approx(ref_hsd(teacher.numpy(), student.numpy()), rel=1e-10, abs=1e-12)


# ---------------------------------------------------------------------------------------------------------------
# HSD gradients
# ---------------------------------------------------------------------------------------------------------------


def test_hsd_gradient_matches_frozen_weight_finite_differences():
    # gradcheck against the full function does not apply: the hardness weights are stop-gradient functions of
    # the student. The documented gradient is that of HSD with mined columns and weights held fixed.
    teacher, student = _pair(5, b=6, d=4)
    t_np, s_np = teacher.numpy(), student.numpy()
    mining = ref_hsd_mining(t_np, s_np)
    assert any(r["wp"] > 0 for r in mining) and any(r["wn"] > 0 for r in mining)
    s = student.clone().requires_grad_(True)
    grad, = torch.autograd.grad(hardness_aware_self_distillation_loss(teacher, s), s)
    numeric = np.zeros_like(s_np)
    eps = 1e-6
    for i in range(s_np.shape[0]):
        for j in range(s_np.shape[1]):
            up, down = s_np.copy(), s_np.copy()
            up[i, j] += eps
            down[i, j] -= eps
            difference = ref_hsd_frozen(t_np, up, mining, 0.5) - ref_hsd_frozen(t_np, down, mining, 0.5)
            numeric[i, j] = difference / (2 * eps)
    assert np.allclose(grad.numpy(), numeric, rtol=1e-5, atol=1e-8)


def test_hsd_teacher_is_stop_gradient():
    teacher, student = _pair(6)
    t = teacher.clone().requires_grad_(True)
    s = student.clone().requires_grad_(True)
    hardness_aware_self_distillation_loss(t, s).backward()
    assert t.grad is None
    assert s.grad is not None and s.grad.abs().sum() > 0


def test_hsd_float32_matches_float64():
    teacher, student = _pair(7, b=16, d=8)
    v64 = hardness_aware_self_distillation_loss(teacher, student)
    v32 = hardness_aware_self_distillation_loss(teacher.float(), student.float())
    assert v32.dtype == torch.float32
    # Looser than float32 epsilon on purpose: the official distance formula |a|^2 + |b|^2 - 2<a, b> cancels, so
    # a teacher's distance to itself is ~sqrt(4 * 1.2e-7) ~ 7e-4 in float32 instead of the 1e-6 floor, and the
    # hardness weights move by that much (the official code behaves the same in float32).
    assert v32.item() == pytest.approx(v64.item(), rel=0, abs=2e-3)


# ---------------------------------------------------------------------------------------------------------------
# objective
# ---------------------------------------------------------------------------------------------------------------


def _views(seed: int, n: int = 8, d: int = 6, k: int = 3):
    g = torch.Generator().manual_seed(seed)
    tensors = [torch.randn(n, d, generator=g, dtype=torch.float64) for _ in range(6)]
    return tensors, torch.randint(0, k, (n,), generator=g)


def test_symmetric_hsd_by_reference():
    (p1, p2, _, _, k1, k2), _ = _views(8)
    hsd = 0.5 * (ref_hsd(k2.numpy(), p1.numpy()) + ref_hsd(k1.numpy(), p2.numpy()))
    assert symmetric_hsd(k1, k2, p1, p2).item() == pytest.approx(hsd, rel=1e-10, abs=1e-12)


def test_symmetric_hsd_gradients_reach_students_only():
    (p1, p2, _, _, k1, k2), _ = _views(9)
    inputs = [t.clone().requires_grad_(True) for t in (k1, k2, p1, p2)]
    grads = torch.autograd.grad(symmetric_hsd(*inputs), inputs, allow_unused=True)
    assert grads[0] is None and grads[1] is None                     # teachers: no gradient
    assert all(g is not None and g.abs().sum() > 0 for g in grads[2:])


def test_hadis_objective_composition_and_warmup():
    (p1, p2, q1, q2, k1, k2), labels = _views(8)
    hsd = 0.5 * (ref_hsd(k2.numpy(), p1.numpy()) + ref_hsd(k1.numpy(), p2.numpy()))
    _, align_ref, psl_ref = propos_objective(p1, p2, q1, q2, k1, k2, labels, num_clusters=3)
    total, alignment, psl, hsd_value = hadis_objective(p1, p2, q1, q2, k1, k2, labels, num_clusters=3)
    assert hsd_value.item() == pytest.approx(hsd, rel=1e-10, abs=1e-12)
    assert alignment.item() == align_ref.item() and psl.item() == psl_ref.item()
    assert total.item() == pytest.approx(alignment.item() + hsd + 0.1 * psl.item(), rel=1e-12, abs=1e-12)
    # warm-up: PSL off, HSD stays on
    warm = hadis_objective(p1, p2, q1, q2, k1, k2, labels, num_clusters=3, psl_weight=0.0)[0]
    assert warm.item() == pytest.approx(alignment.item() + hsd, rel=1e-12, abs=1e-12)


def test_hadis_objective_gradients_reach_online_only():
    (p1, p2, q1, q2, k1, k2), labels = _views(9)
    inputs = [t.clone().requires_grad_(True) for t in (p1, p2, q1, q2, k1, k2)]
    total = hadis_objective(*inputs, labels, num_clusters=3)[0]
    grads = torch.autograd.grad(total, inputs, allow_unused=True)
    assert all(g is not None and g.abs().sum() > 0 for g in grads[:4])
    assert grads[4] is None and grads[5] is None


def test_official_defaults():
    p = inspect.signature(hadis_objective).parameters
    defaults = {name: p[name].default for name in ("temperature", "psl_weight", "tau", "hsd_weight", "offset")}
    assert defaults == {"temperature": 0.5, "psl_weight": 0.1, "tau": 0.5, "hsd_weight": 1.0, "offset": 0.0}
    assert inspect.signature(hardness_aware_self_distillation_loss).parameters["tau"].default == 0.5
    assert inspect.signature(symmetric_hsd).parameters["tau"].default == 0.5


def test_bad_inputs_raise_value_error():
    teacher, student = _pair(10)
    with pytest.raises(ValueError, match="at least 2"):
        hardness_aware_self_distillation_loss(teacher[:1], student[:1])
    with pytest.raises(ValueError, match="shape"):
        hardness_aware_self_distillation_loss(teacher, student[:, :3])
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        hardness_aware_self_distillation_loss(teacher[0], student[0])
    with pytest.raises(ValueError, match="tau"):
        hardness_aware_self_distillation_loss(teacher, student, tau=0.0)
    with pytest.raises(ValueError, match="dtype"):
        hardness_aware_self_distillation_loss(teacher, student.float())
