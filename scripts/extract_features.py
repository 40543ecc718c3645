"""Write an .npz of image features from a pretrained torchvision backbone, for methods that cluster feature vectors
(Kingdra's CIFAR-10 and STL-10 presets read them with `--dataset npz`).

Kingdra (after IMSAT) clusters 2048-d ImageNet-pretrained ResNet-50 features (docs/methods/kingdra.md, repo issue #10). Any
torchvision classification model works whose weights file you have on disk; nothing is downloaded:

    python scripts/extract_features.py --dataset cifar10 --data_root ~/data --backbone resnet50 \\
        --weights ~/weights/resnet50-0676ba61.pth --out ~/features/cifar10_resnet50.npz
    python main.py --preset kingdra_cifar10 --kingdra.features ~/features/cifar10_resnet50.npz

The file holds `x` (N x D float32: the input of the model's final classifier, e.g. ResNet-50's global-average
pooled 2048 values) and `y` (the dataset's labels, -1 where unknown; used only for evaluation). Images go through
the framework's dataset readers (train + test merged where the reader does so), are scaled to [0, 1], grey images
are repeated to three channels, resized to `--image_size` (bilinear, antialiased; 224 by default, as the ImageNet
weights expect) and normalised with ImageNet's mean and std. The weights file is a state dict as torchvision
saves it (`torch.save(model.state_dict())`, or the `.pth` files of torchvision's weight URLs), optionally wrapped
in {"state_dict": ...} or {"model": ...}; it is read with `torch.load(weights_only=True)`.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLASSIFIER_ATTRIBUTES = ("fc", "classifier", "heads", "head")


class WeightsError(RuntimeError):
    """The weights file is missing or does not fit the backbone; the message says what to do."""


def _weights_hint(backbone: str) -> str:
    """Where torchvision's default weights for `backbone` come from (read from torchvision, not fetched)."""
    try:
        import torchvision

        url = torchvision.models.get_model_weights(backbone).DEFAULT.url
    except Exception:  # noqa: BLE001 - any model without registered weights
        return ""
    return f" torchvision's default weights for {backbone} are at {url} (download it yourself where you have network)."


def build_backbone(backbone: str, weights: str | os.PathLike) -> nn.Module:
    """torchvision model `backbone` with the weights from the local file `weights`, its final classifier replaced by
    the identity, in eval mode."""
    import torchvision

    names = torchvision.models.list_models(module=torchvision.models)
    if backbone not in names:
        raise ValueError(f"unknown torchvision backbone {backbone!r}; classification models: {', '.join(names)}")
    path = Path(os.path.expanduser(str(weights)))
    if not path.is_file():
        raise WeightsError(f"weights file {path} not found; this script never downloads weights. Pass the path of "
                           f"a {backbone} state dict with --weights.{_weights_hint(backbone)}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise WeightsError(f"{path} does not hold a state dict (found {type(state).__name__})")
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
    model = torchvision.models.get_model(backbone, weights=None)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise WeightsError(f"{path} does not fit torchvision's {backbone}: {str(err)[:400]}") from None
    for attribute in CLASSIFIER_ATTRIBUTES:
        if isinstance(getattr(model, attribute, None), nn.Module):
            setattr(model, attribute, nn.Identity())
            break
    else:
        raise ValueError(f"{backbone}: no final classifier among {CLASSIFIER_ATTRIBUTES} to remove")
    return model.eval()


@torch.no_grad()
def extract(model: nn.Module, images: np.ndarray, *, image_size: int, batch_size: int,
            device: torch.device) -> np.ndarray:
    """uint8 images (N, H, W, C) -> (N, D) float32 features."""
    from datasets.batch_augment import eval_images

    model = model.to(device)
    out = []
    for start in range(0, len(images), batch_size):
        batch = torch.from_numpy(np.ascontiguousarray(images[start:start + batch_size])).permute(0, 3, 1, 2)
        x = eval_images(batch.to(device), image_size=image_size, channels=3, mean=IMAGENET_MEAN, std=IMAGENET_STD)
        out.append(model(x).float().flatten(1).cpu())
    return torch.cat(out).numpy()


def save_npz(path: str | os.PathLike, x: np.ndarray, y: np.ndarray) -> Path:
    """np.savez to a temporary file next to `path`, then rename (never a half-written file)."""
    path = Path(os.path.expanduser(str(path)))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".npz", dir=path.parent)
    os.close(fd)
    try:
        np.savez(tmp, x=x.astype(np.float32), y=y.astype(np.int64))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", required=True, help="dataset registry name (cifar10, stl10, image_folder, ...)")
    parser.add_argument("--data_root", default=None, help="folder holding the dataset (as main.py's --data_root)")
    parser.add_argument("--dataset_option", action="append", default=[], metavar="KEY=VALUE",
                        help="reader option, e.g. split=train (YAML value; repeatable)")
    parser.add_argument("--backbone", default="resnet50", help="torchvision model name (default resnet50)")
    parser.add_argument("--weights", required=True, help="local state-dict file of the backbone (never downloaded)")
    parser.add_argument("--out", required=True, help="the .npz to write (x: features, y: labels)")
    parser.add_argument("--image_size", type=int, default=224, help="network input size (default 224)")
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> Path:
    import yaml

    from datasets.registry import read

    args = parse_args(argv)
    options = {}
    for item in args.dataset_option:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--dataset_option {item!r}: write KEY=VALUE")
        options[key] = yaml.safe_load(value)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    model = build_backbone(args.backbone, args.weights)               # fails fast, before reading any data
    raw = read(args.dataset, args.data_root, options=options)
    if raw.kind != "image":
        raise SystemExit(f"{args.dataset} holds vectors, not images: there is nothing to extract")
    print(f"{raw.description}; {args.backbone} at {args.image_size} px on {device}", flush=True)
    features = extract(model, raw.data, image_size=args.image_size, batch_size=args.batch_size, device=device)
    path = save_npz(args.out, features, raw.labels)
    print(f"wrote {path}: x {features.shape} float32, y {raw.labels.shape}", flush=True)
    return path


if __name__ == "__main__":
    from datasets.registry import DatasetNotFoundError

    try:
        main()
    except (WeightsError, DatasetNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
