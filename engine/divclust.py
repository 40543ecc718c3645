"""DivClust as the trainer composes it with any method that returns `assignments` (divclust.md §4, §9).

The trainer owns the adaptive threshold and the label bank (checkpointed). Assignments are gathered from every
DDP rank (with gradient) before the loss and the bank update, so every rank holds the same threshold and bank.
The diversity loss is added as `divclust.weight * loss / C`, as the official code divides by the clusterings.
"""
from __future__ import annotations

import torch
from torch import Tensor

from . import distributed as dist_utils
from .config import ConfigError


class DivClust:
    def __init__(self, cfg, device: torch.device):
        self.cfg = cfg
        self.clusterings = int(cfg.clusterings)
        self.active = self.clusterings > 1 and float(cfg.NMI_target) < 1.0
        self.threshold = float(cfg.divclust.init_threshold)
        self.bank = torch.empty((self.clusterings, 0), dtype=torch.int64, device=device)
        self.device = device

    @staticmethod
    def check_config(cfg) -> None:
        if not 0.0 < float(cfg.NMI_target) <= 1.0:
            raise ConfigError(f"NMI_target must be in (0, 1] (1 switches DivClust off), not {cfg.NMI_target}.")
        if float(cfg.NMI_target) < 1.0 and int(cfg.clusterings) < 2:
            raise ConfigError(f"--NMI_target {cfg.NMI_target} bounds the similarity between clusterings, so it needs "
                              f"--clusterings 2 or more (got {cfg.clusterings}).")
        if int(cfg.NMI_interval) < 1 or not 0.0 < float(cfg.threshold_rate) < 1.0:
            raise ConfigError("NMI_interval must be >= 1 and threshold_rate in (0, 1).")

    def step(self, assignments: Tensor, step: int) -> tuple[Tensor, dict[str, Tensor]]:
        """Diversity loss of this step (already weighted and divided by C) and its logs."""
        from losses.divclust import divclust_step

        cfg = self.cfg
        assignments = dist_utils.gather_with_grad(assignments.float(), dim=1)
        loss, self.threshold, self.bank = divclust_step(
            assignments, self.bank, self.threshold, step=step, target=float(cfg.NMI_target),
            interval=int(cfg.NMI_interval), rate=float(cfg.threshold_rate), bank_size=int(cfg.divclust_mbank_size))
        weighted = float(cfg.divclust.weight) * loss / self.clusterings
        logs = {"divclust_loss": loss.detach(),
                "divclust_threshold": torch.full((), self.threshold, device=assignments.device)}  # no blocking copy
        if step % int(cfg.NMI_interval) == 0:
            from metrics.diversity import mean_inter_clustering_nmi

            logs["divclust_bank_nmi"] = torch.full((), float(mean_inter_clustering_nmi(self.bank)),
                                                   device=assignments.device)
        return weighted, logs

    def state_dict(self) -> dict:
        return {"threshold": torch.tensor(self.threshold, dtype=torch.float64), "bank": self.bank.cpu().clone()}

    def load_state_dict(self, state: dict) -> None:
        bank = state["bank"]
        if bank.dim() != 2 or (bank.numel() and bank.shape[0] != self.clusterings):
            raise ValueError(f"DivClust label bank has {bank.shape[0]} clusterings, this run has {self.clusterings}")
        self.threshold = float(state["threshold"])
        self.bank = bank.to(self.device, torch.int64).reshape(self.clusterings, -1)
