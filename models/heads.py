"""Cluster heads, replicated C times on a shared backbone for DivClust, and the helpers the head-based methods share
(label-free head selection by loss, zero gradients for idle heads, block-layout gathering)."""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from engine.distributed import gather_with_grad


class MultiHeadLinear(nn.Module):
    """C independent linear maps in one tensor: (N, in) or (C, N, in) -> (C, N, out).

    Each head is initialised exactly like `nn.Linear` (Kaiming-uniform, a = sqrt(5); bias U(+-1/sqrt(in))),
    independently, so heads differ only by their random init.
    """

    def __init__(self, in_features: int, out_features: int, heads: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(heads, out_features, in_features))
        self.bias = nn.Parameter(torch.empty(heads, 1, out_features))
        bound = 1.0 / math.sqrt(in_features)
        for h in range(heads):
            nn.init.kaiming_uniform_(self.weight.data[h], a=math.sqrt(5))
            nn.init.uniform_(self.bias.data[h], -bound, bound)

    def forward(self, x: Tensor) -> Tensor:
        # (N, in) broadcasts against the C weight matrices; (C, N, in) is a batched matmul.
        return torch.matmul(x, self.weight.transpose(1, 2)) + self.bias


class ClusterHeads(nn.Module):
    """C cluster heads, each Linear(d, hidden) -> ReLU -> Linear(hidden, K) (hidden = 0: a single Linear),
    ending in a softmax: (N, d) -> (C, N, K) probabilities."""

    def __init__(self, in_features: int, num_clusters: int, clusterings: int = 1, hidden: int = 0):
        super().__init__()
        self.hidden = MultiHeadLinear(in_features, hidden, clusterings) if hidden else None
        self.out = MultiHeadLinear(hidden or in_features, num_clusters, clusterings)

    def logits(self, h: Tensor) -> Tensor:
        if self.hidden is not None:
            return self.out(torch.relu(self.hidden(h)))
        return self.out(h)

    def forward(self, h: Tensor) -> Tensor:
        return torch.softmax(self.logits(h).float(), dim=-1)


class LowestLossHeadSelection:
    """Mixin for a ClusteringMethod with parallel heads (PICA's clusterings, IIC's sub-heads): the label-free choice
    of the head whose loss, summed over the latest pass that trained them, is lowest. The sums are buffers
    `head_loss_sum` (H,) float64 and `head_loss_steps` of the method, so they are checkpointed."""

    def init_head_loss(self, heads: int) -> None:
        self.register_buffer("head_loss_sum", torch.zeros(heads, dtype=torch.float64))
        self.register_buffer("head_loss_steps", torch.zeros((), dtype=torch.int64))

    def start_head_loss_pass(self) -> None:
        self.head_loss_sum.zero_()
        self.head_loss_steps.zero_()

    def record_head_loss(self, losses: Tensor) -> None:
        """losses (H,): this step's loss of every head."""
        self.head_loss_sum += losses.detach().double()
        self.head_loss_steps += 1

    def select_head(self, ctx=None) -> int | None:
        """The head with the lowest summed loss; None with a single head or before any step of a pass."""
        if self.head_loss_sum.numel() == 1 or int(self.head_loss_steps) == 0:
            return None
        return int(torch.argmin(self.head_loss_sum))



def zero_touch(modules: list[nn.Module]) -> Tensor:
    """0 * (sum of the parameters of `modules`): adds nothing to the loss but gives those parameters zero gradients
    (so DDP sees every parameter used, and Adam moves them by momentum as after the official `zero_grad()` of the
    PyTorch versions the official PICA, IIC and CC code ran on)."""
    params = [p for m in modules for p in m.parameters()]
    if not params:
        return torch.zeros(())
    return 0.0 * torch.stack([p.sum() for p in params]).sum()


def gather_blocks(p: Tensor, blocks: int) -> Tensor:
    """(C, R*b, K) local probabilities in block layout -> (C, R*B, K) for the global batch, still in block layout
    (each of the R blocks is gathered across DDP ranks separately). Identity in one process."""
    return torch.cat([gather_with_grad(chunk, dim=1) for chunk in p.chunk(blocks, dim=1)], dim=1)
