"""Fast training: the two augmentation paths agree, precision/layout/compile leave the loss alone, and a
training step reads nothing back to the host."""
import copy
import logging
import math
import traceback

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

import datasets
from datasets import LoaderViewsDataset, resolve_augment_on
from datasets.batch_augment import draw_params
from datasets.registry import READERS, RawData, register
from engine import trainer as trainer_module
from engine.logger import RunLogger
from engine.run import build, load_config as resolve
from engine.trainer import CompileFailed, Trainer, autocast_backbones
from tests.conftest import build_method

PROBE_SIDE = 32


pytestmark = pytest.mark.usefixtures("one_thread")  # many tiny ops: a second, busy core only adds waiting


def probe_image(side: int = PROBE_SIDE) -> np.ndarray:
    """A fixed RGB image with structure in every channel: horizontal ramp (R), vertical ramp (G), waves (B)."""
    y, x = np.mgrid[0:side, 0:side] / (side - 1)
    image = np.stack([0.15 + 0.7 * x, 0.2 + 0.6 * y, 0.5 + 0.35 * np.sin(6 * x + 4 * y)], axis=-1)
    return np.round(image * 255).astype(np.uint8)


if "fast_training_probe" not in READERS:
    @register("fast_training_probe")
    def _read_probe(root, *, download: bool = False, copies: int = 16) -> RawData:
        data = np.broadcast_to(probe_image(), (copies, PROBE_SIDE, PROBE_SIDE, 3)).copy()
        return RawData(data, np.zeros(copies, dtype=np.int64), "the probe image, repeated")


def simclr_bundle(augment_on: str, copies: int = 16):
    cfg = resolve(["--preset", "cc_cifar10", "--dataset", "fast_training_probe", "--image_size", str(PROBE_SIDE),
                   "--augment_on", augment_on, "--device", "cpu", "--dataset_options", f"{{copies: {copies}}}"])
    return datasets.build(cfg, datasets.DataRequest(views=2), device="cpu")


# ----- augmentation: where it runs ------------------------------------------------------------------------------
def test_augment_on_auto_picks_the_device_on_cuda_and_the_loader_pipeline_on_the_cpu():
    assert resolve_augment_on("auto", "simclr", "cuda") == ("device", None)
    assert resolve_augment_on("auto", "simclr", "cpu") == ("loader", None)
    where, note = resolve_augment_on("auto", "pica", "cpu")
    assert where == "device" and "no per-image loader pipeline" in note
    assert resolve_augment_on("device", "simclr", "cpu") == ("device", None)
    assert resolve_augment_on("loader", "simclr", "cuda") == ("loader", None)
    with pytest.raises(ValueError, match="no per-image loader pipeline"):
        resolve_augment_on("loader", "iic", "cpu")
    with pytest.raises(ValueError, match="augment_on must be"):
        resolve_augment_on("gpu", "simclr", "cpu")


def test_build_follows_augment_on_and_says_why_digits_stay_batched(caplog):
    auto = simclr_bundle("auto")
    assert auto.augment_on == "loader" and isinstance(auto.train, LoaderViewsDataset) and auto.augmenter is None
    device = simclr_bundle("device")
    assert device.augment_on == "device" and device.augmenter is not None
    caplog.set_level(logging.INFO, logger="datasets")
    digits = datasets.build(resolve(["--preset", "cc_digits", "--device", "cpu"]), datasets.DataRequest(views=2),
                            device="cpu")
    assert digits.augment_on == "device" and digits.augmenter is not None
    assert any("'digits' has no per-image loader pipeline" in r.getMessage() for r in caplog.records)


# ----- augmentation: the two paths draw the same parameters -----------------------------------------------------
def _quantiles(x: torch.Tensor) -> torch.Tensor:
    return torch.quantile(x.double(), torch.tensor([0.05, 0.25, 0.5, 0.75, 0.95], dtype=torch.float64))


def test_simclr_parameter_distributions_match_torchvision():
    n = 10_000
    device = simclr_bundle("device").augmenter.spec
    steps = simclr_bundle("loader").train.transform.transforms
    crop, flip, jitter_apply, grey = steps[1], steps[2], steps[3], steps[4]
    jitter = jitter_apply.transforms[0]
    ours = draw_params(device, n, torch.Generator().manual_seed(0), size=(PROBE_SIDE, PROBE_SIDE))

    torch.manual_seed(0)
    image = torch.zeros(3, PROBE_SIDE, PROBE_SIDE)
    boxes = torch.tensor([crop.get_params(image, crop.scale, crop.ratio) for _ in range(n)], dtype=torch.float64)
    top, left, height, width = boxes.unbind(1)
    theirs_area = height * width / PROBE_SIDE ** 2
    theirs_log_ratio = (width / height).log()
    theirs_centre = (left + width / 2) / PROBE_SIDE * 2 - 1
    ours_area = (ours["w"] * ours["h"]).double()
    ours_log_ratio = (ours["w"] / ours["h"]).double().log()
    # Crop area and aspect ratio (the old clamped sampler had a mean area of 0.537 against torchvision's 0.476).
    assert abs(ours_area.mean() - theirs_area.mean()) < 0.01
    torch.testing.assert_close(_quantiles(ours_area), _quantiles(theirs_area), atol=0.015, rtol=0)
    assert abs(ours_log_ratio.mean() - theirs_log_ratio.mean()) < 0.01
    torch.testing.assert_close(_quantiles(ours_log_ratio.abs()), _quantiles(theirs_log_ratio.abs()), atol=0.015,
                               rtol=0)
    # Crop position: centres spread as on torchvision's pixel grid.
    assert abs(ours["cx"].double().std() - theirs_centre.std()) < 0.01

    # Colour-jitter factors: same ranges, same uniform shape.
    factors = torch.tensor([jitter.get_params(jitter.brightness, jitter.contrast, jitter.saturation, jitter.hue)[1:]
                            for _ in range(n)], dtype=torch.float64)
    for column, key in enumerate(("brightness", "contrast", "saturation", "hue")):
        a, b = ours[key].double(), factors[:, column]
        for stat in (torch.min, torch.max, torch.mean, torch.std):
            assert abs(stat(a) - stat(b)) < 0.01, (key, stat.__name__)

    # Rates of flip, colour jitter and grayscale, measured by applying torchvision's own transform objects (the
    # jitter's RandomApply with its ColorJitter swapped for a recorder: its own decision, without the slow work).
    m = 3000
    ramp = torch.tensor([[[0.0, 1.0]]]).expand(3, 1, 2).contiguous()
    colours = torch.tensor([0.8, 0.3, 0.1]).view(3, 1, 1).expand(3, 1, 2).contiguous()
    flips = sum(bool(flip(ramp)[0, 0, 0] == 1.0) for _ in range(m)) / m
    applied = []
    decision = copy.deepcopy(jitter_apply)
    decision.transforms = [lambda image: applied.append(1) or image]
    for _ in range(m):
        decision(colours)
    jittered = len(applied) / m
    greyed = sum(bool(torch.allclose(g := grey(colours), g[:1].expand_as(g))) for _ in range(m)) / m
    assert abs(ours["flip"].float().mean().item() - flips) < 0.03
    assert abs(ours["jitter"].float().mean().item() - jittered) < 0.03
    assert abs(ours["gray"].float().mean().item() - greyed) < 0.03
    assert abs(flips - 0.5) < 0.03 and abs(jittered - 0.8) < 0.03 and abs(greyed - 0.2) < 0.03


def _image_statistics(views: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"channel mean": views.mean(dim=(0, 2, 3)), "channel std": views.std(dim=(0, 2, 3)),
            "spread of view means": views.mean(dim=(2, 3)).std(dim=0)}


def test_both_paths_make_images_of_the_same_statistics():
    pairs = 2000  # x 2 views per path
    device, loader = simclr_bundle("device", copies=pairs), simclr_bundle("loader", copies=pairs)
    batch = torch.utils.data.default_collate([device.train[i] for i in range(pairs)])
    ours = torch.cat(device.train_views(batch, torch.device("cpu"), torch.Generator().manual_seed(0)))
    torch.manual_seed(0)
    theirs = torch.stack([view for i in range(pairs) for view in loader.train[i]["views"]])
    assert ours.shape == theirs.shape == (2 * pairs, 3, PROBE_SIDE, PROBE_SIDE)
    # Calibrated on this input (scratch study): the right pipeline is within 0.0065 everywhere; colour strength
    # 1.0 or 0.25 instead of 0.5 moves a statistic by 0.04-0.08, grayscale p 0 or 0.4 by 0.015-0.02, jitter
    # p 0.5 by 0.02, crop scale (0.3, 1) by 0.022. Hue and small crop changes are the parameter test's job.
    for name, value in _image_statistics(ours).items():
        torch.testing.assert_close(value, _image_statistics(theirs)[name], atol=0.01, rtol=0, msg=name)


# ----- precision ------------------------------------------------------------------------------------------------
def tiny_cc_argv(**overrides) -> list[str]:
    options = {"--preset": "cc_digits", "--backbone": "small_cnn", "--image_size": "8", "--batch_size": "64",
               "--steps_per_epoch": "1", "--epochs": "1", "--eval_every": "100", "--log_every": "1",
               "--cc.hidden_dim": "32", "--cc.feature_dim": "16", "--device": "cpu"}
    options.update({f"--{k}": str(v) for k, v in overrides.items()})
    return [item for pair in options.items() for item in pair]


def test_methods_declare_their_backbones():
    def names(method, extra=()):
        cfg = resolve(["--preset", f"{method}_digits", "--device", "cpu", *extra])
        return [name for name, _ in build_method(cfg)[0].backbone_modules()]

    assert names("cc") == ["backbone"] and names("iic") == ["backbone"]
    assert names("propos", ["--propos.kmeans_n_init", "1"]) == ["online_backbone", "target_backbone"]
    assert names("spn") == ["net.trunk"] and names("mcl") == ["trunk"] and names("kingdra") == []


def test_backbone_autocast_leaves_losses_in_fp32():
    """bf16 autocast on the backbone only: the loss equals the fp32 losses of the backbone's outputs; autocast
    around the whole step (the old trainer) runs the losses' matmuls in bf16 and misses that by > 1e-4."""
    from losses.cc import cluster_contrastive_loss, instance_contrastive_loss

    cfg = resolve(tiny_cc_argv())
    model = build_method(cfg)[0]
    g = torch.Generator().manual_seed(1)
    batch = {"views": [torch.rand(64, 1, 8, 8, generator=g) for _ in range(2)], "index": torch.arange(64)}
    features = []
    model.backbone.register_forward_hook(lambda module, args, out: features.append(out))

    def fp32_loss_of(h_a, h_b):
        h_a, h_b = h_a.float(), h_b.float()
        with torch.no_grad():
            z = [F.normalize(model.instance_projector(h).float(), dim=1) for h in (h_a, h_b)]
            c = [model.cluster_heads(h)[0] for h in (h_a, h_b)]
            return (instance_contrastive_loss(*z, temperature=cfg.cc.instance_temperature)
                    + cluster_contrastive_loss(*c, temperature=cfg.cc.cluster_temperature))

    with torch.autocast("cpu", dtype=torch.bfloat16):           # the old behaviour, for contrast
        whole = model.training_step(batch, 0)["loss"].float()
    assert abs(whole - fp32_loss_of(*features[-2:]).float()) > 1e-4
    features.clear()
    plain = model.training_step(batch, 0)["loss"]
    fp32_features = [h.detach() for h in features[-2:]]

    autocast_backbones(model.backbone_modules(), "cpu")
    features.clear()
    out = model.training_step(batch, 0)
    assert all(h.dtype == torch.float32 for h in features)
    assert (features[0] - fp32_features[0]).abs().max() > 1e-4      # the backbone really ran in bf16
    assert out["loss"].dtype == torch.float32
    assert abs(out["loss"] - fp32_loss_of(*features[-2:])) < 1e-6
    assert abs(out["loss"] - plain) < 0.05                          # and it stays close to the fp32 run's loss


def make_trainer(argv: list[str], **settings) -> tuple[Trainer, RunLogger]:
    cfg = resolve(argv)
    for key, value in settings.items():      # keys whose CLI spelling the config types cannot express yet
        setattr(cfg, key, value)
    logger = RunLogger(None, cfg)
    return build(cfg, logger)[0], logger


def first_step_loss(argv: list[str], **settings) -> tuple[float, Trainer]:
    trainer, logger = make_trainer(argv, **settings)
    try:
        return trainer.train_epoch(), trainer
    finally:
        logger.close()


def test_channels_last_and_amp_on_the_cpu_leave_the_first_step_loss_unchanged():
    rgb = {"normalize_mean": "[0.5,0.5,0.5]", "normalize_std": "[0.25,0.25,0.25]"}   # 3 channels: a real layout change
    default, plain = first_step_loss(tiny_cc_argv(**rgb))
    assert not plain.channels_last and not plain.amp            # auto: off on the CPU; amp is CUDA-only
    last, trainer = first_step_loss(tiny_cc_argv(**rgb), channels_last=True)
    conv = trainer.method.backbone[0].weight
    assert trainer.channels_last and conv.is_contiguous(memory_format=torch.channels_last)
    batch = next(iter(trainer.streams[-1][1]))
    views = trainer._method_batch(batch)["views"]
    assert all(v.is_contiguous(memory_format=torch.channels_last) and not v.is_contiguous() for v in views)
    no_amp, _ = first_step_loss(tiny_cc_argv(amp="false", **rgb))
    assert math.isfinite(default)
    assert abs(last - default) < 1e-5 and abs(no_amp - default) < 1e-5


def test_compile_trains_the_same_first_step(monkeypatch):
    torch._dynamo.reset()
    monkeypatch.setattr(trainer_module, "COMPILE_BACKEND", "aot_eager")  # inductor needs minutes on this CPU
    argv = tiny_cc_argv(backbone="mlp")
    eager, _ = first_step_loss(argv)
    compiled, trainer = first_step_loss(argv + ["--compile", "true"])
    assert trainer.backbones[0][1]._compiled_call_impl is not None
    assert abs(compiled - eager) < 1e-5
    torch._dynamo.reset()


def test_compile_failure_stops_with_a_clear_message(monkeypatch):
    def broken_backend(graph, example_inputs):
        raise RuntimeError("simulated: no C++ compiler")

    torch._dynamo.reset()
    monkeypatch.setattr(trainer_module, "COMPILE_BACKEND", broken_backend)
    with pytest.raises(CompileFailed, match=r"--compile true: torch.compile of the backbone failed .*no C\+\+ "
                                            r"compiler.*Run without --compile"):
        first_step_loss(tiny_cc_argv(backbone="mlp") + ["--compile", "true"])
    torch._dynamo.reset()


# ----- no hidden syncs ------------------------------------------------------------------------------------------
aten = torch.ops.aten
# Ops that make the host wait for the device: reading a value (item/float/int/bool), or a result whose shape
# depends on the data.
HOST_READS = {aten._local_scalar_dense.default, aten.nonzero.default, aten.masked_select.default,
              aten._unique2.default, aten.unique_dim.default, aten.unique_consecutive.default,
              aten.repeat_interleave.Tensor}


class HostReads(TorchDispatchMode):
    """Records every host read (and every tensor made from Python data, a host->device copy on CUDA) with the
    trainer's step and where it came from: the DataLoader (host side), the optimizer's CPU step counter, DivClust,
    or the training step and its logging."""

    def __init__(self, trainer: Trainer):
        super().__init__()
        self.trainer, self.events = trainer, []

    def record(self, kind: str) -> None:
        files = [frame.filename.replace("\\", "/") for frame in traceback.extract_stack()]
        if any("torch/utils/data" in f for f in files):
            where = "loader"
        elif any("torch/optim" in f for f in files):
            where = "optimizer"
        elif any(f.endswith(("engine/divclust.py", "losses/divclust.py", "metrics/diversity.py")) for f in files):
            where = "divclust"
        else:
            where = "step"
        self.events.append((kind, where, self.trainer.step))

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in HOST_READS or (func is aten.index.Tensor and any(
                torch.is_tensor(i) and i.dtype == torch.bool for i in args[1] if i is not None)):
            self.record("read")
        elif func is aten.lift_fresh.default:
            self.record("from python")
        return func(*args, **kwargs)

    def count(self, kind: str, where: str, from_step: int = 0) -> int:
        return sum(1 for k, w, s in self.events if k == kind and w == where and s >= from_step)


def count_host_reads(trainer: Trainer, monkeypatch) -> HostReads:
    mode = HostReads(trainer)
    for name in ("tolist", "numpy", "cpu"):
        original = getattr(torch.Tensor, name)

        def wrapped(self, *args, _original=original, **kwargs):
            mode.record("read")
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, wrapped)
    with mode:
        trainer.train_epoch()
    monkeypatch.undo()
    return mode


@pytest.mark.parametrize("log_every, reads", [(1, 4), (3, 2)])
def test_a_training_step_reads_nothing_back_only_the_log_interval_does(monkeypatch, log_every, reads):
    # SimCLR colour pipeline on the device (hue, normalisation constants) on the digits expanded to RGB.
    argv = tiny_cc_argv(backbone="mlp", steps_per_epoch=4, log_every=log_every, batch_size=32, augmentation="simclr",
                        augment_on="device", normalize_mean="[0.5,0.5,0.5]", normalize_std="[0.25,0.25,0.25]")
    trainer, logger = make_trainer(argv)
    try:
        mode = count_host_reads(trainer, monkeypatch)
    finally:
        logger.close()
    assert trainer.step == 4
    # One read per log interval (ceil(4 / log_every): the epoch's last step always logs), none per step.
    assert mode.count("read", "step") == reads, mode.events
    # After the first step, no tensor is made from Python data (each would be a blocking copy to a CUDA device).
    assert mode.count("from python", "step", from_step=1) == 0, mode.events


def test_divclust_reads_only_at_its_nmi_interval(monkeypatch):
    argv = tiny_cc_argv(backbone="mlp", steps_per_epoch=4, log_every=4, batch_size=32, clusterings=3,
                        NMI_target=0.8, NMI_interval=2, consensus="none")
    trainer, logger = make_trainer(argv)
    try:
        mode = count_host_reads(trainer, monkeypatch)
    finally:
        logger.close()
    assert mode.count("read", "step") == 1, mode.events
    steps_with_reads = {s for k, w, s in mode.events if k == "read" and w == "divclust"}
    assert steps_with_reads == {0, 2}      # the label bank's NMI, every NMI_interval steps (official behaviour)


# ----- benchmark script -----------------------------------------------------------------------------------------
def test_bench_train_measures_a_preset(tmp_path):
    from scripts import bench_train

    out = tmp_path / "bench.md"
    rows = bench_train.main(["--presets", "cc_digits", "--batch_size", "16", "--steps", "2", "--warmup", "1",
                             "--device", "cpu", "--num_images", "64", "--out", str(out)])
    row = rows[0]
    assert row["preset"] == "cc_digits" and row["images_per_s"] > 0
    assert row["data_s"] > 0 and row["step_s"] > 0 and row["refresh_s"] is None
    text = out.read_text()
    assert "| cc_digits |" in text and "python scripts/bench_train.py" in text
