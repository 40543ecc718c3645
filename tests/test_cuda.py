"""The CUDA path: every method trains and evaluates on a GPU (fp32, bf16 + channels-last, compile), the batched
augmentation, k-means, GMM and SCCBG give the CPU's results there, checkpoints move between CUDA and the CPU,
and a training step makes the host wait for the device at no step between log lines.

Run with `pytest -m cuda` on a machine with a GPU (scripts/device_check.sh does); every test here skips without
one. Tiny data (the bundled digits, generated blobs), a few steps each. `CUDA_TESTS_DEVICE=cpu pytest -m cuda`
runs the same tests on the CPU (the dry run of scripts/device_check.sh): it checks the tests themselves, not the
GPU; the synchronisation test needs CUDA and skips there.
"""
from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_rand_score

import main as entry
from tests.conftest import killed_after_epoch

DEVICE = os.environ.get("CUDA_TESTS_DEVICE", "cuda")
pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(DEVICE == "cuda" and not torch.cuda.is_available(), reason="needs a CUDA device")]

# Every method's digits preset; DivClust is CC with 2 clusterings.
METHOD_PRESETS = {"cc": ["--preset", "cc_digits"],
                  "divclust": ["--preset", "cc_digits", "--clusterings", "2", "--NMI_target", "0.8"],
                  "pica": ["--preset", "pica_digits"], "iic": ["--preset", "iic_digits"],
                  "propos": ["--preset", "propos_digits"], "hadis": ["--preset", "hadis_digits"],
                  "digpro": ["--preset", "digpro_digits"], "mcl": ["--preset", "mcl_digits"],
                  "kcl": ["--preset", "kcl_digits"], "kingdra": ["--preset", "kingdra_digits"]}
VARIANTS = {"fp32": ["--amp", "false", "--channels_last", "false"],
            "bf16_channels_last": ["--amp", "true", "--amp_dtype", "bfloat16", "--channels_last", "true"]}
SHORT = ["--device", DEVICE, "--epochs", "1", "--steps_per_epoch", "2", "--eval_every", "1", "--log_every", "1",
         "--plots", "false"]


def run_dir(tmp_path: Path, name: str) -> Path:
    found = list((tmp_path / "runs").glob(f"*/{name}"))
    assert len(found) == 1, found
    return found[0]


def train_losses(directory: Path) -> list[float]:
    rows = [json.loads(line) for line in (directory / "metrics.jsonl").read_text().splitlines()]
    return [r["metrics"]["train/loss"] for r in rows if "train/loss" in r["metrics"]]


def assert_sane_results(results: dict, directory: Path) -> None:
    losses = train_losses(directory)
    assert losses and all(math.isfinite(v) for v in losses), losses
    scores = [results[key] for key in ("kmeans",) if results.get(key)] + list(results.get("heads") or [])
    assert scores, results.keys()
    for score in scores:
        assert 0.0 <= score["acc"] <= 1.0 and math.isfinite(score["nmi"]), score


# ----- every method, step and evaluation ---------------------------------------------------------------------
@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("method", sorted(METHOD_PRESETS))
def test_every_method_trains_and_evaluates_on_cuda(tmp_path, method, variant):
    name = f"{method}_{variant}"
    results = entry.main(METHOD_PRESETS[method] + SHORT + VARIANTS[variant] +
                         ["--output_dir", str(tmp_path / "runs"), "--run_name", name])
    directory = run_dir(tmp_path, name)
    assert_sane_results(results, directory)
    assert json.loads((directory / "env.json").read_text())["device"] == DEVICE


@pytest.mark.parametrize("method", ["cc", "propos"])
def test_compiled_backbones_train_on_cuda(tmp_path, method):
    torch._dynamo.reset()
    results = entry.main(METHOD_PRESETS[method] + SHORT + ["--compile", "true", "--amp", "true",
                                                           "--output_dir", str(tmp_path / "runs"),
                                                           "--run_name", "compiled"])
    assert_sane_results(results, run_dir(tmp_path, "compiled"))
    torch._dynamo.reset()


def test_bf16_and_fp32_first_losses_agree(tmp_path):
    """The first logged loss of CC in bf16 autocast is the fp32 loss within bf16's rounding."""
    losses = {}
    for variant, flags in VARIANTS.items():
        entry.main(METHOD_PRESETS["cc"] + SHORT + flags + ["--deterministic", "true", "--output_dir",
                                                          str(tmp_path / "runs"), "--run_name", variant])
        losses[variant] = train_losses(run_dir(tmp_path, variant))[0]
    assert losses["bf16_channels_last"] == pytest.approx(losses["fp32"], rel=2e-2), losses


# ----- batched augmentation on the GPU ---------------------------------------------------------------------------
def test_device_augmentation_on_cuda_matches_the_cpu_and_torchvision():
    from torchvision import transforms as T

    from datasets.batch_augment import BatchAugmenter, pica_specs, simclr_spec
    from tests.test_augmentation_paths import assert_close_statistics, photo_patches, torchvision_views

    images = photo_patches()
    x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    specs = {"simclr": simclr_spec(32, color_strength=0.5, blur=False, crop_scale=(0.2, 1.0)),
             "pica": pica_specs(32, resize=32, crop_scale=(0.2, 1.0))[1]}
    for name, spec in specs.items():
        augmenter = BatchAugmenter(spec, 3, 4)
        cpu = torch.cat(augmenter(x, torch.Generator().manual_seed(0)))
        gpu = torch.cat(augmenter(x.to(DEVICE), torch.Generator().manual_seed(0)))
        assert gpu.device.type == DEVICE
        # Same parameters (drawn on the host), same arithmetic: equal up to float rounding.
        assert (gpu.cpu() - cpu).abs().max() < 1e-4, name
    reference = T.Compose([T.RandomResizedCrop(32, scale=(0.2, 1.0)), T.ColorJitter(0.4, 0.4, 0.4, 0.4),
                           T.RandomGrayscale(0.2), T.RandomHorizontalFlip(), T.ToTensor()])
    augmenter = BatchAugmenter(specs["pica"], 3, 8)
    gpu = torch.cat(augmenter(x.to(DEVICE), torch.Generator().manual_seed(0))).cpu()
    assert_close_statistics(gpu, torchvision_views(reference, images, 8), tolerance=0.008)


# ----- k-means, GMM and SCCBG on the GPU -------------------------------------------------------------------------
def blobs(n: int = 4000, d: int = 32, k: int = 8, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 10, (k, d))
    return torch.from_numpy(centres[rng.integers(0, k, n)] + rng.normal(0, 1, (n, d))).float()


def test_kmeans_on_cuda_equals_the_cpu():
    from torch_clustering import kmeans

    X = blobs()
    init = X[torch.randperm(len(X), generator=torch.Generator().manual_seed(0))[:8]]
    cpu = kmeans(X, 8, init=init, n_init=1, max_iter=100)
    gpu = kmeans(X.to(DEVICE), 8, init=init.to(DEVICE), n_init=1, max_iter=100)
    assert gpu.labels.device.type == DEVICE
    assert adjusted_rand_score(cpu.labels.numpy(), gpu.labels.cpu().numpy()) == 1.0
    assert float(gpu.inertia) == pytest.approx(float(cpu.inertia), rel=1e-4)
    seeded_cpu, seeded_gpu = kmeans(X, 8, n_init=3, random_state=0), kmeans(X.to(DEVICE), 8, n_init=3, random_state=0)
    assert float(seeded_gpu.inertia) == pytest.approx(float(seeded_cpu.inertia), rel=1e-4)


def test_gmm_on_cuda_equals_the_cpu():
    from torch_clustering import GaussianMixture

    X = blobs(seed=1)
    cpu = GaussianMixture(8, n_init=2, random_state=0).fit(X)
    gpu = GaussianMixture(8, n_init=2, random_state=0).fit(X.to(DEVICE))
    assert adjusted_rand_score(np.asarray(cpu.labels_.cpu()), np.asarray(gpu.labels_.cpu())) == 1.0
    assert float(gpu.lower_bound_) == pytest.approx(float(cpu.lower_bound_), rel=1e-4)


def test_sccbg_on_cuda_equals_the_cpu():
    from consensus import run_consensus
    from consensus.synthetic import planted_ensemble

    _, labels = planted_ensemble(3000, 10, 12, noise=0.3, seed=0)
    cpu = run_consensus(labels, 10, method="sccbg", device="cpu")
    gpu = run_consensus(labels, 10, method="sccbg", device=DEVICE)
    assert adjusted_rand_score(cpu, gpu) == 1.0


# ----- checkpoints between devices --------------------------------------------------------------------------------
@pytest.mark.parametrize("first, second", [(DEVICE, "cpu"), ("cpu", DEVICE)])
def test_a_checkpoint_resumes_on_the_other_device(tmp_path, first, second):
    args = METHOD_PRESETS["cc"] + ["--epochs", "2", "--steps_per_epoch", "2", "--eval_every", "1", "--plots",
                                   "false", "--output_dir", str(tmp_path / "runs")]
    with killed_after_epoch(1), pytest.raises(KeyboardInterrupt):
        entry.main(args + ["--device", first, "--run_name", "moved"])
    directory = run_dir(tmp_path, "moved")
    results = entry.main(args + ["--device", second, "--resume", str(directory)])
    checkpoint = torch.load(directory / "checkpoints" / "last.pt", weights_only=True, map_location="cpu")
    assert checkpoint["step"] == 4
    assert_sane_results(results, directory)


# ----- host synchronisations --------------------------------------------------------------------------------------
@pytest.mark.skipif(DEVICE != "cuda", reason="CUDA's sync debug mode")
@pytest.mark.parametrize("method", ["cc", "pica", "propos", "iic"])
def test_no_host_synchronisation_between_log_lines(method):
    """CUDA's sync debug mode reports every operation that makes the host wait. Between the first step and the
    epoch's last (which logs), an iteration (its step and the next batch's loading and augmentation) has none."""
    from tests.test_fast_training import make_trainer

    steps = 6
    trainer, logger = make_trainer(METHOD_PRESETS[method] + ["--device", "cuda", "--steps_per_epoch", str(steps),
                                                             "--log_every", "1000", "--epochs", "1"])
    starts: list[int] = []
    caught: list = []
    original = trainer.train_step

    def marked(inputs):
        starts.append(len(caught))
        return original(inputs)

    trainer.train_step = marked
    try:
        with warnings.catch_warnings(record=True) as caught_now:
            warnings.simplefilter("always")
            caught = caught_now
            torch.cuda.set_sync_debug_mode("warn")
            try:
                trainer.train_epoch()
            finally:
                torch.cuda.set_sync_debug_mode("default")
    finally:
        logger.close()
    syncs = [w for w in caught if "synchroniz" in str(w.message)]
    assert len(starts) == steps
    per_iteration = [sum(1 for w in caught[starts[i]:starts[i + 1]] if "synchroniz" in str(w.message))
                     for i in range(steps - 1)]
    assert per_iteration[1:] == [0] * (steps - 2), (per_iteration, [str(w.message)[:120] for w in syncs][:5])
