"""Tests of losses/propos.py against the formulas of docs/methods/propos.md section 4, computed independently."""

from __future__ import annotations

import inspect
import math

import numpy as np
import pytest
import torch

from losses.propos import (alignment_loss, compute_prototypes, gaussian_positive_sampling, propos_objective,
                           prototype_scattering_loss, symmetric_alignment, symmetric_psl)

# ---------------------------------------------------------------------------------------------------------------
# independent references: explicit python loops over the documented formulas (numpy, float64)
# ---------------------------------------------------------------------------------------------------------------


def _unit(v: np.ndarray) -> np.ndarray:
    n = math.sqrt(sum(float(x) ** 2 for x in v))
    return v / max(n, 1e-12)


def ref_prototypes(x: np.ndarray, labels: list[int], num_clusters: int) -> np.ndarray:
    out = np.zeros((num_clusters, x.shape[1]))
    for c in range(num_clusters):
        members = [x[i] for i in range(len(labels)) if labels[i] == c]
        if members:
            out[c] = _unit(sum(members) / len(members))
    return out


def ref_psl(q: np.ndarray, k: np.ndarray, labels: list[int], num_clusters: int, tau: float,
            present: list[int] | None = None) -> float:
    qn = np.stack([_unit(r) for r in q])
    kn = np.stack([_unit(r) for r in k])
    Q = ref_prototypes(qn, labels, num_clusters)
    Kt = ref_prototypes(kn, labels, num_clusters)
    present_set = set(labels if present is None else present)
    total, count = 0.0, 0
    for c in range(num_clusters):
        if c not in present_set:
            continue
        row = []
        for j in range(num_clusters):
            if j not in present_set:
                row.append(-10.0)
            elif j == c:
                row.append(float(Q[c] @ Kt[c]) / tau)
            else:
                row.append(float(Q[c] @ Q[j]) / tau)
        total += -row[c] + math.log(sum(math.exp(v) for v in row))
        count += 1
    return total / count


def ref_alignment(pred: np.ndarray, target: np.ndarray, offset: float) -> float:
    cosines = [float(pred[i] @ target[i]) / (np.linalg.norm(pred[i]) * np.linalg.norm(target[i]))
               for i in range(len(pred))]
    return offset - 2.0 * sum(cosines) / len(cosines)


def _random_case(seed: int, n: int = 12, d: int = 5, k: int = 4, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(n, d, generator=g, dtype=dtype) * 3.0
    kk = torch.randn(n, d, generator=g, dtype=dtype)
    labels = torch.randint(0, k - 1, (n,), generator=g)  # cluster k-1 is always empty
    return q, kk, labels


# ---------------------------------------------------------------------------------------------------------------
# Gaussian positive sampling (4.1)
# ---------------------------------------------------------------------------------------------------------------


def test_gaussian_positive_sampling_adds_scaled_noise():
    q = torch.tensor([[1.0, -2.0], [0.5, 3.0]], dtype=torch.float64)
    noise = torch.tensor([[0.3, 1.0], [-2.0, 0.0]], dtype=torch.float64)
    out = gaussian_positive_sampling(q, noise)  # default sigma 0.001
    expected = [[1.0003, -1.999], [0.498, 3.0]]
    assert torch.allclose(out, torch.tensor(expected, dtype=torch.float64), rtol=0, atol=1e-15)
    assert torch.equal(gaussian_positive_sampling(q, noise, latent_std=0.0), q)  # warm-up: no noise
    q.requires_grad_(True)
    gaussian_positive_sampling(q, noise, latent_std=0.5).sum().backward()
    assert torch.equal(q.grad, torch.ones_like(q))


# ---------------------------------------------------------------------------------------------------------------
# alignment (4.2)
# ---------------------------------------------------------------------------------------------------------------


def test_alignment_hand_case():
    pred = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
    target = torch.tensor([[1.0, 1.0], [0.0, -1.0]], dtype=torch.float64)
    # cosines 1/sqrt(2) and -1 -> -2 * mean = 1 - 1/sqrt(2)
    assert alignment_loss(pred, target).item() == pytest.approx(1 - 1 / math.sqrt(2), abs=1e-14)
    assert alignment_loss(pred, target, offset=2.0).item() == pytest.approx(3 - 1 / math.sqrt(2), abs=1e-14)


def test_alignment_matches_loop_reference_and_gradient():
    q, k, _ = _random_case(0)
    for offset in (0.0, 2.0):
        expected = ref_alignment(q.numpy(), k.numpy(), offset)
        assert alignment_loss(q, k, offset=offset).item() == pytest.approx(expected, rel=1e-12, abs=1e-12)
    pred = q.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda p: alignment_loss(p, k), (pred,))


def test_alignment_target_is_stop_gradient():
    q, k, _ = _random_case(1)
    pred = q.clone().requires_grad_(True)
    target = k.clone().requires_grad_(True)
    alignment_loss(pred, target).backward()
    assert target.grad is None
    assert pred.grad is not None and pred.grad.abs().sum() > 0


# ---------------------------------------------------------------------------------------------------------------
# prototypes (4.3)
# ---------------------------------------------------------------------------------------------------------------


def test_prototypes_hand_case_with_empty_cluster():
    x = torch.tensor([[3.0, 0.0], [1.0, 2.0], [0.0, -5.0]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 2])
    protos = compute_prototypes(x, labels, num_clusters=3)
    expected = torch.tensor([[2.0 / math.sqrt(5), 1.0 / math.sqrt(5)], [0.0, 0.0], [0.0, -1.0]],
                            dtype=torch.float64)
    assert torch.allclose(protos, expected, rtol=0, atol=1e-15)


def test_prototypes_match_loop_reference_and_gradcheck():
    q, _, labels = _random_case(2, k=5)
    expected = ref_prototypes(q.numpy(), labels.tolist(), 5)
    assert np.allclose(compute_prototypes(q, labels, num_clusters=5).numpy(), expected, rtol=1e-12, atol=1e-14)
    x = q.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda f: compute_prototypes(f, labels, num_clusters=5), (x,))


# ---------------------------------------------------------------------------------------------------------------
# prototype scattering loss (4.4)
# ---------------------------------------------------------------------------------------------------------------


def test_psl_hand_case_absent_cluster_fills_minus_ten():
    # prototypes: cluster 0 = e1, cluster 1 = e2 (online = target), cluster 2 absent, tau 0.5
    q = torch.tensor([[2.0, 0.0], [5.0, 0.0], [0.0, 3.0]], dtype=torch.float64)
    k = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 1])
    # each present row: S = [2, 0, -10] (positive 1/0.5, orthogonal negative 0, absent column -10)
    expected = -2.0 + math.log(math.exp(2.0) + 1.0 + math.exp(-10.0))
    value = prototype_scattering_loss(q, k, labels, num_clusters=3).item()
    assert value == pytest.approx(expected, rel=0, abs=1e-14)
    # -10 is a real logit, not -inf: dropping the e^-10 term changes the value
    assert abs(value - (-2.0 + math.log(math.exp(2.0) + 1.0))) > 1e-6


def test_psl_negatives_are_online_online():
    # online prototypes e1 / e2, target prototypes rotated: only the diagonal may use the target
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    k = torch.tensor([[1.0, 1.0], [-1.0, 1.0]], dtype=torch.float64)
    labels = torch.tensor([0, 1])
    pos = (1 / math.sqrt(2)) / 0.5  # <e1, (1,1)/sqrt2> / tau, same for row 1
    expected = -pos + math.log(math.exp(pos) + math.exp(0.0))  # online-online negative <e1, e2> = 0
    assert prototype_scattering_loss(q, k, labels, num_clusters=2).item() == pytest.approx(expected, abs=1e-14)


@pytest.mark.parametrize("seed", [3, 4, 5])
@pytest.mark.parametrize("tau", [0.5, 0.2])
def test_psl_matches_loop_reference(seed: int, tau: float):
    q, k, labels = _random_case(seed, n=10, k=5)
    expected = ref_psl(q.numpy(), k.numpy(), labels.tolist(), 5, tau)
    value = prototype_scattering_loss(q, k, labels, num_clusters=5, temperature=tau).item()
    assert value == pytest.approx(expected, rel=1e-12, abs=1e-12)


def test_psl_present_labels_quirk():
    # DDP quirk: prototypes from all labels, presence (and the average) from this rank's labels only
    q, k, labels = _random_case(6, n=10, k=5)
    present = labels[:3]
    expected = ref_psl(q.numpy(), k.numpy(), labels.tolist(), 5, 0.5, present=present.tolist())
    value = prototype_scattering_loss(q, k, labels, present, num_clusters=5).item()
    assert value == pytest.approx(expected, rel=1e-12, abs=1e-12)
    assert set(present.tolist()) != set(labels.tolist())  # the case really drops a present cluster
    assert value != pytest.approx(prototype_scattering_loss(q, k, labels, num_clusters=5).item(), abs=1e-6)


def test_psl_gradcheck_and_stop_gradient():
    q, k, labels = _random_case(7, n=9, k=4)
    qq = q.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: prototype_scattering_loss(x, k, labels, num_clusters=4), (qq,))
    kk = k.clone().requires_grad_(True)
    loss = prototype_scattering_loss(qq, kk, labels, num_clusters=4)
    loss.backward()
    assert kk.grad is None
    assert torch.isfinite(qq.grad).all() and qq.grad.abs().sum() > 0


def test_psl_float32_matches_float64():
    q, k, labels = _random_case(8, n=16, k=6)
    v64 = prototype_scattering_loss(q, k, labels, num_clusters=6)
    v32 = prototype_scattering_loss(q.float(), k.float(), labels, num_clusters=6)
    assert v64.dtype == torch.float64 and v32.dtype == torch.float32
    assert v32.item() == pytest.approx(v64.item(), rel=1e-5, abs=1e-6)


# ---------------------------------------------------------------------------------------------------------------
# objective (4.5)
# ---------------------------------------------------------------------------------------------------------------


def _views(seed: int, n: int = 8, d: int = 6, k: int = 3, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    tensors = [torch.randn(n, d, generator=g, dtype=dtype) for _ in range(6)]
    labels = torch.randint(0, k, (n,), generator=g)
    return tensors, labels


def test_symmetric_alignment_and_psl_by_reference():
    (p1, p2, q1, q2, k1, k2), labels = _views(9)
    a = [p.numpy() for p in (p1, p2, q1, q2, k1, k2)]
    align = 0.5 * (ref_alignment(a[0], a[5], 0.0) + ref_alignment(a[1], a[4], 0.0))
    psl = 0.5 * (ref_psl(a[2], a[5], labels.tolist(), 3, 0.5) + ref_psl(a[3], a[4], labels.tolist(), 3, 0.5))
    assert symmetric_alignment(p1, p2, k1, k2).item() == pytest.approx(align, rel=1e-12, abs=1e-12)
    assert symmetric_psl(q1, q2, k1, k2, labels, num_clusters=3).item() == pytest.approx(psl, rel=1e-12, abs=1e-12)
    # the presence of a cluster follows present_labels (this rank's labels under DDP)
    only_first = labels[labels == labels[0]]
    narrow = 0.5 * (ref_psl(a[2], a[5], labels.tolist(), 3, 0.5, present=set(only_first.tolist()))
                    + ref_psl(a[3], a[4], labels.tolist(), 3, 0.5, present=set(only_first.tolist())))
    assert symmetric_psl(q1, q2, k1, k2, labels, only_first, num_clusters=3).item() == pytest.approx(narrow, rel=1e-12)


def test_symmetric_losses_reach_online_only():
    (p1, p2, q1, q2, k1, k2), labels = _views(10)
    inputs = [t.clone().requires_grad_(True) for t in (p1, p2, q1, q2, k1, k2)]
    total = (symmetric_alignment(inputs[0], inputs[1], inputs[4], inputs[5])
             + 0.1 * symmetric_psl(inputs[2], inputs[3], inputs[4], inputs[5], labels, num_clusters=3))
    grads = torch.autograd.grad(total, inputs, allow_unused=True)
    assert all(g is not None and g.abs().sum() > 0 for g in grads[:4])
    assert grads[4] is None and grads[5] is None


def test_propos_objective_composition_and_warmup():
    (p1, p2, q1, q2, k1, k2), labels = _views(9)
    a = [p.numpy() for p in (p1, p2, q1, q2, k1, k2)]
    align = 0.5 * (ref_alignment(a[0], a[5], 0.0) + ref_alignment(a[1], a[4], 0.0))
    psl = 0.5 * (ref_psl(a[2], a[5], labels.tolist(), 3, 0.5) + ref_psl(a[3], a[4], labels.tolist(), 3, 0.5))
    total, alignment, psl_value = propos_objective(p1, p2, q1, q2, k1, k2, labels, num_clusters=3)
    assert alignment.item() == pytest.approx(align, rel=1e-12, abs=1e-12)
    assert psl_value.item() == pytest.approx(psl, rel=1e-12, abs=1e-12)
    assert total.item() == pytest.approx(align + 0.1 * psl, rel=1e-12, abs=1e-12)
    warm_total, warm_align, _ = propos_objective(p1, p2, q1, q2, k1, k2, labels, num_clusters=3, psl_weight=0.0)
    assert warm_total.item() == warm_align.item()
    assert symmetric_alignment(p1, p2, k1, k2).item() == alignment.item()
    assert symmetric_psl(q1, q2, k1, k2, labels, num_clusters=3).item() == psl_value.item()
    # under DDP the PSL runs on the gathered batch, this rank's labels deciding the present clusters
    gathered = {"q1": torch.cat([q1, q2]), "q2": torch.cat([q2, q1]), "k1": torch.cat([k1, k2]),
                "k2": torch.cat([k2, k1]), "labels": torch.cat([labels, labels])}
    _, align_g, psl_g = propos_objective(p1, p2, q1, q2, k1, k2, labels, num_clusters=3, gathered=gathered)
    assert align_g.item() == alignment.item()
    assert psl_g.item() == symmetric_psl(gathered["q1"], gathered["q2"], gathered["k1"], gathered["k2"],
                                         gathered["labels"], labels, num_clusters=3).item()


def test_propos_objective_gradients_reach_online_only():
    (p1, p2, q1, q2, k1, k2), labels = _views(10)
    inputs = [t.clone().requires_grad_(True) for t in (p1, p2, q1, q2, k1, k2)]
    total, _, _ = propos_objective(*inputs, labels, num_clusters=3)
    grads = torch.autograd.grad(total, inputs, allow_unused=True)
    assert all(g is not None and g.abs().sum() > 0 for g in grads[:4])
    assert grads[4] is None and grads[5] is None


def test_keyword_defaults_are_the_official_ones():
    assert inspect.signature(gaussian_positive_sampling).parameters["latent_std"].default == 0.001
    assert inspect.signature(alignment_loss).parameters["offset"].default == 0.0
    psl_params = inspect.signature(prototype_scattering_loss).parameters
    assert psl_params["temperature"].default == 0.5
    assert psl_params["num_clusters"].default is inspect.Parameter.empty  # required
    assert inspect.signature(symmetric_psl).parameters["temperature"].default == 0.5
    obj = inspect.signature(propos_objective).parameters
    assert (obj["temperature"].default, obj["psl_weight"].default, obj["offset"].default) == (0.5, 0.1, 0.0)
    assert inspect.signature(symmetric_alignment).parameters["offset"].default == 0.0


# ---------------------------------------------------------------------------------------------------------------
# bad inputs
# ---------------------------------------------------------------------------------------------------------------


def test_bad_inputs_raise_value_error():
    q, k, labels = _random_case(11, n=6, k=3)
    with pytest.raises(ValueError, match="shape"):
        gaussian_positive_sampling(q, q[:, :2])
    with pytest.raises(ValueError, match="latent_std"):
        gaussian_positive_sampling(q, q, latent_std=-1.0)
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        alignment_loss(q[0], k[0])
    with pytest.raises(ValueError, match="shape"):
        alignment_loss(q, k[:3])
    with pytest.raises(ValueError, match="dtype"):
        alignment_loss(q, k.float())
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        compute_prototypes(q, torch.full_like(labels, 2), num_clusters=2)
    with pytest.raises(ValueError, match="entries"):
        compute_prototypes(q, labels[:4], num_clusters=3)
    with pytest.raises(ValueError, match="integer"):
        prototype_scattering_loss(q, k, labels.double(), num_clusters=3)
    with pytest.raises(ValueError, match="num_clusters"):
        prototype_scattering_loss(q, k, labels, num_clusters=0)
    with pytest.raises(ValueError, match="temperature"):
        prototype_scattering_loss(q, k, labels, num_clusters=3, temperature=0.0)
    with pytest.raises(ValueError, match="present_labels"):
        prototype_scattering_loss(q, k, labels, labels[:0], num_clusters=3)
    with pytest.raises(ValueError, match="shape"):
        symmetric_psl(q, q, k, k[:, :3], labels, num_clusters=3)
