"""Run logging: coloured console lines (rank 0), `metrics.jsonl` and `log.txt` in the run directory, and wandb.

wandb is optional and never fatal: an import error, a missing login or no network turns it off with one warning.
"""
from __future__ import annotations

import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

from termcolor import colored

from .distributed import is_main_process


def _plain(value: Any) -> Any:
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class RunLogger:
    def __init__(self, run_dir: Path | None, cfg=None, *, use_wandb: bool = False):
        self.run_dir = run_dir
        self.main = is_main_process()
        self.wandb = None
        self._log_file = open(run_dir / "log.txt", "a") if (self.main and run_dir is not None) else None
        if self.main and use_wandb and cfg is not None:
            self._start_wandb(cfg)
        # The dataset readers report through the standard `logging` module; show those lines here.
        self._handler = _ForwardHandler(self)
        reader_log = logging.getLogger("datasets")
        reader_log.setLevel(logging.INFO)
        reader_log.addHandler(self._handler)

    # ----- console -----------------------------------------------------------------------------------------
    def info(self, message: str, color: str | None = None) -> None:
        if not self.main:
            return
        stamp = time.strftime("%H:%M:%S")
        print(f"{colored(stamp, 'green')} {colored(message, color) if color else message}", file=sys.stderr,
              flush=True)
        if self._log_file:
            self._log_file.write(f"{stamp} {message}\n")
            self._log_file.flush()

    def warning(self, message: str) -> None:
        self.info(f"WARNING: {message}", "yellow")

    # ----- metrics -----------------------------------------------------------------------------------------
    def log_metrics(self, metrics: dict[str, Any], *, step: int, epoch: int | None = None, jsonl: bool = True) -> None:
        if not self.main:
            return
        clean = {k: _plain(v) for k, v in metrics.items()}
        if jsonl and self.run_dir is not None:
            with open(self.run_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps({"epoch": epoch, "step": step, "metrics": clean}) + "\n")
        if self.wandb is not None:
            try:
                self.wandb.log({k: v for k, v in clean.items() if isinstance(v, (int, float))}, step=step)
            except Exception as err:  # never let logging stop training
                self.warning(f"wandb.log failed ({err}); wandb turned off")
                self.wandb = None

    def log_image(self, key: str, path: Path, *, step: int) -> None:
        if self.main and self.wandb is not None:
            try:
                self.wandb.log({key: self.wandb.Image(str(path))}, step=step)
            except Exception as err:
                self.warning(f"wandb image upload failed ({err})")

    def _start_wandb(self, cfg) -> None:
        try:
            import wandb

            self.wandb = wandb
            wandb.init(project=cfg.wandb_project, entity=cfg.wandb_entity, config=cfg.to_dict(),
                       name=self.run_dir.name if self.run_dir else None,
                       group=cfg.preset, dir=str(self.run_dir) if self.run_dir else None,
                       settings=wandb.Settings(init_timeout=60))
        except Exception as err:
            self.wandb = None
            self.warning(f"wandb could not start ({type(err).__name__}: {str(err)[:200]}); continuing without it. "
                         "Set WANDB_MODE=offline to log locally and sync later.")

    def close(self) -> None:
        logging.getLogger("datasets").removeHandler(self._handler)
        if self.wandb is not None:
            try:
                self.wandb.finish()
            except Exception:
                pass
            self.wandb = None
        if self._log_file:
            self._log_file.close()
            self._log_file = None


class _ForwardHandler(logging.Handler):
    def __init__(self, logger: RunLogger):
        super().__init__(logging.INFO)
        self.logger = logger

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.WARNING:
            self.logger.warning(record.getMessage())
        else:
            self.logger.info(record.getMessage())
