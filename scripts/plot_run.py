#!/usr/bin/env python3
"""Regenerate a run's figures from its files.

Usage:
    python scripts/plot_run.py RUN_DIR [--out DIR] [--no-tsne]

Reads RUN_DIR/predictions.npz (the last evaluation's clusterings, labels and feature subsample),
RUN_DIR/results.json (which head is reported, the NMI matrix; optional: without it, e.g. for a run that is still
training or was killed, the head with the best ACC is shown and the NMI matrix is recomputed from the
predictions), RUN_DIR/metrics.jsonl (training curves) and RUN_DIR/config.yaml (number of clusters, seed of the
t-SNE). Writes confusion_matrix.png, cluster_sizes.png, nmi_matrix.png (C > 1), training_curves.png and tsne.png
into --out (default RUN_DIR), the same figures the trainer writes at an evaluation (engine/plots.py).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine import plots  # noqa: E402


def _results_without_file(predictions: dict) -> dict:
    """What the figures need from results.json, recomputed from predictions.npz."""
    from metrics import evaluate_clustering
    from metrics.diversity import inter_clustering_nmi

    results: dict = {}
    if "assignments" not in predictions:
        return results
    heads = np.asarray(predictions["assignments"])
    heads = heads[None] if heads.ndim == 1 else heads
    labels = predictions.get("labels")
    if labels is not None:
        scored = [(s["acc"], i) for i, s in enumerate(evaluate_clustering(labels, h) for h in heads) if s]
        if scored:
            results["best_head"] = {"index": max(scored)[1]}
    if len(heads) > 1:
        matrix = np.asarray(inter_clustering_nmi(heads))
        results["diversity"] = {"nmi_matrix": matrix.tolist(),
                                "nmi_mean": float(matrix[~np.eye(len(matrix), dtype=bool)].mean())}
    return results


def plot_run(run_dir: Path, out: Path | None = None, *, tsne: bool = True) -> list[Path]:
    """Write the figures of the run in `run_dir` into `out` (default `run_dir`); returns the files written."""
    from engine.config import load_yaml

    run_dir = Path(run_dir)
    if not (run_dir / "predictions.npz").is_file():
        raise FileNotFoundError(f"{run_dir} holds no predictions.npz (is it a run directory with at least one "
                                f"evaluation?)")
    with np.load(run_dir / "predictions.npz", allow_pickle=False) as data:
        predictions = {k: data[k] for k in data.files}
    results_file = run_dir / "results.json"
    results = json.loads(results_file.read_text()) if results_file.is_file() else _results_without_file(predictions)
    config = load_yaml(run_dir / "config.yaml") if (run_dir / "config.yaml").is_file() else {}
    out = Path(out) if out is not None else run_dir
    out.mkdir(parents=True, exist_ok=True)
    if tsne and "features" not in predictions:
        print(f"note: {run_dir / 'predictions.npz'} holds no feature subsample (run made with plot_tsne_points 0 "
              f"or before it existed): no t-SNE", file=sys.stderr)
    epochs = results.get("epochs")
    return plots.write_plots(out, results, predictions, metrics_path=run_dir / "metrics.jsonl",
                             num_clusters=int(config.get("num_clusters", 0)), seed=int(config.get("seed", 0)),
                             tsne=tsne, title=f"(epoch {epochs})" if epochs is not None else "",
                             warn=lambda message: print(f"warning: {message}", file=sys.stderr),
                             class_names=class_names_of(run_dir / "predictions.csv"))


def class_names_of(path: Path) -> list[str] | None:
    """The class names of predictions.csv's `label` and `class` columns (None when it has none)."""
    import csv

    if not path.is_file():
        return None
    names: dict[int, str] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            if "class" not in row or not row.get("label"):
                return None
            names.setdefault(int(row["label"]), row["class"])
    return [names.get(i, str(i)) for i in range(max(names) + 1)] if names else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path, help="run directory (runs/<preset>/<run_name>)")
    parser.add_argument("--out", type=Path, default=None, help="folder for the figures (default: RUN_DIR)")
    parser.add_argument("--no-tsne", dest="tsne", action="store_false", help="skip the t-SNE (the slow figure)")
    args = parser.parse_args(argv)
    try:
        written = plot_run(args.run_dir, args.out, tsne=args.tsne)
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    for path in written:
        print(path)
    return 0 if written else 1


if __name__ == "__main__":
    sys.exit(main())
