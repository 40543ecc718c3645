import os

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

