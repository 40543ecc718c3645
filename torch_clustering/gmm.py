"""Gaussian mixture (EM) with diagonal or spherical covariances in pure PyTorch: CPU/CUDA, chunked, DDP-aware.

docs/torch_clustering.md (reference `PyTorchGaussianMixture`). Choices, as documented
allows:
* initialisation: GMM restart i starts from one k-means run (same metric/init/max_iter/tol, k-means++ seeded
  random_state + i) -> one-hot responsibilities -> an M-step. The reference runs a full k-means with its own
  n_init restarts inside every GMM restart (n_init^2 k-means runs); scikit-learn, like this class, uses one.
* the "previous bound" of a restart starts at -inf (scikit-learn), not at 0 as in the reference (where a first
  bound within tol of 0 would stop at once).
* the kept parameters are the ones whose E-step produced the best bound, so `lower_bound_` is exactly the mean
  log-likelihood of the returned model (scikit-learn keeps the parameters after the following M-step).
* `fit_predict` returns labels (argmax of the posteriors), as the documented contract asks; `predict_proba` gives the
  (N, K) posteriors (the reference's `fit_predict` returns posteriors).
* cosine: rows are L2-normalised and the means re-normalised after every M-step (the reference's heuristic).
* sharded data across DDP ranks are supported as in `kmeans` (`sharded=True`): sufficient statistics all-reduced.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from . import _validation as check
from ._collectives import LOCAL, Collectives, layout, raise_together, same_width_message
from ._distances import Workspace, prepare, sq_norms_of_rows
from ._parallel import cpu_fit
from .kmeans import _lloyd
from .kmeans_plus_plus import kmeans_plus_plus, random_init

COVARIANCE_TYPES = ("diag", "spherical")


@dataclass
class _Params:
    means: torch.Tensor  # (K, D), workspace coordinates
    variances: torch.Tensor  # (K, D) diag or (K,) spherical, reg_covar included
    weights: torch.Tensor  # (K,)


@dataclass
class _Stats:
    """Sufficient statistics of a responsibility matrix: sum_i r_ik, sum_i r_ik x_i, sum_i r_ik x_i^2."""

    s0: torch.Tensor  # (K,)
    s1: torch.Tensor  # (K, D)
    s2: torch.Tensor  # (K, D) diag or (K,) spherical: sum_i r_ik ||x_i||^2 / D is enough there

    def all_reduce_(self, comm: Collectives) -> "_Stats":
        if comm.world_size > 1:
            k = self.s0.shape[0]
            packed = torch.cat([self.s0.to(torch.float64), self.s1.flatten().to(torch.float64),
                                self.s2.flatten().to(torch.float64)])
            comm.all_reduce_sum_(packed)
            dtype = self.s1.dtype
            self.s0 = packed[:k].to(dtype)
            self.s1 = packed[k: k + self.s1.numel()].view_as(self.s1).to(dtype)
            self.s2 = packed[k + self.s1.numel():].view_as(self.s2).to(dtype)
        return self


def _one_hot_stats(ws: Workspace, labels: torch.Tensor, k: int, spherical: bool) -> _Stats:
    X = ws.X
    d = X.shape[1]

    def run(start: int, stop: int) -> _Stats:
        part = _Stats(X.new_zeros(k), X.new_zeros((k, d)), X.new_zeros(k) if spherical else X.new_zeros((k, d)))
        for s, e in ws.chunks(start, stop, d):
            xc, lab = X[s:e], labels[s:e]
            part.s0.index_add_(0, lab, torch.ones_like(xc[:, 0]))
            part.s1.index_add_(0, lab, xc)
            part.s2.index_add_(0, lab, sq_norms_of_rows(xc) if spherical else xc * xc)
        return part

    return _sum_stats(ws.map(run))


def _sum_stats(parts: list[_Stats]) -> _Stats:
    total = parts[0]
    for p in parts[1:]:
        total.s0 += p.s0
        total.s1 += p.s1
        total.s2 += p.s2
    return total


def _m_step(stats: _Stats, n_total: int, reg_covar: float, cosine: bool) -> _Params:
    """M-step: n_k = s0 + 10 eps; pi = n_k / N; mu = s1 / n_k (normalised for cosine);
    var = s2/n_k - 2 mu s1/n_k + mu^2 + reg_covar (diag), its mean over features (spherical)."""
    eps = torch.finfo(stats.s1.dtype).eps
    nk = stats.s0 + 10 * eps
    mean_x = stats.s1 / nk.unsqueeze(1)
    means = F.normalize(mean_x, dim=1) if cosine else mean_x
    d = stats.s1.shape[1]
    if stats.s2.dim() == 1:  # spherical: mean over features of the diag variances
        cross = (2 * means * mean_x - means * means).sum(1)
        variances = (stats.s2 / nk - cross) / d + reg_covar
    else:
        variances = stats.s2 / nk.unsqueeze(1) - 2 * means * mean_x + means * means + reg_covar
    return _Params(means, variances, nk / n_total)


def _e_step(ws: Workspace, params: _Params, collect: bool, out_proba: torch.Tensor | None = None
            ) -> tuple[torch.Tensor, _Stats | None]:
    """Chunked E-step. Returns (sum over local rows of log p(x_i), float64; the responsibilities' statistics).

    log p~_ik = sum_d log N(x_id | mu_kd, var_kd) + log pi_k, evaluated as one GEMM per chunk (diag: two):
    -1/2 sum_d (x^2 - 2 x mu + mu^2)/var = x @ (mu/var)^T - 1/2 x^2 @ (1/var)^T - 1/2 sum_d mu^2/var.
    `out_proba` (n, K), if given, receives the posteriors.
    """
    X = ws.X
    n, d = X.shape
    k = params.means.shape[0]
    spherical = params.variances.dim() == 1
    precision = 1.0 / params.variances  # (K, D) or (K,)
    if spherical:
        log_det = d * torch.log(params.variances)
        mu_sq = (params.means * params.means).sum(1) * precision
        scaled_means = params.means * precision.unsqueeze(1)
    else:
        log_det = torch.log(params.variances).sum(1)
        mu_sq = (params.means * params.means * precision).sum(1)
        scaled_means = params.means * precision
    const = torch.log(params.weights) - 0.5 * (d * math.log(2 * math.pi) + log_det + mu_sq)  # (K,)

    def run(start: int, stop: int) -> tuple[torch.Tensor, _Stats | None]:
        block = X.new_empty((min(ws.rows(max(k, d)), stop - start), k))
        total = torch.zeros((), dtype=torch.float64, device=X.device)
        stats = _Stats(X.new_zeros(k), X.new_zeros((k, d)), X.new_zeros(k) if spherical else X.new_zeros((k, d))) \
            if collect else None
        for s, e in ws.chunks(start, stop, max(k, d)):
            xc = X[s:e]
            logp = block[: e - s]
            torch.addmm(const, xc, scaled_means.t(), out=logp)
            if spherical:
                sq = sq_norms_of_rows(xc)
                logp.addcmul_(sq.unsqueeze(1), precision.unsqueeze(0), value=-0.5)
            else:
                sq = xc * xc
                logp.addmm_(sq, precision.t(), alpha=-0.5)
            lse = torch.logsumexp(logp, dim=1)
            total += lse.sum(dtype=torch.float64)
            if collect or out_proba is not None:
                logp.sub_(lse.unsqueeze(1)).exp_()  # responsibilities
                if out_proba is not None:
                    out_proba[s:e] = logp
                if collect:
                    stats.s0 += logp.sum(0)
                    stats.s1.addmm_(logp.t(), xc)
                    if spherical:
                        stats.s2.addmv_(logp.t(), sq)
                    else:
                        stats.s2.addmm_(logp.t(), sq)
        return total, stats

    parts = ws.map(run)
    total = torch.stack([p[0] for p in parts]).sum()
    return total, (_sum_stats([p[1] for p in parts]) if collect else None)


@dataclass
class _Fit:
    bound: float
    params: _Params
    n_iter: int
    converged: bool


def _em(ws: Workspace, labels: torch.Tensor, k: int, *, spherical: bool, reg_covar: float, max_iter: int,
        tol: float, comm: Collectives) -> _Fit:
    cosine = ws.metric == "cosine"
    stats = _one_hot_stats(ws, labels, k, spherical).all_reduce_(comm)
    params = _m_step(stats, ws.n_total, reg_covar, cosine)
    best = _Fit(-float("inf"), params, 0, False)
    previous = -float("inf")
    for it in range(1, max_iter + 1):
        loglik, stats = _e_step(ws, params, collect=True)
        loglik = comm.all_reduce_sum_(loglik.view(1))[0]
        stats.all_reduce_(comm)
        bound, min_var = torch.stack([loglik / ws.n_total, params.variances.min().to(torch.float64)]).tolist()
        if not min_var > 0:
            raise ValueError("a GMM variance became <= 0 (ill-defined component); increase reg_covar "
                             "or use fewer clusters")
        if bound > best.bound:
            best = _Fit(bound, params, it, False)
        if abs(bound - previous) < tol:
            best.converged = True
            break
        previous = bound
        params = _m_step(stats, ws.n_total, reg_covar, cosine)
    best.n_iter = it  # EM iterations run by this restart
    return best


class GaussianMixture:
    """Gaussian mixture with 'diag' or 'spherical' covariances, fitted by EM from k-means initialisations.

    Attributes after fit: means_ (alias cluster_centers_) (K, D), covariances_ ((K, D) diag / (K,) spherical,
    reg_covar included), weights_ (K,), lower_bound_ (mean log-likelihood per point of the returned model),
    n_iter_, converged_, labels_ (argmax posteriors of the fitted points; all points with sharded data).
    """

    def __init__(self, n_clusters: int = 8, *, covariance_type: str = "diag", metric: str = "euclidean",
                 reg_covar: float = 1e-6, init: str = "k-means++", n_init: int = 10, max_iter: int = 300,
                 tol: float = 1e-4, random_state: int = 0, distributed: bool = False, sharded: bool = False,
                 chunk_size: int | None = None, memory_budget_mb: float = 256.0, verbose: bool = False) -> None:
        if covariance_type not in COVARIANCE_TYPES:
            raise ValueError(f"unknown covariance_type {covariance_type!r}; expected one of "
                             f"{', '.join(map(repr, COVARIANCE_TYPES))}")
        if init not in ("k-means++", "random"):
            raise ValueError(f"unknown init {init!r}; expected 'k-means++' or 'random'")
        self.n_clusters = check.check_positive_int(n_clusters, "n_clusters")
        self.covariance_type = covariance_type
        self.metric = check.check_metric(metric)
        self.reg_covar = check.check_non_negative_float(reg_covar, "reg_covar")
        self.init = init
        self.n_init = check.check_positive_int(n_init, "n_init")
        self.max_iter = check.check_positive_int(max_iter, "max_iter")
        self.tol = check.check_non_negative_float(tol, "tol")
        self.random_state = random_state
        self.distributed = distributed
        self.sharded = sharded
        self.chunk_size = chunk_size
        self.memory_budget_mb = memory_budget_mb
        self.verbose = verbose

    # ----------------------------------------------------------------------------------------------- fitting
    def fit(self, X) -> "GaussianMixture":
        X = check.as_data_matrix(X)
        with cpu_fit(X.device, X.shape[0] * X.shape[1] * self.n_clusters):
            return self._fit(X)

    def _fit(self, X: torch.Tensor) -> "GaussianMixture":
        data_comm, restart_comm = layout(self.distributed, self.sharded)
        group = data_comm if data_comm.world_size > 1 else restart_comm
        raise_together(check.empty_message(X, sharded=data_comm.world_size > 1), group, X.device)
        raise_together(same_width_message(X, data_comm), group, X.device)
        ws = prepare(X, self.metric, data_comm, chunk_size=self.chunk_size, memory_budget_mb=self.memory_budget_mb)
        raise_together(check.workspace_message(X, ws.finite), group, X.device)
        message = check.too_many_clusters_message(self.n_clusters, ws.n_total)
        if message:
            raise ValueError(message)
        tol_abs = self.tol * ws.mean_variance
        spherical = self.covariance_type == "spherical"

        world, rank = restart_comm.world_size, restart_comm.rank
        best: _Fit | None = None
        for i in range(self.n_init * world):
            if i % world != rank:
                continue
            generator = torch.Generator(device=X.device).manual_seed(self.random_state + i)
            draw = kmeans_plus_plus if self.init == "k-means++" else random_init
            start = _lloyd(ws, draw(ws, self.n_clusters, generator, data_comm), self.max_iter, tol_abs, data_comm)
            fit = _em(ws, start.labels, self.n_clusters, spherical=spherical, reg_covar=self.reg_covar,
                      max_iter=self.max_iter, tol=self.tol, comm=data_comm)
            if self.verbose and group.rank == 0:
                print(f"GMM restart seed={self.random_state + i}: mean log-likelihood {fit.bound:.6g} "
                      f"after {fit.n_iter} EM iterations")
            if best is None or fit.bound > best.bound:
                best = fit
        if world > 1:
            best = _best_over_ranks(best, restart_comm)

        p = best.params
        self.means_ = ws.to_user(p.means)
        self.cluster_centers_ = self.means_
        self.covariances_ = p.variances
        self.weights_ = p.weights
        self.lower_bound_ = best.bound
        self.n_iter_ = best.n_iter
        self.converged_ = best.converged
        proba = X.new_empty((X.shape[0], self.n_clusters))
        _e_step(ws, p, collect=False, out_proba=proba)
        labels = proba.argmax(dim=1)
        self.labels_ = data_comm.all_gather_cat(labels) if data_comm.world_size > 1 else labels
        return self

    def fit_predict(self, X) -> torch.Tensor:
        return self.fit(X).labels_

    # ------------------------------------------------------------------------------------------- prediction
    def _workspace(self, X: torch.Tensor) -> Workspace:
        if not hasattr(self, "means_"):
            raise ValueError("this GaussianMixture is not fitted yet; call fit(X) first")
        message = check.empty_message(X) or check.non_finite_message(X)
        if message:
            raise ValueError(message)
        if X.shape[1] != self.means_.shape[1]:
            raise ValueError(f"X has {X.shape[1]} features but the model has {self.means_.shape[1]}")
        X = X.to(self.means_.device, self.means_.dtype)
        return prepare(X, self.metric, LOCAL, chunk_size=self.chunk_size, memory_budget_mb=self.memory_budget_mb)

    def _internal_params(self, ws: Workspace) -> _Params:
        return _Params(ws.to_internal(self.means_), self.covariances_, self.weights_)

    def predict_proba(self, X) -> torch.Tensor:
        """Posterior probabilities (N, K) of the components for every row of X."""
        X = check.as_data_matrix(X)
        with cpu_fit(X.device, X.numel() * self.n_clusters):
            ws = self._workspace(X)
            proba = ws.X.new_empty((ws.X.shape[0], self.n_clusters))
            _e_step(ws, self._internal_params(ws), collect=False, out_proba=proba)
        return proba

    def predict(self, X) -> torch.Tensor:
        return self.predict_proba(X).argmax(dim=1)

    def score(self, X) -> float:
        """Mean log-likelihood per row of X under the fitted model (scikit-learn's `score`)."""
        X = check.as_data_matrix(X)
        with cpu_fit(X.device, X.numel() * self.n_clusters):
            ws = self._workspace(X)
            total, _ = _e_step(ws, self._internal_params(ws), collect=False)
        return float(total) / ws.X.shape[0]


def _best_over_ranks(mine: _Fit, comm: Collectives) -> _Fit:
    """Replicated mode: the rank with the highest bound broadcasts its parameters."""
    device = mine.params.means.device
    bounds = comm.all_gather_cat(torch.tensor([mine.bound], dtype=torch.float64, device=device))
    winner = int(torch.argmax(bounds))
    header = torch.tensor([mine.bound, mine.n_iter, float(mine.converged)], dtype=torch.float64, device=device)
    p = _Params(mine.params.means.clone(), mine.params.variances.clone(), mine.params.weights.clone())
    for t in (header, p.means, p.variances, p.weights):
        comm.broadcast_(t, src=winner)
    return _Fit(float(header[0]), p, int(header[1]), bool(header[2]))

