"""One prepared check of the GPU path, for the few minutes a GPU machine is lent (run it as scripts/device_check.sh).

Sections, in this order, each timed and recorded even when it fails (the JSON and Markdown are rewritten after
every section, so a run cut short still leaves what it measured):
1. environment: torch, CUDA, cuDNN, device name and memory, CPU count;
2. cuda_tests: `pytest -m cuda tests/test_cuda.py` (every method on CUDA in fp32 and bf16 + channels-last,
   compile, device augmentation, k-means / GMM / SCCBG against the CPU, checkpoints across devices, host syncs);
3. train_speed: scripts/bench_train.py for the model of every paper preset, fp32 and bf16 (channels-last as the
   device default), plus contiguous layout and bf16 + torch.compile for cc_cifar10 and propos_cifar10, and a
   SimCLR-style 2-view CIFAR ResNet-18 at 32 px (the 50,000-image epoch time target); data time as a share;
4. clustering: torch_clustering k-means and diagonal GMM at 60k x 512 into 100 clusters (scikit-learn's k-means
   beside it, same start and iterations) and at 1M x 256 into 10k clusters: seconds and peak device memory;
5. consensus: SCCBG of 20 clusterings of 60k points on the device and on the CPU, equal up to renaming;
6. timed_run: a cc_cifar10-style run (the paper preset, shortened epochs) on the CIFAR-10 JPEG copy in fp32 and
   in bf16, each for a fixed wall-time budget: seconds and ACC per evaluated epoch, and the two loss curves.

`--device cpu` is the dry run: the same sections and code paths at small sizes (the CUDA tests run on the CPU via
CUDA_TESTS_DEVICE=cpu, a subset; the timed run on a small generated image folder, whatever --data says), writing
the same two files. It checks the script, not the GPU.

    OUT=DIR bash scripts/device_check.sh                  # on the GPU machine
    OUT=DIR bash scripts/device_check.sh --device cpu     # dry run here
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scripts.bench_train import synchronize  # noqa: E402

PAPER_PRESETS = ["cc_cifar10", "divclust_cc_cifar10", "pica_cifar10", "iic_cifar10", "propos_cifar10",
                 "hadis_cifar10", "digpro_imagenet10", "kingdra_cifar10"]


# ----- sizes -----------------------------------------------------------------------------------------------------
def sizes(device: str) -> dict:
    """What each section measures: the issue's sizes on CUDA, small ones for the CPU dry run."""
    if device == "cuda":
        return {"tests_k": None, "bench_presets": PAPER_PRESETS, "bench_extra": ["cc_cifar10", "propos_cifar10"],
                "bench": ["--steps", "8", "--warmup", "3"], "bench_resnet18_batch": 512,
                "kmeans": [(60_000, 512, 100, True), (1_000_000, 256, 10_000, False)], "kmeans_iters": 20,
                "consensus": (20, 60_000), "run_seconds": 130, "run_args": ["--steps_per_epoch", "60", "--epochs", "50"]}
    return {"tests_k": "kmeans or gmm or sccbg or augmentation", "bench_presets": ["cc_cifar10", "propos_cifar10"],
            "bench_extra": ["cc_cifar10"],
            "bench": ["--steps", "1", "--warmup", "1", "--batch_size", "16", "--image_size", "32", "--num_images", "64"],
            "bench_resnet18_batch": 8, "kmeans": [(6_000, 64, 10, True), (20_000, 32, 100, False)], "kmeans_iters": 5,
            "consensus": (20, 3_000), "run_seconds": 60,
            "run_args": ["--steps_per_epoch", "3", "--epochs", "3", "--image_size", "32", "--backbone", "cnn4", "--batch_size", "16",
                         "--eval_batch_size", "64", "--num_workers", "0"]}


# ----- sections ----------------------------------------------------------------------------------------------------
def environment(args, size: dict) -> dict:
    import torchvision

    info = {"python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
            "cpu_count": os.cpu_count(), "device": args.device, "cuda": torch.version.cuda,
            "cuda_available": torch.cuda.is_available()}
    if args.device == "cuda":
        props = torch.cuda.get_device_properties(0)
        info.update({"gpu": props.name, "gpu_memory_gib": round(props.total_memory / 2**30, 1),
                     "cudnn": torch.backends.cudnn.version(), "bf16": torch.cuda.is_bf16_supported()})
    return info


def cuda_tests(args, size: dict) -> dict:
    xml = Path(args.out) / "cuda_tests.xml"
    command = [sys.executable, "-m", "pytest", "-m", "cuda", "tests/test_cuda.py", "-q", "-p", "no:cacheprovider",
               f"--junitxml={xml}"]
    if size["tests_k"]:
        command += ["-k", size["tests_k"]]
    env = dict(os.environ, CUDA_TESTS_DEVICE=args.device)
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=args.tests_timeout)
    suite = ET.parse(xml).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    failures = []
    for case in suite.iter("testcase"):
        for kind in ("failure", "error"):
            node = case.find(kind)
            if node is not None:
                failures.append({"test": case.get("name"), "kind": kind, "message": (node.get("message") or "")[:400]})
    counts = {key: int(suite.get(key, 0)) for key in ("tests", "failures", "errors", "skipped")}
    return {"command": " ".join(command[1:]), "returncode": done.returncode, **counts,
            "passed": counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"],
            "failed_tests": failures, "tail": done.stdout[-1500:]}


def train_speed(args, size: dict) -> dict:
    from scripts import bench_train

    device = ["--device", args.device]
    variants = [("fp32", size["bench_presets"], []), ("bf16", size["bench_presets"], ["amp=true"]),
                ("fp32 contiguous", size["bench_extra"], ["channels_last=false"]),
                ("bf16 compiled", size["bench_extra"], ["amp=true", "compile=true"])]
    rows, errors = [], []
    for name, presets, overrides in variants:
        for preset in presets:
            argv = ["--presets", preset, *device, *size["bench"]]
            for item in overrides:
                argv += ["--set", item]
            try:
                rows.extend(dict(row, variant=name) for row in bench_train.main(argv))
            except Exception as err:          # one preset failing must not hide the others
                errors.append({"preset": preset, "variant": name, "error": f"{type(err).__name__}: {err}"[:400]})
            torch._dynamo.reset()
    batch = size["bench_resnet18_batch"]
    argv = ["--presets", "cc_cifar10", *device, *size["bench"], "--batch_size", str(batch), "--image_size", "32",
            "--set", "backbone=resnet18_cifar", "--set", "amp=true"]
    try:
        row = bench_train.main(argv)[0]
        rows.append(dict(row, variant="SimCLR-style ResNet-18 (CIFAR stem), bf16",
                         epoch_50k_s=50_000 / row["images_per_s"]))
    except Exception as err:
        errors.append({"preset": "cc_cifar10 resnet18_cifar", "variant": "bf16", "error": f"{err}"[:400]})
    return {"rows": rows, "errors": errors}


def clustering(args, size: dict) -> dict:
    from torch_clustering import GaussianMixture, kmeans

    device = torch.device(args.device)
    out = []
    for n, d, k, with_sklearn in size["kmeans"]:
        generator = torch.Generator().manual_seed(0)
        X = torch.randn(n, d, generator=generator).to(device)
        init = X[torch.randperm(n, generator=generator)[:k].to(device)].clone()
        row = {"n": n, "d": d, "k": k, "iters": size["kmeans_iters"]}
        for name, fit in (("kmeans", lambda: kmeans(X, k, init=init, n_init=1, max_iter=size["kmeans_iters"],
                                                     tol=0.0)),
                          ("gmm", lambda: GaussianMixture(k, init="random", n_init=1, max_iter=size["kmeans_iters"],
                                                          tol=0.0).fit(X))):
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
                base = torch.cuda.memory_allocated(device)
            synchronize(device)
            start = time.perf_counter()
            fit()
            synchronize(device)
            row[f"{name}_s"] = time.perf_counter() - start
            if device.type == "cuda":
                row[f"{name}_peak_gib"] = (torch.cuda.max_memory_allocated(device) - base) / 2**30
        if with_sklearn:
            from sklearn.cluster import KMeans

            data, start_centres = X.cpu().numpy(), init.cpu().numpy()
            start = time.perf_counter()
            KMeans(k, init=start_centres, n_init=1, max_iter=size["kmeans_iters"], tol=0.0,
                   algorithm="lloyd").fit(data)
            row["sklearn_kmeans_s"] = time.perf_counter() - start
            row["sklearn_threads"] = os.cpu_count()
            row["speedup_vs_sklearn"] = row["sklearn_kmeans_s"] / row["kmeans_s"]
        out.append(row)
        del X, init
    return {"rows": out}


def consensus(args, size: dict) -> dict:
    from sklearn.metrics import adjusted_rand_score

    from consensus import run_consensus
    from consensus.synthetic import planted_ensemble

    clusterings, points = size["consensus"]
    truth, labels = planted_ensemble(points, 10, clusterings, noise=0.3, seed=0)
    row = {"clusterings": clusterings, "points": points}
    results = {}
    for device in dict.fromkeys([args.device, "cpu"]):
        start = time.perf_counter()
        results[device] = run_consensus(labels, 10, method="sccbg", device=device)
        synchronize(torch.device(device))
        row[f"{device}_s"] = time.perf_counter() - start
    row["ari_device_vs_cpu"] = float(adjusted_rand_score(results["cpu"], results[args.device]))
    row["ari_vs_planted"] = float(adjusted_rand_score(truth, results[args.device]))
    return row


def generated_image_folder(root: Path, per_class: int = 24) -> Path:
    """A small folder of random 32 x 32 colour JPEGs in 10 class folders (the dry run's stand-in for CIFAR-10)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(10):
        folder = root / "train" / f"class{c}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = np.clip(rng.normal(25 * c, 40, (32, 32, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{i}.jpg", quality=75)
    return root


def timed_run(args, size: dict) -> dict:
    scratch = Path(tempfile.mkdtemp(prefix="device_check_"))
    # The dry run always uses the small generated folder (the same image_folder reader), even when --data is given.
    real = args.data and args.device == "cuda"
    data = Path(args.data) if real else generated_image_folder(scratch / "images")
    runs = {}
    for name, flags in (("fp32", ["--amp", "false"]), ("bf16", ["--amp", "true", "--amp_dtype", "bfloat16"])):
        command = [sys.executable, "main.py", "--preset", "cc_cifar10", "--dataset", "image_folder", "--data_root",
                   str(data), "--device", args.device, "--eval_every", "1", "--plots", "false",
                   "--output_dir", str(scratch / "runs"), "--run_name", name, "--seed", "0", *size["run_args"], *flags]
        started = time.perf_counter()
        process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                   env=dict(os.environ, PYTHONUNBUFFERED="1"))
        try:
            output, _ = process.communicate(timeout=size["run_seconds"])
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGTERM)          # the trainer saves its checkpoint and stops
            try:
                output, _ = process.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                output, _ = process.communicate()
        directory = scratch / "runs" / "cc_cifar10" / name
        epochs = []
        metrics = directory / "metrics.jsonl"
        for line in (metrics.read_text().splitlines() if metrics.is_file() else []):
            record = json.loads(line)
            m, epoch = record["metrics"], record.get("epoch")
            if "train/loss" in m and "train/epoch_seconds" in m:
                epochs.append({"epoch": epoch, "step": record["step"], "loss": m["train/loss"],
                               "epoch_s": m["train/epoch_seconds"], "images_per_s": m.get("train/images_per_s")})
            for row in epochs:
                if row["epoch"] == epoch:
                    for source in ("head", "kmeans"):
                        for key in ("acc", "nmi"):
                            if f"eval/{source}.{key}" in m:
                                row[f"{source}_{key}"] = m[f"eval/{source}.{key}"]
        runs[name] = {"command": " ".join(command[1:]), "wall_s": time.perf_counter() - started,
                      "returncode": process.returncode, "epochs": epochs, "tail": output[-800:]}
    curves = [[row["loss"] for row in runs[name]["epochs"]] for name in ("fp32", "bf16")]
    common = min(map(len, curves))
    runs["loss_gap"] = (max(abs(a - b) / abs(a) for a, b in zip(curves[0][:common], curves[1][:common]))
                        if common else None)
    runs["data"] = str(data) if real else "generated image folder (dry run)"
    return runs


SECTIONS = {"environment": environment, "cuda_tests": cuda_tests, "train_speed": train_speed,
            "clustering": clustering, "consensus": consensus, "timed_run": timed_run}


# ----- report ------------------------------------------------------------------------------------------------------
def fmt(value, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1e4 else f"{value:.0f}"
    return str(value)


def markdown(report: dict) -> str:
    env = report.get("environment", {}).get("result", {})
    lines = [f"# Device check ({report['device']})", "",
             f"{env.get('gpu', 'CPU dry run')}; torch {env.get('torch')}, torchvision {env.get('torchvision')}, "
             f"CUDA {env.get('cuda')}, {env.get('cpu_count')} CPUs; started {report['started']}.", "",
             f"Command: `{report['command']}`", ""]
    for name in SECTIONS:
        section = report.get(name)
        if section is None:
            continue
        lines.append(f"## {name} ({section['seconds']:.1f} s)")
        lines.append("")
        if "error" in section:
            lines += [f"FAILED: {section['error']}", ""]
            continue
        result = section["result"]
        if name == "cuda_tests":
            lines += [f"`{result['command']}`: {result['passed']} passed, {result['failures'] + result['errors']} "
                      f"failed, {result['skipped']} skipped."]
            lines += [f"- {f['test']}: {f['message'][:200]}" for f in result["failed_tests"]]
        elif name == "train_speed":
            lines += ["| variant | preset | model | batch x views | precision | data ms | step ms | images/s | "
                      "data share |", "|---|---|---|---|---|---|---|---|---|"]
            for r in result["rows"]:
                extra = f" (50k-image epoch {r['epoch_50k_s']:.1f} s)" if "epoch_50k_s" in r else ""
                lines.append(f"| {r['variant']} | {r['preset']} | {r['model']} | {r['batch']} x {r['views']} | "
                             f"{r['precision']}{', channels-last' if r['channels_last'] else ''}"
                             f"{', compiled' if r.get('compile') else ''} | "
                             f"{1000 * r['data_s']:.1f} | {1000 * r['step_s']:.1f} | {r['images_per_s']:.0f}{extra} | "
                             f"{100 * r['data_share']:.1f}% |")
            lines += [f"- {e['variant']} {e['preset']}: {e['error']}" for e in result["errors"]]
        elif name == "clustering":
            lines += ["| N x D -> K | iterations | k-means s | k-means peak GiB | GMM s | GMM peak GiB | "
                      "scikit-learn k-means s | speed-up |", "|---|---|---|---|---|---|---|---|"]
            for r in result["rows"]:
                lines.append(f"| {r['n']} x {r['d']} -> {r['k']} | {r['iters']} | {fmt(r['kmeans_s'])} | "
                             f"{fmt(r.get('kmeans_peak_gib'))} | {fmt(r['gmm_s'])} | {fmt(r.get('gmm_peak_gib'))} | "
                             f"{fmt(r.get('sklearn_kmeans_s'))} | {fmt(r.get('speedup_vs_sklearn'))} |")
        elif name == "timed_run":
            for run in ("fp32", "bf16"):
                info = result[run]
                lines += [f"{run}: `{info['command']}` ({info['wall_s']:.0f} s, exit {info['returncode']})", "",
                          "| epoch | step | loss | epoch s | images/s | head ACC | k-means ACC |",
                          "|---|---|---|---|---|---|---|"]
                lines += [f"| {e['epoch']} | {e['step']} | {e['loss']:.4f} | {e['epoch_s']:.1f} | "
                          f"{fmt(e['images_per_s'])} | {fmt(e.get('head_acc'))} | {fmt(e.get('kmeans_acc'))} |"
                          for e in info["epochs"]]
                lines.append("")
            lines.append(f"Largest relative gap between the fp32 and bf16 epoch losses: {fmt(result['loss_gap'])}.")
        else:
            lines += [f"- {key}: {fmt(value)}" for key, value in result.items()]
        lines.append("")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="cpu: the dry run")
    parser.add_argument("--out", default=os.environ.get("OUT"), help="folder of device_check.json / .md "
                                                                      "(default: $OUT)")
    parser.add_argument("--data", default=None, help="unpacked CIFAR-10 JPEG folder (train/ and test/) for the "
                                                     "timed run (default on the CPU: a small generated folder)")
    parser.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=list(SECTIONS))
    parser.add_argument("--tests_timeout", type=int, default=200, help="seconds for the CUDA tests")
    parser.add_argument("--run_seconds", type=int, default=None, help="wall seconds per timed run (fp32, bf16)")
    parser.add_argument("--budget_s", type=float, default=470.0,
                        help="whole check: a section is skipped once this is spent, and the two timed runs share "
                             "what is left (at most --run_seconds each)")
    args = parser.parse_args(argv)
    if not args.out:
        parser.error("name the output folder: --out DIR or OUT=DIR")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here (use --device cpu for the dry run)")
    if args.device == "cuda" and "timed_run" in args.sections and not args.data:
        parser.error("--device cuda: the timed run needs --data (the unpacked CIFAR-10 JPEG folder)")
    size = sizes(args.device)
    if args.run_seconds:
        size["run_seconds"] = args.run_seconds
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {"device": args.device, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "command": "python scripts/device_check.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    began = time.perf_counter()
    for name in args.sections:
        left = args.budget_s - (time.perf_counter() - began)
        if left <= 0:
            report[name] = {"error": f"skipped: the {args.budget_s:.0f} s budget was spent", "seconds": 0.0}
            continue
        if name == "timed_run":
            size["run_seconds"] = max(10, min(size["run_seconds"], int(left / 2) - 15))
        print(f"[device_check] {name} ...", flush=True)
        start = time.perf_counter()
        try:
            report[name] = {"result": SECTIONS[name](args, size)}
        except Exception as err:
            report[name] = {"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()[-3000:]}
        report[name]["seconds"] = time.perf_counter() - start
        print(f"[device_check] {name}: {'FAILED ' + report[name]['error'] if 'error' in report[name] else 'done'} "
              f"({report[name]['seconds']:.1f} s)", flush=True)
        (out / "device_check.json").write_text(json.dumps(report, indent=1, default=str))
        (out / "device_check.md").write_text(markdown(report))
    return report


if __name__ == "__main__":
    main()
