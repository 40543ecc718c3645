"""One evaluation for every method: the numbers, the predictions files, the console table and the figures.

Per clustering head: ACC / NMI / ARI of the argmax. k-means (and GMM when asked) on `features(x)` with
torch_clustering on the run's device. With C > 1: the C x C NMI matrix between clusterings, its mean (D^R) and
the consensus clustering. The pass over the evaluation set is the run context's `embed` (each DDP rank embeds a
shard, every rank gets all rows); the clustering runs on rank 0 and its result is broadcast.

Which head is "the result": the head when there is one; the head the method selects without labels
(`select_head`, e.g. IIC's lowest-loss sub-head) when it selects one; otherwise (C > 1 without a selection) no
single head is the result: the consensus and the mean over heads are. `best_head` (the highest ACC) chooses with
the labels: it is reported for analysis only and marked so wherever it is shown.
"""
from __future__ import annotations

import csv
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from . import distributed as dist_utils


@torch.no_grad()
def extract(method, ctx) -> dict[str, torch.Tensor | None]:
    """The evaluation set through the method, in dataset order: head argmaxes and their probabilities (C, N) or
    None, features (N, D)."""

    def rows(x: torch.Tensor) -> dict[str, torch.Tensor]:
        probs = method.cluster_probs(x)
        out = {"features": method.features(x).float()}
        if probs is not None:
            confidence, heads = probs.float().max(dim=-1)                 # (C, B)
            out["heads"], out["confidence"] = heads.t(), confidence.t()   # (B, C): rows are samples
        return out

    out = ctx.embed(ctx.data.eval, rows)
    return {"features": out["features"], "heads": out["heads"].t() if "heads" in out else None,
            "confidence": out["confidence"].t() if "confidence" in out else None}


def _scores(labels: np.ndarray, pred: np.ndarray):
    from metrics import evaluate_clustering

    return evaluate_clustering(labels, pred)


def _mean_dict(items: list[dict]) -> dict | None:
    items = [i for i in items if i]
    if not items:
        return None
    return {k: float(np.mean([i[k] for i in items])) for k in items[0]}


def cluster_and_score(extracted: dict, labels: np.ndarray, cfg, device: torch.device, *,
                      selected_head: int | None = None, kmeans_metric: str = "euclidean"
                      ) -> tuple[dict, dict[str, np.ndarray]]:
    """All metrics of one evaluation (results.json shape, without epochs/seconds) and the predictions."""
    from torch_clustering import GaussianMixture, KMeans

    labels = np.asarray(labels)
    n = len(labels)
    predictions: dict[str, np.ndarray] = {"indices": np.arange(n), "labels": labels}
    results: dict = {"heads": [], "head": None, "heads_mean": None, "best_head": None, "selected_head": None,
                     "kmeans": None, "gmm": None, "consensus": None, "diversity": None, "timing": {}}
    k = int(cfg.num_clusters)
    if extracted["heads"] is not None:
        assignments = extracted["heads"].cpu().numpy()
        predictions["assignments"] = assignments
        predictions["confidence"] = extracted["confidence"].cpu().numpy().astype(np.float32)
        results["heads"] = [_scores(labels, a) for a in assignments]
        results["heads_mean"] = _mean_dict(results["heads"])
        scored = [(h["acc"], i) for i, h in enumerate(results["heads"]) if h]
        if scored:
            best = max(scored)[1]
            results["best_head"] = dict(results["heads"][best], index=best)
        if selected_head is not None and results["heads"][selected_head]:
            results["selected_head"] = dict(results["heads"][selected_head], index=int(selected_head))
        reported = selected_head if selected_head is not None else (0 if len(assignments) == 1 else None)
        if reported is not None and results["heads"][reported]:
            results["head"] = dict(results["heads"][reported], index=int(reported))
        results["cluster_sizes"] = [np.bincount(a, minlength=k).tolist() for a in assignments]
        if len(assignments) > 1:
            from metrics.diversity import inter_clustering_nmi

            matrix = inter_clustering_nmi(extracted["heads"])
            off = matrix[~np.eye(len(matrix), dtype=bool)]
            results["diversity"] = {"nmi_matrix": matrix.tolist(), "nmi_mean": float(off.mean())}
            # the consensus combines DivClust's clusterings; sub-heads (IIC) and ensemble members (Kingdra) are
            # alternatives whose official answer is one head
            if cfg.consensus != "none" and int(cfg.get("clusterings", 1)) > 1:
                from consensus import run_consensus

                start = time.perf_counter()
                with warnings.catch_warnings(record=True) as caught:   # the count is reported below instead
                    warnings.simplefilter("always")
                    consensus = np.asarray(run_consensus(assignments, k, method=cfg.consensus, seed=int(cfg.seed)))
                found = int(np.unique(consensus).size)
                results["consensus_clusters"] = {"requested": k, "found": found}
                if found > k and cfg.get("consensus_restore_k", True):
                    from consensus.restore import restore_cluster_count

                    predictions["consensus_official"] = consensus
                    results["consensus_official"] = _scores(labels, consensus)
                    consensus = restore_cluster_count(consensus, np.stack(assignments), k)
                    results["consensus_clusters"]["restored"] = int(np.unique(consensus).size)
                elif found != k:
                    for warning in caught:
                        warnings.warn(warning.message, warning.category, stacklevel=2)
                results["timing"]["consensus_s"] = time.perf_counter() - start
                predictions["consensus"] = consensus
                results["consensus"] = _scores(labels, consensus)
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
    """predictions.npz, written atomically: assignments (C, N) and their confidence, indices, labels,
    kmeans/gmm/consensus labels, and the plots' feature subsample (feature_rows, features)."""
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **predictions)
    os.replace(tmp, path)


def save_predictions_csv(predictions: dict[str, np.ndarray], path: Path, *, sample_ids: list[str] | None = None,
                         class_names: list[str] | None = None) -> None:
    """predictions.csv, one row per sample, written atomically: `id` (the file path relative to the data folder
    for image folders, the row number for arrays, else the dataset index), `label` and `class` when known, then
    for every head `head<i>` and `head<i>_confidence` (its softmax probability), `consensus` and `kmeans` / `gmm`.
    Cluster ids are the methods' own (not matched to classes)."""
    n = len(predictions["labels"])
    ids = sample_ids if sample_ids is not None else [str(i) for i in range(n)]
    labels = np.asarray(predictions["labels"])
    columns: list[tuple[str, np.ndarray]] = []
    heads = np.asarray(predictions["assignments"]) if "assignments" in predictions else np.zeros((0, n))
    confidence = np.asarray(predictions.get("confidence", np.zeros_like(heads, dtype=np.float32)))
    for i in range(len(heads)):
        columns.append((f"head{i}", heads[i]))
        columns.append((f"head{i}_confidence", np.asarray([f"{c:.5f}" for c in confidence[i]])))
    for name in ("consensus", "consensus_official", "kmeans", "gmm"):
        if name in predictions:
            columns.append((name, np.asarray(predictions[name])))
    has_labels = bool((labels >= 0).any())
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id"] + (["label"] if has_labels else []) + (["class"] if has_labels and class_names
                                                                       else []) + [c for c, _ in columns])
        for row in range(n):
            label = int(labels[row])
            cells = [ids[row]]
            if has_labels:
                cells.append(label if label >= 0 else "")
                if class_names:
                    cells.append(class_names[label] if 0 <= label < len(class_names) else "")
            cells += [values[row].item() for _, values in columns]
            writer.writerow(cells)
    os.replace(tmp, path)


def flat_metrics(results: dict) -> dict[str, float]:
    """`head.acc`, `kmeans.nmi`, `diversity.nmi_mean`, ... for logging and best-checkpoint selection.
    `head.*` is the reported head (absent when no single head is the result); `best_head.*` chose with labels."""
    flat: dict[str, float] = {}
    for name in ("head", "best_head", "selected_head", "heads_mean", "kmeans", "gmm", "consensus",
                 "consensus_official"):
        for metric, value in (results.get(name) or {}).items():
            if metric != "index":
                flat[f"{name}.{metric}"] = value
    for i, head in enumerate(results.get("heads") or []):
        for metric, value in (head or {}).items():
            flat[f"heads/{i}.{metric}"] = value
    if results.get("diversity"):
        for key in ("nmi_mean", "target", "threshold"):
            if results["diversity"].get(key) is not None:
                flat[f"diversity.{key}"] = results["diversity"][key]
    if results.get("consensus_clusters"):
        flat["consensus.clusters_found"] = results["consensus_clusters"]["found"]
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
    counts = results.get("consensus_clusters") or {}
    for name in ("consensus", "consensus_official", "kmeans", "gmm"):
        if results.get(name) is not None:
            rows.append((name if name != "consensus_official" else "  official", results[name]))
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
    if counts.get("restored") is not None:
        lines.append(f"consensus: SCCBG found {counts['found']} clusters (the official result, row 'official'); "
                     f"points of all but the {counts['requested']} largest joined the cluster they agree with most "
                     f"(consensus_restore_k)")
    elif counts and counts["found"] != counts["requested"]:
        lines.append(f"consensus: {counts['found']} clusters instead of {counts['requested']}")
    diversity = results.get("diversity")
    if diversity:
        line = f"inter-clustering NMI (D^R): {diversity['nmi_mean']:.4f}"
        if diversity.get("target") is not None:
            line += f" (target D^T {diversity['target']:g}, threshold now {diversity['threshold']:.4f})"
        lines.append(line)
    return "\n".join(lines)


class Evaluator:
    """The evaluation the trainer runs every `eval_every` epochs and at the end (it is given this object's
    `__call__`): numbers, predictions.npz / predictions.csv, the console table, metrics.jsonl and the figures."""

    def __init__(self, method, ctx, cfg, run_dir: Path | None, log, *, plots: bool = True,
                 diversity_target: Callable[[], dict] | None = None):
        self.method, self.ctx, self.cfg, self.run_dir, self.log, self.plots = method, ctx, cfg, run_dir, log, plots
        # DivClust's target and current threshold ({"target", "threshold"}), reported beside the measured D^R
        self.diversity_target = diversity_target

    def __call__(self, *, epoch: int, step: int, final: bool) -> tuple[dict, dict[str, float]]:
        start = time.perf_counter()
        extracted = extract(self.method, self.ctx)
        selected = self.method.select_head(self.ctx)
        main = dist_utils.is_main_process()
        results, predictions = (cluster_and_score(extracted, self.ctx.data.labels.numpy(), self.cfg, self.ctx.device,
                                                  selected_head=selected, kmeans_metric=self.method.kmeans_metric)
                                if main else (None, None))
        results = dist_utils.broadcast_object(results)
        if results.get("diversity") and self.diversity_target is not None:
            results["diversity"].update(self.diversity_target())
        results["timing"]["eval_s"] = time.perf_counter() - start
        data = self.ctx.data
        if main and self.run_dir is not None:
            save_predictions(predictions, self.run_dir / "predictions.npz")
            save_predictions_csv(predictions, self.run_dir / "predictions.csv", sample_ids=data.sample_ids,
                                 class_names=data.class_names)
        self.log.info(f"evaluation after epoch {epoch} ({results['timing']['eval_s']:.1f}s):\n"
                      + format_table(results), "cyan")
        flat = flat_metrics(results)
        self.log.log_metrics({f"eval/{k}": v for k, v in flat.items()}, step=step, epoch=epoch)
        if main and self.run_dir is not None and self.plots:   # figures never raise (engine/plots.py)
            from .plots import write_evaluation_plots

            write_evaluation_plots(self.run_dir, results, predictions, self.cfg, epoch=epoch, step=step,
                                   final=final, logger=self.log, class_names=data.class_names)
        return results, flat
