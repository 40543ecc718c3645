"""Reference clustering metrics on the host (numpy / scipy / scikit-learn): ACC, NMI, ARI.

docs/torch_clustering.md (Metrics). Values are fractions in [0, 1] (ARI may be < 0).
* NMI: scikit-learn `normalized_mutual_info_score(average_method='arithmetic')`.
* ARI: scikit-learn `adjusted_rand_score`.
* ACC: Hungarian matching (`scipy.optimize.linear_sum_assignment`) of predicted clusters to classes on the
  contingency matrix, maximising matched samples; the matrix may be rectangular (more or fewer clusters than
  classes), unmatched samples count as errors. Difference from the reference `evaluate_clustering`: where the
  number of distinct predictions differs from the number of distinct labels, the reference reports ACC = 0.0
  with a warning; here the rectangular matching gives the actual accuracy (equal whenever the counts match).
* Samples whose ground truth is -1 (unknown) are ignored.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score


def _as_labels(labels, name: str) -> np.ndarray:
    if hasattr(labels, "detach"):  # torch tensor, any device
        labels = labels.detach().cpu().numpy()
    arr = np.asarray(labels)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D sequence of labels, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise ValueError(f"{name} must hold integer labels")
        arr = arr.astype(np.int64)
    return arr.astype(np.int64, copy=False)


def _pair(y_true, y_pred) -> tuple[np.ndarray, np.ndarray]:
    y_true, y_pred = _as_labels(y_true, "y_true"), _as_labels(y_pred, "y_pred")
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true and y_pred must have the same length, got {y_true.shape[0]} and {y_pred.shape[0]}")
    return y_true, y_pred


def contingency(y_true, y_pred) -> np.ndarray:
    """(n_classes, n_clusters) counts over the distinct values of each labelling (sorted)."""
    y_true, y_pred = _pair(y_true, y_pred)
    classes, t = np.unique(y_true, return_inverse=True)
    clusters, p = np.unique(y_pred, return_inverse=True)
    table = np.zeros((classes.size, clusters.size), dtype=np.int64)
    np.add.at(table, (t, p), 1)
    return table


def cluster_acc(y_true, y_pred) -> float:
    """Best accuracy over one-to-one maps of clusters to classes (rectangular Hungarian; unmatched = wrong)."""
    y_true, y_pred = _pair(y_true, y_pred)
    if y_true.size == 0:
        raise ValueError("cluster_acc needs at least one sample")
    table = contingency(y_true, y_pred)
    rows, cols = linear_sum_assignment(table, maximize=True)
    return float(table[rows, cols].sum()) / y_true.size


def nmi(y_true, y_pred) -> float:
    """Normalised mutual information, arithmetic-mean normalisation (scikit-learn)."""
    y_true, y_pred = _pair(y_true, y_pred)
    return float(normalized_mutual_info_score(y_true, y_pred, average_method="arithmetic"))


def ari(y_true, y_pred) -> float:
    """Adjusted Rand index (scikit-learn)."""
    y_true, y_pred = _pair(y_true, y_pred)
    return float(adjusted_rand_score(y_true, y_pred))


def evaluate_clustering(y_true, y_pred) -> dict[str, float] | None:
    """{"acc", "nmi", "ari"} of a clustering against ground truth, ignoring samples labelled -1.

    Returns None when no ground truth is known (y_true is None, or every label is -1): nothing to evaluate.
    """
    if y_true is None:
        return None
    y_true, y_pred = _pair(y_true, y_pred)
    known = y_true != -1
    if not known.any():
        return None
    y_true, y_pred = y_true[known], y_pred[known]
    return {"acc": cluster_acc(y_true, y_pred), "nmi": nmi(y_true, y_pred), "ari": ari(y_true, y_pred)}
