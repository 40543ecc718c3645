"""Lloyd k-means speed: torch_clustering against scikit-learn, faiss-cpu (when installed) and a naive PyTorch loop.

Every implementation gets the same float32 data, the same initial centres and a fixed number of Lloyd iterations
(tol = 0); the table gives milliseconds per iteration (whole fit / iterations, set-up and final assignment
included), the achieved GFLOP/s of the distance GEMMs (2 N D K per iteration) against the machine's measured
torch.mm peak, and the inertia relative to scikit-learn's (same start, so it should be ~1).

    python scripts/bench_kmeans.py              # full grid: N in {10k, 60k}, D in {128, 512}, K in {10, 100, 1000}
    python scripts/bench_kmeans.py --quick      # N = 60k, D = 512, K in {100, 1000}
    python scripts/bench_kmeans.py --device cuda --gpu-memory-check   # 1M x 256 into 10k clusters on a GPU

The output is a markdown table (for docs/benchmarks.md) preceded by the machine's load average: run it on a quiet
machine when the numbers matter.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from torch_clustering import kmeans  # noqa: E402

FULL_GRID = [(n, d, k) for n in (10_000, 60_000) for d in (128, 512) for k in (10, 100, 1000)]
QUICK_GRID = [(60_000, 512, 100), (60_000, 512, 1000)]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def mm_peak_gflops(device: torch.device, seconds: float = 1.0) -> float:
    """Best float32 torch.mm throughput over a few large shapes (the machine's practical GEMM peak).

    On CPU both ways of using the cores are tried: one torch.mm with PyTorch's intra-op threads, and one
    single-threaded torch.mm per core on its own rows (how torch_clustering runs); the better one counts.
    """
    shapes = [(2048, 2048, 2048), (4096, 512, 1024), (4096, 1024, 4096)]
    if device.type == "cuda":
        shapes = [(8192, 8192, 8192), (16384, 4096, 8192)]
    threads = torch.get_num_threads()

    def rate(fn, flops: float) -> float:
        fn()
        synchronize(device)
        runs, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            fn()
            runs += 1
        synchronize(device)
        return flops * runs / (time.perf_counter() - start) / 1e9

    best = 0.0
    for m, k, n in shapes:
        a = torch.randn(m, k, device=device)
        b = torch.randn(k, n, device=device)
        best = max(best, rate(lambda: torch.mm(a, b), 2 * m * k * n))
        if device.type == "cpu" and threads > 1:
            from concurrent.futures import ThreadPoolExecutor

            parts = [a[m * i // threads: m * (i + 1) // threads] for i in range(threads)]
            with ThreadPoolExecutor(threads, initializer=torch.set_num_threads, initargs=(1,)) as pool:
                best = max(best, rate(lambda: list(pool.map(lambda p: torch.mm(p, b), parts)), 2 * m * k * n))
    return best


def time_ours(X: torch.Tensor, init: torch.Tensor, iters: int) -> tuple[float, float, int]:
    kmeans(X[:4096], init.shape[0], init=init, n_init=1, max_iter=2)  # warm-up (thread pools, allocator)
    synchronize(X.device)
    start = time.perf_counter()
    result = kmeans(X, init.shape[0], init=init, n_init=1, max_iter=iters, tol=0.0)
    synchronize(X.device)
    return time.perf_counter() - start, float(result.inertia), result.n_iter


def time_sklearn(X: np.ndarray, init: np.ndarray, iters: int) -> tuple[float, float, int]:
    from sklearn.cluster import KMeans

    start = time.perf_counter()
    model = KMeans(init.shape[0], init=init, n_init=1, max_iter=iters, tol=0.0, algorithm="lloyd").fit(X)
    return time.perf_counter() - start, float(model.inertia_), int(model.n_iter_)


def time_faiss(X: np.ndarray, init: np.ndarray, iters: int) -> tuple[float, float, int] | None:
    try:
        import faiss
    except ImportError:
        return None
    n, d = X.shape
    model = faiss.Kmeans(d, init.shape[0], niter=iters, nredo=1, verbose=False, spherical=False,
                         max_points_per_centroid=n, min_points_per_centroid=1, seed=0)
    start = time.perf_counter()
    model.train(X, init_centroids=init)
    elapsed = time.perf_counter() - start
    return elapsed, float(model.obj[-1]), iters


def time_naive(X: torch.Tensor, init: torch.Tensor, iters: int) -> tuple[float, float, int]:
    """The obvious PyTorch Lloyd loop: full cdist, argmin, index_add."""
    synchronize(X.device)
    start = time.perf_counter()
    centres = init.clone()
    k = centres.shape[0]
    for _ in range(iters):
        labels = torch.cdist(X, centres).argmin(1)
        sums = torch.zeros_like(centres).index_add_(0, labels, X)
        counts = torch.bincount(labels, minlength=k).clamp_min(1).unsqueeze(1)
        centres = sums / counts
    dist = torch.cdist(X, centres).min(1).values
    inertia = float((dist * dist).sum())
    synchronize(X.device)
    return time.perf_counter() - start, inertia, iters


def gpu_memory_check(device: torch.device) -> None:
    """1M x 256 float32 into 10k clusters (k-means++ init, 20 Lloyd iterations) within the default budget."""
    n, d, k = 1_000_000, 256, 10_000
    X = torch.randn(n, d, device=device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    start = time.perf_counter()
    result = kmeans(X, k, n_init=1, max_iter=20, tol=0.0)
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) - base
    print(f"GPU memory check: N={n} D={d} K={k}: {time.perf_counter() - start:.1f} s, n_iter {result.n_iter}, "
          f"inertia {float(result.inertia):.6g}, peak extra memory {peak / 2**30:.2f} GiB "
          f"(data {X.numel() * 4 / 2**30:.2f} GiB; a full N x K distance matrix would be {n * k * 4 / 2**30:.1f} GiB)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="only N=60k, D=512, K in {100, 1000}")
    parser.add_argument("--iters", type=int, default=20, help="Lloyd iterations (fixed, tol=0)")
    parser.add_argument("--device", default="cpu", help="device of the torch runs (cpu or cuda)")
    parser.add_argument("--no-naive", action="store_true", help="skip the naive PyTorch loop")
    parser.add_argument("--no-sklearn", action="store_true")
    parser.add_argument("--no-faiss", action="store_true")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for every implementation (default: PyTorch's default)")
    parser.add_argument("--gpu-memory-check", action="store_true", help="also run 1M x 256 into 10k clusters")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if args.threads is not None:
        from threadpoolctl import threadpool_limits

        torch.set_num_threads(args.threads)
        threadpool_limits(limits=args.threads)  # scikit-learn's OpenMP and BLAS, faiss' OpenMP
        try:
            import faiss

            faiss.omp_set_num_threads(args.threads)
        except ImportError:
            pass

    load_before = os.getloadavg()
    peak = mm_peak_gflops(device)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"{torch.get_num_threads()} torch threads, device {device}")
    print(f"load average before: {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}")
    print(f"measured torch.mm float32 peak: {peak:.1f} GFLOP/s\n")
    header = ("| N | D | K | torch_clustering ms/it | scikit-learn ms/it | faiss-cpu ms/it | naive torch ms/it | "
              "torch_clustering GFLOP/s | % of mm peak | sklearn time / ours | inertia ours / sklearn |")
    print(header)
    print("|---" * (header.count("|") - 1) + "|")

    rng = np.random.RandomState(0)
    for n, d, k in (QUICK_GRID if args.quick else FULL_GRID):
        X_np = rng.randn(n, d).astype(np.float32)
        init_np = X_np[rng.choice(n, k, replace=False)].copy()
        X, init = torch.from_numpy(X_np).to(device), torch.from_numpy(init_np).to(device)
        ours_t, ours_inertia, ours_it = time_ours(X, init, args.iters)
        ours_ms = ours_t / max(ours_it, 1) * 1e3
        sk = None if args.no_sklearn else time_sklearn(X_np, init_np, args.iters)
        fa = None if args.no_faiss else time_faiss(X_np, init_np, args.iters)
        nv = None if args.no_naive else time_naive(X, init, args.iters)
        gflops = 2 * n * d * k / (ours_ms / 1e3) / 1e9

        def ms(r):
            return "n/a" if r is None else f"{r[0] / max(r[2], 1) * 1e3:.1f}"

        ratio = "n/a" if sk is None else f"{(sk[0] / max(sk[2], 1) * 1e3) / ours_ms:.2f}"
        inertia = "n/a" if sk is None else f"{ours_inertia / sk[1]:.6f}"
        print(f"| {n} | {d} | {k} | {ours_ms:.1f} | {ms(sk)} | {ms(fa)} | {ms(nv)} | {gflops:.0f} | "
              f"{100 * gflops / peak:.0f} | {ratio} | {inertia} |", flush=True)
        del X, init

    load_after = os.getloadavg()
    print(f"\nload average after: {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}")
    if args.gpu_memory_check:
        if device.type != "cuda":
            print("GPU memory check skipped: pass --device cuda")
        else:
            gpu_memory_check(device)


if __name__ == "__main__":
    main()
