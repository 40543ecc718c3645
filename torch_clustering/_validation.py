"""Input checks shared by k-means and the Gaussian mixture (fail fast with a ValueError naming the problem)."""

from __future__ import annotations

import numbers

import torch

from ._parallel import map_rows

METRICS = ("euclidean", "cosine")


def as_data_matrix(X, *, name: str = "X") -> torch.Tensor:
    """Return X as a floating (N, D) tensor; numpy arrays and nested lists are converted (float64 stays float64).

    Half precision is promoted to float32 (distances in fp16 are too coarse for k-means). Shape problems raise
    ValueError; emptiness and NaN/inf are checked separately (they must be agreed on by every rank).
    """
    if not isinstance(X, torch.Tensor):
        try:
            X = torch.as_tensor(X)
        except (TypeError, ValueError, RuntimeError) as err:
            raise ValueError(f"{name} must be a tensor or array of shape (N, D), got {type(X).__name__}") from err
    if X.dim() != 2:
        raise ValueError(f"{name} must be 2-dimensional (N, D), got shape {tuple(X.shape)}")
    if X.is_complex():
        raise ValueError(f"{name} must be real-valued, got dtype {X.dtype}")
    if X.dtype not in (torch.float32, torch.float64):
        X = X.to(torch.float32)
    return X.detach()


def empty_message(X: torch.Tensor, *, name: str = "X", sharded: bool = False) -> str | None:
    if X.shape[0] == 0 or X.shape[1] == 0:
        where = " on this rank (with sharded data every rank needs at least one row)" if sharded else ""
        return (f"{name} is empty{where} (shape {tuple(X.shape)}); k-means/GMM need at least one point with one "
                f"feature")
    return None


def non_finite_message(X: torch.Tensor, *, name: str = "X") -> str | None:
    """The message if X holds NaN or +-inf, else None: one pass of sums (a NaN/inf makes a sum non-finite), the
    row count only when that fails. One host sync; row ranges in parallel on CPU."""
    if not X.numel():
        return None
    sums = map_rows(X.device, X.shape[0], lambda s, e: X[s:e].sum(dim=0))
    if bool(torch.isfinite(torch.stack(sums)).all()):
        return None
    n_bad = int(sum(map_rows(X.device, X.shape[0], lambda s, e: (~torch.isfinite(X[s:e])).any(dim=1).sum())))
    if n_bad:
        return f"{name} contains NaN or inf values (in {n_bad} of {X.shape[0]} rows); remove or impute them first"
    return None


def workspace_message(X: torch.Tensor, finite: bool, *, name: str = "X") -> str | None:
    """After `prepare`: why its global sums are not finite (None when they are)."""
    if finite:
        return None
    return non_finite_message(X, name=name) or (
        f"{name} has values too large for squared distances in {X.dtype}, or another rank's shard holds NaN/inf")


def check_metric(metric: str) -> str:
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; expected one of {', '.join(map(repr, METRICS))}")
    return metric


def check_positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def check_non_negative_float(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value >= 0 or value == float("inf"):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def too_many_clusters_message(n_clusters: int, n_samples: int) -> str | None:
    if n_clusters > n_samples:
        return (f"n_clusters={n_clusters} is larger than the number of samples N={n_samples}; "
                f"ask for at most {n_samples} clusters")
    return None
