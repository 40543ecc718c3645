"""The CPU GEMM behind the distance blocks: PyTorch's BLAS, or NumPy's when that one is faster on this machine.

On the project's AMD EPYC machine NumPy's OpenBLAS runs the k-means GEMM shapes 10-35 % faster than PyTorch's
MKL single-threaded (measured: (1024 x 512) @ (512 x 1000) 85-90 against 72 GFLOP/s; a full 30k x 512, K = 1000
assignment pass 415 against 480-640 ms). Which BLAS wins depends on the CPU, so the first CPU fit times both on
one small product and keeps the faster (`TORCH_CLUSTERING_CPU_GEMM=torch|numpy` forces a choice). The NumPy path
works on zero-copy views of the same CPU tensors; GPU tensors always use PyTorch.
"""

from __future__ import annotations

import os
import threading
import time
from contextlib import contextmanager

import numpy as np
import torch

_choice: str | None = None
_controller = None  # threadpoolctl.ThreadpoolController, or False when threadpoolctl is missing
_scope = threading.local()  # `active` on the thread that runs a CPU fit (inside cpu_gemm_scope)


def _time(fn, repeats: int = 5) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def _calibrate() -> str:
    forced = os.environ.get("TORCH_CLUSTERING_CPU_GEMM", "auto").lower()
    if forced in ("torch", "numpy"):
        return forced
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(512, 256, generator=generator)
    b = torch.randn(256, 256, generator=generator)
    out = torch.empty(512, 256)
    a_np, b_np, out_np = a.numpy(), b.numpy(), out.numpy()
    torch.mm(a, b, out=out)
    np.matmul(a_np, b_np, out=out_np)
    t_torch = _time(lambda: torch.mm(a, b, out=out))
    t_numpy = _time(lambda: np.matmul(a_np, b_np, out=out_np))
    return "numpy" if t_numpy < 0.95 * t_torch else "torch"


@contextmanager
def cpu_gemm_scope():
    """Inside a CPU fit (after PyTorch is set to one intra-op thread): pick the BLAS once per process, and hold
    NumPy's BLAS to one thread per caller (the fit's row-range threads provide the parallelism). The limit is
    process-wide while the fit runs."""
    _scope.active = True
    try:
        with _limited_blas():
            yield
    finally:
        _scope.active = False


@contextmanager
def _limited_blas():
    global _choice, _controller
    if _controller is None:
        try:
            from threadpoolctl import ThreadpoolController

            _controller = ThreadpoolController()  # scanning the loaded libraries once is enough
        except ImportError:  # cannot control NumPy's BLAS threads: stay with PyTorch's
            _controller, _choice = False, "torch"
    if _controller is False:
        yield
        return
    with _controller.limit(limits=1, user_api="blas"):
        if _choice is None:
            _choice = _calibrate()
        yield


def uses_numpy(device: torch.device) -> bool:
    """True inside a CPU fit on the calling thread when the NumPy BLAS was chosen."""
    return device.type == "cpu" and _choice == "numpy" and getattr(_scope, "active", False)


def gemm_into(out: torch.Tensor, a: torch.Tensor, b: torch.Tensor, b_np: np.ndarray | None,
              bias: torch.Tensor | None = None) -> torch.Tensor:
    """out (m, k) = a (m, d) @ b (d, k) [+ bias (k,) on every row]; `b_np` is b as a NumPy view when the NumPy
    BLAS is in use (else None)."""
    if b_np is not None:
        np.matmul(a.numpy(), b_np, out=out.numpy())
        if bias is not None:
            out.add_(bias)
    elif bias is not None:
        torch.addmm(bias, a, b, out=out)
    else:
        torch.mm(a, b, out=out)
    return out


def numpy_operand(b: torch.Tensor) -> np.ndarray | None:
    """b as a NumPy view if the NumPy BLAS is in use for b's device, else None."""
    return b.numpy() if uses_numpy(b.device) else None

