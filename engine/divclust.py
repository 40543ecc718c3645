"""DivClust as the trainer composes it with any method that returns `assignments` (docs/methods/divclust.md).

The trainer owns the adaptive threshold and the label bank (checkpointed). Assignments are gathered from every
DDP rank (with gradient) before the loss and the bank update, so every rank holds the same threshold and bank.
The diversity loss is added as `divclust.weight * loss / C`, as the official code divides by the clusterings.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from . import distributed as dist_utils


def lowest_threshold(steps: int, interval: int, rate: float, start: float = 1.0) -> float:
    """The lowest threshold a run of `steps` optimizer steps can reach: the threshold moves only at steps
    0, interval, 2 interval, ... (one update each, by at most the factor `rate`)."""
    updates = 0 if steps <= 0 else (steps - 1) // int(interval) + 1
    return float(start) * float(rate) ** updates


def interval_to_reach(target: float, steps: int, rate: float, start: float = 1.0) -> int:
    """The largest NMI_interval whose threshold can fall from `start` to `target` within the first `steps` steps
    (0 when even an update at every step cannot)."""
    if target >= start:
        return max(1, steps)
    needed = math.ceil(math.log(target / start) / math.log(rate))   # updates needed
    if needed > steps:
        return 0
    return max(1, (steps - 1) // (needed - 1)) if needed > 1 else max(1, steps)


class DivClust:
    def __init__(self, cfg, device: torch.device):
        self.cfg = cfg
        self.clusterings = int(cfg.clusterings)
        self.active = self.clusterings > 1 and float(cfg.NMI_target) < 1.0
        self.threshold = float(cfg.divclust.init_threshold)
        self.bank = torch.empty((self.clusterings, 0), dtype=torch.int64, device=device)
        self.device = device

    def step(self, assignments: Tensor, step: int) -> tuple[Tensor, dict[str, Tensor]]:
        """Diversity loss of this step (already weighted and divided by C) and its logs."""
        from losses.divclust import divclust_step_measured

        cfg = self.cfg
        assignments = dist_utils.gather_with_grad(assignments.float(), dim=1)
        loss, self.threshold, self.bank, measured = divclust_step_measured(
            assignments, self.bank, self.threshold, step, float(cfg.NMI_target), int(cfg.NMI_interval),
            float(cfg.threshold_rate), int(cfg.divclust_mbank_size))
        weighted = float(cfg.divclust.weight) * loss / self.clusterings
        logs = {"divclust_loss": loss.detach(),
                "divclust_threshold": torch.full((), self.threshold, device=assignments.device)}  # no blocking copy
        if measured is not None:
            logs["divclust_bank_nmi"] = torch.full((), measured, device=assignments.device)
        return weighted, logs

    def target_state(self) -> dict:
        """The target D^T and the threshold now (reported beside the measured D^R)."""
        return {"target": float(self.cfg.NMI_target), "threshold": float(self.threshold)}

    def state_dict(self) -> dict:
        return {"threshold": torch.tensor(self.threshold, dtype=torch.float64), "bank": self.bank.cpu().clone()}

    def load_state_dict(self, state: dict) -> None:
        bank = state["bank"]
        if bank.dim() != 2 or (bank.numel() and bank.shape[0] != self.clusterings):
            raise ValueError(f"DivClust label bank has {bank.shape[0]} clusterings, this run has {self.clusterings}")
        self.threshold = float(state["threshold"])
        self.bank = bank.to(self.device, torch.int64).reshape(self.clusterings, -1)
