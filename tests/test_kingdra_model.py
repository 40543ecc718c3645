"""The Kingdra method: batched ensemble = M separate ladders, full-data normalisation at prediction, and the
outer-iteration bookkeeping (docs/methods/kingdra.md)."""

import pytest
import torch
from torch.func import vmap

from datasets import DataInfo
from engine.config import ConfigError
from engine.run import load_config as resolve
from losses.kingdra import align_pseudo_labels, im_loss, ladder_batchnorm, noise_kl
from models.context import RunContext
from models.kingdra import Kingdra, LadderEnsemble
from tests.conftest import RecordingLog


def make_method(*extra, n=40, dim=6, k=3, members=4):
    cfg = resolve(["--preset", "kingdra_digits", "--num_clusters", str(k), "--kingdra.ensemble_size", str(members),
                   "--kingdra.hidden_sizes", "[8, 5]", *extra])
    torch.manual_seed(0)
    return Kingdra(cfg, DataInfo("vector", 0, 0, dim, n, k))


def single_member(ensemble: LadderEnsemble, m: int) -> LadderEnsemble:
    """A one-member ensemble holding member m's parameters."""
    one = LadderEnsemble(1, ensemble.widths, last_layer_bn=ensemble.last_layer_bn)
    with torch.no_grad():
        for (name, p), (_, q) in zip(ensemble.named_parameters(), one.named_parameters()):
            q.copy_(p[m:m + 1])
    return one


def test_parameters_are_stacked_and_initialised_as_the_official_model():
    method = make_method(members=4)
    lad = method.ladder
    assert [tuple(w.shape) for w in lad.enc] == [(4, 6, 8), (4, 8, 5), (4, 5, 3)]
    assert [tuple(v.shape) for v in lad.dec] == [(4, 8, 6), (4, 5, 8), (4, 3, 5)]
    for w in list(lad.enc) + list(lad.dec):                      # truncated glorot normal
        std = (2.0 / (w.shape[1] + w.shape[2])) ** 0.5
        assert w.abs().max() <= 2 * std + 1e-6
    assert not torch.equal(lad.enc[0][0], lad.enc[0][1])          # members are initialised independently
    for a in lad.comb:
        assert torch.equal(a[:, [1, 6]], torch.ones_like(a[:, [1, 6]]))
        assert not a[:, [0, 2, 3, 4, 5, 7, 8, 9]].any()
    assert all(not b.any() for b in lad.beta)


def test_batched_losses_and_gradients_equal_separate_members():
    method = make_method("--kingdra.noise_std", "0.0", members=3)     # no noise: both computations are exact
    x = torch.randn(16, 6)
    lad = method.ladder
    corr, corr_z = lad.encode(x, noise_std=0.0)
    clean, clean_z = lad.encode(x, noise_std=0.0)
    cost = lad.ladder_cost(corr, corr_z, clean_z, [1000.0, 10.0, 0.1, 0.1])
    total = (cost + 0.1 * vmap(im_loss)(clean) + vmap(noise_kl)(clean, corr)).sum()
    total.backward()
    for m in range(3):
        one = single_member(lad, m)
        c1, z1 = one.encode(x, noise_std=0.0)
        k1, zk = one.encode(x, noise_std=0.0)
        cost1 = one.ladder_cost(c1, z1, zk, [1000.0, 10.0, 0.1, 0.1])
        loss1 = cost1[0] + 0.1 * im_loss(k1[0]) + noise_kl(k1[0], c1[0])
        assert torch.allclose(cost1[0], cost[m], rtol=1e-5)
        loss1.backward()
        for p, q in zip(lad.parameters(), one.parameters()):
            assert torch.allclose(p.grad[m], q.grad[0], rtol=1e-4, atol=1e-6)


def test_encoder_follows_the_ladder_equations():
    method = make_method(members=2)
    lad = method.ladder
    with torch.no_grad():
        for b in lad.beta:
            b.normal_()
    x = torch.randn(10, 6)
    logits, zs = lad.encode(x, noise_std=0.0)
    h = x
    for layer, (w, b) in enumerate(zip(lad.enc, lad.beta), start=1):
        a = torch.stack([h_m @ w_m for h_m, w_m in zip(h.expand(2, -1, -1), w)])
        z = torch.stack([ladder_batchnorm(a_m) for a_m in a]) if layer < 3 else a   # last_layer_bn false
        assert torch.allclose(zs[layer], z, atol=1e-5)
        h = z + b[:, None]
        h = torch.relu(h) if layer < 3 else h
    assert torch.allclose(logits, h, atol=1e-5)


def test_prediction_uses_full_data_statistics_in_any_chunking():
    method = make_method(members=3, n=50)
    data = torch.randn(50, 6) * 3 + 1
    method._data = data
    full_batch = torch.softmax(method.ladder.encode(data, noise_std=0.0)[0], -1)   # one batch of all 50 rows
    method._refresh_stats()
    chunked = torch.cat([method.member_probs(part) for part in data.split(7)], dim=1)
    assert torch.allclose(chunked, full_batch, atol=1e-5)
    # per-chunk batch statistics (the trap) give something else
    per_chunk = torch.cat([torch.softmax(method.ladder.encode(p, noise_std=0.0)[0], -1) for p in data.split(7)], 1)
    assert not torch.allclose(per_chunk, full_batch, atol=1e-3)
    heads = method.cluster_probs(data[:9])
    assert heads.shape == (4, 9, 3) and torch.allclose(heads[0], full_batch[:, :9].mean(0), atol=1e-5)
    assert method.features(data[:9]).shape == (9, 9)


def hook_context(method) -> RunContext:
    """The run context the outer-iteration hook sees (seed 0, 10 epochs), recording what it logs."""
    return RunContext(method, None, log=RecordingLog(), seed=0, epochs=10)


def one_hot_probs(ids, k):
    ids = torch.as_tensor(ids)
    return torch.nn.functional.one_hot(ids, k).float() * 0.9 + 0.1 / k


def test_outer_iteration_bookkeeping_saved_set_alignment_and_weights(monkeypatch):
    method = make_method("--kingdra.t_high", "3", "--kingdra.t_low", "1", "--kingdra.thresh", "0.5",
                         "--kingdra.im_weight_after_first", "0.5", members=4, n=9, k=3)
    ctx = hook_context(method)
    # Iteration 1: all members agree on three groups; the last member names them 2, 0, 1.
    base = [0, 0, 0, 1, 1, 1, 2, 2, 2]
    last = [2, 2, 2, 0, 0, 0, 1, 1, 1]
    first = one_hot_probs([base, base, base, last], 3)
    monkeypatch.setattr(method, "_predict_all", lambda: first)
    method._end_outer_iteration(ctx)
    assert int(method.outer_iteration) == 1 and int(method.min_labels) == 3 and int(method.best_min_labels) == 3
    assert method.pseudo_labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert float(method.sup_weight) == 1.0 and float(method.im_weight) == 0.5
    # common mapping: every member trains on the groups renamed to the LAST member's ids, balanced and shuffled
    aligned = align_pseudo_labels(method.pseudo_labels, torch.tensor(last))
    for m in range(4):
        assert torch.equal(method.sup_target[m], aligned[method.sup_index[m]])
        assert sorted(method.sup_index[m].tolist()) == list(range(9))    # 9 rows, 3 per class
    assert not torch.equal(method.sup_index[0], method.sup_index[1])   # one shuffle per member
    assert "3 group(s)" in ctx._log.lines[-1] and ctx._log.metrics[-1]["kingdra/groups"] == 3
    # Iteration 2: no point is confident (top probability 0.4 < 0.5) -> no group; the saved set is used again.
    unsure = torch.nn.functional.one_hot(torch.tensor([base] * 4), 3).float() * 0.1 + 0.3
    monkeypatch.setattr(method, "_predict_all", lambda: unsure)
    method._end_outer_iteration(ctx)
    assert int(method.min_labels) == 3 and method.pseudo_labels.tolist() == base
    assert "saved set" in ctx._log.lines[-1] and int(method.outer_iteration) == 2
    assert method._iteration_length() == int(method.kc.epochs_per_iter)


def test_no_groups_keeps_the_unsupervised_schedule(monkeypatch):
    method = make_method("--kingdra.epochs_per_iter0", "2", "--kingdra.epochs_per_iter", "3", members=4, n=9, k=3)
    ctx = hook_context(method)
    rows = [[0, 1, 2, 0, 1, 2, 0, 1, 2], [0, 0, 0, 1, 1, 1, 2, 2, 2], [2, 1, 0, 2, 1, 0, 2, 1, 0],
            [1, 2, 0, 0, 1, 2, 2, 0, 1]]
    monkeypatch.setattr(method, "_predict_all", lambda: one_hot_probs(rows, 3))
    assert method._iteration_length() == 2
    method._end_outer_iteration(ctx)
    assert float(method.sup_weight) == 0.0 and not method._supervised and method._iteration_length() == 2
    assert float(method.im_weight) == pytest.approx(float(method.kc.im_weight))   # no im_weight_after_first


def test_common_mapping_false_aligns_each_member_and_reports_member_zero(monkeypatch):
    method = make_method("--kingdra.t_high", "3", "--kingdra.thresh", "0", "--kingdra.common_mapping", "false",
                         members=4, n=9, k=3)
    ids = [[0, 0, 0, 1, 1, 1, 2, 2, 2], [1, 1, 1, 2, 2, 2, 0, 0, 0], [2, 2, 2, 0, 0, 0, 1, 1, 1],
           [0, 0, 0, 2, 2, 2, 1, 1, 1]]
    monkeypatch.setattr(method, "_predict_all", lambda: one_hot_probs(ids, 3))
    method._end_outer_iteration(hook_context(method))
    for m in range(4):   # each member's targets are its own ids on the rows it is shown
        assert torch.equal(method.sup_target[m], torch.tensor(ids[m])[method.sup_index[m]])
    assert method.select_head() == 1


def test_settings_are_checked():
    with pytest.raises(ConfigError, match="denoising_cost"):
        Kingdra.check_config(resolve(["--preset", "kingdra_digits", "--kingdra.denoising_cost", "[1.0, 2.0]"]))
