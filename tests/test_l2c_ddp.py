"""MCL in pairwise-supervised mode under DDP (gloo, CPU): probabilities and labels are gathered, so two processes
train on the pairs of the global batch and end where one process ends (per-sample GroupNorm: no batch statistics)."""
import torch
import torch.multiprocessing as mp

from tests.test_ddp import _free_port, _worker
from tests.test_l2c_transfer import PER_CLASS, common, make_images, replace


def test_pairwise_supervised_ddp_uses_the_global_batch_pairs(tmp_path):
    data = make_images(tmp_path / "tiny.npz")

    def args(name):
        return ["--preset", "mcl_digits", *replace(common(data, tmp_path / "runs"), "backbone", "mlp"),
                "--backbone_norm", "group", "--epochs", "2", "--run_name", name, "--eval_kmeans", "false", "--plots", "false",
                "--l2c.classes", "[0, 1, 2, 3, 4, 5, 6, 7]"]

    mp.spawn(_worker, args=(1, _free_port(), args("single")), nprocs=1, join=True)
    mp.spawn(_worker, args=(2, _free_port(), args("ddp")), nprocs=2, join=True)
    single = torch.load(tmp_path / "runs/mcl_digits/single/checkpoints/last.pt", weights_only=True)
    ddp = torch.load(tmp_path / "runs/mcl_digits/ddp/checkpoints/last.pt", weights_only=True)
    assert single["step"] == ddp["step"] == 2 * -(-8 * PER_CLASS // 20)      # the last partial batch is kept
    for key, value in single["model"].items():
        torch.testing.assert_close(ddp["model"][key], value, rtol=1e-4, atol=1e-5, msg=key)
