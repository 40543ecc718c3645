"""DDP on CPU (gloo): two processes with the same global batch end with the same parameters as one process."""
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from tests.conftest import TINY


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, argv: list[str]) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    import main as entry
    from engine import distributed

    try:
        entry.main(argv)
    finally:
        distributed.shutdown()


def _args(tmp_path, name):
    # Per-sample normalisation (GroupNorm) so that no statistic depends on how the batch is split.
    return ["--output_dir", str(tmp_path / "runs")] + TINY + [
        "--backbone_norm", "group", "--epochs", "2", "--run_name", name, "--clusterings", "2",
        "--NMI_target", "0.9", "--NMI_interval", "2", "--eval_kmeans", "false", "--consensus", "none", "--plots", "false"]


def test_two_gloo_processes_equal_one(tmp_path):
    mp.spawn(_worker, args=(1, _free_port(), _args(tmp_path, "single")), nprocs=1, join=True)
    mp.spawn(_worker, args=(2, _free_port(), _args(tmp_path, "ddp")), nprocs=2, join=True)
    single = torch.load(tmp_path / "runs/cc_digits/single/checkpoints/last.pt", weights_only=True)
    ddp = torch.load(tmp_path / "runs/cc_digits/ddp/checkpoints/last.pt", weights_only=True)
    assert single["step"] == ddp["step"] == 6
    for key, value in single["model"].items():
        torch.testing.assert_close(ddp["model"][key], value, rtol=1e-4, atol=5e-5, msg=key)  # reduction order
    # the DivClust threshold and label bank are global state: identical to the one-process run
    assert float(single["divclust"]["threshold"]) == pytest.approx(float(ddp["divclust"]["threshold"]))
    assert torch.equal(torch.sort(single["divclust"]["bank"], dim=1)[0], torch.sort(ddp["divclust"]["bank"], dim=1)[0])
