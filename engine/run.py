"""A run from a command line to results.json: config, checks, data, method, trainer, run directory, evaluation.

The order matters: everything that can fail because of the user's input (a key, a value, the dataset, the
method against the data, a checkpoint that does not fit, the run directory) fails before any file is written.
Only then is the run directory created (under `--output_dir`, or the run being resumed), with `config.yaml`
(the values that ran), `env.json` (code and environment) and `log.txt`.

`--resume PATH` (a checkpoint or a run directory) and `--eval_only true --resume PATH` rebuild the run from the
config saved in the checkpoint; command-line options override it (each change is named in the log) and keys
that would change the model's shapes are refused.
"""
from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

import datasets
import models
from datasets import DataRequest

from . import checkpoint as ckpt
from . import distributed as dist_utils
from .config import Catalog, Config, ConfigError, differences, dump, resolve, split_cli
from .divclust import interval_to_reach, lowest_threshold
from .evaluate import Evaluator
from .logger import RunLogger
from .preflight import check_step_memory
from .report import label_informed_best
from .seeding import seed_everything
from .trainer import Trainer

_CATALOG: Catalog | None = None

# Keys that may change when a run is resumed or evaluated without any warning (they do not change what it computes).
NEUTRAL_KEYS = {"resume", "eval_only", "run_name", "output_dir", "wandb", "wandb_project", "wandb_entity", "wandb_tags",
                "wandb_notes", "wandb_group", "plots", "plot_tsne", "plot_tsne_points", "num_workers", "log_every",
                "data_root", "device", "download"}


def catalog() -> Catalog:
    """The method and augmentation sections and the allowed names (built once per process)."""
    global _CATALOG
    if _CATALOG is None:
        _CATALOG = models.config_catalog()
    return _CATALOG


@dataclass
class Start:
    """A resolved command line: the config, and the checkpoint (or run directory) it continues, if any."""

    cfg: Config
    state: dict | None = None           # the checkpoint to load (resume, eval-only)
    checkpoint: Path | None = None      # its file
    source_dir: Path | None = None      # the run directory being continued (None: a new run)


def load_config(argv: list[str] | None) -> Config:
    """The resolved config of a command line (with --resume: the checkpoint's, overridden by the command line)."""
    return start_from(argv).cfg


def start_from(argv: list[str] | None) -> Start:
    argv = list(argv or [])
    _, pairs = split_cli(argv)
    resume = [text for key, text in pairs if key == "resume"]
    target = resume[-1] if resume else None
    if target is None or target.strip().lower() in ("", "none", "null", "false", "~"):
        return Start(resolve(argv, catalog()))
    path = Path(target).expanduser()
    if path.is_dir():
        file = path / "checkpoints" / "last.pt"
        if not file.is_file():
            saved = path / "config.yaml"
            if not saved.is_file():
                raise ConfigError(f"--resume {target}: this folder holds no run (no config.yaml, no "
                                  f"checkpoints/last.pt); nothing was written to it.")
            # Killed before its first epoch ended: start again from its saved config, in the same folder.
            from .config import load_yaml

            base = load_yaml(saved, allow_empty=False)
            cfg = resolve(_without_preset(argv, base), catalog(), base=base, base_name=str(saved))
            return Start(cfg, None, None, path)
    else:
        file = path
    state = ckpt.load(file)
    saved = state.get("config")
    if not isinstance(saved, dict):
        raise ckpt.CheckpointError(f"{file} holds no config; it was not written by this framework's trainer.")
    cfg = resolve(_without_preset(argv, saved), catalog(), base=saved,
                  base_name=f"the config saved in {file}")
    _check_overrides(cfg, saved, file)
    run_dir = file.parent.parent if file.parent.name == "checkpoints" else None
    return Start(cfg, state, file, run_dir)


def _without_preset(argv: list[str], saved: dict) -> list[str]:
    """argv without a `--preset` that names the saved run's preset (harmless); another preset is an error."""
    out, i = [], 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--preset" and i + 1 < len(argv):
            if argv[i + 1] != saved.get("preset"):
                raise ConfigError(f"--preset {argv[i + 1]} with --resume: the run was trained with preset "
                                  f"{saved.get('preset')!r}, whose config its checkpoint holds; leave --preset out.")
            i += 2
            continue
        if arg.startswith("--preset="):
            if arg.split("=", 1)[1] != saved.get("preset"):
                raise ConfigError(f"{arg} with --resume: the run was trained with preset {saved.get('preset')!r}; "
                                  f"leave --preset out.")
            i += 1
            continue
        out.append(arg)
        i += 1
    return out


def _check_overrides(cfg: Config, saved: dict, file: Path) -> None:
    """Refuse command-line changes of keys that change the model's shapes; name every other change."""
    cat = catalog()
    shape = set(cat.shape_keys)
    for section in cat.sections:
        shape |= {f"{section.name}.{k}" for k, key in section.keys.items() if key.shape}
    changed = {k: v for k, v in differences(saved, cfg).items() if k in {c for c in cfg.cli_keys}}
    refused = sorted(k for k in changed if k in shape)
    if refused:
        what = ", ".join(f"{k} ({changed[k][0]!r} -> {changed[k][1]!r})" for k in refused)
        raise ConfigError(f"{what}: these keys change the shapes of the model saved in {file}, so a resumed or "
                          f"evaluated run cannot change them. Train a new run for another setting.")
    notes = [f"{k}: {old!r} -> {new!r}" for k, (old, new) in changed.items() if k not in NEUTRAL_KEYS]
    if notes:
        object.__setattr__(cfg, "notes", cfg.notes + (
            f"the command line changes the saved config of {file}: " + "; ".join(notes),))


# ----- checks before any work ----------------------------------------------------------------------------------------
def check_run_config(cfg: Config) -> None:
    """Rules across keys and the ones the method declares (ConfigError), before anything is read or built."""
    if cfg.eval_only and not cfg.resume:
        raise ConfigError("--eval_only true needs --resume PATH (the checkpoint to evaluate).")
    if not cfg.eval_only and int(cfg.epochs) < 1:
        raise ConfigError(f"epochs = {cfg.epochs}: must be an integer >= 1 (or evaluate with --eval_only true).")
    if not str(cfg.output_dir or "").strip():
        raise ConfigError("--output_dir is empty: give the folder that holds the runs (default: runs).")
    if cfg.run_name is not None:
        name = str(cfg.run_name)
        if (not name.strip() or name in (".", "..") or "/" in name or "\\" in name or "\0" in name
                or name != name.strip()):
            raise ConfigError(f"--run_name {name!r}: must be one folder name (no '/', no '..', not empty), created "
                              f"under --output_dir.")
    world = dist_utils.world_size()
    if int(cfg.batch_size) % world:
        raise ConfigError(f"batch_size {cfg.batch_size} must be divisible by the number of processes ({world}).")
    if cfg.best_metric != "train_loss" and not re.fullmatch(r"[a-z_]+(/\d+)?\.(acc|nmi|ari)|diversity\.nmi_mean",
                                                              str(cfg.best_metric)):
        raise ConfigError(f"best_metric = {cfg.best_metric!r}: must be train_loss or an evaluation metric such as "
                          f"head.acc, kmeans.nmi, consensus.ari or heads/0.acc.")
    models.method_class(cfg.method).check_config(cfg)


def _notes_for(cfg: Config) -> list[str]:
    notes = list(cfg.notes)
    if float(cfg.NMI_target) < 1.0 and int(cfg.clusterings) < 2:
        notes.append(f"NMI_target {cfg.NMI_target} bounds the similarity between clusterings, so it has no effect with "
                     f"one clustering (DivClust is off); add --clusterings 2 or more to use it.")
    return notes


def divclust_reach_warning(cfg: Config, total_steps: int) -> str | None:
    """A warning when the threshold cannot fall to NMI_target within the run (None when it can, or DivClust is
    off): with the numbers and the largest NMI_interval that reaches the target by the middle of the run."""
    if int(cfg.clusterings) < 2 or float(cfg.NMI_target) >= 1.0:
        return None
    start, rate, interval = float(cfg.divclust.init_threshold), float(cfg.threshold_rate), int(cfg.NMI_interval)
    lowest = lowest_threshold(total_steps, interval, rate, start)
    target = float(cfg.NMI_target)
    if lowest <= target:
        return None
    suggestion = interval_to_reach(target, total_steps // 2, rate, start)
    advice = (f"--NMI_interval {suggestion} reaches it by the middle of the run" if suggestion
              else "no NMI_interval reaches it: train for more steps, or lower --threshold_rate (a larger move per "
              "update)")
    return (f"DivClust: in {total_steps} steps with NMI_interval {interval} and threshold_rate {rate}, the threshold "
            f"can fall at most from {start:g} to {lowest:.3f}, which stays above NMI_target {target:g}, so the measured "
            f"diversity cannot reach the target; {advice}.")


def divclust_summary(cfg: Config, trainer: Trainer, results: dict) -> dict:
    """results.json's `divclust`: the target, where the threshold ended, the lowest it could have reached in this
    run, and the measured D^R of the last evaluation."""
    steps = int(cfg.epochs) * trainer.steps_per_epoch
    start, rate, interval = float(cfg.divclust.init_threshold), float(cfg.threshold_rate), int(cfg.NMI_interval)
    return {"target": float(cfg.NMI_target), "threshold": float(trainer.divclust.threshold),
            "NMI_interval": interval, "threshold_rate": rate,
            "lowest_reachable_threshold": lowest_threshold(steps, interval, rate, start),
            "measured": (results.get("diversity") or {}).get("nmi_mean")}


# ----- the run directory -----------------------------------------------------------------------------------------------
def plan_run_dir(cfg: Config, start: Start) -> tuple[Path, str]:
    """(run directory, what happens there): "new", "resume", "restart" (a run killed before its first checkpoint,
    started again in its folder) or "eval". Raises ConfigError instead of touching an existing run."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    if cfg.eval_only:
        if start.source_dir is not None:
            return start.source_dir / f"eval-{stamp}", "eval"
        return Path(cfg.output_dir) / str(cfg.preset) / (cfg.run_name or f"eval-{stamp}"), "eval"
    if start.source_dir is not None:
        return start.source_dir, ("resume" if start.state is not None else "restart")
    run_dir = Path(cfg.output_dir) / str(cfg.preset) / (cfg.run_name or stamp)
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"{run_dir} exists and is not a folder; choose another --run_name or --output_dir.")
    if run_dir.is_dir() and any(run_dir.iterdir()):
        if (run_dir / "checkpoints" / "last.pt").is_file() or (run_dir / "results.json").is_file():
            raise ConfigError(f"run directory {run_dir} already holds a run. Continue it with --resume {run_dir}, or "
                              f"choose another --run_name.")
        if not (run_dir / "config.yaml").is_file():
            raise ConfigError(f"{run_dir} already holds files that are not a run; choose another --run_name.")
        return run_dir, "restart"
    return run_dir, "new"


def environment(cfg: Config, argv: list[str] | None) -> dict:
    """What env.json records: code version, software, devices, processes, host, command line, time."""
    root = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    import torchvision

    cuda = torch.cuda.is_available()
    status = git("status", "--porcelain", "--untracked-files=no")
    return {
        "git_commit": git("rev-parse", "HEAD"),
        "git_dirty": None if status is None else bool(status),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "cuda": torch.version.cuda if cuda else None,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda
        else [platform.processor() or platform.machine()],
        "device": str(cfg.device),
        "world_size": dist_utils.world_size(),
        "hostname": platform.node(),
        "command": [sys.executable, *sys.argv[:1], *(argv if argv is not None else sys.argv[1:])],
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


def write_results(results: dict, run_dir: Path | None) -> dict:
    """results.json in one stable shape (metric values are fractions)."""
    shaped = {
        "heads": results.get("heads") or [],
        "head": results.get("head"),
        "best_head": results.get("best_head"),
        "selected_head": results.get("selected_head"),
        "heads_mean": results.get("heads_mean"),
        "kmeans": results.get("kmeans"),
        "gmm": results.get("gmm"),
        "consensus": results.get("consensus"),
        "consensus_official": results.get("consensus_official"),
        "consensus_clusters": results.get("consensus_clusters"),
        "diversity": results.get("diversity"),
        "cluster_sizes": results.get("cluster_sizes"),
        "epochs": results.get("epochs"),
        "step": results.get("step"),
        "seconds": results.get("seconds"),
        "cpu_seconds": results.get("cpu_seconds"),
        "timing": results.get("timing"),
        "config": str(run_dir / "config.yaml") if run_dir else None,
    }
    for key in ("divclust", "label_informed"):
        if results.get(key) is not None:
            shaped[key] = results[key]
    if run_dir is not None and dist_utils.is_main_process():
        _write_json(run_dir / "results.json", shaped)
    return shaped


# ----- the run -------------------------------------------------------------------------------------------------------
def run(cfg: Config | None = None, *, argv: list[str] | None = None, start: Start | None = None) -> dict:
    """Train (or evaluate with --eval_only) as configured; returns results.json's content."""
    start = start or (start_from(argv) if cfg is None else Start(cfg))
    cfg = start.cfg
    device_type = "cuda" if (cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())) else "cpu"
    dist_utils.init_from_env(device_type)
    check_run_config(cfg)
    # Rank 0 decides the run directory (and checks that no run is overwritten); the others take its answer.
    decision = None
    if dist_utils.is_main_process():
        try:
            run_dir, mode = plan_run_dir(cfg, start)
            decision = ("ok", str(run_dir), mode)
        except ConfigError as err:
            decision = ("error", str(err), "")
    decision = dist_utils.broadcast_object(decision)
    if decision[0] == "error":
        raise ConfigError(decision[1])
    run_dir, mode = Path(decision[1]), decision[2]

    logger = RunLogger(None, cfg, use_wandb=cfg.wandb)
    try:
        for note in _notes_for(cfg):
            logger.warning(note)
        trainer, evaluator = build(cfg, logger, start)
        if mode == "resume" and trainer.epoch >= int(cfg.epochs) and (run_dir / "results.json").is_file():
            logger.info(f"run {run_dir} is finished (epoch {trainer.epoch} of {cfg.epochs}); its results are in "
                        f"{run_dir / 'results.json'} and were left untouched. To evaluate it again: python main.py "
                        f"--eval_only true --resume {run_dir}; to train longer: --resume {run_dir} --epochs N.", "green")
            return json.loads((run_dir / "results.json").read_text())
        problem = check_step_memory(trainer, start_views(cfg))
        if problem:
            raise ConfigError(problem)
        warning = divclust_reach_warning(cfg, (int(cfg.epochs) - trainer.epoch) * trainer.steps_per_epoch
                                         + trainer.step)
        if warning and not cfg.eval_only:
            logger.warning(warning)
        # Everything that can fail at the start has passed: from here on, files are written.
        if dist_utils.is_main_process():
            run_dir.mkdir(parents=True, exist_ok=True)
            dump(cfg, run_dir / "config.yaml")
            _write_json(run_dir / "env.json", environment(cfg, argv))
        dist_utils.barrier()
        truncate = {"resume": trainer.step, "restart": -1}.get(mode)
        if mode == "restart":
            logger.info(f"{run_dir} held a run killed before its first epoch ended (no checkpoint): starting it "
                        f"again there", "yellow")
        logger.attach(run_dir, truncate_metrics_after=truncate)
        if dist_utils.is_main_process():   # temporary files of writes that a kill interrupted
            orphans = ckpt.remove_orphans(run_dir) + ckpt.remove_orphans(run_dir / "checkpoints")
            if orphans:
                logger.info(f"removed {len(orphans)} temporary file(s) an interrupted write left: {', '.join(orphans)}")
        trainer.checkpoint_dir = run_dir / "checkpoints"
        evaluator.run_dir = run_dir
        logger.info(f"run directory: {run_dir}", "cyan")
        if start.state is not None:
            logger.info(f"resumed from {start.checkpoint} (epoch {trainer.epoch}, step {trainer.step})")
        if cfg.eval_only:
            results, _ = evaluator(epoch=trainer.epoch, step=trainer.step, final=True)
            results = dict(results, epochs=trainer.epoch, step=trainer.step, seconds=0.0)
        else:
            results = trainer.fit(evaluator)
            best = label_informed_best(run_dir / "metrics.jsonl") if dist_utils.is_main_process() else None
            if best is not None:
                results["label_informed"] = {"best_accuracy_epoch": best, "note": "the evaluation with the highest "
                                             "ACC of any head, chosen with the labels (as the official PICA and IIC "
                                             "code keep their best-accuracy checkpoint): analysis only, not the "
                                             "result"}
                logger.info(f"label-informed analysis (not the result): the best accuracy of any head over the "
                            f"evaluations was ACC {best['acc']:.4f} (head {best['head']}, epoch {best['epoch']}); "
                            f"the result is the final epoch's")
        if trainer.divclust.active:
            results["divclust"] = divclust_summary(cfg, trainer, results)
        shaped = write_results(results, run_dir)
        logger.info(f"done: results in {run_dir / 'results.json'}", "green")
        return shaped
    finally:
        logger.close()


def build(cfg: Config, logger: RunLogger | None = None, start: Start | None = None) -> tuple[Trainer, Evaluator]:
    """The data, the method and the trainer (and the checkpoint's state in them), in memory: nothing is written."""
    logger = logger if logger is not None else RunLogger(None, cfg)
    start = start or Start(cfg)
    method_cls = models.method_class(cfg.method)
    request: DataRequest = method_cls.data_request(cfg)
    seed_everything(int(cfg.seed))
    device = torch.device("cuda" if device_is_cuda(cfg) else "cpu")
    raw = datasets.read_raw(cfg, request)
    for note in fill_from_data(cfg, raw):
        logger.info(note)
    data = datasets.build(cfg, request, device=device, raw=raw)
    family, settings = request.augmentation or (cfg.augmentation, {})
    where = "" if family == "none" or data.info.kind != "image" else (
        " on the device (batched)" if data.augment_on == "device" else " on the loader (per image)")
    augmentation = family + (f" {settings} (set by method {cfg.method})" if request.augmentation else "")
    logger.info(f"data: {cfg.dataset} - {data.description} ({len(data.eval)} samples, {data.num_classes} classes; "
                f"augmentation {augmentation}{where})")
    torch.manual_seed(int(cfg.seed))
    method = method_cls(cfg, data.info)
    trainer = Trainer(cfg, data, method, logger, extra_streams=request.extra_streams)
    if start.state is not None:
        trainer.load_state_dict(start.state, weights_only=bool(cfg.eval_only))
        if cfg.eval_only:   # an evaluation records the epoch and step of the checkpoint it evaluates
            trainer.epoch, trainer.step = int(start.state.get("epoch", 0)), int(start.state.get("step", 0))
    divclust = trainer.divclust
    evaluator = Evaluator(trainer.method, trainer.ctx, cfg, None, logger, plots=bool(cfg.plots),
                          diversity_target=divclust.target_state if divclust.active else None)
    return trainer, evaluator


def fill_from_data(cfg: Config, raw) -> list[str]:
    """Set `image_size` and `num_clusters` left null (main_config's defaults) from the data: the images' side and
    the number of classes; ConfigError when the data cannot tell. Returns what was set, for the log."""
    notes = []
    if raw.kind == "image" and cfg.image_size is None:
        height, width = int(raw.data.shape[1]), int(raw.data.shape[2])
        if height != width:
            raise ConfigError(f"image_size is not set and the {cfg.dataset} images are {height}x{width}: set "
                              f"--image_size N (the network's square input; e.g. {min(height, width)}).")
        cfg.image_size = height
        notes.append(f"image_size {height}: the images' own size (set --image_size to change it)")
    if cfg.num_clusters is None:
        classes = raw.num_classes
        if classes < 2:
            raise ConfigError(f"num_clusters is not set and {cfg.dataset} has no labels to count its classes: set "
                              f"--num_clusters K.")
        cfg.num_clusters = classes
        notes.append(f"num_clusters {classes}: the number of classes of the data (set --num_clusters to change it)")
    return notes


def start_views(cfg: Config) -> int:
    return int(models.method_class(cfg.method).data_request(cfg).views)


def device_is_cuda(cfg: Config) -> bool:
    return cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
