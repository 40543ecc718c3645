#!/usr/bin/env python3
"""DivClust's diversity sweep: one run per target D^T, then the measured D^R, the single clusterings and the
consensus against D^T, and each run's C x C NMI matrix.

Usage:
    python scripts/divclust_sweep.py --preset cc_digits [--clusterings 5] [--targets 1.0 0.9 0.8 0.7 0.6 0.5]
        [--seed 0] [--runs_root runs] [--out PATH.png] [-- extra main.py arguments, e.g. --NMI_interval 5]

Each target t runs as `main.py --preset P --clusterings C --NMI_target t --seed S` into
<runs_root>/<preset>/divclust<C>_t<t>_seed<S>/ through scripts/reproduce.py, so the sweep resumes where it stopped
(a finished target is reused, a killed one continued from its checkpoint). D^T = 1.0 is DivClust off: C
independently initialised heads. Writes the figure (default <runs_root>/<preset>/divclust<C>_sweep.png) and a CSV
of every number beside it. The runs warn at their start when a target cannot be reached in their number of
steps (lower --NMI_interval after `--`).
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import reproduce  # noqa: E402
from engine import report  # noqa: E402
from engine.config import ConfigError  # noqa: E402
from engine.run import load_config  # noqa: E402

COLUMNS = ("target", "measured", "threshold", "heads_mean_acc", "heads_mean_nmi", "heads_mean_ari", "consensus_acc",
           "consensus_nmi", "consensus_ari", "consensus_official_acc", "consensus_official_nmi",
           "consensus_clusters_found", "kmeans_acc", "seconds", "run_dir")


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    argv, extra = reproduce.split_extra(argv)
    parser = reproduce.script_parser("divclust_sweep.py", __doc__)
    parser.add_argument("--preset", required=True, help="a preset with cluster heads (cc_*, pica_*)")
    parser.add_argument("--clusterings", type=int, default=5, help="C, clusterings per run (default 5)")
    parser.add_argument("--targets", type=float, nargs="+", default=[1.0, 0.9, 0.8, 0.7, 0.6, 0.5],
                        help="the targets D^T, each in (0, 1] (default 1.0 0.9 0.8 0.7 0.6 0.5)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runs_root", default="runs", help="output_dir of the runs (default runs)")
    parser.add_argument("--out", type=Path, default=None, help="figure path (.png; the CSV goes beside it)")
    args = parser.parse_args(argv)
    if args.clusterings < 2:
        parser.error("--clusterings must be at least 2 (diversity is measured between clusterings)")
    if len(set(args.targets)) != len(args.targets) or any(not 0 < t <= 1 for t in args.targets):
        parser.error(f"--targets must be distinct values in (0, 1], got {args.targets}")
    for key in reproduce.extra_keys(extra):
        if key in ("clusterings", "NMI_target"):
            parser.error(f"--{key} is set by the sweep; use --clusterings / --targets before `--`")
    return args, extra


def tag(args: argparse.Namespace, target: float) -> str:
    return f"divclust{args.clusterings}_t{target:g}"


def row_of(target: float, results: dict, run_dir: Path) -> dict:
    def metric(name: str, key: str):
        return (results.get(name) or {}).get(key)

    diversity = results.get("diversity") or {}
    return {"target": target, "measured": diversity.get("nmi_mean"), "threshold": diversity.get("threshold"),
            **{f"{name}_{m}": metric(name, m) for name in ("heads_mean", "consensus") for m in ("acc", "nmi", "ari")},
            "consensus_official_acc": metric("consensus_official", "acc"),
            "consensus_official_nmi": metric("consensus_official", "nmi"),
            "consensus_clusters_found": (results.get("consensus_clusters") or {}).get("found"),
            "kmeans_acc": metric("kmeans", "acc"), "seconds": results.get("seconds"), "run_dir": str(run_dir),
            "nmi_matrix": diversity.get("nmi_matrix")}


def sweep(argv: list[str]) -> int:
    args, extra = parse_args(argv)
    try:
        preset = load_config(["--preset", args.preset, "--clusterings", str(args.clusterings), *extra]).preset
    except ConfigError as err:
        print(f"configuration error: {err}", file=sys.stderr)
        return 2
    preset_dir = Path(args.runs_root) / preset
    rows = []
    for i, target in enumerate(args.targets, 1):
        print(f"[divclust_sweep] target {i}/{len(args.targets)}: D^T = {target:g}", flush=True)
        code = reproduce.reproduce(["--preset", args.preset, "--seeds", str(args.seed), "--runs_root",
                                    str(args.runs_root), "--tag", tag(args, target), "--",
                                    "--clusterings", str(args.clusterings), "--NMI_target", str(target), *extra])
        if code:
            print(f"[divclust_sweep] the run for D^T = {target:g} failed (exit {code}); the sweep stops (run the "
                  f"same command again to resume)", file=sys.stderr)
            return code
        run_dir = preset_dir / reproduce.run_name(tag(args, target), args.seed)
        results = report.read_results(run_dir)
        if not (results or {}).get("diversity"):
            print(f"error: {run_dir}/results.json has no diversity measurement (does {preset} train cluster heads, "
                  f"and are there labels for the metrics?)", file=sys.stderr)
            return 1
        rows.append(row_of(target, results, run_dir))
    figure = args.out or preset_dir / f"divclust{args.clusterings}_sweep.png"
    figure = figure if figure.suffix == ".png" else figure.with_suffix(".png")
    figure.parent.mkdir(parents=True, exist_ok=True)
    table = figure.with_suffix(".csv")
    with open(table, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    from engine.plots import save_divclust_sweep

    if all(r["heads_mean_acc"] is not None and r["consensus_acc"] is not None for r in rows):
        save_divclust_sweep(rows, figure, title=f"DivClust sweep: {preset}, C = {args.clusterings}, seed {args.seed}")
        print(f"[divclust_sweep] figure: {figure}", flush=True)
    else:
        print("[divclust_sweep] no figure: some run has no labelled metrics (heads mean / consensus)", flush=True)
    print(f"[divclust_sweep] table: {table}", flush=True)
    print(f"{'D^T':>5} {'D^R':>6} {'heads ACC':>9} {'cons. ACC':>9} {'clusters':>8}")
    for r in rows:
        print(f"{r['target']:5g} {r['measured']:6.3f} {r['heads_mean_acc'] or 0:9.4f} {r['consensus_acc'] or 0:9.4f} "
              f"{r['consensus_clusters_found'] or '-':>8}")
    return 0


if __name__ == "__main__":
    sys.exit(sweep(sys.argv[1:]))
