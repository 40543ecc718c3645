"""Training-step speed of every method's CIFAR-10 preset model on the current device (ISSUE 9), split into data,
forward/backward + optimizer, and the clustering refresh; optionally next to the official CC implementation.

Each preset is built through the normal config path (`engine.config.resolve` -> `engine.trainer.Trainer`) on a
generated in-memory dataset of random uint8 images of CIFAR's size (`random_cifar`, 32 x 32 x 3; Kingdra, which
clusters 2048-d feature vectors, gets `random_cifar_features`). Per timed step (after `--warmup` untimed ones):
- data: waiting for the DataLoader batch + the trainer's `_method_batch` (augmentation on the device or per image
  in the loader, host->device copies included);
- step: `Trainer.train_step` (forward, losses, backward, optimizer, EMA/queue hooks);
- epoch hook: the method's `on_epoch_end` once, timed, for the methods that do work there (the ProPos family's
  k-means refresh of the pseudo-labels over all `--num_images` images, Kingdra's ensemble pseudo-labels). The
  initial refresh of the ProPos family before epoch 1 is skipped (random pseudo-labels are set instead). The timed
  steps are the first of the preset's schedule: the ProPos family is in its warm-up (PSL computed with weight 0,
  no Gaussian positive sampling); DigPro's group reset (a k-means of its bank every 10 steps) falls in a timed step
  only when the run has that many steps.
On CUDA every timed section is closed by torch.cuda.synchronize(). images/s = batch / (data + step).

`--reference PATH` (a checkout of Yunfan-Li/Contrastive-Clustering) also times one step of the official CC code
exactly as its train.py makes it (Network(get_resnet("ResNet34"), 128, 10), InstanceLoss + ClusterLoss, Adam
3e-4, `loss.item()` every step) on the same augmented views as our cc_cifar10 step (their data pipeline needs
the torchvision CIFAR datasets on disk, so both steps get our views), at the same batch and resolution; the
two are timed alternately, step by step, so that the load of a shared machine hits both alike.

    python scripts/bench_train.py                                   # all presets, device defaults
    python scripts/bench_train.py --presets cc_cifar10 --set amp=true --set compile=true    # config overrides
    python scripts/bench_train.py --device cpu --presets cc_cifar10 --batch_size 32 --steps 4 \\
        --reference /path/to/Contrastive-Clustering --out bench.md
"""
from __future__ import annotations

import argparse
import gc
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datasets.registry import READERS, RawData, register  # noqa: E402
from engine.run import build, load_config  # noqa: E402
from engine.seeding import derive_seed  # noqa: E402
from engine.trainer import Trainer  # noqa: E402
from models.base import ClusteringMethod  # noqa: E402

PRESETS = ["cc_cifar10", "divclust_cc_cifar10", "pica_cifar10", "iic_cifar10", "propos_cifar10", "hadis_cifar10",
           "digpro_imagenet10", "kingdra_cifar10"]
VECTOR_PRESETS = {"kingdra_cifar10"}          # clusters feature vectors, not images
FEATURE_DIM = 2048                             # Kingdra's CIFAR-10 features: ResNet-50 pooled (kingdra_cifar10.yaml)


if "random_cifar" not in READERS:
    @register("random_cifar")
    def read_random_cifar(root, *, download: bool = False, size: int = 60_000, seed: int = 0) -> RawData:
        """`size` random uint8 images of CIFAR's shape (32 x 32 x 3) and random labels (benchmarks only)."""
        rng = np.random.default_rng(seed)
        return RawData(rng.integers(0, 256, size=(size, 32, 32, 3), dtype=np.uint8),
                       rng.integers(0, 10, size=size), f"{size} random 32x32 RGB images (benchmark)")

if "random_cifar_features" not in READERS:
    @register("random_cifar_features")
    def read_random_features(root, *, download: bool = False, size: int = 60_000, seed: int = 0) -> RawData:
        """`size` random non-negative 2048-d vectors (pooled-feature-like) and random labels (benchmarks only)."""
        rng = np.random.default_rng(seed)
        data = np.abs(rng.standard_normal((size, FEATURE_DIM), dtype=np.float32))
        return RawData(data, rng.integers(0, 10, size=size), f"{size} random {FEATURE_DIM}-d vectors (benchmark)")


class QuietLog:
    """The trainer's logger interface without output (the benchmark prints its own lines)."""

    def info(self, message: str, color: str | None = None) -> None:
        pass

    def warning(self, message: str) -> None:
        print(f"  warning: {message}", file=sys.stderr)

    def log_metrics(self, metrics: dict, *, step: int, epoch=None, jsonl: bool = True) -> None:
        pass

    def log_image(self, key: str, path, *, step: int) -> None:
        pass


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def load_average() -> str:
    try:
        return Path("/proc/loadavg").read_text().strip()
    except OSError:
        return "n/a"


def build_trainer(preset: str, args, device: torch.device, batch_size: int | None) -> Trainer:
    dataset = "random_cifar_features" if preset in VECTOR_PRESETS else "random_cifar"
    argv = ["--preset", preset, "--dataset", dataset, "--dataset_options", f"{{size: {args.num_images}}}",
            "--device", device.type, "--steps_per_epoch", str(args.warmup + args.steps),
            "--log_every", "1000000"]
    if batch_size:
        argv += ["--batch_size", str(batch_size)]
    if args.image_size and preset not in VECTOR_PRESETS:
        argv += ["--image_size", str(args.image_size)]
    if args.augment_on and preset not in VECTOR_PRESETS:
        argv += ["--augment_on", args.augment_on]
    if args.num_workers is not None:
        argv += ["--num_workers", str(args.num_workers)]
    for item in args.set or []:
        key, _, value = item.partition("=")
        argv += [f"--{key}", value]
    cfg = load_config(argv)
    trainer, _ = build(cfg, QuietLog())
    method = trainer.method
    if hasattr(method, "pseudo_label_epoch"):      # the ProPos family: skip the refresh before epoch 1
        method.pseudo_labels.copy_(torch.randint(0, method.num_clusters, method.pseudo_labels.shape,
                                                 generator=torch.Generator().manual_seed(0)))
        method.pseudo_label_epoch.fill_(0)
    method.on_train_start(trainer.ctx)
    return trainer


def start_epoch(trainer: Trainer) -> DataLoader:
    """Epoch 0 set up as the trainer's train_epoch does it; returns the main stream's loader."""
    loader = trainer.streams[-1][1]
    loader.batch_sampler.set_epoch(0)
    trainer.aug_generator.manual_seed(derive_seed(int(trainer.cfg.seed), "augment", 0))
    trainer.method.train()
    trainer.ctx.epoch = 0
    return loader


def does_epoch_work(method: ClusteringMethod) -> bool:
    return type(method).on_epoch_end is not ClusteringMethod.on_epoch_end


def bench_preset(preset: str, args, device: torch.device) -> dict:
    batch_size = args.batch_size or (16 if device.type == "cpu" else None)
    trainer = build_trainer(preset, args, device, batch_size)
    cfg, method = trainer.cfg, trainer.method
    loader = start_epoch(trainer)
    if len(loader) < args.warmup + args.steps:
        raise SystemExit(f"{preset}: --num_images {args.num_images} gives {len(loader)} batches of "
                         f"{cfg.batch_size}; need --warmup + --steps = {args.warmup + args.steps}")
    method.on_epoch_start(trainer.ctx)
    batches = iter(loader)
    data_s = step_s = 0.0
    terms = {}
    for i in range(args.warmup + args.steps):
        synchronize(device)
        start = time.perf_counter()
        inputs = trainer._method_batch(next(batches))
        synchronize(device)
        loaded = time.perf_counter()
        terms = trainer.train_step(inputs)
        synchronize(device)
        done = time.perf_counter()
        if i >= args.warmup:
            data_s += loaded - start
            step_s += done - loaded
    loss = float(terms["loss"])
    refresh_s = None
    if does_epoch_work(method):
        synchronize(device)
        start = time.perf_counter()
        method.on_epoch_end(trainer.ctx)
        synchronize(device)
        refresh_s = time.perf_counter() - start
    data_s, step_s = data_s / args.steps, step_s / args.steps
    network = cfg.backbone if trainer.backbones else f"{type(method).__name__} networks"
    shape = f"{trainer.data.info.input_dim}-d vectors" if trainer.data.info.kind != "image" else f"{cfg.image_size}px"
    row = {"preset": preset, "model": f"{network} @ {shape}", "batch": int(cfg.batch_size),
           "views": len(inputs["views"]), "augment_on": trainer.data.augment_on if trainer.data.info.kind == "image"
           else "-", "data_s": data_s, "step_s": step_s, "images_per_s": cfg.batch_size / (data_s + step_s),
           "data_share": data_s / (data_s + step_s), "refresh_s": refresh_s, "num_images": len(trainer.data.eval),
           "loss": loss, "precision": ("bf16 backbone" if trainer.amp and not trainer.whole_step_autocast
                                       else "bf16 step" if trainer.amp else "fp32"),
           "channels_last": trainer.channels_last, "compile": bool(cfg.compile),
           "overrides": list(args.set or [])}
    del trainer, inputs, terms
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


# ----- the official CC step ------------------------------------------------------------------------------------
def official_cc(path: str, batch_size: int, device: torch.device):
    """(model, step function) of the official CC code at `path`, built as its train.py builds them."""
    root = str(Path(path).resolve())
    if not (Path(root) / "modules" / "network.py").is_file():
        raise SystemExit(f"--reference {path}: no modules/network.py there (expected a checkout of "
                         f"Contrastive-Clustering)")
    sys.path.insert(0, root)
    try:
        from modules import contrastive_loss, network, resnet  # the official code, imported from PATH
    finally:
        sys.path.remove(root)
    model = network.Network(resnet.get_resnet("ResNet34"), 128, 10).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.0003, weight_decay=0.0)
    criterion_instance = contrastive_loss.InstanceLoss(batch_size, 0.5, device).to(device)
    criterion_cluster = contrastive_loss.ClusterLoss(10, 1.0, device).to(device)

    def step(x_i: torch.Tensor, x_j: torch.Tensor) -> float:
        optimizer.zero_grad()
        x_i, x_j = x_i.to(device), x_j.to(device)
        z_i, z_j, c_i, c_j = model(x_i, x_j)
        loss = criterion_instance(z_i, z_j) + criterion_cluster(c_i, c_j)
        loss.backward()
        optimizer.step()
        return loss.item()          # train.py adds loss.item() to the epoch loss every step

    return model, step


def bench_reference(path: str, args, device: torch.device) -> dict:
    batch_size = args.batch_size or 32
    trainer = build_trainer("cc_cifar10", args, device, batch_size)
    inputs = trainer._method_batch(next(iter(start_epoch(trainer))))
    x_i, x_j = inputs["views"][:2]
    torch.manual_seed(0)
    model, official_step = official_cc(path, batch_size, device)
    model.train()
    ours_s, theirs_s = [], []
    for i in range(args.warmup + args.steps):
        for name, run in (("ours", lambda: trainer.train_step(inputs)), ("official", lambda: official_step(x_i, x_j))):
            synchronize(device)
            start = time.perf_counter()
            run()
            synchronize(device)
            if i >= args.warmup:
                (ours_s if name == "ours" else theirs_s).append(time.perf_counter() - start)
    ours_params = sum(p.numel() for p in trainer.method.parameters())
    theirs_params = sum(p.numel() for p in model.parameters())
    return {"batch": batch_size, "image_size": int(trainer.cfg.image_size), "ours_s": float(np.mean(ours_s)),
            "official_s": float(np.mean(theirs_s)), "ours_all": ours_s, "official_all": theirs_s,
            "ours_params": ours_params, "official_params": theirs_params}


# ----- report --------------------------------------------------------------------------------------------------
def markdown(rows: list[dict], reference: dict | None, args, device: torch.device, load_before: str,
             load_after: str, command: str) -> str:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or "CPU")
    lines = [f"Device: {device.type} ({name}), torch {torch.__version__}, {torch.get_num_threads()} intra-op "
             f"threads; {args.warmup} warm-up + {args.steps} timed steps per preset; random uint8 32x32 images "
             f"({rows[0]['num_images'] if rows else args.num_images} per dataset).",
             f"Load average before: {load_before}; after: {load_after}.", "",
             f"Command: `{command}`", ""]
    if rows:
        lines += ["| preset | model | batch x views | augmentation on | precision | data ms/step | "
                  "fwd/bwd+opt ms/step | images/s | data share | epoch hook s (images) |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            hook = f"{r['refresh_s']:.2f} ({r['num_images']})" if r["refresh_s"] is not None else "-"
            precision = (r["precision"] + (", channels-last" if r["channels_last"] else "") +
                         (", compiled" if r.get("compile") else ""))
            lines.append(f"| {r['preset']} | {r['model']} | {r['batch']} x {r['views']} | {r['augment_on']} | "
                         f"{precision} | {1000 * r['data_s']:.1f} | {1000 * r['step_s']:.1f} | "
                         f"{r['images_per_s']:.1f} | {100 * r['data_share']:.1f}% | {hook} |")
    if reference:
        ratio = reference["official_s"] / reference["ours_s"]
        def row(name: str, params: int, times: list[float]) -> str:
            mean, median = float(np.mean(times)), float(np.median(times))
            return (f"| {name} | {params / 1e6:.2f}M | {1000 * mean:.0f} | {1000 * median:.0f} | "
                    f"{1000 * min(times):.0f} | {reference['batch'] / mean:.2f} | "
                    f"{', '.join(f'{1000 * t:.0f}' for t in times)} |")

        median_ratio = float(np.median(reference["official_all"]) / np.median(reference["ours_all"]))
        lines += ["", f"CC step at batch {reference['batch']}, {reference['image_size']} px, ResNet-34 (ImageNet "
                      f"stem), Adam, fp32 on this device, same augmented views for both; "
                      f"{len(reference['ours_all'])} timed steps each, alternating ours / official:", "",
                  "| implementation | parameters | mean ms/step | median | min | images/s (mean) | steps (ms) |",
                  "|---|---|---|---|---|---|---|",
                  row("this framework (cc_cifar10)", reference["ours_params"], reference["ours_all"]),
                  row("official CC (Yunfan-Li/Contrastive-Clustering)", reference["official_params"],
                      reference["official_all"]),
                  "", f"Official / ours time per step: {ratio:.3f} (means), {median_ratio:.3f} (medians); > 1: ours "
                      f"is faster."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", nargs="+", default=None, help=f"default: {' '.join(PRESETS)}")
    parser.add_argument("--batch_size", type=int, default=None,
                        help="global batch (default: 16 on the CPU, each preset's own on CUDA; --reference: 32)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default: 2 on the CPU, 20 on CUDA)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default: 1 CPU, 5 CUDA)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--image_size", type=int, default=None, help="network input size (default: the preset's)")
    parser.add_argument("--num_images", type=int, default=None,
                        help="images in the random dataset (default: 512 on the CPU, 60000 = CIFAR-10 on CUDA)")
    parser.add_argument("--augment_on", default=None, choices=["auto", "device", "loader"])
    parser.add_argument("--num_workers", type=int, default=None, help="DataLoader workers (default: the config's)")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE",
                        help="config override of every preset, repeatable (e.g. --set amp=true --set compile=true)")
    parser.add_argument("--reference", default=None, help="path of the official CC code: time its step too")
    parser.add_argument("--skip_presets", action="store_true", help="with --reference: only the CC comparison")
    parser.add_argument("--out", default=None, help="write the markdown report here")
    args = parser.parse_args(argv)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    cpu = device.type == "cpu"
    args.steps = args.steps or (2 if cpu else 20)
    args.warmup = args.warmup if args.warmup is not None else (1 if cpu else 5)
    args.num_images = args.num_images or (512 if cpu else 60_000)
    threads = f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']} " if "OMP_NUM_THREADS" in os.environ else ""
    command = threads + "python scripts/bench_train.py " + " ".join(argv if argv is not None else sys.argv[1:])
    load_before = load_average()
    rows = []
    for preset in ([] if args.skip_presets else args.presets or PRESETS):
        print(f"{preset} ...", file=sys.stderr, flush=True)
        row = bench_preset(preset, args, device)
        print(f"  {row['images_per_s']:.1f} images/s (data {1000 * row['data_s']:.1f} ms, step "
              f"{1000 * row['step_s']:.1f} ms per step)", file=sys.stderr, flush=True)
        rows.append(row)
    reference = None
    if args.reference:
        print("official CC vs ours ...", file=sys.stderr, flush=True)
        reference = bench_reference(args.reference, args, device)
    report = markdown(rows, reference, args, device, load_before, load_average(), command)
    print(report)
    if args.out:
        Path(args.out).write_text(report)
    return rows


if __name__ == "__main__":
    main()
