#!/usr/bin/env python3
"""Time consensus clustering on the documented synthetic check (docs/methods/divclust.md).

A planted labelling of N points into K clusters; C base clusterings, each a random renaming of it with a
fraction ``--noise`` of the points moved to a random cluster. Every method is timed on the same ensemble
and scored (NMI / ARI, number of clusters found) against the planted labelling, which is used for scoring
only. The machine's load average is printed next to every timing (the CPU may be shared).

The co-association baseline needs O(N^2) memory and refuses N > 20,000, so it (and SCCBG, for a
like-for-like line) also runs on the first ``--coassoc-points`` points.

``--reference DIR`` additionally times another copy of the package (a directory holding a ``consensus``-like
package named by ``--reference-package``, e.g. the implementation before a change) in the same run, and
reports whether its labels equal the current ones up to renaming.

Usage:
    python scripts/bench_consensus.py [--points 60000] [--clusterings 20] [--clusters 10] [--noise 0.3]
        [--methods sccbg,hbgf,coassoc] [--coassoc-points 10000] [--device cpu]
        [--reference /tmp/old --reference-package consensus_old]
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from consensus import run_consensus  # noqa: E402
from consensus.synthetic import planted_ensemble  # noqa: E402


def load() -> str:
    return "load %.1f" % os.getloadavg()[0]


def timed(name: str, function, labels: np.ndarray, truth: np.ndarray, num_clusters: int) -> np.ndarray:
    before = load()
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        predicted = function(labels, num_clusters)
    seconds = time.perf_counter() - start
    found = len(np.unique(predicted))
    print(f"{name:<34} N={labels.shape[1]:>6}  {seconds:8.1f} s  clusters {found:>3}  "
          f"NMI {normalized_mutual_info_score(truth, predicted):.4f}  ARI {adjusted_rand_score(truth, predicted):.4f}"
          f"  ({before} -> {load()})", flush=True)
    for warning in caught:
        print(f"    warning: {warning.message}")
    return predicted


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=60_000)
    parser.add_argument("--clusterings", type=int, default=20)
    parser.add_argument("--clusters", type=int, default=10)
    parser.add_argument("--noise", type=float, default=0.3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--methods", default="sccbg,hbgf,coassoc")
    parser.add_argument("--coassoc-points", type=int, default=10_000)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--reference", type=Path, help="directory holding a reference copy of the package")
    parser.add_argument("--reference-package", default="consensus_old")
    args = parser.parse_args(argv)

    truth, labels = planted_ensemble(args.points, args.clusters, args.clusterings, args.noise, args.seed)
    print(f"{args.clusterings} clusterings of {args.points} points, {args.clusters} planted clusters, "
          f"noise {args.noise}; {os.cpu_count()} CPUs; {load()}", flush=True)
    methods = [name.strip() for name in args.methods.split(",") if name.strip()]
    current = None
    for method in methods:
        if method == "coassoc":
            continue
        extra = {"device": args.device} if method == "sccbg" else {}
        predicted = timed(method, lambda l, k, m=method, e=extra: run_consensus(l, k, method=m, **e),
                          labels, truth, args.clusters)
        if method == "sccbg":
            current = predicted
    if args.reference is not None:
        sys.path.insert(0, str(args.reference))
        reference = importlib.import_module(args.reference_package)
        predicted = timed(f"sccbg ({args.reference_package})", reference.sccbg, labels, truth, args.clusters)
        if current is not None:
            print(f"    labels equal to the current sccbg up to renaming: "
                  f"{adjusted_rand_score(current, predicted) == 1.0}")
    if "coassoc" in methods:
        subset = min(args.coassoc_points, args.points)
        for method in ("coassoc", "sccbg"):
            extra = {"device": args.device} if method == "sccbg" else {}
            timed(method, lambda l, k, m=method, e=extra: run_consensus(l, k, method=m, **e),
                  labels[:, :subset], truth[:subset], args.clusters)


if __name__ == "__main__":
    main()
