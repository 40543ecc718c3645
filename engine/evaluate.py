"""One evaluation routine for every method (ARCHITECTURE.md, Evaluation).

Per clustering head: ACC / NMI / ARI of the argmax. k-means (and GMM when asked) on `features(x)` with
torch_clustering on the run's device. With C > 1: the C x C NMI matrix between clusterings, its mean (D^R) and
the consensus clustering. Features are extracted on every rank (DistributedSampler, padding removed by index)
and the clustering runs on the full set on rank 0; the result is broadcast.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

from . import distributed as dist_utils


@torch.no_grad()
def extract(method, bundle, *, batch_size: int, device: torch.device, autocast) -> dict[str, torch.Tensor]:
    """Run the eval set through the method: indices, labels, head argmaxes (C, N) or None, features (N, D)."""
    sampler = DistributedSampler(bundle.eval, shuffle=False) if dist_utils.is_distributed() else None
    loader = DataLoader(bundle.eval, batch_size=batch_size, shuffle=False, sampler=sampler, num_workers=0)
    was_training = method.training
    method.eval()
    indices, labels, heads, feats = [], [], [], []
    for batch in loader:
        x = bundle.eval_view(batch, device)
        with autocast():
            probs = method.cluster_probs(x)
            f = method.features(x)
        indices.append(batch["index"].to(device))
        labels.append(batch["label"].to(device))
        feats.append(f.float())
        if probs is not None:
            heads.append(probs.argmax(dim=-1))
    method.train(was_training)
    out = {"index": torch.cat(indices), "label": torch.cat(labels), "features": torch.cat(feats)}
    out["heads"] = torch.cat(heads, dim=1) if heads else None
    if dist_utils.is_distributed():
        out = {k: (dist_utils.gather(v, dim=1 if k == "heads" else 0) if v is not None else None)
               for k, v in out.items()}
    # Remove the samples DistributedSampler repeated to pad the last batch, and restore dataset order.
    order = torch.argsort(out["index"], stable=True)
    keep = torch.ones_like(order, dtype=torch.bool)
    sorted_index = out["index"][order]
    keep[1:] = sorted_index[1:] != sorted_index[:-1]
    order = order[keep]
    return {k: (v[:, order] if k == "heads" else v[order]) if v is not None else None for k, v in out.items()}


def _scores(labels: np.ndarray, pred: np.ndarray):
    from metrics import evaluate_clustering

    return evaluate_clustering(labels, pred)


def _mean_dict(items: list[dict]) -> dict | None:
    items = [i for i in items if i]
    if not items:
        return None
    return {k: float(np.mean([i[k] for i in items])) for k in items[0]}


def cluster_and_score(extracted: dict, cfg, device: torch.device, *, selected_head: int | None = None,
                      kmeans_metric: str = "euclidean") -> tuple[dict, dict[str, np.ndarray]]:
    """All metrics of one evaluation (results.json shape, without epochs/seconds) and the predictions."""
    from torch_clustering import GaussianMixture, KMeans

    labels = extracted["label"].cpu().numpy()
    predictions: dict[str, np.ndarray] = {"indices": extracted["index"].cpu().numpy(), "labels": labels}
    results: dict = {"heads": [], "heads_mean": None, "best_head": None, "selected_head": None, "kmeans": None, "gmm": None,
                     "consensus": None, "diversity": None, "timing": {}}
    k = int(cfg.num_clusters)
    if extracted["heads"] is not None:
        assignments = extracted["heads"].cpu().numpy()
        predictions["assignments"] = assignments
        results["heads"] = [_scores(labels, a) for a in assignments]
        results["heads_mean"] = _mean_dict(results["heads"])
        scored = [(h["acc"], i) for i, h in enumerate(results["heads"]) if h]
        if scored:
            best = max(scored)[1]
            results["best_head"] = dict(results["heads"][best], index=best)
        if selected_head is not None and results["heads"][selected_head]:
            results["selected_head"] = dict(results["heads"][selected_head], index=int(selected_head))
        results["cluster_sizes"] = [np.bincount(a, minlength=k).tolist() for a in assignments]
        if len(assignments) > 1:
            from metrics.diversity import inter_clustering_nmi

            matrix = inter_clustering_nmi(extracted["heads"])
            off = matrix[~np.eye(len(matrix), dtype=bool)]
            results["diversity"] = {"nmi_matrix": matrix.tolist(), "nmi_mean": float(off.mean())}
            if cfg.consensus != "none":
                from consensus import run_consensus

                start = time.perf_counter()
                consensus = run_consensus(assignments, k, method=cfg.consensus, seed=int(cfg.seed))
                results["timing"]["consensus_s"] = time.perf_counter() - start
                predictions["consensus"] = np.asarray(consensus)
                results["consensus"] = _scores(labels, np.asarray(consensus))
    features = extracted["features"].to(device)
    predictions.update(feature_sample(extracted["features"], int(cfg.get("plot_tsne_points", 0)), seed=int(cfg.seed)))
    if cfg.eval_kmeans:
        start = time.perf_counter()
        km = KMeans(n_clusters=k, metric=kmeans_metric, random_state=int(cfg.seed)).fit(features)
        pred = km.labels_.cpu().numpy()
        results["timing"]["kmeans_s"] = time.perf_counter() - start
        predictions["kmeans"] = pred
        results["kmeans"] = _scores(labels, pred)
    if cfg.eval_gmm:
        start = time.perf_counter()
        pred = GaussianMixture(n_clusters=k, random_state=int(cfg.seed)).fit_predict(features).cpu().numpy()
        results["timing"]["gmm_s"] = time.perf_counter() - start
        predictions["gmm"] = pred
        results["gmm"] = _scores(labels, pred)
    return results, predictions


def feature_sample(features: torch.Tensor, points: int, *, seed: int) -> dict[str, np.ndarray]:
    """A seeded subsample of the evaluation features for plots (t-SNE): `feature_rows` (positions in the
    predictions arrays, sorted) and `features` (float16; float32 where float16 would overflow). Empty when
    `points` <= 0. The same seed and set size always give the same rows, so successive evaluations are comparable.
    """
    n = int(features.shape[0])
    if points <= 0 or n == 0:
        return {}
    rows = np.sort(np.random.default_rng(seed).choice(n, size=min(points, n), replace=False))
    sample = features[torch.from_numpy(rows).to(features.device)].float().cpu().numpy()
    half = sample.astype(np.float16)
    return {"feature_rows": rows.astype(np.int64), "features": half if np.isfinite(half).all() else sample}


def save_predictions(predictions: dict[str, np.ndarray], path: Path) -> None:
    """predictions.npz, written atomically: assignments (C, N), indices, labels, kmeans/gmm/consensus labels, and
    the plots' feature subsample (feature_rows, features)."""
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **predictions)
    os.replace(tmp, path)


def flat_metrics(results: dict) -> dict[str, float]:
    """`head.acc`, `kmeans.nmi`, `diversity.nmi_mean`, ... for logging and best-checkpoint selection."""
    flat: dict[str, float] = {}
    for name in ("best_head", "selected_head", "heads_mean", "kmeans", "gmm", "consensus"):
        for metric, value in (results.get(name) or {}).items():
            if metric != "index":
                flat[f"{'head' if name == 'best_head' else name}.{metric}"] = value
    for i, head in enumerate(results.get("heads") or []):
        for metric, value in (head or {}).items():
            flat[f"heads/{i}.{metric}"] = value
    if results.get("diversity"):
        flat["diversity.nmi_mean"] = results["diversity"]["nmi_mean"]
    return flat


def format_table(results: dict) -> str:
    """A compact console table: one row per reported clustering."""
    rows = []
    heads = results.get("heads") or []
    if len(heads) == 1:
        rows.append(("head", heads[0]))
    elif heads:
        best = results.get("best_head") or {}
        chosen = (results.get("selected_head") or {}).get("index")
        rows += [(f"head {i}" + (" *" if i == best.get("index") else "") + (" <" if i == chosen else ""), h)
                 for i, h in enumerate(heads)]
        rows.append(("heads mean", results.get("heads_mean")))
    for name in ("consensus", "kmeans", "gmm"):
        if results.get(name) is not None:
            rows.append((name, results[name]))
    if not rows:
        return "(no metrics: the evaluation set has no labels)"
    lines = [f"{'':<12} {'ACC':>7} {'NMI':>7} {'ARI':>7}"]
    for name, m in rows:
        if m:
            lines.append(f"{name:<12} {m['acc']:7.4f} {m['nmi']:7.4f} {m['ari']:7.4f}")
        else:
            lines.append(f"{name:<12} {'-':>7} {'-':>7} {'-':>7}")
    if len(heads) > 1:
        lines.append("* best head by ACC (uses labels: analysis only)"
                     + ("; < head selected without labels" if results.get("selected_head") else ""))
    if results.get("diversity"):
        lines.append(f"inter-clustering NMI (D^R): {results['diversity']['nmi_mean']:.4f}")
    return "\n".join(lines)
