"""Baseline: k-means (torch_clustering, k-means++, n_init 10) on raw pixels, scaled to [0, 1].

    python scripts/bench_raw_kmeans.py --dataset digits fashion_mnist

Prints a markdown row per dataset (ACC / NMI / ARI and seconds), the reference every method is compared with.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import datasets  # noqa: E402,F401  (registers the readers)
from datasets.registry import read  # noqa: E402
from metrics import evaluate_clustering  # noqa: E402
from torch_clustering import KMeans  # noqa: E402


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", nargs="+", default=["digits"])
    parser.add_argument("--data_root", default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rows = []
    print("| dataset | N | ACC | NMI | ARI | seconds |\n|---|---|---|---|---|---|")
    for name in args.dataset:
        raw = read(name, args.data_root)
        x = torch.from_numpy(raw.data.reshape(len(raw.data), -1)).float()
        if raw.kind == "image":
            x /= 255.0
        start = time.perf_counter()
        labels = KMeans(raw.num_classes, random_state=args.seed).fit_predict(x).numpy()
        seconds = time.perf_counter() - start
        scores = evaluate_clustering(raw.labels, labels)
        rows.append(dict(dataset=name, n=len(x), seconds=seconds, **scores))
        print(f"| {name} | {len(x)} | {scores['acc']:.4f} | {scores['nmi']:.4f} | {scores['ari']:.4f} | {seconds:.1f} |",
              flush=True)
    return rows


if __name__ == "__main__":
    main()
