"""CC losses against the documented formulas (docs/methods/cc.md), computed here with explicit Python loops."""
import math

import pytest
import torch

from losses.cc import cc_loss, cluster_contrastive_loss, cluster_entropy_regulariser, instance_contrastive_loss


def nt_xent_loops(rows, tau):
    m2 = len(rows)
    total = 0.0
    for r in range(m2):
        pos = (r + m2 // 2) % m2
        sims = [sum(a * b for a, b in zip(rows[r], rows[c])) / tau for c in range(m2)]
        denom = sum(math.exp(sims[c]) for c in range(m2) if c != r)
        total += -sims[pos] + math.log(denom)
    return total / m2


def test_instance_loss_matches_loops_and_does_not_normalise():
    g = torch.Generator().manual_seed(0)
    z_i, z_j = torch.randn(3, 4, generator=g, dtype=torch.float64), torch.randn(3, 4, generator=g, dtype=torch.float64)
    expected = nt_xent_loops(torch.cat([z_i, z_j]).tolist(), 0.5)
    assert instance_contrastive_loss(z_i, z_j, temperature=0.5).item() == pytest.approx(expected, rel=1e-12)
    # un-normalised input is used as is: scaling the rows changes the value
    assert instance_contrastive_loss(2 * z_i, 2 * z_j).item() != pytest.approx(expected)


def test_instance_loss_hand_case():
    # two orthogonal unit vectors per view, positives identical: S = Z Z^T / 0.5
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    # row r: positive sim 2, negatives: the other sample in both views (sim 0, 0), positive itself 2
    expected = -2 + math.log(math.exp(2) + 2 * math.exp(0))
    assert instance_contrastive_loss(z, z).item() == pytest.approx(expected, rel=1e-12)


def test_cluster_loss_cosine_of_columns_plus_entropy():
    g = torch.Generator().manual_seed(1)
    c_i = torch.softmax(torch.randn(5, 3, generator=g, dtype=torch.float64), 1)
    c_j = torch.softmax(torch.randn(5, 3, generator=g, dtype=torch.float64), 1)
    cols = []
    for c in (c_i, c_j):
        for k in range(3):
            col = c[:, k].tolist()
            norm = math.sqrt(sum(v * v for v in col))
            cols.append([v / norm for v in col])
    ce = nt_xent_loops(cols, 1.0)
    ent = 0.0
    for c in (c_i, c_j):
        p = c.sum(0) / c.sum()
        ent += math.log(3) + sum(float(v) * math.log(float(v)) for v in p)
    assert cluster_contrastive_loss(c_i, c_j, entropy_weight=0.0).item() == pytest.approx(ce, rel=1e-12)
    assert cluster_entropy_regulariser(c_i, c_j).item() == pytest.approx(ent, rel=1e-12)
    assert cluster_contrastive_loss(c_i, c_j).item() == pytest.approx(ce + ent, rel=1e-12)
    total, inst, clu = cc_loss(c_i, c_j, c_i, c_j)
    assert clu.item() == pytest.approx(ce + ent) and total.item() == pytest.approx(inst.item() + ce + ent)
    # C clusterings (DivClust's CC): the instance loss once, the cluster loss averaged over the clusterings
    flipped = c_i.flip(1)
    total_2, inst_2, clu_2 = cc_loss(c_i, c_j, torch.stack([c_i, flipped]), torch.stack([c_j, c_j.flip(1)]))
    assert inst_2.item() == inst.item()
    assert clu_2.item() == pytest.approx(0.5 * (clu.item() + cluster_contrastive_loss(flipped, c_j.flip(1)).item()))


def test_entropy_is_zero_for_uniform_marginals_and_positive_otherwise():
    uniform = torch.full((4, 4), 0.25, dtype=torch.float64)
    assert cluster_entropy_regulariser(uniform, uniform).item() == pytest.approx(0.0, abs=1e-15)
    collapsed = torch.tensor([[0.97, 0.01, 0.01, 0.01]] * 4, dtype=torch.float64)
    assert cluster_entropy_regulariser(collapsed, uniform).item() > 0.5


def test_column_norm_clamp_per_column():
    # an (almost) empty column is divided by max(norm, 1e-8), not by the product of norms
    c = torch.tensor([[1.0, 0.0], [1.0, 0.0]], dtype=torch.float64)
    value = cluster_contrastive_loss(c, c, entropy_weight=0.0)
    assert torch.isfinite(value)
    # rows: col0 (sim with itself 1), col1 = 0 -> all sims with col1 are 0
    expected = nt_xent_loops([[2 ** -0.5] * 2, [0.0, 0.0], [2 ** -0.5] * 2, [0.0, 0.0]], 1.0)
    assert value.item() == pytest.approx(expected, rel=1e-12)


def test_gradients_and_dtypes():
    g = torch.Generator().manual_seed(2)
    z_i = torch.nn.functional.normalize(torch.randn(4, 3, generator=g, dtype=torch.float64), dim=1).requires_grad_()
    z_j = torch.nn.functional.normalize(torch.randn(4, 3, generator=g, dtype=torch.float64), dim=1).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: instance_contrastive_loss(a, b), (z_i, z_j))
    l_i = torch.randn(4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    l_j = torch.randn(4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda a, b: cluster_contrastive_loss(torch.softmax(a, 1), torch.softmax(b, 1)), (l_i, l_j))
    v64 = cluster_contrastive_loss(torch.softmax(l_i, 1), torch.softmax(l_j, 1))
    v32 = cluster_contrastive_loss(torch.softmax(l_i.float(), 1), torch.softmax(l_j.float(), 1))
    assert v32.dtype == torch.float32 and v32.item() == pytest.approx(v64.item(), rel=1e-5)


def test_bad_shapes():
    with pytest.raises(ValueError):
        instance_contrastive_loss(torch.zeros(3, 2), torch.zeros(4, 2))
    with pytest.raises(ValueError):
        cluster_contrastive_loss(torch.zeros(3), torch.zeros(3))
