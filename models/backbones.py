"""Backbones: images or vectors -> (N, d) features. `build_backbone(name, info)` returns (module, d)."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from datasets import DataInfo
from engine.config import ConfigError


def _norm(kind: str, channels: int) -> nn.Module:
    """batch: BatchNorm (per-rank statistics under DDP unless sync_bn); group: GroupNorm with 8 groups and
    none: identity — both per-sample, so a DDP run equals a one-process run exactly."""
    if kind == "batch":
        return nn.BatchNorm1d(channels) if channels < 0 else nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(8, channels)
    if kind == "none":
        return nn.Identity()
    raise ConfigError(f"backbone_norm must be batch, group or none, not {kind!r}")


def _conv_bn_relu(cin: int, cout: int, norm: str) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=norm == "none"), _norm(norm, cout), nn.ReLU(inplace=True)]


def _vgg_stages(info: DataInfo, name: str, widths: tuple[int, ...], convs_per_stage: int) -> nn.Sequential:
    """Stages of `convs_per_stage` 3x3 conv-norm-ReLU, a 2x2 max-pool after every stage but the last while the map
    is at least 4x4, global average pool."""
    if info.kind != "image":
        raise ConfigError(f"backbone {name} needs images, and the data are vectors: use --backbone mlp (the one "
                          f"backbone for vectors).")
    layers: list[nn.Module] = []
    size, cin = info.image_size, info.channels
    for stage, width in enumerate(widths):
        for _ in range(convs_per_stage):
            layers += _conv_bn_relu(cin, width, info.norm)
            cin = width
        if stage < len(widths) - 1 and size >= 4:
            layers.append(nn.MaxPool2d(2))
            size //= 2
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())


def small_cnn(info: DataInfo) -> tuple[nn.Module, int]:
    """A VGG-style CNN for small grey images (8x8 digits, 28x28 MNIST): 3 stages (32, 64, 128 channels) of two
    3x3 conv-BN-ReLU, 2x2 max-pool between stages while the map is at least 4x4, global average pool. d = 128."""
    return _vgg_stages(info, "small_cnn", (32, 64, 128), 2), 128


def cnn4(info: DataInfo) -> tuple[nn.Module, int]:
    """Four 3x3 conv-BN-ReLU layers of 32, 64, 128 and 256 channels, a 2x2 max-pool after each of the first three
    (while the map is at least 4x4), global average pool: d = 256. A network for 32-px colour images that trains at
    a few hundred images per second on one CPU core (the CIFAR-10 CPU presets; channels-last is faster there)."""
    return _vgg_stages(info, "cnn4", (32, 64, 128, 256), 1), 256


def mlp(info: DataInfo) -> tuple[nn.Module, int]:
    """Two hidden layers of 512 with normalisation (BN by default) and ReLU, for vector data (or flattened small images). d = 512."""
    dim = info.input_dim if info.kind == "vector" else info.channels * info.image_size ** 2
    def norm() -> nn.Module:
        return nn.BatchNorm1d(512) if info.norm == "batch" else _norm(info.norm, 512)

    net = nn.Sequential(nn.Flatten(), nn.Linear(dim, 512), norm(), nn.ReLU(inplace=True),
                        nn.Linear(512, 512), norm(), nn.ReLU(inplace=True))
    return net, 512


def _resnet(depth: int, cifar_stem: bool) -> Callable[..., tuple[nn.Module, int]]:
    def build(info: DataInfo, *, zero_init_residual: bool = False) -> tuple[nn.Module, int]:
        """torchvision ResNet without its classifier, trained from scratch. ImageNet stem (7x7/2 conv + max-pool)
        as CC uses at 224 px, or the CIFAR stem (3x3/1 conv, no max-pool) of the ProPos family at 32-96 px.
        torchvision's init matches the official CC ResNet (Kaiming-normal fan_out convs, BN 1/0); the CIFAR stem's
        new 3x3 convolution keeps PyTorch's default init, as the official ProPos/HaDis/DigPro code.
        `zero_init_residual`: the last BatchNorm of every residual block starts at 0 (DivClust's CC network)."""
        import torchvision

        if info.kind != "image":
            raise ConfigError(f"backbone resnet{depth} needs images, and the data are vectors: use --backbone mlp.")
        if info.norm != "batch":
            raise ConfigError(f"backbone resnet{depth} uses BatchNorm; backbone_norm {info.norm!r} is for small_cnn and mlp")
        net = getattr(torchvision.models, f"resnet{depth}")(weights=None, zero_init_residual=zero_init_residual)
        width = net.fc.in_features
        net.fc = nn.Identity()
        if cifar_stem:
            net.conv1 = nn.Conv2d(info.channels, 64, 3, stride=1, padding=1, bias=False)   # PyTorch default init
            net.maxpool = nn.Identity()
        elif info.channels != 3:
            net.conv1 = nn.Conv2d(info.channels, 64, 7, stride=2, padding=3, bias=False)
            nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
        return net, width

    return build


class SobelFilter(nn.Module):
    """Fixed Sobel front end of PICA and IIC: (N, C, H, W) -> (N, 2, H, W), the x- and y-gradients (3x3 kernels
    [[1,0,-1],[2,0,-2],[1,0,-1]] and [[1,2,1],[0,0,0],[-1,-2,-1]], padding 1, no bias) of one grey channel.

    grey="mean": the channel mean of the (normalised) input, PICA's 1x1 convolution with weights 1/C (docs/methods/pica.md).
    grey="luma": ITU-R 601 luma 0.299 R + 0.587 G + 0.114 B of [0, 1] RGB, the grey image of IIC's PIL
    `convert("L")` (docs/methods/iic.md) without PIL's rounding to 8 bits. One-channel input is used as it is.
    The kernels are buffers, not parameters: nothing here is trained or seen by the optimiser.
    """

    def __init__(self, grey: str = "mean"):
        super().__init__()
        if grey not in ("mean", "luma"):
            raise ValueError(f"SobelFilter grey must be 'mean' or 'luma', not {grey!r}")
        self.grey = grey
        gx = torch.tensor([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]])
        gy = torch.tensor([[1.0, 2.0, 1.0], [0.0, 0.0, 0.0], [-1.0, -2.0, -1.0]])
        self.register_buffer("kernels", torch.stack([gx, gy]).unsqueeze(1), persistent=False)   # (2, 1, 3, 3)
        self.register_buffer("luma", torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            grey = x
        elif self.grey == "mean":
            grey = x.mean(dim=1, keepdim=True)
        else:
            if x.shape[1] != 3:
                raise ValueError(f"SobelFilter(grey='luma') needs 1 or 3 channels, got {x.shape[1]}")
            grey = (x * self.luma.to(x.dtype)).sum(dim=1, keepdim=True)
        return nn.functional.conv2d(grey, self.kernels.to(grey.dtype), padding=1)


def resnet34_5g(info: DataInfo) -> tuple[nn.Module, int]:
    """The CIFAR-style ResNet-34 trunk of PICA (`pica/networks.py::ResNet34`) and IIC (`ClusterNet5gTrunk`):
    conv3x3 (C -> 64, stride 1, no bias) -> BN -> ReLU -> MaxPool(2, stride 2, padding 1) -> BasicBlock stages
    [3, 4, 6, 3] (64/128/256/512, strides 1/2/2/2, 1x1-conv + BN projection shortcuts) -> average pool -> 512-d.
    The official fixed AvgPool (kernel 3 at 32 px, 5 at 64, 7 at 96) covers the whole final map, so the global
    average pool here is the same function at every input size. Input channels: info.channels (2 behind a
    SobelFilter). Init: Kaiming-normal (fan_out) convolutions, BN 1/0, as IIC (PICA re-initialises, see
    models/pica.py). Built from torchvision's ResNet-34 with the stem replaced."""
    import torchvision

    if info.kind != "image":
        raise ConfigError("backbone resnet34_5g needs images, and the data are vectors: use --backbone mlp.")
    if info.norm != "batch":
        raise ConfigError(f"backbone resnet34_5g uses BatchNorm; backbone_norm {info.norm!r} is for small_cnn and mlp")
    net = torchvision.models.resnet34(weights=None)
    net.conv1 = nn.Conv2d(info.channels, 64, 3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
    net.maxpool = nn.MaxPool2d(kernel_size=2, stride=2, padding=1)
    net.fc = nn.Identity()
    return net, 512


def vgg_6c(info: DataInfo) -> tuple[nn.Module, int]:
    """IIC's MNIST trunk (`ClusterNet6cTrunk`): four conv5x5 (padding 2, no bias) -> BN -> ReLU layers of 64, 128,
    256, 512 channels with a 2x2 max-pool after each of the first three, flattened: d = 512 * (S / 8)^2 (4,608 at
    S = 24). Init as IIC's VGG: Kaiming-normal (fan_in, ReLU) convolutions, BN 1/0."""
    if info.kind != "image":
        raise ConfigError("backbone vgg_6c needs images, and the data are vectors: use --backbone mlp.")
    if info.image_size % 8:
        raise ConfigError(f"backbone vgg_6c needs an image_size divisible by 8 (three 2x2 max-pools), got {info.image_size}")
    layers: list[nn.Module] = []
    cin = info.channels
    for i, width in enumerate((64, 128, 256, 512)):
        conv = nn.Conv2d(cin, width, 5, padding=2, bias=False)
        nn.init.kaiming_normal_(conv.weight, mode="fan_in", nonlinearity="relu")
        layers += [conv, _norm(info.norm, width), nn.ReLU(inplace=True)]
        if i < 3:
            layers.append(nn.MaxPool2d(2))
        cin = width
    layers.append(nn.Flatten())
    return nn.Sequential(*layers), 512 * (info.image_size // 8) ** 2


ZERO_INIT_RESIDUAL = ("resnet18", "resnet34", "resnet50", "resnet18_cifar", "resnet34_cifar")

BACKBONES: dict[str, Callable[..., tuple[nn.Module, int]]] = {
    "small_cnn": small_cnn,
    "cnn4": cnn4,
    "mlp": mlp,
    "resnet18": _resnet(18, False),
    "resnet34": _resnet(34, False),
    "resnet50": _resnet(50, False),
    "resnet18_cifar": _resnet(18, True),
    "resnet34_cifar": _resnet(34, True),
    "resnet34_5g": resnet34_5g,
    "vgg_6c": vgg_6c,
}


def build_backbone(name: str, info: DataInfo, *, zero_init_residual: bool = False) -> tuple[nn.Module, int]:
    """(network, feature dimension) of backbone `name`; `zero_init_residual` for the torchvision ResNets only."""
    if name not in BACKBONES:
        raise ConfigError(f"backbone {name!r} is not available here; choose one of {', '.join(BACKBONES)}.")
    if zero_init_residual:
        if name not in ZERO_INIT_RESIDUAL:
            raise ConfigError(f"zero_init_residual applies to the backbones {', '.join(ZERO_INIT_RESIDUAL)}, not "
                              f"{name!r}; leave it false.")
        return BACKBONES[name](info, zero_init_residual=True)
    return BACKBONES[name](info)
