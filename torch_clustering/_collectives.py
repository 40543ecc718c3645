"""The few collective operations k-means/GMM need, behind one small interface.

`LOCAL` is the single-process implementation: every operation is a no-op (or the identity), so the single-process
code path issues no collectives. `ProcessGroup` forwards to `torch.distributed` on the default group; tensors live
on the data's device (CPU tensors for gloo, CUDA tensors for NCCL).
"""

from __future__ import annotations

import torch
import torch.distributed as dist


class Collectives:
    """Single process: nothing to communicate."""

    rank = 0
    world_size = 1

    def all_reduce_sum_(self, t: torch.Tensor) -> torch.Tensor:
        return t

    def all_reduce_max_(self, t: torch.Tensor) -> torch.Tensor:
        return t

    def all_gather_cat(self, t: torch.Tensor) -> torch.Tensor:
        """Concatenate every rank's `t` along dim 0 in rank order (first dims may differ between ranks)."""
        return t

    def broadcast_(self, t: torch.Tensor, src: int) -> torch.Tensor:
        return t


LOCAL = Collectives()


class ProcessGroup(Collectives):
    """The default `torch.distributed` process group."""

    def __init__(self) -> None:
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()

    def all_reduce_sum_(self, t: torch.Tensor) -> torch.Tensor:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    def all_reduce_max_(self, t: torch.Tensor) -> torch.Tensor:
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return t

    def all_gather_cat(self, t: torch.Tensor) -> torch.Tensor:
        t = t.contiguous()
        sizes = torch.tensor([t.shape[0]], dtype=torch.int64, device=t.device)
        all_sizes = [torch.empty_like(sizes) for _ in range(self.world_size)]
        dist.all_gather(all_sizes, sizes)
        counts = [int(s) for s in all_sizes]
        longest = max(counts)
        padded = t.new_zeros((longest,) + tuple(t.shape[1:]))
        padded[: t.shape[0]] = t
        gathered = [torch.empty_like(padded) for _ in range(self.world_size)]
        dist.all_gather(gathered, padded)
        return torch.cat([g[:n] for g, n in zip(gathered, counts)], dim=0)

    def broadcast_(self, t: torch.Tensor, src: int) -> torch.Tensor:
        dist.broadcast(t, src=src)
        return t


def process_group_active(distributed: bool) -> bool:
    """True when `distributed` is asked for and a default process group is initialised.

    Like the reference, `distributed=True` without an initialised group quietly runs single-process, so the same
    call works under `torchrun` and in a plain script.
    """
    return bool(distributed) and dist.is_available() and dist.is_initialized()


def layout(distributed: bool, sharded: bool) -> tuple[Collectives, Collectives]:
    """(data, restarts): who shares the data, and who shares the restarts.

    * single process: (LOCAL, LOCAL);
    * replicated (`distributed=True, sharded=False`, every rank holds all points): restarts are split across ranks
      and the best is broadcast, the data need no communication: (LOCAL, group);
    * sharded (`distributed=True, sharded=True`, every rank holds a slice of the points): all ranks run every
      restart together on the union of their slices: (group, LOCAL).
    """
    if not process_group_active(distributed):
        return LOCAL, LOCAL
    group = ProcessGroup()
    return (group, LOCAL) if sharded else (LOCAL, group)


def raise_together(message: str | None, comm: Collectives, device: torch.device) -> None:
    """Raise ValueError on every rank when any rank found a problem (a lone raise would deadlock the others)."""
    if comm.world_size == 1:
        if message is not None:
            raise ValueError(message)
        return
    flag = torch.tensor([0 if message is None else 1], dtype=torch.int64, device=device)
    comm.all_reduce_max_(flag)
    if int(flag) == 0:
        return
    if message is None:
        message = "the input was rejected on another rank (its error message names the problem)"
    raise ValueError(message)


def same_width_message(X: torch.Tensor, comm: Collectives) -> str | None:
    """With data split over ranks, every shard must have the same number of features (else the sums cannot be
    all-reduced); the message names the widths seen."""
    if comm.world_size == 1:
        return None
    widths = torch.tensor([X.shape[1], -X.shape[1]], dtype=torch.int64, device=X.device)
    comm.all_reduce_max_(widths)
    widest, narrowest = int(widths[0]), -int(widths[1])
    if widest != narrowest:
        return f"the data shards have different numbers of features across ranks (from {narrowest} to {widest})"
    return None
