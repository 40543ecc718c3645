"""Run logging: coloured console lines (rank 0), `metrics.jsonl` and `log.txt` in the run directory, and wandb.

A logger starts without a run directory: the lines of the start-up (reading the data, building the method) are
kept in memory and written to `log.txt` when `attach(run_dir)` is called, once everything that can fail at the
start has passed, so a failed start writes no file. Python warnings raised while the logger is attached go
through it (console and log.txt). wandb is optional and never fatal: an import error, a missing login or no
network turns it off with one warning.
"""
from __future__ import annotations

import json
import logging
import math
import sys
import time
import warnings
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
    def __init__(self, run_dir: Path | None = None, cfg=None, *, use_wandb: bool = False):
        self.run_dir = None
        self.cfg, self.use_wandb = cfg, use_wandb
        self.main = is_main_process()
        self.wandb = None
        self._log_file = None
        self._pending: list[str] = []
        self._pending_metrics: list[str] = []
        self._show_warning = None
        # The dataset readers report through the standard `logging` module; show those lines here.
        self._handler = _ForwardHandler(self)
        reader_log = logging.getLogger("datasets")
        reader_log.setLevel(logging.INFO)
        reader_log.addHandler(self._handler)
        if run_dir is not None:
            self.attach(run_dir)

    def attach(self, run_dir: Path, *, truncate_metrics_after: int | None = None) -> None:
        """Start writing into `run_dir`: log.txt (with the lines so far), metrics.jsonl (records of a resumed run
        after step `truncate_metrics_after` are dropped first: they came after its checkpoint), wandb, warnings."""
        self.run_dir = Path(run_dir)
        if self.main:
            metrics = self.run_dir / "metrics.jsonl"
            if truncate_metrics_after is not None and metrics.is_file():
                _truncate_metrics(metrics, truncate_metrics_after)
            self._log_file = open(self.run_dir / "log.txt", "a")
            for line in self._pending:
                self._log_file.write(line)
            self._log_file.flush()
            for line in self._pending_metrics:
                with open(metrics, "a") as f:
                    f.write(line)
            if self.use_wandb and self.cfg is not None:
                self._start_wandb(self.cfg)
        self._pending, self._pending_metrics = [], []
        self._show_warning = warnings.showwarning
        warnings.showwarning = self._warning_to_log

    # ----- console -----------------------------------------------------------------------------------------
    def info(self, message: str, color: str | None = None) -> None:
        if not self.main:
            return
        stamp = time.strftime("%H:%M:%S")
        print(f"{colored(stamp, 'green')} {colored(message, color) if color else message}", file=sys.stderr,
              flush=True)
        line = f"{stamp} {message}\n"
        if self._log_file:
            self._log_file.write(line)
            self._log_file.flush()
        elif self.run_dir is None:
            self._pending.append(line)

    def warning(self, message: str) -> None:
        self.info(f"WARNING: {message}", "yellow")

    def _warning_to_log(self, message, category, filename, lineno, file=None, line=None) -> None:
        self.warning(f"{category.__name__}: {message} ({Path(filename).name}:{lineno})")

    # ----- metrics -----------------------------------------------------------------------------------------
    def log_metrics(self, metrics: dict[str, Any], *, step: int, epoch: int | None = None, jsonl: bool = True) -> None:
        if not self.main:
            return
        clean = {k: _plain(v) for k, v in metrics.items()}
        if jsonl:
            record = json.dumps({"epoch": epoch, "step": step, "metrics": clean}) + "\n"
            if self.run_dir is not None:
                with open(self.run_dir / "metrics.jsonl", "a") as f:
                    f.write(record)
            else:
                self._pending_metrics.append(record)
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
            tags = [str(t) for t in (cfg.get("wandb_tags") or [])]
            wandb.init(project=cfg.wandb_project, entity=cfg.wandb_entity, config=cfg.to_dict(),
                       name=self.run_dir.name if self.run_dir else None, group=cfg.get("wandb_group") or cfg.preset,
                       tags=tags or None, notes=cfg.get("wandb_notes") or None,
                       dir=str(self.run_dir) if self.run_dir else None, settings=wandb.Settings(init_timeout=60))
        except Exception as err:
            self.wandb = None
            self.warning(f"wandb could not start ({type(err).__name__}: {str(err)[:200]}); continuing without it. "
                         "Set WANDB_MODE=offline to log locally and sync later.")

    def close(self) -> None:
        logging.getLogger("datasets").removeHandler(self._handler)
        if self._show_warning is not None:
            warnings.showwarning = self._show_warning
            self._show_warning = None
        if self.wandb is not None:
            try:
                self.wandb.finish()
            except Exception:
                pass
            self.wandb = None
        if self._log_file:
            self._log_file.close()
            self._log_file = None


def _truncate_metrics(path: Path, step: int) -> int:
    """Drop the records of metrics.jsonl written after step `step` (atomically); returns how many were dropped."""
    lines = path.read_text().splitlines(keepends=True)
    kept = []
    for line in lines:
        try:
            if int(json.loads(line).get("step", 0)) <= step:
                kept.append(line)
        except (ValueError, AttributeError, TypeError):
            continue
    if len(kept) != len(lines):
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text("".join(kept))
        tmp.replace(path)
    return len(lines) - len(kept)


class _ForwardHandler(logging.Handler):
    def __init__(self, logger: RunLogger):
        super().__init__(logging.INFO)
        self.logger = logger

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.WARNING:
            self.logger.warning(record.getMessage())
        else:
            self.logger.info(record.getMessage())
