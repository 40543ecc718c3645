"""Consensus clustering (docs/methods/divclust.md): SCCBG, HBGF, co-association, dispatcher and script."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.optimize import minimize
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from consensus import coassociation_average_linkage, hbgf, run_consensus, sccbg
from consensus.box_qp import solve_s_rows as _solve_s_rows
from consensus.box_qp import solve_s_rows_unit_weights, solve_w_rows as _solve_w_rows, unit_weight_jacobi
from consensus.self_paced_bipartite import sccbg_solve
from consensus.synthetic import planted_ensemble

REPO = Path(__file__).resolve().parents[1]


def _is_first_appearance_order(labels: np.ndarray) -> bool:
    seen: list[int] = []
    for value in labels.tolist():
        if value not in seen:
            if value != len(seen):
                return False
            seen.append(value)
    return True


# -------------------------------------------------------------------------------------------------- SCCBG


def test_sccbg_recovers_planted_partition():
    truth, labels = planted_ensemble(500, 5, 12, noise=0.25, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a few points may end as singletons (official)
        predicted = sccbg(labels, 5)
    assert predicted.dtype == np.int64 and predicted.shape == (500,)
    assert _is_first_appearance_order(predicted)
    assert normalized_mutual_info_score(truth, predicted) > 0.95
    assert adjusted_rand_score(truth, predicted) > 0.95
    sizes = np.bincount(predicted)
    assert int((sizes >= 25).sum()) == 5  # the five planted clusters; anything else is a stray point
    np.testing.assert_array_equal(predicted, sccbg(torch.from_numpy(labels), 5))  # deterministic, tensor input


def test_sccbg_identical_clusterings_stop_at_first_iteration():
    truth = np.random.default_rng(1).integers(0, 4, 120)
    labels = np.stack([np.array([3, 1, 0, 2])[truth], truth + 10, np.array([2, 0, 3, 1])[truth]])
    result = sccbg_solve(labels, 4)
    assert result.stopped_on_rank and result.iterations == 1 and result.n_clusters_found == 4
    assert adjusted_rand_score(truth, result.labels) == 1.0


def test_sccbg_warns_when_the_component_count_differs():
    _, labels = planted_ensemble(200, 4, 6, noise=0.3, seed=2)
    with pytest.warns(RuntimeWarning, match=r"SCCBG found \d+ clusters instead of the requested 4"):
        predicted = sccbg(labels, 4, max_iter=1)  # one iteration cannot split the connected graph
    assert len(np.unique(predicted)) != 4


def test_sccbg_s_step_solves_the_row_qps():
    rng = np.random.default_rng(0)
    rows, width, gamma, lam = 4, 6, 0.01, 0.7
    counts = rng.integers(0, 3, (40, width)).astype(float)
    affinity = counts.T @ counts
    b = (rng.random((rows, width)) < 0.4).astype(float)
    w, x0, dist = rng.random((rows, width)), rng.random((rows, width)), rng.random((rows, width))
    w[0, 2] = 0.0

    def objective(x, i):
        coupling = affinity * np.outer(w[i], w[i]) * (x[:, None] - x[None, :]) ** 2
        return np.sum(w[i] ** 2 * (x - b[i]) ** 2) + gamma * coupling.sum() + lam * dist[i] @ x

    t = lambda a: torch.tensor(a, dtype=torch.float64)  # noqa: E731
    solved = _solve_s_rows(t(w), t(b), t(x0), t(dist), t(affinity), gamma, lam).numpy()
    for i in range(rows):
        reference = minimize(objective, x0[i], args=(i,), bounds=[(0, 1)] * width, method="L-BFGS-B",
                             options={"ftol": 1e-15, "gtol": 1e-12})
        assert objective(solved[i], i) <= reference.fun + 1e-12
        np.testing.assert_allclose(solved[i], reference.x, atol=1e-6)


def test_sccbg_w_step_reaches_a_stationary_point_below_the_start():
    rng = np.random.default_rng(1)
    rows, width, gamma, rho = 4, 6, 0.01, 0.5
    counts = rng.integers(0, 3, (40, width)).astype(float)
    affinity = counts.T @ counts
    s, b = rng.random((rows, width)), (rng.random((rows, width)) < 0.4).astype(float)
    start = np.zeros((rows, width))

    def objective_and_gradient(x, i):
        q = affinity * (s[i][:, None] - s[i][None, :]) ** 2
        delta = (s[i] - b[i]) ** 2
        return delta @ x**2 + gamma * x @ q @ x - rho * x.sum(), 2 * delta * x + 2 * gamma * q @ x - rho

    t = lambda a: torch.tensor(a, dtype=torch.float64)  # noqa: E731
    solved = _solve_w_rows(t(s), t(b), t(start), t(affinity), t(affinity.sum(1)), gamma, rho).numpy()
    for i in range(rows):
        value, gradient = objective_and_gradient(solved[i], i)
        assert value < objective_and_gradient(start[i], i)[0]
        assert np.abs(np.clip(solved[i] - gradient, 0, 1) - solved[i]).max() < 1e-8  # projected-gradient KKT


def test_sccbg_unit_weight_jacobi_solves_the_row_qps():
    # With all weights 1 the S-step QP is strictly convex: Jacobi (float64 alone, or after float32 sweeps),
    # FISTA and an independent L-BFGS-B solve must reach the same minimiser.
    rng = np.random.default_rng(2)
    rows, width, gamma, lam = 5, 7, 0.02, 1.3
    counts = rng.integers(0, 3, (40, width)).astype(float)
    affinity = counts.T @ counts
    b = (rng.random((rows, width)) < 0.4).astype(float)
    x0, dist = rng.random((rows, width)), rng.random((rows, width))
    dist[0] = 0.0  # a row with no spectral pull
    ones = np.ones((rows, width))

    def objective(x, i):
        coupling = affinity * (x[:, None] - x[None, :]) ** 2
        return np.sum((x - b[i]) ** 2) + gamma * coupling.sum() + lam * dist[i] @ x

    t = lambda a: torch.tensor(a, dtype=torch.float64)  # noqa: E731
    coupling, inv_diag = unit_weight_jacobi(t(affinity), gamma)
    jacobi = solve_s_rows_unit_weights(t(b), t(x0), t(dist), coupling, inv_diag, lam).numpy()
    mixed = solve_s_rows_unit_weights(t(b), t(x0), t(dist), coupling, inv_diag, lam,
                                      coupling_low=coupling.float()).numpy()
    fista = _solve_s_rows(t(ones), t(b), t(x0), t(dist), t(affinity), gamma, lam).numpy()
    for i in range(rows):
        reference = minimize(objective, x0[i], args=(i,), bounds=[(0, 1)] * width, method="L-BFGS-B",
                             options={"ftol": 1e-15, "gtol": 1e-12})
        assert objective(jacobi[i], i) <= reference.fun + 1e-12
        np.testing.assert_allclose(jacobi[i], reference.x, atol=1e-6)
    np.testing.assert_allclose(jacobi, fista, atol=1e-9)
    np.testing.assert_allclose(mixed, jacobi, atol=1e-9)


def test_sccbg_fast_path_matches_the_reference_path():
    # The unit-weight Jacobi S-step on 2 row-block threads against the all-FISTA path on one thread
    # (the implementation before the speed-up): same labels up to renaming, same graph up to solver tolerance.
    truth, labels = planted_ensemble(1500, 6, 10, noise=0.3, seed=6)
    fast = sccbg_solve(labels, 6, workers=2)
    reference = sccbg_solve(labels, 6, workers=1, unit_weight_solver=False)
    assert fast.iterations == reference.iterations and fast.stopped_on_rank == reference.stopped_on_rank
    assert adjusted_rand_score(reference.labels, fast.labels) == 1.0
    np.testing.assert_allclose(fast.graph, reference.graph, atol=1e-8)
    assert normalized_mutual_info_score(truth, fast.labels) > 0.95
    assert int((np.bincount(fast.labels) >= 100).sum()) == 6  # the planted clusters (+ stray singletons)
    np.testing.assert_array_equal(fast.graph, sccbg_solve(labels, 6, workers=1).graph)  # thread count


def test_sccbg_is_importable_on_its_own():
    code = "from consensus import sccbg; import numpy as np; print(sccbg(np.array([[0, 0, 1, 1], [1, 1, 0, 0]]), 2))"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[0 0 1 1]"


# ----------------------------------------------------------------------------------------------- baselines


@pytest.mark.parametrize("method", [hbgf, coassociation_average_linkage])
def test_baselines_recover_planted_partition(method):
    truth, labels = planted_ensemble(600, 6, 10, noise=0.3, seed=3)
    predicted = method(labels, 6)
    assert predicted.dtype == np.int64 and len(np.unique(predicted)) == 6
    assert _is_first_appearance_order(predicted)
    assert normalized_mutual_info_score(truth, predicted) > 0.9
    np.testing.assert_array_equal(predicted, method(torch.from_numpy(labels), 6))


def test_coassociation_returns_exactly_c_clusters_with_tied_merges():
    # Four equally sized label tuples at pairwise Hamming distance 1/2 or 1: merges tie at the cut height.
    labels = np.array([[0, 0, 1, 1] * 5, [0, 1, 0, 1] * 5])
    for c in (1, 2, 3, 4):
        assert len(np.unique(coassociation_average_linkage(labels, c))) == c


def test_coassociation_refuses_large_inputs():
    with pytest.raises(ValueError, match="hbgf"):
        coassociation_average_linkage(np.zeros((2, 50), dtype=np.int64), 2, max_points=40)


def test_single_clustering_is_returned_renumbered_with_a_warning():
    row = np.array([[7, 7, 3, 9, 3]])
    for method in ("sccbg", "hbgf", "coassoc"):
        with pytest.warns(UserWarning, match="at least 2 clusterings, got 1"):
            np.testing.assert_array_equal(run_consensus(row, 3, method=method), [0, 0, 1, 2, 1])


# ---------------------------------------------------------------------------------------- input checking


def test_dispatcher_names_and_errors():
    truth, labels = planted_ensemble(80, 3, 4, noise=0.0, seed=4)
    assert adjusted_rand_score(truth, run_consensus(labels, 3, method="coassociation_average_linkage")) == 1.0
    assert adjusted_rand_score(truth, run_consensus(labels, 3, method="hbgf", seed=1)) == 1.0
    assert adjusted_rand_score(truth, run_consensus(labels, 3)) == 1.0  # sccbg by default
    with pytest.raises(ValueError, match=r"unknown consensus method 'kmeans'.*'sccbg'.*'coassoc'"):
        run_consensus(labels, 3, method="kmeans")


@pytest.mark.parametrize("method", [sccbg, hbgf, coassociation_average_linkage])
def test_bad_inputs_raise(method):
    good = np.zeros((2, 6), dtype=np.int64)
    with pytest.raises(ValueError, match="n_clusters"):
        method(good, 0)
    with pytest.raises(ValueError, match="n_clusters"):
        method(good, 7)
    with pytest.raises(ValueError, match="2-D"):
        method(np.zeros(6, dtype=np.int64), 2)
    with pytest.raises(ValueError, match="integer"):
        method(np.zeros((2, 6)), 2)
    with pytest.raises(ValueError, match="mismatched lengths"):
        method([np.zeros(6, dtype=np.int64), np.zeros(5, dtype=np.int64)], 2)
    with pytest.raises(ValueError, match="mismatched lengths"):
        method([torch.zeros(6, dtype=torch.long), torch.zeros(4, dtype=torch.long)], 2)
    with pytest.raises(ValueError, match="at least 2 clusterings"):
        method(np.zeros((0, 6), dtype=np.int64), 2)


# ------------------------------------------------------------------------------------------------- script


def test_script_on_a_small_npz(tmp_path, capsys):
    truth, labels = planted_ensemble(120, 3, 5, noise=0.1, seed=5)
    ground_truth = truth.copy()
    ground_truth[:10] = -1  # unknown labels are not scored
    np.savez(tmp_path / "predictions.npz", assignments=labels, indices=np.arange(120), labels=ground_truth)
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "consensus.py"), str(tmp_path), "--method", "hbgf",
         "--num_clusters", "3"],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    saved = np.load(tmp_path / "consensus_predictions.npy")
    assert saved.shape == (120,) and saved.dtype == np.int64
    np.testing.assert_array_equal(saved, hbgf(labels, 3))
    assert "scored on 110 labelled samples" in done.stdout
    consensus_line = next(line for line in done.stdout.splitlines() if line.startswith("consensus"))
    acc, nmi, ari = (float(v) for v in consensus_line.split()[1:])
    assert nmi == pytest.approx(normalized_mutual_info_score(truth[10:], saved[10:]), abs=1e-4)
    assert ari == pytest.approx(adjusted_rand_score(truth[10:], saved[10:]), abs=1e-4)
    assert 0.9 < acc <= 1.0
    assert sum(line.startswith("clustering ") for line in done.stdout.splitlines()) == 5

    # Unlabelled input, run in-process (same entry point): nothing to score, output next to the .npz.
    np.savez(tmp_path / "unlabelled.npz", assignments=labels, indices=np.arange(120))
    spec = importlib.util.spec_from_file_location("consensus_script", REPO / "scripts" / "consensus.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    report = script.main([str(tmp_path / "unlabelled.npz"), "--method", "coassoc", "--num_clusters", "3"])
    assert "nothing to score" in capsys.readouterr().out
    assert report["n_clusters_found"] == 3 and "consensus" not in report
    np.testing.assert_array_equal(np.load(tmp_path / "consensus_predictions.npy"),
                                  coassociation_average_linkage(labels, 3))
