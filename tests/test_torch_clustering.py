"""torch_clustering: docs/torch_clustering.md quality checks, Lloyd equivalence with scikit-learn, k-means++ and
empty-cluster behaviour, chunking/memory budget, GMM likelihoods, bad input. CPU only."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans as SklearnKMeans
from sklearn.datasets import make_blobs
from sklearn.metrics import adjusted_rand_score
from sklearn.preprocessing import normalize

from torch_clustering import GaussianMixture, KMeans, kmeans
from torch_clustering._collectives import LOCAL
from torch_clustering._distances import prepare, rows_per_chunk
from torch_clustering.kmeans_plus_plus import kmeans_plus_plus, random_init


def sse(X: np.ndarray, labels: np.ndarray, centres: np.ndarray) -> float:
    """Sum of squared euclidean distances to the returned centres, recomputed in float64."""
    return float(((X.astype(np.float64) - centres.astype(np.float64)[labels]) ** 2).sum())


def spherical_loss(X: np.ndarray, labels: np.ndarray) -> float:
    """Sum of 1 - cos(x, normalize(mean of x's cluster)) recomputed from the labels (the official code "sph")."""
    total = 0.0
    for k in np.unique(labels):
        members = X[labels == k].astype(np.float64)
        centre = members.mean(0)
        total += float((1.0 - members @ (centre / np.linalg.norm(centre))).sum())
    return total


# ------------------------------------------------------------------------------------------- the official code checks
@pytest.mark.parametrize("n, d, k, std, ref_sse, min_ari", [
    (5000, 16, 10, 4.5, 1_601_849.59, 0.97),   # KM-1
    (6000, 32, 20, 6.0, 6_857_490.85, 0.99),   # KM-2
])
def test_km_euclidean_matches_sklearn_quality(n, d, k, std, ref_sse, min_ari):
    X, y = make_blobs(n_samples=n, n_features=d, centers=k, cluster_std=std, random_state=0)
    result = kmeans(torch.tensor(X, dtype=torch.float32), k)
    labels, centres = result.labels.numpy(), result.centers.numpy()
    assert sse(X, labels, centres) <= 1.01 * ref_sse
    assert adjusted_rand_score(y, labels) >= min_ari
    # the reported inertia is scikit-learn's: sum of squared distances to the returned centres
    assert float(result.inertia) == pytest.approx(sse(X.astype(np.float32), labels, centres), rel=1e-5)


def test_km3_well_separated_is_perfect_with_kmeans_plus_plus():
    X, y = make_blobs(5000, 16, centers=10, cluster_std=1.0, random_state=0)
    labels = KMeans(10).fit_predict(torch.tensor(X, dtype=torch.float32)).numpy()
    assert adjusted_rand_score(y, labels) == 1.0


@pytest.mark.parametrize("n, d, k, std, ref_sph, min_ari", [
    (5000, 32, 10, 6.0, 1494.689, 0.99),   # KM-4
    (6000, 64, 20, 9.0, 2761.575, 0.98),   # KM-5
])
def test_km_cosine_quality(n, d, k, std, ref_sph, min_ari):
    X, y = make_blobs(n, d, centers=k, cluster_std=std, center_box=(-10, 10), random_state=1)
    X = normalize(X)
    result = kmeans(torch.tensor(X, dtype=torch.float32), k, metric="cosine")
    labels = result.labels.numpy()
    assert spherical_loss(X, labels) <= 1.01 * ref_sph
    assert adjusted_rand_score(y, labels) >= min_ari
    assert float(result.inertia) == pytest.approx(spherical_loss(X, labels), rel=1e-4)


@pytest.mark.parametrize("covariance_type, n_init, ref_bound", [("diag", 3, -22.67837), ("spherical", 2, -22.68657)])
def test_gmm_quality(covariance_type, n_init, ref_bound):  # GMM-1, GMM-2
    X, y = make_blobs(3000, 8, centers=6, cluster_std=[2.0 * (1 + 0.3 * i) for i in range(6)], random_state=2)
    gmm = GaussianMixture(6, covariance_type=covariance_type, n_init=n_init).fit(torch.tensor(X))
    assert gmm.lower_bound_ >= ref_bound - 0.01
    assert adjusted_rand_score(y, gmm.labels_.numpy()) >= 0.88
    assert gmm.lower_bound_ == pytest.approx(_numpy_mean_loglik(X, gmm), abs=1e-9)


def _numpy_mean_loglik(X: np.ndarray, gmm: GaussianMixture) -> float:
    """Mean log-likelihood of a diagonal/spherical mixture, by explicit per-component densities."""
    means = gmm.means_.numpy().astype(np.float64)
    var = gmm.covariances_.numpy().astype(np.float64)
    if var.ndim == 1:
        var = np.repeat(var[:, None], X.shape[1], axis=1)
    weights = gmm.weights_.numpy().astype(np.float64)
    per_component = []
    for k in range(means.shape[0]):
        log_pdf = -0.5 * (np.log(2 * np.pi * var[k]) + (X - means[k]) ** 2 / var[k]).sum(1)
        per_component.append(np.log(weights[k]) + log_pdf)
    stacked = np.stack(per_component, 1)
    top = stacked.max(1, keepdims=True)
    return float((top[:, 0] + np.log(np.exp(stacked - top).sum(1))).mean())


def test_same_call_twice_gives_identical_labels():
    X, _ = make_blobs(2000, 8, centers=6, cluster_std=3.0, random_state=3)
    X = torch.tensor(X, dtype=torch.float32)
    a, b = kmeans(X, 6, n_init=3), kmeans(X, 6, n_init=3)
    assert torch.equal(a.labels, b.labels)
    assert torch.equal(a.centers, b.centers)
    c, d = kmeans(X, 6, n_init=3, metric="cosine"), kmeans(X, 6, n_init=3, metric="cosine")
    assert torch.equal(c.labels, d.labels)


def test_more_clusters_than_distinct_points_gives_no_nan():
    distinct = torch.tensor([[0.0, 0.0], [5.0, 0.0], [0.0, 5.0], [5.0, 5.0], [9.0, 1.0]])
    X = distinct.repeat(20, 1)  # 100 points, 5 distinct values, K = 8
    for metric in ("euclidean", "cosine"):
        result = kmeans(X, 8, metric=metric, n_init=2, max_iter=50)
        assert torch.isfinite(result.centers).all()
        assert math.isfinite(float(result.inertia))
        assert result.labels.min() >= 0 and result.labels.max() < 8
    # euclidean: every distinct point is a centre, so the inertia is 0 up to float32 rounding of the centred data
    # (each centre is a float32 mean of 20 copies; squared residuals of ~1e-7 over 100 points)
    assert float(kmeans(X, 8, n_init=2).inertia) < 1e-9


def test_empty_cluster_is_reseeded_like_sklearn():
    """A centre far from all data gets no points in the first pass; it is moved to the farthest point, which
    leaves its old cluster (scikit-learn's rule), so the run equals scikit-learn's from the same start."""
    X, _ = make_blobs(600, 4, centers=4, cluster_std=1.0, random_state=5)
    init = X[[0, 1, 2]].copy()
    init = np.vstack([init, np.full((1, 4), 1e3)])
    ours = kmeans(torch.tensor(X), 4, init=torch.tensor(init), max_iter=50, tol=0.0)
    ref = SklearnKMeans(4, init=init, n_init=1, max_iter=50, tol=0.0, algorithm="lloyd").fit(X)
    assert torch.bincount(ours.labels, minlength=4).min() > 0
    assert float(ours.inertia) == pytest.approx(ref.inertia_, rel=1e-9)
    assert adjusted_rand_score(ref.labels_, ours.labels.numpy()) == 1.0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_twenty_lloyd_iterations_from_shared_init_match_sklearn(dtype):
    rng = np.random.RandomState(0)
    X = rng.randn(3000, 24).astype(np.float32 if dtype == torch.float32 else np.float64)
    X[:1000] += 2.0
    init = X[rng.choice(3000, 30, replace=False)]
    ours = kmeans(torch.tensor(X), 30, init=torch.tensor(init), max_iter=20, tol=0.0)
    ref = SklearnKMeans(30, init=init, n_init=1, max_iter=20, tol=0.0, algorithm="lloyd").fit(X)
    assert ours.n_iter == ref.n_iter_ == 20
    assert float(ours.inertia) == pytest.approx(ref.inertia_, rel=1e-4)  # issue: within 0.01 %
    if dtype == torch.float64:
        assert float(ours.inertia) == pytest.approx(ref.inertia_, rel=1e-9)
        assert np.array_equal(ours.labels.numpy(), ref.labels_)
        np.testing.assert_allclose(ours.centers.numpy(), ref.cluster_centers_, rtol=1e-9, atol=1e-9)


def test_float32_and_float64_agree():
    X, _ = make_blobs(3000, 16, centers=8, cluster_std=2.0, random_state=4)
    a = kmeans(torch.tensor(X, dtype=torch.float32), 8, n_init=3)
    b = kmeans(torch.tensor(X, dtype=torch.float64), 8, n_init=3)
    assert adjusted_rand_score(a.labels.numpy(), b.labels.numpy()) == 1.0
    assert float(a.inertia) == pytest.approx(float(b.inertia), rel=1e-5)


def test_cosine_ignores_row_scale():
    X, _ = make_blobs(1500, 12, centers=5, cluster_std=3.0, random_state=6)
    X = torch.tensor(X, dtype=torch.float64)
    scale = torch.rand(X.shape[0], 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 9 + 0.5
    a = kmeans(X, 5, metric="cosine", n_init=3)
    b = kmeans(X * scale, 5, metric="cosine", n_init=3)
    c = kmeans(torch.nn.functional.normalize(X, dim=1), 5, metric="cosine", n_init=3)  # unit rows: used uncopied
    for other in (b, c):
        assert torch.equal(a.labels, other.labels)
        assert float(a.inertia) == pytest.approx(float(other.inertia), rel=1e-9)


def test_euclidean_is_translation_invariant_in_float32():
    """Data far from the origin are centred internally, so the norm expansion keeps its float32 accuracy."""
    X, _ = make_blobs(3000, 16, centers=8, cluster_std=1.5, random_state=15)
    X = torch.tensor(X, dtype=torch.float32)
    near, far = kmeans(X, 8, n_init=2), kmeans(X + 1e4, 8, n_init=2)  # ||x||^2 ~ 1.6e9
    assert adjusted_rand_score(near.labels.numpy(), far.labels.numpy()) == 1.0
    assert float(far.inertia) == pytest.approx(float(near.inertia), rel=1e-4)
    torch.testing.assert_close(far.centers - 1e4, near.centers, rtol=0, atol=2e-2)


def test_chunking_and_memory_budget_do_not_change_the_result():
    X, _ = make_blobs(2000, 10, centers=7, cluster_std=2.5, random_state=7)
    X = torch.tensor(X, dtype=torch.float64)
    full = kmeans(X, 7, n_init=2)
    for kwargs in ({"chunk_size": 13}, {"memory_budget_mb": 7 * 8 * 50 / 2**20}):
        small = kmeans(X, 7, n_init=2, **kwargs)
        assert torch.equal(small.labels, full.labels)
        torch.testing.assert_close(small.centers, full.centers, rtol=1e-12, atol=1e-12)


def test_distance_block_respects_the_memory_budget():
    budget_mb = 1.0
    for device in (torch.device("cpu"), torch.device("cuda")):
        for k in (10, 1000, 10_000, 300_000):
            rows = rows_per_chunk(1_000_000, k, 4, device, chunk_size=None, memory_budget_mb=budget_mb)
            assert rows >= 1
            assert rows * k * 4 <= max(budget_mb * 2**20, k * 4)  # one row is the floor
            rows = rows_per_chunk(1_000_000, k, 4, device, chunk_size=4096, memory_budget_mb=budget_mb)
            assert rows * k * 4 <= max(budget_mb * 2**20, k * 4)


def test_predict_matches_fit_labels_and_nearest_centre():
    X, _ = make_blobs(1000, 6, centers=4, cluster_std=1.5, random_state=8)
    X = torch.tensor(X)
    model = KMeans(4, n_init=2).fit(X)
    assert torch.equal(model.predict(X), model.labels_)
    new = torch.randn(50, 6, dtype=torch.float64) * 5
    expected = torch.cdist(new, model.cluster_centers_).argmin(1)
    assert torch.equal(model.predict(new), expected)


def test_explicit_init_runs_once_and_random_init_is_a_seeded_randperm():
    X, _ = make_blobs(500, 5, centers=3, random_state=9)
    X = torch.tensor(X)
    result = kmeans(X, 3, init=X[:3], n_init=10)
    assert len(result.restart_inertias) == 1
    ws = prepare(X, "euclidean", LOCAL, chunk_size=None, memory_budget_mb=256.0)
    centres = random_init(ws, 3, torch.Generator().manual_seed(4), LOCAL)
    expected = X[torch.randperm(500, generator=torch.Generator().manual_seed(4))[:3]]
    torch.testing.assert_close(ws.to_user(centres), expected)
    assert len(kmeans(X, 3, init="random", n_init=4).restart_inertias) == 4


def test_kmeans_plus_plus_never_picks_a_point_twice_and_finds_separated_groups():
    X = torch.randn(12, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    ws = prepare(X, "euclidean", LOCAL, chunk_size=None, memory_budget_mb=256.0)
    for seed in range(5):  # K = N distinct points: D^2 weighting gives chosen points probability 0
        centres = ws.to_user(kmeans_plus_plus(ws, 12, torch.Generator().manual_seed(seed), LOCAL))
        hits = torch.cdist(centres, X).argmin(1)
        assert sorted(hits.tolist()) == list(range(12))
    groups = torch.cat([torch.randn(30, 2, dtype=torch.float64) * 0.01 + 100 * i for i in range(4)])
    ws = prepare(groups, "euclidean", LOCAL, chunk_size=None, memory_budget_mb=256.0)
    for seed in range(5):
        centres = ws.to_user(kmeans_plus_plus(ws, 4, torch.Generator().manual_seed(seed), LOCAL))
        assert sorted((centres[:, 0] / 100).round().long().tolist()) == [0, 1, 2, 3]


def test_gmm_predict_proba_is_a_posterior_and_float32_agrees():
    X, _ = make_blobs(800, 4, centers=3, cluster_std=1.0, random_state=10)
    model = GaussianMixture(3, n_init=2).fit(torch.tensor(X))
    proba = model.predict_proba(torch.tensor(X))
    torch.testing.assert_close(proba.sum(1), torch.ones(800, dtype=torch.float64))
    assert torch.equal(proba.argmax(1), model.labels_)
    assert model.score(torch.tensor(X)) == pytest.approx(model.lower_bound_, abs=1e-9)
    model32 = GaussianMixture(3, n_init=2).fit(torch.tensor(X, dtype=torch.float32))
    assert model32.lower_bound_ == pytest.approx(model.lower_bound_, abs=1e-4)
    assert adjusted_rand_score(model.labels_.numpy(), model32.labels_.numpy()) == 1.0


def test_gmm_cosine_keeps_unit_means():
    X, _ = make_blobs(600, 8, centers=3, cluster_std=1.0, random_state=11)
    model = GaussianMixture(3, metric="cosine", n_init=1).fit(torch.tensor(X))
    torch.testing.assert_close(model.means_.norm(dim=1), torch.ones(3, dtype=torch.float64))


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_parallel_row_ranges_and_both_cpu_gemms_give_the_same_result(monkeypatch, restore_threads):
    """The CPU fit splits rows over a thread pool and may use NumPy's BLAS: neither may change the result."""
    import torch_clustering._gemm as gemm
    import torch_clustering._parallel as parallel

    X, _ = make_blobs(3001, 12, centers=6, cluster_std=2.0, random_state=14)
    X = torch.tensor(X)
    results = {}
    for threads, backend in ((1, "torch"), (3, "torch"), (3, "numpy"), (1, "numpy")):
        torch.set_num_threads(threads)
        monkeypatch.setattr(parallel, "MIN_WORK_PER_THREAD", 1)  # use every thread even on this small problem
        monkeypatch.setattr(gemm, "_choice", backend)
        km = kmeans(X, 6, n_init=2)
        km_cos = kmeans(X, 6, n_init=2, metric="cosine")
        gmm = GaussianMixture(6, n_init=1).fit(X)
        results[threads, backend] = (km, km_cos, gmm)
        assert torch.get_num_threads() == threads  # each fit restored the caller's thread count
    (ref, ref_cos, ref_gmm) = results[1, "torch"]
    for km, km_cos, gmm in results.values():
        assert torch.equal(km.labels, ref.labels) and torch.equal(km_cos.labels, ref_cos.labels)
        torch.testing.assert_close(km.centers, ref.centers, rtol=1e-10, atol=1e-10)
        assert float(km.inertia) == pytest.approx(float(ref.inertia), rel=1e-12)
        assert gmm.lower_bound_ == pytest.approx(ref_gmm.lower_bound_, abs=1e-10)
        assert torch.equal(gmm.labels_, ref_gmm.labels_)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_float32_meets_the_km1_and_gmm_checks():
    X, y = make_blobs(n_samples=5000, n_features=16, centers=10, cluster_std=4.5, random_state=0)
    result = kmeans(torch.tensor(X, dtype=torch.float32, device="cuda"), 10)
    assert result.labels.device.type == "cuda" and result.centers.device.type == "cuda"
    labels, centres = result.labels.cpu().numpy(), result.centers.cpu().numpy()
    assert sse(X, labels, centres) <= 1.01 * 1_601_849.59
    assert adjusted_rand_score(y, labels) >= 0.97
    X, y = make_blobs(3000, 8, centers=6, cluster_std=[2.0 * (1 + 0.3 * i) for i in range(6)], random_state=2)
    gmm = GaussianMixture(6, n_init=3).fit(torch.tensor(X, dtype=torch.float32, device="cuda"))
    assert gmm.lower_bound_ >= -22.67837 - 0.01
    assert adjusted_rand_score(y, gmm.labels_.cpu().numpy()) >= 0.88


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_memory_stays_within_the_budget():
    n, d, k, budget_mb = 200_000, 64, 2000, 16.0
    X = torch.randn(n, d, device="cuda")
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    kmeans(X, k, init=X[:k], max_iter=3, memory_budget_mb=budget_mb)
    extra = torch.cuda.max_memory_allocated() - base
    full_matrix = n * k * 4
    assert extra < X.numel() * 4 + budget_mb * 2**20 + 64 * n + 2**24  # one copy + blocks + O(N) vectors + slack
    assert extra < full_matrix / 4


# ---------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("make, match", [
    (lambda: kmeans(torch.randn(5, 2), 6), "larger than the number of samples"),
    (lambda: kmeans(torch.tensor([[0.0, 1.0], [float("nan"), 2.0], [3.0, 4.0]]), 2), "NaN or inf"),
    (lambda: kmeans(torch.tensor([[0.0, 1.0], [float("inf"), 2.0], [3.0, 4.0]]), 2), "NaN or inf"),
    (lambda: kmeans(torch.randn(10, 2), 2, metric="manhattan"), "unknown metric 'manhattan'"),
    (lambda: KMeans(2, metric="cos"), "unknown metric 'cos'"),
    (lambda: kmeans(torch.empty(0, 3), 2), "empty"),
    (lambda: kmeans(torch.empty(4, 0), 2), "empty"),
    (lambda: kmeans(torch.randn(10), 2), "2-dimensional"),
    (lambda: kmeans(torch.randn(10, 2), 0), "n_clusters must be a positive integer"),
    (lambda: kmeans(torch.randn(10, 2), 2, init="kmeans++"), "unknown init"),
    (lambda: kmeans(torch.randn(10, 2), 2, init=torch.randn(3, 2)), r"shape \(n_clusters, D\)"),
    (lambda: kmeans(torch.randn(10, 2), 2, tol=-1.0), "tol must be"),
    (lambda: GaussianMixture(2).fit(torch.randn(1, 2)), "larger than the number of samples"),
    (lambda: GaussianMixture(2, covariance_type="full"), "unknown covariance_type"),
    (lambda: GaussianMixture(2, metric="l1"), "unknown metric"),
    (lambda: GaussianMixture(2).fit(torch.tensor([[float("nan"), 0.0]] * 4)), "NaN or inf"),
    (lambda: KMeans(2).predict(torch.randn(3, 2)), "not fitted"),
])
def test_bad_input_raises_a_clear_value_error(make, match):
    with pytest.raises(ValueError, match=match):
        make()
