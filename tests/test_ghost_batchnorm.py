"""Ghost BatchNorm and the shuffled target batch: one process with bn_groups G normalises as G GPUs do, and a
two-process run with the same global batch and groups ends where the one-process run ends."""
import copy

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from models.ghost_batchnorm import rank_major_to_global, shuffled_rows, use_ghost_batchnorm
from tests.test_ddp import _free_port, _worker


def test_each_group_is_normalised_with_its_own_statistics_and_group_0_keeps_the_running_ones():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 6),
                        nn.BatchNorm1d(6))
    ghost = copy.deepcopy(net)
    assert use_ghost_batchnorm(ghost, 4) == 2
    x = torch.randn(32, 3, 8, 8) * 2 + 1
    out = ghost(x)
    # the same as four separate "GPUs", each with a copy of the network on its 8 images (rows g, g + 4, ...: the
    # samplers deal a global batch to the ranks that way)
    gpus = [copy.deepcopy(net) for _ in range(4)]
    expected = torch.empty(32, 6)
    for g, gpu in enumerate(gpus):
        expected[g::4] = gpu(x[g::4])
    torch.testing.assert_close(out, expected)
    for name, buffer in ghost.named_buffers():                  # running statistics: those of "GPU 0"
        torch.testing.assert_close(buffer, dict(gpus[0].named_buffers())[name], msg=name)
    assert not torch.allclose(out, net(x))                       # whole-batch statistics differ
    ghost.eval(), net.eval()
    torch.testing.assert_close(ghost(x), gpus[0].eval()(x))      # evaluation: ordinary BatchNorm
    assert set(ghost.state_dict()) == set(net.state_dict())      # checkpoints unchanged
    with pytest.raises(ValueError, match="equal groups"):
        ghost.train()(x[:30])


def test_shuffled_rows_is_a_seeded_permutation_with_its_inverse():
    order, inverse = shuffled_rows(10, torch.Generator().manual_seed(3))
    assert sorted(order.tolist()) == list(range(10)) and torch.equal(order[inverse], torch.arange(10))
    again, _ = shuffled_rows(10, torch.Generator().manual_seed(3))
    assert torch.equal(order, again)


def test_rank_major_to_global_undoes_the_strided_dealing():
    batch = torch.arange(12).view(12, 1)
    gathered = torch.cat([batch[r::3] for r in range(3)])       # what an all-gather of 3 ranks returns
    assert torch.equal(rank_major_to_global(gathered, 3), batch)
    assert torch.equal(rank_major_to_global(gathered, 1), gathered)


def test_one_process_with_two_groups_equals_two_processes(tmp_path):
    """propos with bn_groups 2 and the shuffled target batch: one process (ghost BatchNorm, batch 64) and two gloo
    processes (32 each, their own statistics) train to the same weights."""
    def args(name: str) -> list[str]:
        return ["--preset", "propos_digits", "--output_dir", str(tmp_path / "runs"), "--run_name", name,
                "--backbone", "mlp", "--image_size", "8", "--batch_size", "64", "--steps_per_epoch", "3",
                "--epochs", "2", "--warmup_epochs", "1", "--eval_every", "100", "--eval_batch_size", "1024",
                "--propos.hidden_dim", "32", "--propos.feature_dim", "16", "--propos.kmeans_n_init", "1",
                "--propos.bn_groups", "2", "--plots", "false", "--eval_kmeans", "false"]

    mp.spawn(_worker, args=(1, _free_port(), args("single")), nprocs=1, join=True)
    mp.spawn(_worker, args=(2, _free_port(), args("ddp")), nprocs=2, join=True)
    single = torch.load(tmp_path / "runs/propos_digits/single/checkpoints/last.pt", weights_only=True)
    ddp = torch.load(tmp_path / "runs/propos_digits/ddp/checkpoints/last.pt", weights_only=True)
    assert single["step"] == ddp["step"] == 6
    for key, value in single["model"].items():
        if value.is_floating_point():
            # measured: ghost vs 2 processes differ by <= 4.3e-4 (reduction order through BatchNorm); one group
            # instead of two differs from the 2 processes by up to 0.24 (predictor), so this tolerance still fails
            torch.testing.assert_close(ddp["model"][key], value, rtol=1e-3, atol=1e-3, msg=key)
        else:
            assert torch.equal(ddp["model"][key], value), key
