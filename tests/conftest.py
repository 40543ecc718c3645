import os
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

# Two cores are shared by the test processes; more threads only add contention on tiny tensors.
torch.set_num_threads(min(2, os.cpu_count() or 1))


# A tiny, fast CC run on the bundled digits, used by the training tests (paths are per test in tmp_path).
TINY = ["--backbone", "mlp", "--image_size", "8", "--batch_size", "64", "--steps_per_epoch", "3",
        "--eval_every", "1", "--log_every", "1", "--cc.hidden_dim", "32", "--cc.feature_dim", "16",
        "--eval_batch_size", "1024"]


@pytest.fixture
def tiny_args(tmp_path):
    return ["--output_dir", str(tmp_path / "runs")] + TINY


@pytest.fixture(autouse=True)
def _no_figures_unless_asked(request, monkeypatch):
    """Training runs inside tests skip the end-of-evaluation figures (about 1 s of CPU per evaluation plus a t-SNE
    at the final one): they are tested in tests/test_reporting.py and in tests marked `plots`."""
    if request.node.get_closest_marker("plots") is None:
        from engine import plots

        monkeypatch.setattr(plots, "write_evaluation_plots", lambda *args, **kwargs: None)


@pytest.fixture
def one_thread():
    """One intra-op thread for the test (tiny ops: a second, busy core only adds waiting)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@contextmanager
def killed_after_epoch(epoch: int, error: type[BaseException] = KeyboardInterrupt):
    """Inside the block, a training run stops like a kill (raising `error`) right after the checkpoint of `epoch`
    (checkpoints/last.pt) is written, so the interrupted run keeps the configuration (epochs, schedules) of an
    uninterrupted one."""
    from engine.trainer import Trainer

    original = Trainer.save_checkpoint

    def save_then_stop(self, name):
        original(self, name)
        if name == "last.pt" and self.epoch == epoch:
            raise error()

    Trainer.save_checkpoint = save_then_stop
    try:
        yield
    finally:
        Trainer.save_checkpoint = original


class RecordingLog:
    """A stand-in run logger that keeps what a method's hooks report."""

    def __init__(self):
        self.lines: list[str] = []
        self.metrics: list[dict] = []

    def info(self, message: str, color=None) -> None:
        self.lines.append(message)

    def warning(self, message: str) -> None:
        self.lines.append(f"WARNING: {message}")

    def log_metrics(self, metrics: dict, *, step: int, epoch=None, jsonl: bool = True) -> None:
        self.metrics.append(dict(metrics))


def build_method(cfg, *, seed: int = 0):
    """(method, data bundle, RunContext with a RecordingLog) of a resolved config, on the CPU, as the run builds
    them (the method's data request, the model seeded with `seed`)."""
    import datasets
    import models
    from models.context import RunContext

    cls = models.method_class(cfg.method)
    bundle = datasets.build(cfg, cls.data_request(cfg), device="cpu")
    torch.manual_seed(seed)
    method = cls(cfg, bundle.info)
    ctx = RunContext(method, bundle, device="cpu", log=RecordingLog(), seed=int(cfg.seed), epochs=int(cfg.epochs),
                     eval_batch_size=int(cfg.eval_batch_size))
    return method, bundle, ctx


def assert_same_checkpoints(path_a: Path, path_b: Path) -> dict:
    """The two checkpoints are at the same step with bit-equal model state; returns the first one."""
    a = torch.load(path_a, weights_only=True)
    b = torch.load(path_b, weights_only=True)
    assert a["step"] == b["step"]
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    return a

