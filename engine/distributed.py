"""Process-group setup under torchrun and the few collectives methods and the trainer need.

Every function is a no-op (or identity) in a single process, so one code path serves both.
"""
from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import Tensor


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    return rank() == 0


def init_from_env(device_type: str) -> None:
    """Join the process group torchrun describes (WORLD_SIZE > 1): NCCL on CUDA, gloo on the CPU."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or is_distributed():
        return
    backend = "nccl" if device_type == "cuda" else "gloo"
    if device_type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend, timeout=timedelta(minutes=30))


def shutdown() -> None:
    """Leave the process group together: a rank that tears gloo down while a peer still works (rank 0 writing
    results and figures) can abort at exit ("terminate called without an active exception")."""
    if is_distributed():
        try:
            dist.barrier()
        finally:
            dist.destroy_process_group()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sums the incoming gradients over ranks and returns this rank's slice.

    Every rank computes the same loss on the gathered batch, so the summed gradient is world_size times this
    rank's share; DistributedDataParallel's averaging then gives exactly the single-process gradient.
    """

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        ctx.dim0 = x.shape[0]
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        start = dist.get_rank() * ctx.dim0
        return grad[start:start + ctx.dim0]


def gather_with_grad(x: Tensor, dim: int = 0) -> Tensor:
    """Concatenate `x` from every rank along `dim` (rank order), differentiably. Identity in one process.
    All ranks must pass the same shape."""
    if not is_distributed():
        return x
    if dim != 0:
        return _GatherWithGrad.apply(x.transpose(0, dim)).transpose(0, dim)
    return _GatherWithGrad.apply(x)


@torch.no_grad()
def gather(x: Tensor, dim: int = 0) -> Tensor:
    """Concatenate `x` from every rank along `dim` without gradient; sizes along `dim` may differ by rank."""
    if not is_distributed():
        return x
    x = x.transpose(0, dim).contiguous()
    sizes = [torch.zeros(1, dtype=torch.long, device=x.device) for _ in range(world_size())]
    dist.all_gather(sizes, torch.tensor([x.shape[0]], device=x.device))
    longest = int(max(s.item() for s in sizes))
    padded = torch.zeros((longest, *x.shape[1:]), dtype=x.dtype, device=x.device)
    padded[: x.shape[0]] = x
    parts = [torch.empty_like(padded) for _ in range(world_size())]
    dist.all_gather(parts, padded)
    out = torch.cat([p[: int(s.item())] for p, s in zip(parts, sizes)], dim=0)
    return out.transpose(0, dim)


@torch.no_grad()
def broadcast_buffers(module: torch.nn.Module) -> None:
    """Give every rank rank 0's buffers of `module` (BatchNorm statistics, which each rank's last forward moved on
    its own), so that a pass over data embeds every shard alike; a no-op in one process."""
    if not is_distributed():
        return
    for buffer in module.buffers():
        dist.broadcast(buffer, src=0)


def broadcast_object(obj):
    """Rank 0's Python object on every rank."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
