"""L2C building blocks: the similarity network's pair layout and the data protocol helpers (class subsets, class-
balanced batches)."""
import numpy as np
import pytest
import torch

from datasets import DataInfo, RawData, keep_classes
from datasets.samplers import ClassBalancedBatchSampler
from engine.config import ConfigError
from models.l2c_networks import SimilarityNetwork, build_similarity_network


def test_similarity_network_pairs_are_f_b_then_f_a_row_major():
    # identity trunk and a pair head reduced to an identity first layer: the output shows what each pair row sees
    net = SimilarityNetwork(torch.nn.Identity(), dim=2, hidden=4).double()
    copy = torch.nn.Linear(4, 4).double()
    with torch.no_grad():
        copy.weight.copy_(torch.eye(4, dtype=torch.float64))
        copy.bias.zero_()
    net.pair_head = torch.nn.Sequential(copy, torch.nn.Identity())
    f = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], dtype=torch.float64)
    fast, enumerated = net.pair_logits(f), net.pair_logits_enumerated(f)
    for a in range(3):
        for b in range(3):
            expected = torch.cat([f[b], f[a]])                  # pair k = a*N + b sees [f_b, f_a]
            assert torch.equal(fast[a * 3 + b], expected) and torch.equal(enumerated[a * 3 + b], expected)


@pytest.mark.parametrize("backbone,size", [("lenet", 16), ("vgg_s", 32), ("mlp", 8)])
def test_fast_pair_logits_equal_the_enumerated_official_form(backbone, size):
    torch.manual_seed(0)
    info = DataInfo("image", 1, size, 0, 10, 5)
    net = build_similarity_network(backbone, info, hidden=32).double()
    x = torch.randn(7, 1, size, size, dtype=torch.float64)
    for mode in (True, False):                                # batch statistics and running statistics
        net.train(mode)
        f = net.trunk(x)
        fast, slow = net.pair_logits(f), net.pair_logits_enumerated(f)
        assert fast.shape == (49, 2)
        assert torch.allclose(fast, slow, rtol=1e-10, atol=1e-10)
    # gradients agree too
    net.train()
    f = net.trunk(x)
    g_fast = torch.autograd.grad(net.pair_logits(f).square().sum(), net.pair_head[0].weight)[0]
    g_slow = torch.autograd.grad(net.pair_logits_enumerated(f).square().sum(), net.pair_head[0].weight)[0]
    assert torch.allclose(g_fast, g_slow, rtol=1e-9, atol=1e-9)


def test_official_trunk_widths():
    info16 = DataInfo("image", 1, 16, 0, 10, 5)
    assert build_similarity_network("lenet", info16).pair_head[0].weight.shape == (2000, 1000)   # 4d x 2d, d = 500
    info32 = DataInfo("image", 1, 32, 0, 10, 5)
    assert build_similarity_network("vgg_s", info32).pair_head[0].weight.shape == (4096, 2048)   # d = 1024


def test_class_subset_keeps_order_labels_and_ids():
    labels = np.array([3, 0, 5, 3, -1, 1, 5])
    raw = RawData(np.arange(7, dtype=np.float32)[:, None] * np.ones((1, 2), np.float32), labels, "toy",
                  ids=[f"row{i}" for i in range(7)])
    kept = keep_classes(raw, (5, 3), "toy")
    assert kept.labels.tolist() == [3, 5, 3, 5] and kept.data[:, 0].tolist() == [0, 2, 3, 6]
    assert kept.ids == ["row0", "row2", "row3", "row6"]
    with pytest.raises(ConfigError, match="selects no sample"):
        keep_classes(raw, (9,), "toy")


def test_class_balanced_batches():
    labels = torch.arange(12).repeat_interleave(6)            # 12 classes x 6 images
    sampler = ClassBalancedBatchSampler(labels, classes_per_batch=4, batch_size=12, seed=3)
    assert len(sampler) == 72 // 12
    batches = list(sampler)
    for batch in batches:
        assert len(batch) == 12 and len(set(batch)) == 12     # without replacement inside a batch
        classes = labels[batch].tolist()
        groups = [classes[i:i + 3] for i in range(0, 12, 3)]
        assert all(len(set(g)) == 1 for g in groups)           # grouped by class, 3 images each
        assert len({g[0] for g in groups}) == 4                # 4 distinct classes
    assert batches == list(sampler)                             # same epoch -> same batches
    sampler.set_epoch(1)
    assert batches != list(sampler)
    # two ranks take the two halves of the same global batches
    ranks = [ClassBalancedBatchSampler(labels, classes_per_batch=4, batch_size=12, seed=3, rank=r, world_size=2)
             for r in range(2)]
    for r in ranks:
        r.set_epoch(1)
    whole = list(sampler)
    for b, (half0, half1) in enumerate(zip(*[list(r) for r in ranks])):
        assert half0 + half1 == whole[b]


def test_class_balanced_batches_bad_settings():
    labels = torch.arange(3).repeat_interleave(2)
    with pytest.raises(ConfigError, match="multiple"):
        ClassBalancedBatchSampler(labels, classes_per_batch=4, batch_size=6, seed=0)
    with pytest.raises(ConfigError, match="classes"):
        ClassBalancedBatchSampler(labels, classes_per_batch=6, batch_size=6, seed=0)
    with pytest.raises(ConfigError, match="only 2"):
        ClassBalancedBatchSampler(labels, classes_per_batch=2, batch_size=6, seed=0)
    with pytest.raises(ConfigError, match="unknown"):
        ClassBalancedBatchSampler(torch.tensor([0, 0, -1, 1]), classes_per_batch=2, batch_size=2, seed=0)
