"""Accuracy against training steps for several runs on one figure, from each run's metrics.jsonl.

Two panels: the method's reported head (`eval/head.acc`: the selected head or sub-head, chosen without labels; with
several clusterings, which have no single reported head, their consensus `eval/consensus.acc`) and
k-means on its features (`eval/kmeans.acc`), at every evaluation, against the optimizer step; one line per run,
named by its preset (or `--labels`). `--baseline ACC` draws a horizontal line (e.g. k-means on raw pixels of the
same images).

    python scripts/plot_learning_curves.py runs/cc_cifar10_cpu/seed0 runs/pica_cifar10_cpu/seed0 \\
        --baseline 0.22 --title "CIFAR-10 (JPEG q75), one CPU core" --out docs/img/cifar10_cpu_curves.png
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def curve(run_dir: Path, key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of metric `key` over the evaluations in run_dir/metrics.jsonl, in step order."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise SystemExit(f"{run_dir}: no metrics.jsonl there (is it a run directory?)")
    points = {}
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        value = (record.get("metrics") or {}).get(key)
        if value is not None:
            points[int(record["step"])] = float(value)
    steps = sorted(points)
    return steps, [points[s] for s in steps]


def run_label(run_dir: Path) -> str:
    config = Path(run_dir) / "config.yaml"
    if config.is_file():
        import yaml

        preset = (yaml.safe_load(config.read_text()) or {}).get("preset")
        if preset:
            return str(preset)
    return Path(run_dir).name


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run directories")
    parser.add_argument("--labels", nargs="+", default=None, help="one legend label per run (default: the preset)")
    parser.add_argument("--baseline", type=float, default=None, help="ACC of a reference line")
    parser.add_argument("--baseline_label", default="k-means on raw pixels")
    parser.add_argument("--title", default=None)
    parser.add_argument("--out", type=Path, required=True, help="figure path (.png)")
    args = parser.parse_args(argv)
    if args.labels and len(args.labels) != len(args.runs):
        parser.error(f"--labels: {len(args.labels)} labels for {len(args.runs)} runs")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 5.0), sharey=True)
    for i, run in enumerate(args.runs):
        label = args.labels[i] if args.labels else run_label(run)
        for ax, key in zip(axes, ("eval/head.acc", "eval/kmeans.acc")):
            steps, values = curve(run, key)
            name = label
            if not steps and key == "eval/head.acc":        # several clusterings (DivClust): their consensus
                steps, values = curve(run, "eval/consensus.acc")
                name = f"{label} (consensus)"
            if steps:
                ax.plot(steps, values, marker="o", markersize=3, label=name, color=f"C{i}")
    for ax, title in zip(axes, ("reported head (selected without labels) or consensus", "k-means on the features")):
        if args.baseline is not None:
            ax.axhline(args.baseline, color="grey", linestyle="--", linewidth=1, label=args.baseline_label)
        ax.set_title(title)
        ax.set_xlabel("training steps")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("ACC")
    handles, labels = [], []
    for ax in axes[::-1]:                             # every run once (a run may be in one panel only)
        for handle, text in zip(*ax.get_legend_handles_labels()):
            if text.removesuffix(" (consensus)") not in labels:
                handles.append(handle)
                labels.append(text.removesuffix(" (consensus)"))
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=8, frameon=False)
    if args.title:
        fig.suptitle(args.title)
    fig.tight_layout(rect=(0, 0.05 + 0.035 * ((len(labels) + 3) // 4), 1, 1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=120)
    plt.close(fig)
    print(f"wrote {args.out}", file=sys.stderr)
    return args.out


if __name__ == "__main__":
    main()
