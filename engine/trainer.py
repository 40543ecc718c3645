"""The one trainer: loop, optimizer and schedule, devices and precision, DDP, DivClust, checkpoints, evaluation.

It knows methods only through models.base.ClusteringMethod. The data flow of one step:
batch -> augmented views (device) -> method.training_step -> + DivClust loss -> backward -> optimizer step ->
method.after_optimizer_step -> logs (reduced on device, read back every `log_every` steps).

Fast paths (ISSUE 9; README "Fast training"):
- precision: with `amp` on CUDA, the method's backbone network(s) (`backbone_modules`) run under bf16 autocast and
  return fp32; projectors, heads, softmax, losses, entropies and mutual information run in fp32. (Autocast around
  the whole step would also run the losses' matmuls in bf16: CC's similarities, IIC's joint, PICA's PUI.)
  A method without a backbone-named module falls back to autocast around its whole training step.
- layout: `channels_last` (auto: on for CUDA) converts the method's 4-D weights and every image batch;
- `compile`: torch.compile of the backbone module(s), opt-in; a compiler failure stops the run with CompileFailed;
- no hidden syncs: a step makes no host read; every `log_every` steps one read brings back the running means of
  the loss terms and the first non-finite step (tests/test_fast_training.py counts them).
"""
from __future__ import annotations

import json
import math
import os
import time
import types
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

import datasets
import models

from . import checkpoint as ckpt
from . import distributed as dist_utils
from .config import Config, ConfigError, dump
from .divclust import DivClust
from .evaluate import cluster_and_score, extract, flat_metrics, format_table, save_predictions
from .logger import RunLogger


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the message names the step and the loss terms."""


class CompileFailed(ConfigError):
    """`--compile true` could not compile the backbone (main.py reports it as a configuration error)."""


# ----- precision, memory layout, compilation ---------------------------------------------------------------------
#: torch.compile backend of `--compile true` (tests swap in a cheaper one).
COMPILE_BACKEND = "inductor"


def backbone_modules(method: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """The method's image/feature networks: modules named `backbone`, `*_backbone` (the ProPos family's online and
    target networks) or `trunk` (L2C), outermost first. They run under bf16 autocast on CUDA and are compiled by
    `--compile true`; everything else of the method (projectors, heads, losses) stays in fp32."""
    found: list[tuple[str, torch.nn.Module]] = []
    for name, module in method.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        if (leaf in ("backbone", "trunk") or leaf.endswith("_backbone")) and \
                not any(name.startswith(outer + ".") for outer, _ in found):
            found.append((name, module))
    return found


def _bf16_forward(self, *args, **kwargs):
    """Forward of a backbone under bf16 autocast; a floating-point result is returned in fp32, so the projectors,
    heads and losses after it compute in fp32."""
    with torch.autocast(self._autocast_device_type, dtype=torch.bfloat16):
        out = type(self).forward(self, *args, **kwargs)
    return out.float() if torch.is_tensor(out) and out.is_floating_point() else out


def autocast_backbones(modules: list[tuple[str, torch.nn.Module]], device_type: str) -> None:
    """Run each module's forward under bf16 autocast on `device_type` (an instance attribute bound to the module, so
    state_dict keys, deepcopy and torch.compile are unaffected)."""
    for _, module in modules:
        if "forward" not in module.__dict__:
            module._autocast_device_type = device_type
            module.forward = types.MethodType(_bf16_forward, module)


def resolve_channels_last(setting, device: torch.device) -> bool:
    """`channels_last`: auto (on for CUDA, off on the CPU), or true / false (the config reads YAML booleans)."""
    if setting == "auto":
        return device.type == "cuda"
    if isinstance(setting, bool):
        return setting
    raise ConfigError(f"channels_last must be auto, true or false, not {setting!r}.")


def _is_compile_error(err: BaseException) -> bool:
    from torch._dynamo.exc import TorchDynamoException

    module = type(err).__module__ or ""
    return isinstance(err, TorchDynamoException) or module.startswith(("torch._dynamo", "torch._inductor"))


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but no CUDA device is visible; use --device cpu or auto.")
    if name not in ("cpu", "cuda"):
        raise ConfigError(f"--device must be auto, cpu or cuda, not {name!r}.")
    if name == "cuda" and dist_utils.is_distributed():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device(name)


def seed_everything(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def _epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch * 7_919 + 17) % (2 ** 63)


class Trainer:
    def __init__(self, cfg: Config, run_dir: Path | None, logger: RunLogger):
        self.cfg, self.run_dir, self.log = cfg, run_dir, logger
        self.device = resolve_device(cfg.device)
        self.rank, self.world = dist_utils.rank(), dist_utils.world_size()
        if cfg.batch_size % self.world:
            raise ConfigError(f"batch_size {cfg.batch_size} must be divisible by the number of processes ({self.world}).")
        if cfg.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
        elif self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        seed_everything(int(cfg.seed))

        method_cls = models.method_class(cfg.method)
        self.data = datasets.build(cfg, views=method_cls.views_for(cfg), device=self.device)
        where = "" if cfg.augmentation == "none" or self.data.info.kind != "image" else (
            " on the device (batched)" if self.data.augment_on == "device" else " on the loader (per image)")
        self.log.info(f"data: {cfg.dataset} - {self.data.description} ({len(self.data.eval)} samples, "
                      f"{self.data.num_classes} classes; augmentation {cfg.augmentation}{where})")
        torch.manual_seed(int(cfg.seed))
        self.method = method_cls(cfg, self.data.info).to(self.device)
        if self.method.reads_labels:
            self.log.warning(f"method {cfg.method} is a SUPERVISED stage: it reads the ground-truth labels of "
                             f"{cfg.dataset} during training.")
        self.channels_last = resolve_channels_last(cfg.channels_last, self.device) and self.data.info.kind == "image"
        if self.channels_last:
            self.method.to(memory_format=torch.channels_last)
            self.data.memory_format = torch.channels_last
        if cfg.sync_bn and dist_utils.is_distributed():
            self.method = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.method)
        self._setup_precision_and_compile()
        self.model = self.method
        if dist_utils.is_distributed():
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = DistributedDataParallel(self.method, device_ids=ids)
        n_params = sum(p.numel() for p in self.method.parameters())
        self.log.info(f"method: {cfg.method} ({cfg.backbone}, {n_params / 1e6:.2f}M parameters, "
                      f"{cfg.clusterings} clustering(s) x {cfg.num_clusters} clusters) on {self.device}"
                      + (f", {self.world} processes" if self.world > 1 else ""))

        self.sampler = DistributedSampler(self.data.train, num_replicas=self.world, rank=self.rank, shuffle=True,
                                          seed=int(cfg.seed), drop_last=True)
        local_batch = cfg.batch_size // self.world
        if len(self.sampler) < local_batch:
            raise ConfigError(f"batch_size {cfg.batch_size} is larger than the training set ({len(self.data.train)}).")
        self.loader = DataLoader(self.data.train, batch_size=local_batch, sampler=self.sampler, drop_last=True,
                                 num_workers=int(cfg.num_workers), pin_memory=self.device.type == "cuda",
                                 persistent_workers=int(cfg.num_workers) > 0)
        self.steps_per_epoch = len(self.loader)
        if cfg.steps_per_epoch:
            self.steps_per_epoch = min(self.steps_per_epoch, int(cfg.steps_per_epoch))
        self.optimizer = self._build_optimizer()
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)
        self.divclust = DivClust(cfg, self.device)
        self.aug_generator = torch.Generator()
        self.epoch, self.step = 0, 0
        self.best: dict = {"metric": cfg.best_metric, "value": None, "epoch": None}
        self.last_results: dict | None = None
        self.epoch_loss = float("nan")

    # ----- optimisation ----------------------------------------------------------------------------------------
    def _build_optimizer(self) -> torch.optim.Optimizer:
        cfg = self.cfg
        groups = []
        for group in self.method.param_groups():
            group = dict(group)
            group["lr"] = cfg.lr * group.pop("lr_mult", 1.0)
            group.setdefault("weight_decay", cfg.weight_decay)
            groups.append(group)
        if cfg.optimizer == "adam":
            return torch.optim.Adam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
        if cfg.optimizer == "adamw":
            return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
        if cfg.optimizer == "sgd":
            return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        raise ConfigError(f"optimizer must be adam, adamw or sgd, not {cfg.optimizer!r}.")

    def _lr_factor(self, step: int) -> float:
        cfg = self.cfg
        total = max(1, cfg.epochs * self.steps_per_epoch)
        warm = cfg.warmup_epochs * self.steps_per_epoch
        if step < warm:
            return (step + 1) / warm
        if cfg.lr_schedule == "constant":
            return 1.0
        if cfg.lr_schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))
        raise ConfigError(f"lr_schedule must be constant or cosine, not {cfg.lr_schedule!r}.")

    # ----- precision and compilation ------------------------------------------------------------------------------
    def _setup_precision_and_compile(self) -> None:
        cfg = self.cfg
        self.backbones = backbone_modules(self.method)
        names = ", ".join(name for name, _ in self.backbones) or "none"
        self.amp = bool(cfg.amp) and self.device.type == "cuda"
        self.whole_step_autocast = False
        if self.amp:
            if self.backbones:
                autocast_backbones(self.backbones, self.device.type)
            else:
                self.whole_step_autocast = True
                self.log.info(f"amp: method {cfg.method} has no module named backbone/trunk, so bf16 autocast "
                              f"covers its whole training step (losses included)")
        if cfg.compile:
            if not self.backbones:
                raise CompileFailed(f"--compile true compiles the method's backbone network(s), and method "
                                    f"{cfg.method} has none (no module named backbone, *_backbone or trunk); run "
                                    f"without --compile.")
            try:
                for _, module in self.backbones:
                    module.compile(backend=COMPILE_BACKEND)
            except Exception as err:  # torch.compile refuses up front, e.g. an unsupported Python version
                raise CompileFailed(f"--compile true: torch.compile is not usable here ({type(err).__name__}: "
                                    f"{err}). Run without --compile (the default).") from err
        precision = "fp32"
        if self.amp:
            precision = ("bf16 autocast on the whole step" if self.whole_step_autocast
                         else "bf16 autocast on the backbone(s), the rest in fp32")
        backend = getattr(COMPILE_BACKEND, "__name__", COMPILE_BACKEND)
        self.log.info(f"precision and layout: backbone(s) {names}; {precision}; channels-last "
                      f"{'on' if self.channels_last else 'off'}; torch.compile "
                      f"{f'on ({backend})' if cfg.compile else 'off'}")

    @contextmanager
    def _compile_errors(self):
        """Turn a failure of the compiled backbone (the compilation happens at its first call) into CompileFailed."""
        try:
            yield
        except Exception as err:
            if self.cfg.compile and _is_compile_error(err):
                cause = getattr(err, "inner_exception", None) or err.__cause__ or err
                lines = str(cause).strip().splitlines()
                raise CompileFailed(
                    f"--compile true: torch.compile of the backbone failed ({type(err).__name__}: "
                    f"{type(cause).__name__}: {lines[0] if lines else ''}). Run without --compile (the default); the "
                    f"CPU backend needs a working C++ compiler, CUDA needs Triton.") from err
            raise

    def autocast(self):
        """Context for the forward passes outside the training step (evaluation, k-means refreshes). The backbones
        carry their own bf16 autocast (see backbone_modules), so this is a no-op except for methods without one."""
        if self.whole_step_autocast:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return nullcontext()

    # ----- checkpoints -----------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "format": ckpt.FORMAT_VERSION,
            "model": self.method.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "divclust": self.divclust.state_dict(),
            "epoch": self.epoch,
            "step": self.step,
            "sampler_epoch": self.epoch,
            "rng": ckpt.rng_state(),
            "best": dict(self.best),
            "config": self.cfg.to_dict(),
        }

    def load_state_dict(self, state: dict, *, weights_only: bool = False) -> None:
        ckpt.load_model_state(self.method, state["model"], log=self.log.info)
        if weights_only:
            return
        try:
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.divclust.load_state_dict(state["divclust"])
            self.epoch, self.step = int(state["epoch"]), int(state["step"])
            self.best = dict(state["best"])
            ckpt.set_rng_state(state["rng"])
        except (KeyError, ValueError, TypeError) as err:
            raise ckpt.CheckpointError(f"the checkpoint's training state does not fit this run ({err}).") from None

    def save_checkpoint(self, name: str) -> None:
        if self.run_dir is None or not dist_utils.is_main_process():
            return
        ckpt.save_atomic(self.state_dict(), self.run_dir / "checkpoints" / name)

    # ----- evaluation --------------------------------------------------------------------------------------------
    def evaluate(self) -> dict:
        start = time.perf_counter()
        extracted = extract(self.method, self.data, batch_size=int(self.cfg.eval_batch_size), device=self.device,
                            autocast=self.autocast)
        results, predictions = (cluster_and_score(extracted, self.cfg, self.device,
                                                  selected_head=self.method.select_head(),
                                                  kmeans_metric=self.method.kmeans_metric)
                                if dist_utils.is_main_process() else (None, None))
        results = dist_utils.broadcast_object(results)
        results["timing"]["eval_s"] = time.perf_counter() - start
        if dist_utils.is_main_process() and self.run_dir is not None:
            save_predictions(predictions, self.run_dir / "predictions.npz")
        self.log.info(f"evaluation after epoch {self.epoch} ({results['timing']['eval_s']:.1f}s):\n"
                      + format_table(results), "cyan")
        self.log.log_metrics({f"eval/{k}": v for k, v in flat_metrics(results).items()}, step=self.step,
                             epoch=self.epoch)
        if dist_utils.is_main_process() and self.run_dir is not None:  # figures never raise (engine/plots.py)
            from .plots import write_evaluation_plots

            write_evaluation_plots(self.run_dir, results, predictions, self.cfg, epoch=self.epoch, step=self.step,
                                   final=bool(self.cfg.eval_only) or self.epoch >= self.cfg.epochs, logger=self.log)
        self.last_results = results
        return results

    # ----- training --------------------------------------------------------------------------------------------
    def _method_batch(self, batch: dict) -> dict:
        """The method's inputs for a loader batch: augmented views (in the run's memory layout) and indices, on the
        training device."""
        views = self.data.train_views(batch, self.device, self.aug_generator, rank=self.rank, world_size=self.world)
        inputs = {"views": views, "index": batch["index"].to(self.device, non_blocking=True)}
        # Ground-truth labels reach only methods that declare themselves supervised (reads_labels = True).
        if self.method.reads_labels:
            inputs["label"] = batch["label"].to(self.device, non_blocking=True)
        return inputs

    def train_step(self, inputs: dict) -> dict[str, torch.Tensor]:
        """One optimisation step on the method's inputs (`_method_batch`); advances `self.step`. Returns the step's
        loss terms as detached fp32 0-d tensors on the device: nothing is read back to the host here."""
        cfg, method = self.cfg, self.method
        with self._compile_errors():
            with (torch.autocast(self.device.type, dtype=torch.bfloat16) if self.whole_step_autocast
                  else nullcontext()):
                out = self.model(inputs, self.step)
            loss = out["loss"].float()
            terms = {k: v.detach().float() for k, v in out.items()
                     if k not in ("loss", "assignments") and torch.is_tensor(v) and v.dim() == 0}
            if self.divclust.active:
                div_loss, div_logs = self.divclust.step(out["assignments"], self.step)
                loss = loss + div_loss
                terms.update(div_logs)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(method.parameters(), cfg.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        method.after_optimizer_step(self.step)
        terms["loss"] = loss.detach()
        self.step += 1
        return terms

    def train_epoch(self) -> float:
        cfg, method = self.cfg, self.method
        self.sampler.set_epoch(self.epoch)
        self.aug_generator.manual_seed(_epoch_seed(int(cfg.seed), self.epoch))
        method.train()
        method.on_epoch_start(self.epoch, self)
        # Running sums of the loss terms stay on the device; `_read_logs` brings them back once per `log_every`
        # steps (and at the epoch's last step), together with the first step whose loss was not finite.
        sums: dict[str, torch.Tensor] = {}
        counts: dict[str, int] = {}   # some terms are logged only on some steps (DivClust's measured NMI)
        count, read_at, means = 0, -1, {}
        first_bad = torch.full((), -1, dtype=torch.long, device=self.device)
        terms: dict[str, torch.Tensor] = {}
        bar = None
        if dist_utils.is_main_process():
            from tqdm import tqdm

            bar = tqdm(total=self.steps_per_epoch, desc=f"epoch {self.epoch + 1}/{cfg.epochs}", leave=False,
                       dynamic_ncols=True, unit="step")
        start = time.perf_counter()
        for i, batch in enumerate(self.loader):
            if i >= self.steps_per_epoch:
                break
            step = self.step
            terms = self.train_step(self._method_batch(batch))
            first_bad.masked_fill_(~torch.isfinite(terms["loss"]) & (first_bad < 0), step)
            for k, v in terms.items():
                sums[k] = sums[k] + v if k in sums else v
                counts[k] = counts.get(k, 0) + 1
            count += 1
            if count % cfg.log_every == 0 or i + 1 == self.steps_per_epoch:
                means, read_at = self._read_logs(sums, counts, first_bad, terms), count
                rate = count * cfg.batch_size / (time.perf_counter() - start)
                if bar is not None:
                    bar.set_postfix(loss=f"{means['loss']:.4f}", img_s=f"{rate:.0f}")
                self.log.log_metrics({**{f"train/{k}": v for k, v in means.items()},
                                      "train/lr": self.optimizer.param_groups[0]["lr"], "train/images_per_s": rate},
                                     step=self.step, epoch=self.epoch, jsonl=False)
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
        if read_at != count:    # the loader ended before steps_per_epoch: read the last steps' terms
            means = self._read_logs(sums, counts, first_bad, terms)
        seconds = time.perf_counter() - start
        method.on_epoch_end(self.epoch, self)
        self.epoch += 1
        summary = " ".join(f"{k}={v:.4f}" for k, v in means.items())
        self.log.info(f"epoch {self.epoch}/{cfg.epochs} {summary} ({seconds:.1f}s, "
                      f"{count * cfg.batch_size / seconds:.0f} img/s)")
        self.log.log_metrics({**{f"train/{k}": v for k, v in means.items()}, "train/epoch_seconds": seconds},
                             step=self.step, epoch=self.epoch)
        return means["loss"]

    def _read_logs(self, sums: dict, counts: dict, first_bad: torch.Tensor, terms: dict) -> dict[str, float]:
        """The epoch's running means of the loss terms, read back in one device->host copy (with the first
        non-finite step and the last step's terms, for the error message). Raises TrainingDiverged."""
        keys, last = list(sums), list(terms)
        values = torch.stack([first_bad.double()] + [sums[k].double() / counts[k] for k in keys]
                             + [terms[k].double() for k in last]).tolist()
        bad_step = int(values[0])
        if bad_step >= 0:
            described = ", ".join(f"{k}={v:.4g}" for k, v in zip(last, values[1 + len(keys):]))
            raise TrainingDiverged(
                f"the loss became NaN/inf at step {bad_step} (epoch {self.epoch + 1}); last loss terms: {described}. "
                f"Training stopped; the last good checkpoint (end of epoch {self.epoch}) was kept. Try a lower --lr, "
                f"--grad_clip 1.0, or --amp false."
            )
        return dict(zip(keys, values[1:1 + len(keys)]))

    def _is_better(self, value: float) -> bool:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return False
        if self.best["value"] is None:
            return True
        lower_is_better = self.cfg.best_metric == "train_loss"
        return value < self.best["value"] if lower_is_better else value > self.best["value"]

    def fit(self) -> dict:
        cfg = self.cfg
        self.method.on_train_start(self)
        start = time.perf_counter()
        while self.epoch < cfg.epochs:
            epoch_loss = self.train_epoch()
            last = self.epoch == cfg.epochs
            results = self.evaluate() if (last or self.epoch % cfg.eval_every == 0) else None
            value = epoch_loss if cfg.best_metric == "train_loss" else (
                flat_metrics(results).get(cfg.best_metric) if results else None)
            if self._is_better(value):
                self.best = {"metric": cfg.best_metric, "value": value, "epoch": self.epoch}
                self.save_checkpoint("best.pt")
            self.save_checkpoint("last.pt")
        final = dict(self.last_results or self.evaluate())
        final.update({"epochs": self.epoch, "seconds": time.perf_counter() - start})
        return final


def write_results(results: dict, run_dir: Path | None) -> dict:
    """results.json in the stable shape of ARCHITECTURE.md (metric values are fractions)."""
    shaped = {
        "heads": results.get("heads") or [],
        "best_head": results.get("best_head"),
        "selected_head": results.get("selected_head"),
        "heads_mean": results.get("heads_mean"),
        "kmeans": results.get("kmeans"),
        "gmm": results.get("gmm"),
        "consensus": results.get("consensus"),
        "diversity": results.get("diversity"),
        "cluster_sizes": results.get("cluster_sizes"),
        "epochs": results.get("epochs"),
        "seconds": results.get("seconds"),
        "timing": results.get("timing"),
        "config": str(run_dir / "config.yaml") if run_dir else None,
    }
    if run_dir is not None and dist_utils.is_main_process():
        tmp = run_dir / "results.json.tmp"
        tmp.write_text(json.dumps(shaped, indent=2))
        os.replace(tmp, run_dir / "results.json")
    return shaped


def prepare_run_dir(cfg: Config) -> Path:
    """runs/<preset>/<run_name>/ (a timestamp by default). An existing run is never overwritten silently."""
    if cfg.resume:
        resume = Path(cfg.resume)
        ckpt_file = resume / "checkpoints" / "last.pt" if resume.is_dir() else resume
        if ckpt_file.parent.name == "checkpoints":
            if cfg.eval_only:  # a separate folder inside the run, so the training results stay untouched
                return ckpt_file.parent.parent / f"eval-{time.strftime('%Y%m%d-%H%M%S')}"
            return ckpt_file.parent.parent
    name = cfg.run_name or time.strftime("%Y%m%d-%H%M%S")
    run_dir = Path(cfg.output_dir) / cfg.preset / name
    if run_dir.exists() and any(run_dir.iterdir()) and not cfg.eval_only:
        raise ConfigError(f"run directory {run_dir} already holds a run. Continue it with --resume {run_dir}, or "
                          f"choose another --run_name.")
    return run_dir


def run(cfg: Config) -> dict:
    """Train (or evaluate with --eval_only) as configured; returns results.json's content."""
    device_type = "cuda" if (cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())) else "cpu"
    dist_utils.init_from_env(device_type)
    if cfg.eval_only and not cfg.resume:
        raise ConfigError("--eval_only true needs --resume PATH (the checkpoint to evaluate).")
    if cfg.clusterings > 1 or cfg.NMI_target < 1:
        DivClust.check_config(cfg)
    # Rank 0 decides (and checks that no run is overwritten); the others take its answer, so a rank that looks
    # after rank 0 created the folder does not mistake it for an earlier run.
    decision = None
    if dist_utils.is_main_process():
        try:
            decision = ("ok", str(prepare_run_dir(cfg)))
        except ConfigError as err:
            decision = ("error", str(err))
    decision = dist_utils.broadcast_object(decision)
    if decision[0] == "error":
        raise ConfigError(decision[1])
    run_dir = Path(decision[1])
    if dist_utils.is_main_process():
        run_dir.mkdir(parents=True, exist_ok=True)
        dump(cfg, run_dir / "config.yaml")
    dist_utils.barrier()
    logger = RunLogger(run_dir, cfg, use_wandb=cfg.wandb)
    try:
        logger.info(f"run directory: {run_dir}", "cyan")
        trainer = Trainer(cfg, run_dir, logger)
        if cfg.resume:
            state = ckpt.load(cfg.resume)
            trainer.load_state_dict(state, weights_only=cfg.eval_only)
            logger.info(f"resumed from {cfg.resume} (epoch {trainer.epoch}, step {trainer.step})")
        if cfg.eval_only:
            results = dict(trainer.evaluate(), epochs=trainer.epoch, seconds=0.0)
        else:
            results = trainer.fit()
        shaped = write_results(results, run_dir)
        logger.info(f"done: results in {run_dir / 'results.json'}", "green")
        return shaped
    finally:
        logger.close()
