"""The one training loop: one DataLoader, one optimizer, one LR scheduler, devices and precision, DDP, DivClust,
checkpoints. It knows a method only through models.base.ClusteringMethod and talks to it through the hooks, each
given the run's RunContext; what the method needs of the loop it declares (its batch sampler, extra data streams,
learning-rate curve, backbones).

The data flow of one step:
batch -> augmented views (device) -> method.training_step -> + DivClust loss -> backward -> optimizer step ->
scheduler step -> method.after_optimizer_step -> logs (reduced on device, read back every `log_every` steps).

Fast paths (README "Fast training"):
- precision: with `amp` on CUDA, the method's backbone network(s) (`backbone_names`) run under autocast
  (`amp_dtype`: bf16, or fp16 with a gradient scaler) and return fp32; projectors, heads, softmax, losses, entropies and mutual information run in fp32. (Autocast around
  the whole step would also run the losses' matmuls in bf16: CC's similarities, IIC's joint, PICA's PUI.)
  A method that declares no backbone gets autocast around its whole training step.
- layout: `channels_last` (auto: on for CUDA) converts the method's 4-D weights and every image batch;
- `compile`: torch.compile of the backbone module(s), opt-in; a compiler failure stops the run with CompileFailed;
- no hidden syncs: a step makes no host read; every `log_every` steps one read brings back the running means of
  the loss terms and the first non-finite step (tests/test_fast_training.py counts them).

Evaluation is not the trainer's: `fit(evaluate)` calls the function it is given (engine/evaluate.py's Evaluator)
at the evaluation epochs, and keeps `best.pt` by the metric that function returns.
"""
from __future__ import annotations

import math
import os
import time
import types
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Callable

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from datasets.samplers import ShuffledBatches
from models.context import RunContext

from . import checkpoint as ckpt
from . import distributed as dist_utils
from .config import Config, ConfigError
from .divclust import DivClust
from .seeding import derive_seed

Evaluate = Callable[..., "tuple[dict, dict[str, float]]"]


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the message names the step and the loss terms."""


class CompileFailed(ConfigError):
    """`--compile true` could not compile the backbone (main.py reports it as a configuration error)."""


# ----- precision, memory layout, compilation ---------------------------------------------------------------------
#: torch.compile backend of `--compile true` (tests swap in a cheaper one).
COMPILE_BACKEND = "inductor"


def _autocast_forward(self, *args, **kwargs):
    """Forward of a backbone under autocast; a floating-point result is returned in fp32, so the projectors, heads
    and losses after it compute in fp32."""
    with torch.autocast(self._autocast_device_type, dtype=self._autocast_dtype):
        out = type(self).forward(self, *args, **kwargs)
    return out.float() if torch.is_tensor(out) and out.is_floating_point() else out


def autocast_backbones(modules: list[tuple[str, torch.nn.Module]], device_type: str,
                       dtype: torch.dtype = torch.bfloat16) -> None:
    """Run each module's forward under autocast to `dtype` on `device_type` (an instance attribute bound to the
    module, so state_dict keys, deepcopy and torch.compile are unaffected)."""
    for _, module in modules:
        if "forward" not in module.__dict__:
            module._autocast_device_type, module._autocast_dtype = device_type, dtype
            module.forward = types.MethodType(_autocast_forward, module)


def resolve_channels_last(setting, device: torch.device) -> bool:
    """`channels_last`: auto (on for CUDA, off on the CPU), or true / false."""
    return device.type == "cuda" if setting == "auto" else bool(setting)


def _is_compile_error(err: BaseException) -> bool:
    from torch._dynamo.exc import TorchDynamoException

    module = type(err).__module__ or ""
    return isinstance(err, TorchDynamoException) or module.startswith(("torch._dynamo", "torch._inductor"))


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but no CUDA device is visible; use --device cpu or auto.")
    if name == "cuda" and dist_utils.is_distributed():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device(name)


def config_lr_factor(cfg: Config, step: int, steps_per_epoch: int) -> float:
    """The config's learning-rate curve at step `step` (0-based): linear warm-up over `warmup_epochs`, then
    constant, cosine to 0 at the end of `epochs`, or step decay (x `lr_gamma` at each of `lr_milestones`)."""
    total = max(1, cfg.epochs * steps_per_epoch)
    warm = cfg.warmup_epochs * steps_per_epoch
    if step < warm:
        return (step + 1) / warm
    if cfg.lr_schedule == "constant":
        return 1.0
    if cfg.lr_schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))
    epoch = step // max(1, steps_per_epoch)
    return float(cfg.lr_gamma) ** sum(1 for m in cfg.lr_milestones if epoch >= int(m))


class Trainer:
    def __init__(self, cfg: Config, data, method, logger, *, checkpoint_dir: Path | None = None,
                 extra_streams: tuple = ()):
        self.cfg, self.data, self.method, self.log = cfg, data, method, logger
        self.checkpoint_dir = checkpoint_dir
        self.device = resolve_device(cfg.device)
        self.rank, self.world = dist_utils.rank(), dist_utils.world_size()
        if cfg.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
        elif self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        method.to(self.device)
        if method.reads_labels:
            self.log.warning(f"method {cfg.method} is a SUPERVISED stage: it reads the ground-truth labels of "
                             f"{cfg.dataset} during training.")
        self.channels_last = resolve_channels_last(cfg.channels_last, self.device) and data.info.kind == "image"
        if self.channels_last:
            method.to(memory_format=torch.channels_last)
            data.memory_format = torch.channels_last
        if cfg.sync_bn and dist_utils.is_distributed():
            self.method = method = torch.nn.SyncBatchNorm.convert_sync_batchnorm(method)
        self._setup_precision_and_compile()
        self.model = method
        if dist_utils.is_distributed():
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = DistributedDataParallel(method, device_ids=ids)
        n_params = sum(p.numel() for p in method.parameters())
        self.log.info(f"method: {cfg.method} ({cfg.backbone}, {n_params / 1e6:.2f}M parameters, "
                      f"{cfg.clusterings} clustering(s) x {cfg.num_clusters} clusters) on {self.device}"
                      + (f", {self.world} processes" if self.world > 1 else ""))

        self.ctx = RunContext(method, data, device=self.device, log=logger, seed=int(cfg.seed), epochs=int(cfg.epochs),
                              eval_batch_size=int(cfg.eval_batch_size), autocast=self.autocast)
        sampler = method.batch_sampler(self.ctx) or ShuffledBatches(
            len(data.train), batch_size=int(cfg.batch_size), rank=self.rank, world_size=self.world, seed=int(cfg.seed))
        self.streams = [(stream.name, self._loader(data.extra[stream.name], ShuffledBatches(
            len(data.extra[stream.name]), batch_size=int(stream.batch_size or cfg.batch_size), rank=self.rank,
            world_size=self.world, seed=derive_seed(int(cfg.seed), "extra_stream")))) for stream in extra_streams]
        self.streams.append((None, self._loader(data.train, sampler)))
        cap = int(cfg.steps_per_epoch or 0)
        self.stream_steps = [min(len(loader), cap) if cap else len(loader) for _, loader in self.streams]
        if any(s == 0 for s in self.stream_steps):
            raise ConfigError(f"batch_size {cfg.batch_size} leaves no full batch in an epoch of {len(data.train)} "
                              f"samples; lower --batch_size.")
        self.steps_per_epoch = sum(self.stream_steps)
        self.ctx.steps_per_epoch = self.steps_per_epoch
        self.optimizer = self._build_optimizer()
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)
        self.divclust = DivClust(cfg, self.device)
        self.aug_generator = torch.Generator()
        self.epoch, self.step = 0, 0
        self.best: dict = {"metric": cfg.best_metric, "value": None, "epoch": None}
        self.last_results: dict | None = None

    def _loader(self, dataset, batch_sampler) -> DataLoader:
        workers = int(self.cfg.num_workers)
        return DataLoader(dataset, batch_sampler=batch_sampler, num_workers=workers,
                          pin_memory=self.device.type == "cuda", persistent_workers=workers > 0)

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
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)

    def _lr_factor(self, step: int) -> float:
        """The one learning-rate curve: the method's (`lr_factor`) if it declares one, else the config's."""
        factor = self.method.lr_factor(step, self.ctx)
        return config_lr_factor(self.cfg, step, self.steps_per_epoch) if factor is None else factor

    # ----- precision and compilation ------------------------------------------------------------------------------
    def _setup_precision_and_compile(self) -> None:
        cfg = self.cfg
        self.backbones = self.method.backbone_modules()
        names = ", ".join(name for name, _ in self.backbones) or "none"
        self.amp = bool(cfg.amp) and self.device.type == "cuda"
        self.amp_dtype = torch.float16 if cfg.amp_dtype == "float16" else torch.bfloat16
        self.whole_step_autocast = False
        if self.amp:
            if self.backbones:
                autocast_backbones(self.backbones, self.device.type, self.amp_dtype)
            else:
                self.whole_step_autocast = True
                self.log.info(f"amp: method {cfg.method} declares no backbone, so {cfg.amp_dtype} autocast covers "
                              f"its whole training step (losses included)")
        # float16 needs loss scaling (the official DivClust runs: autocast + GradScaler); bfloat16 does not.
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp and self.amp_dtype == torch.float16)
        if cfg.compile:
            if not self.backbones:
                raise CompileFailed(f"--compile true compiles the method's backbone network(s), and method "
                                    f"{cfg.method} declares none; run without --compile.")
            try:
                for _, module in self.backbones:
                    module.compile(backend=COMPILE_BACKEND)
            except Exception as err:  # torch.compile refuses up front, e.g. an unsupported Python version
                raise CompileFailed(f"--compile true: torch.compile is not usable here ({type(err).__name__}: "
                                    f"{err}). Run without --compile (the default).") from err
        precision = "fp32"
        if self.amp:
            name = "bf16" if self.amp_dtype == torch.bfloat16 else "fp16 (with a gradient scaler)"
            precision = (f"{name} autocast on the whole step" if self.whole_step_autocast
                         else f"{name} autocast on the backbone(s), the rest in fp32")
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
        carry their own bf16 autocast, so this is a no-op except for methods without one."""
        if self.whole_step_autocast:
            return torch.autocast(self.device.type, dtype=self.amp_dtype)
        return nullcontext()

    # ----- checkpoints -----------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "format": ckpt.FORMAT_VERSION,
            "model": self.method.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "divclust": self.divclust.state_dict(),
            "epoch": self.epoch,
            "step": self.step,
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
            if state.get("scaler"):
                self.scaler.load_state_dict(state["scaler"])
            self.divclust.load_state_dict(state["divclust"])
            self.epoch, self.step = int(state["epoch"]), int(state["step"])
            self.best = dict(state["best"])
            ckpt.set_rng_state(state["rng"])
        except (KeyError, ValueError, TypeError) as err:
            raise ckpt.CheckpointError(f"the checkpoint's training state does not fit this run ({err}).") from None

    def save_checkpoint(self, name: str) -> None:
        if self.checkpoint_dir is None or not dist_utils.is_main_process():
            return
        ckpt.save_atomic(self.state_dict(), self.checkpoint_dir / name)

    # ----- training --------------------------------------------------------------------------------------------
    def _method_batch(self, batch: dict, stream: str | None = None) -> dict:
        """The method's inputs for a loader batch: augmented views (in the run's memory layout) and indices, on the
        training device (and the extra stream's name)."""
        views = self.data.train_views(batch, self.device, self.aug_generator, rank=self.rank, world_size=self.world)
        inputs = {"views": views, "index": batch["index"].to(self.device, non_blocking=True)}
        if stream is not None:
            inputs["stream"] = stream
        # Ground-truth labels reach only methods that declare themselves supervised (reads_labels = True).
        if self.method.reads_labels:
            inputs["label"] = batch["label"].to(self.device, non_blocking=True)
        return inputs

    def train_step(self, inputs: dict) -> dict[str, torch.Tensor]:
        """One optimisation step on the method's inputs (`_method_batch`); advances `self.step`. Returns the step's
        loss terms as detached fp32 0-d tensors on the device: nothing is read back to the host here."""
        cfg, method = self.cfg, self.method
        with self._compile_errors():
            with (torch.autocast(self.device.type, dtype=self.amp_dtype) if self.whole_step_autocast
                  else nullcontext()):
                out = self.model(inputs, self.step)
            loss = out["loss"].float()
            terms = {k: v.detach().float() for k, v in out.items()
                     if k not in ("loss", "assignments") and torch.is_tensor(v) and v.dim() == 0}
            if self.divclust.active and "assignments" in out:
                div_loss, div_logs = self.divclust.step(out["assignments"], self.step)
                loss = loss + div_loss
                terms.update(div_logs)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
        if cfg.grad_clip:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(method.parameters(), cfg.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        terms["loss"] = loss.detach()
        self.step += 1
        self.ctx.step = self.step
        method.after_optimizer_step(self.ctx)
        return terms

    def train_epoch(self) -> float:
        cfg, method = self.cfg, self.method
        for _, loader in self.streams:
            loader.batch_sampler.set_epoch(self.epoch)
        self.aug_generator.manual_seed(derive_seed(int(cfg.seed), "augment", self.epoch))
        method.train()
        self.ctx.epoch, self.ctx.step = self.epoch, self.step
        method.on_epoch_start(self.ctx)
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
                       dynamic_ncols=True, unit="step", disable=None)   # None: off when stderr is no terminal
        start = time.perf_counter()
        for (stream, loader), limit in zip(self.streams, self.stream_steps):
            prefix = f"{stream}_" if stream else ""
            for i, batch in enumerate(loader):
                if i >= limit:
                    break
                step = self.step
                terms = {prefix + k: v for k, v in self.train_step(self._method_batch(batch, stream)).items()}
                first_bad.masked_fill_(~torch.isfinite(terms[prefix + "loss"]) & (first_bad < 0), step)
                for k, v in terms.items():
                    sums[k] = sums[k] + v if k in sums else v
                    counts[k] = counts.get(k, 0) + 1
                count += 1
                if count % cfg.log_every == 0 or count == self.steps_per_epoch:
                    means, read_at = self._read_logs(sums, counts, first_bad, terms), count
                    rate = count * cfg.batch_size / (time.perf_counter() - start)
                    if bar is not None:
                        bar.set_postfix(loss=f"{means.get('loss', means.get(prefix + 'loss')):.4f}", img_s=f"{rate:.0f}")
                    self.log.log_metrics({**{f"train/{k}": v for k, v in means.items()},
                                          "train/lr": self.optimizer.param_groups[0]["lr"],
                                          "train/images_per_s": rate}, step=self.step, epoch=self.epoch, jsonl=False)
                if bar is not None:
                    bar.update(1)
        if bar is not None:
            bar.close()
        if read_at != count:    # a loader ended before its step count: read the last steps' terms
            means = self._read_logs(sums, counts, first_bad, terms)
        seconds = time.perf_counter() - start
        method.on_epoch_end(self.ctx)
        self.epoch += 1
        self.ctx.epoch = self.epoch
        rate = count * cfg.batch_size / seconds
        summary = " ".join(f"{k}={v:.4f}" for k, v in means.items())
        self.log.info(f"epoch {self.epoch}/{cfg.epochs} {summary} ({seconds:.1f}s, {rate:.0f} img/s)")
        self.log.log_metrics({**{f"train/{k}": v for k, v in means.items()}, "train/epoch_seconds": seconds,
                              "train/lr": self.optimizer.param_groups[0]["lr"], "train/images_per_s": rate},
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
            kept = (f"the last good checkpoint (end of epoch {self.epoch}) was kept" if self.epoch > 0
                    and self.checkpoint_dir is not None else "no checkpoint was written yet (it diverged in epoch 1)")
            raise TrainingDiverged(
                f"the loss became NaN/inf at step {bad_step} (epoch {self.epoch + 1}); last loss terms: {described}. "
                f"Training stopped; {kept}. Try a lower --lr, --grad_clip 1.0, or --amp false."
            )
        return dict(zip(keys, values[1:1 + len(keys)]))

    def _is_better(self, value: float) -> bool:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return False
        if self.best["value"] is None:
            return True
        lower_is_better = self.cfg.best_metric == "train_loss"
        return value < self.best["value"] if lower_is_better else value > self.best["value"]

    def fit(self, evaluate: Evaluate) -> dict:
        """Train to `epochs`, evaluating with `evaluate(epoch=, step=, final=) -> (results, flat metrics)` every
        `eval_every` epochs and at the end; checkpoints last.pt (and best.pt) after every epoch."""
        cfg = self.cfg
        self.ctx.epoch, self.ctx.step = self.epoch, self.step
        self.method.on_train_start(self.ctx)
        start, cpu_start = time.perf_counter(), time.process_time()
        while self.epoch < cfg.epochs:
            epoch_loss = self.train_epoch()
            last = self.epoch == cfg.epochs
            flat = None
            if last or self.epoch % cfg.eval_every == 0:
                self.last_results, flat = evaluate(epoch=self.epoch, step=self.step, final=last)
            value = epoch_loss if cfg.best_metric == "train_loss" else (flat or {}).get(cfg.best_metric)
            if self._is_better(value):
                self.best = {"metric": cfg.best_metric, "value": value, "epoch": self.epoch}
                self.save_checkpoint("best.pt")
            self.save_checkpoint("last.pt")
        if self.last_results is None:
            self.last_results, _ = evaluate(epoch=self.epoch, step=self.step, final=True)
        final = dict(self.last_results)
        final.update({"epochs": self.epoch, "step": self.step, "seconds": time.perf_counter() - start,
                      "cpu_seconds": time.process_time() - cpu_start})   # this process, all its threads
        return final
