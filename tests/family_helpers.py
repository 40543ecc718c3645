"""Shared set-up of the ProPos / HaDis / DigPro model tests: tiny configs, the method with its run context, a random
batch, the logged losses of a run, and an interrupted run for resume tests."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import main as entry
from engine.run import load_config as resolve
from tests.conftest import build_method, killed_after_epoch


def tiny_argv(method: str, extra: list[str] | None = None) -> list[str]:
    """A seconds-long run of `method` on digits: MLP backbone on 8x8 images, 3 steps per epoch, small heads.
    `extra` (--key value pairs) replaces the tiny value of a key or adds the key."""
    options = {"--backbone": "mlp", "--image_size": "8", "--batch_size": "64", "--steps_per_epoch": "3",
               "--eval_every": "100", "--log_every": "1", "--eval_batch_size": "1024", "--warmup_epochs": "1",
               f"--{method}.hidden_dim": "32", f"--{method}.feature_dim": "16", f"--{method}.kmeans_n_init": "1"}
    extra = list(extra or [])
    options.update(zip(extra[0::2], extra[1::2]))
    return ["--preset", f"{method}_digits"] + [item for pair in options.items() for item in pair]


def build(method: str, extra: list[str] | None = None, seed: int = 0):
    """(method instance, config, data bundle, its RunContext for the hooks)."""
    cfg = resolve(tiny_argv(method, extra))
    model, bundle, ctx = build_method(cfg, seed=seed)
    return model, cfg, bundle, ctx


def random_batch(bundle, batch: int = 16, seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    size = bundle.info.image_size
    views = [torch.randn(batch, bundle.info.channels, size, size, generator=g) for _ in range(2)]
    return {"views": views, "index": torch.randperm(len(bundle.eval), generator=g)[:batch]}


def train_losses(run_dir: Path, term: str = "loss") -> list[float]:
    """The per-epoch mean of a logged training term (train/<term>) of a finished run, in epoch order."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["metrics"][f"train/{term}"] for r in rows if f"train/{term}" in r["metrics"]]


def run_killed_after(argv: list[str], epochs_done: int) -> None:
    """Run main.main(argv) and stop it (like a kill) right after the checkpoint of epoch `epochs_done` is written."""
    with killed_after_epoch(epochs_done), pytest.raises(KeyboardInterrupt):
        entry.main(argv)
