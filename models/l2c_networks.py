"""L2C networks: the official LeNet / VGG-S trunks and the similarity prediction network (docs/methods/l2c.md).

Trunks return (N, d) features, i.e. everything the official model computes before its replaceable `last` module:
- `lenet` (the MNIST demo's `LeNet.features`): conv5x5(C->20, pad 2) -> BN -> ReLU -> maxpool 2 -> conv5x5(20->50,
  pad 2) -> BN -> ReLU -> maxpool 2 -> flatten (50 (s/4)^2) -> Linear(->500) -> BN1d -> ReLU; d = 500.
- `vgg_s` (Omniglot, cfg S = [64, M, 128, M, 256, M, 256, M]): conv3x3 pad 1 -> BN -> ReLU per number, 2x2 max-pool
  per M, flatten; d = 256 (s/16)^2 = 1024 at 32 px. The official VGG-S puts its Linear(1024->512)-BN-ReLU layer in
  `last`, so the clustering network adds it as `l2c.head_hidden: 512` and the similarity network does not use it.
Any other `backbone` name is built by models.backbones. PyTorch default initialisation, as the official code.

The similarity network ("SPN", "G" in the L2C paper) is the official model surgery: the trunk's features of the whole
batch, all N^2 ordered pairs enumerated (pair a*N + b is [f_b, f_a]), then Linear(2d -> 4d) -> BN1d -> ReLU ->
Linear(4d -> 2); class 1 = "similar". It sees a batch at once and returns N^2 rows of logits.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset, Subset

from datasets import DataInfo
from engine.config import ConfigError
from losses.l2c import pair_enum, pairwise_targets

from .backbones import build_backbone

LOCAL_TRUNKS = ("lenet", "vgg_s")


def _check_image(name: str, info: DataInfo, divisor: int) -> None:
    if info.kind != "image":
        raise ConfigError(f"backbone {name} needs images; use backbone mlp for vector data")
    if info.image_size < divisor:
        raise ConfigError(f"backbone {name} needs image_size >= {divisor}, got {info.image_size}")
    if info.norm != "batch":
        raise ConfigError(f"backbone {name} uses BatchNorm as the official model; backbone_norm {info.norm!r} is not "
                         f"available for it")


def lenet(info: DataInfo) -> tuple[nn.Module, int]:
    """The official LeNet up to its 500-d hidden layer (BN included: the repo notes KCL needs it)."""
    _check_image("lenet", info, 4)
    side = info.image_size // 4
    net = nn.Sequential(
        nn.Conv2d(info.channels, 20, 5, padding=2), nn.BatchNorm2d(20), nn.ReLU(inplace=True), nn.MaxPool2d(2, 2),
        nn.Conv2d(20, 50, 5, padding=2), nn.BatchNorm2d(50), nn.ReLU(inplace=True), nn.MaxPool2d(2, 2),
        nn.Flatten(), nn.Linear(50 * side * side, 500), nn.BatchNorm1d(500), nn.ReLU(inplace=True),
    )
    return net, 500


def vgg_s(info: DataInfo) -> tuple[nn.Module, int]:
    """The official VGG-S convolutional part (four conv-BN-ReLU + max-pool stages), flattened."""
    _check_image("vgg_s", info, 16)
    layers: list[nn.Module] = []
    cin = info.channels
    for width in (64, 128, 256, 256):
        layers += [nn.Conv2d(cin, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
                   nn.MaxPool2d(2, 2)]
        cin = width
    layers.append(nn.Flatten())
    side = info.image_size // 16
    return nn.Sequential(*layers), 256 * side * side


def build_trunk(name: str, info: DataInfo, *, zero_init_residual: bool = False) -> tuple[nn.Module, int]:
    """(module, d): `lenet` / `vgg_s` from this file, anything else from models.backbones."""
    if name in LOCAL_TRUNKS and zero_init_residual:
        raise ConfigError(f"zero_init_residual applies to the torchvision ResNets, not {name!r}; leave it false.")
    if name == "lenet":
        return lenet(info)
    if name == "vgg_s":
        return vgg_s(info)
    return build_backbone(name, info, zero_init_residual=zero_init_residual)


class SimilarityNetwork(nn.Module):
    """Trunk + dense pair head: images (N, ...) -> pair logits (N^2, 2), row a*N + b for the pair (a, b)."""

    def __init__(self, trunk: nn.Module, dim: int, hidden: int = 0):
        super().__init__()
        hidden = hidden or 4 * dim
        self.trunk = trunk
        self.pair_head = nn.Sequential(nn.Linear(2 * dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
                                       nn.Linear(hidden, 2))

    def pair_logits(self, features: Tensor) -> Tensor:
        """(N, d) features -> (N^2, 2) logits. The first Linear acts on [f_b, f_a], so it splits into W_1 f_b +
        W_2 f_a + bias: computed per sample (N d h) and broadcast to the pairs (N^2 h) instead of N^2 d h on the
        enumerated concatenations; `pair_logits_enumerated` is the literal form (equal up to rounding)."""
        n, d = features.shape
        first = self.pair_head[0]
        on_b = features @ first.weight[:, :d].t()                                # (N, h) from f_b
        on_a = features @ first.weight[:, d:].t() + first.bias                    # (N, h) from f_a
        hidden = (on_a[:, None, :] + on_b[None, :, :]).reshape(n * n, -1)        # row a*N + b
        return self.pair_head[1:](hidden)

    def pair_logits_enumerated(self, features: Tensor) -> Tensor:
        """The official form: enumerate the pairs, concatenate [f_b, f_a], apply the pair head."""
        first, second = pair_enum(features)                                   # [f_b], [f_a] for pair a*N + b
        return self.pair_head(torch.cat([first, second], dim=1))              # (N^2, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.pair_logits(self.trunk(x))


def build_similarity_network(backbone: str, info: DataInfo, hidden: int = 0) -> SimilarityNetwork:
    trunk, dim = build_trunk(backbone, info)
    return SimilarityNetwork(trunk, dim, hidden)


# ----- scoring a similarity network against the ground truth (evaluation / analysis only) ----------------------
def pair_confusion(logits: Tensor, labels: Tensor) -> Tensor:
    """Counts [tp, fp, fn, tn] (float64) of the "similar" class over all N^2 ordered pairs of a batch."""
    return similar_confusion((logits.argmax(dim=1) == 1).view(labels.numel(), -1), labels)


def similar_confusion(similar: Tensor, labels: Tensor) -> Tensor:
    """Counts [tp, fp, fn, tn] (float64) of predicted "similar" pairs (N, N) bool against the labels' classes."""
    pred = similar.reshape(-1)
    truth = pairwise_targets(labels, mode="cls").reshape(-1).to(pred.device) == 1
    return torch.stack([(pred & truth).sum(), (pred & ~truth).sum(), (~pred & truth).sum(),
                        (~pred & ~truth).sum()]).double()


def pair_f1_scores(counts: Tensor) -> dict[str, float]:
    """F1 of both classes (the official SPN KPI is the "similar" one), precision, recall, accuracy, and the
    fractions of pairs predicted / truly similar."""
    tp, fp, fn, tn = counts.tolist()
    total = tp + fp + fn + tn

    def ratio(a: float, b: float) -> float:
        return a / b if b else 0.0

    return {"similar_f1": ratio(2 * tp, 2 * tp + fp + fn), "dissimilar_f1": ratio(2 * tn, 2 * tn + fn + fp),
            "similar_precision": ratio(tp, tp + fp), "similar_recall": ratio(tp, tp + fn),
            "pair_accuracy": ratio(tp + tn, total), "predicted_similar": ratio(tp + fp, total),
            "true_similar": ratio(tp + fn, total)}


@torch.no_grad()
def score_similarity_network(net: SimilarityNetwork, ctx, dataset: Dataset, labels: Tensor, *, batch_size: int,
                             classes_per_batch: int = 0, train_mode: bool = False) -> dict[str, float]:
    """Pair scores of `net` on `dataset` (labels: its ground truth) in full batches of `batch_size`: a fixed
    shuffled order, or class-balanced batches as the official evaluation loader when classes_per_batch > 0; the
    order is seeded with ctx.seed_for("pair_scoring"). One pass through ctx.embed (every DDP rank scores every
    batch); train_mode=True scores with batch statistics, as L2C uses its frozen network."""
    labels = torch.as_tensor(labels, dtype=torch.long)
    seed = ctx.seed_for("pair_scoring")
    if classes_per_batch:
        from datasets.samplers import ClassBalancedBatchSampler

        sampler = ClassBalancedBatchSampler(labels, classes_per_batch=classes_per_batch, batch_size=batch_size,
                                            seed=seed)
        order = [i for batch in sampler.global_batches() for i in batch]
    else:
        order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed)).tolist()
        if len(order) >= batch_size:
            order = order[: len(order) // batch_size * batch_size]
    size = min(batch_size, len(order))
    similar = ctx.embed(Subset(dataset, order), lambda x: (net(x).float().argmax(dim=1) == 1).view(len(x), -1),
                        batch_size=size, ranks="none", mode="train" if train_mode else "eval")   # (n, size)
    ordered = labels[torch.as_tensor(order)]
    counts = torch.zeros(4, dtype=torch.float64)
    for start in range(0, len(order), size):
        counts += similar_confusion(similar[start:start + size], ordered[start:start + size]).cpu()
    return pair_f1_scores(counts)
