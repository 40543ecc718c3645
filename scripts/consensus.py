#!/usr/bin/env python3
"""Consensus clustering of saved predictions (docs/methods/divclust.md).

Usage:
    python scripts/consensus.py RUN_DIR_or_NPZ [--method sccbg] [--num_clusters K] [--gamma G] [--seed 0]

Reads ``predictions.npz`` (keys: ``assignments`` int64 [C, N] hard labels of the C clusterings,
``indices`` int64 [N], optional ``labels`` int64 [N] with -1 = unknown) from a run directory, or the given
``.npz`` file; runs the consensus method; writes ``consensus_predictions.npy`` (int64 [N], same order as
``indices``) next to the input; prints the measured diversity (mean inter-clustering NMI) and, when
ground-truth labels are present, ACC / NMI / ARI of the consensus and of every clustering (computed on the
samples whose label is not -1). The labels are used for scoring only, never by the consensus.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from consensus import CONSENSUS_METHODS, run_consensus  # noqa: E402
from metrics import evaluate_clustering  # noqa: E402
from metrics.diversity import mean_inter_clustering_nmi  # noqa: E402

PREDICTIONS_FILE = "predictions.npz"
OUTPUT_FILE = "consensus_predictions.npy"


def score(predicted: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """ACC (Hungarian) / NMI / ARI of ``predicted`` against ``truth``, as fractions (framework evaluator)."""
    result = evaluate_clustering(truth, predicted)
    return {key: float(result[key]) for key in ("acc", "nmi", "ari")}


def load_predictions(path: Path) -> tuple[Path, np.ndarray, np.ndarray, np.ndarray | None]:
    """-> (file, assignments [C, N] int64, indices [N] int64, labels [N] int64 or None)."""
    file = path / PREDICTIONS_FILE if path.is_dir() else path
    if not file.is_file():
        raise SystemExit(f"error: no predictions file at {file} (expected a run directory holding "
                         f"{PREDICTIONS_FILE}, or the .npz itself)")
    with np.load(file, allow_pickle=False) as data:
        if "assignments" not in data:
            raise SystemExit(f"error: {file} has no 'assignments' array (keys: {sorted(data.files)})")
        assignments = np.asarray(data["assignments"])
        if assignments.ndim == 1:
            assignments = assignments[None, :]
        if assignments.ndim != 2:
            raise SystemExit(f"error: 'assignments' must be [C, N] hard labels, got shape {assignments.shape}")
        num_points = assignments.shape[1]
        indices = np.asarray(data["indices"]) if "indices" in data else np.arange(num_points)
        labels = np.asarray(data["labels"]) if "labels" in data else None
    if indices.shape != (num_points,) or (labels is not None and labels.shape != (num_points,)):
        raise SystemExit(f"error: 'indices'/'labels' must have shape [{num_points}] to match 'assignments'")
    return file, assignments.astype(np.int64), indices.astype(np.int64), (
        None if labels is None else labels.astype(np.int64))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("path", type=Path, help="run directory holding predictions.npz, or an .npz file")
    parser.add_argument("--method", default="sccbg", choices=sorted(CONSENSUS_METHODS),
                        help="consensus method (default: sccbg)")
    parser.add_argument("--num_clusters", type=int, default=None,
                        help="consensus clusters (default: the largest label of the clusterings + 1)")
    parser.add_argument("--gamma", type=float, default=None,
                        help="SCCBG gamma (default: 0.05 * K_mean / (C * N))")
    parser.add_argument("--device", default="cpu", help="device of the SCCBG solvers (cpu, cuda, ...)")
    parser.add_argument("--max_points", type=int, default=20_000,
                        help="largest N accepted by the co-association method")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def _row(name: str, metrics: dict[str, float]) -> str:
    return f"{name:<14} {metrics['acc']:>7.4f} {metrics['nmi']:>7.4f} {metrics['ari']:>7.4f}"


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    file, assignments, _, labels = load_predictions(args.path)
    num_clusterings, num_points = assignments.shape
    num_clusters = args.num_clusters if args.num_clusters is not None else int(assignments.max()) + 1

    extra: dict = {}
    if args.method == "sccbg":
        extra = {"gamma": args.gamma, "device": args.device}
    elif args.method in ("coassoc", "coassociation_average_linkage"):
        extra = {"max_points": args.max_points}
    start = time.perf_counter()
    consensus = run_consensus(assignments, num_clusters, method=args.method, seed=args.seed, **extra)
    seconds = time.perf_counter() - start
    output = file.parent / OUTPUT_FILE
    np.save(output, consensus.astype(np.int64))

    found = int(np.unique(consensus).size)
    print(f"{args.method}: C={num_clusterings} clusterings, N={num_points}, {found} clusters "
          f"(asked {num_clusters}), {seconds:.1f}s -> {output}")
    report: dict = {"method": args.method, "n_clusters_found": found, "seconds": seconds, "output": str(output)}
    if num_clusterings > 1:
        report["diversity_nmi_mean"] = mean_inter_clustering_nmi(assignments)
        print(f"mean inter-clustering NMI (diversity D^R): {report['diversity_nmi_mean']:.4f}")

    known = labels >= 0 if labels is not None else None
    if known is None or not known.any():
        print("no ground-truth labels: nothing to score")
        return report
    truth = labels[known]
    report["consensus"] = score(consensus[known], truth)
    report["heads"] = [score(row[known], truth) for row in assignments]
    print(f"scored on {int(known.sum())} labelled samples")
    print(f"{'':<14} {'ACC':>7} {'NMI':>7} {'ARI':>7}")
    print(_row("consensus", report["consensus"]))
    for c, metrics in enumerate(report["heads"]):
        print(_row(f"clustering {c}", metrics))
    for key in ("acc", "nmi", "ari"):
        values = [m[key] for m in report["heads"]]
        print(f"heads {key.upper()}: mean {np.mean(values):.4f}  max {np.max(values):.4f}  min {np.min(values):.4f}")
    return report


if __name__ == "__main__":
    main()
