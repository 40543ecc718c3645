"""RunContext: everything a method's hooks may use of the run, and nothing else of the trainer.

The trainer builds one context per run and passes it to every hook (`on_train_start`, `on_epoch_start`,
`on_epoch_end`, `after_optimizer_step`) and to `batch_sampler`; the evaluation uses the same `embed`. Tests and
scripts build their own with `RunContext(method, data, ...)`.
"""
from __future__ import annotations

from contextlib import nullcontext
from typing import Any, Callable

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset

from engine import distributed as dist_utils
from engine.seeding import derive_seed


class _ConsoleLog:
    """The stand-in logger of a context built without one: lines to stdout, metrics dropped."""

    def info(self, message: str, color: str | None = None) -> None:
        print(message)

    def warning(self, message: str) -> None:
        print(f"WARNING: {message}")

    def log_metrics(self, metrics: dict, *, step: int, epoch: int | None = None, jsonl: bool = True) -> None:
        pass


class RunContext:
    """What a method may use while it trains.

    Attributes, kept current by the trainer:
      method           the method itself (embed switches it to eval mode and back)
      data             the DataBundle: `data.eval` (one deterministic view per sample), `data.eval_view`, `data.info`
      device           the training device
      seed             the run's seed (derive a stream's seed with `seed_for`)
      epochs           epochs of the whole run
      epoch            0-based index of the epoch in progress (in on_epoch_end: of the epoch that just ended)
      step             optimizer steps done so far (global, all epochs)
      steps_per_epoch  optimizer steps of one epoch (0 until the loader is built)
      eval_batch_size  batch size of `embed`
      autocast         the precision scope: `with ctx.autocast():` around forward passes outside the training step
    """

    def __init__(self, method: nn.Module, data, *, device: torch.device | str = "cpu", log=None, seed: int = 0,
                 epochs: int = 1, eval_batch_size: int = 512, autocast: Callable[[], Any] = nullcontext):
        self.method, self.data = method, data
        self.device = torch.device(device)
        self._log = log if log is not None else _ConsoleLog()
        self.seed, self.epochs, self.eval_batch_size = int(seed), int(epochs), int(eval_batch_size)
        self.autocast = autocast
        self.epoch, self.step, self.steps_per_epoch = 0, 0, 0

    # ----- distributed ------------------------------------------------------------------------------------------
    @property
    def rank(self) -> int:
        return dist_utils.rank()

    @property
    def world_size(self) -> int:
        return dist_utils.world_size()

    @property
    def is_main_process(self) -> bool:
        return dist_utils.is_main_process()

    # ----- logging ----------------------------------------------------------------------------------------------
    def info(self, message: str) -> None:
        self._log.info(message)

    def warning(self, message: str) -> None:
        self._log.warning(message)

    def log_metrics(self, metrics: dict[str, Any], *, epoch: int | None = None) -> None:
        """Scalars to metrics.jsonl and wandb at the current step (`epoch`: the epoch count to record; default
        the epochs completed so far)."""
        self._log.log_metrics(metrics, step=self.step, epoch=self.epoch if epoch is None else epoch)

    # ----- seeds and labels -------------------------------------------------------------------------------------
    def seed_for(self, purpose: str, counter: int = 0) -> int:
        """The seed of random stream `purpose` at `counter` (engine.seeding.derive_seed)."""
        return derive_seed(self.seed, purpose, counter)

    def train_labels(self) -> Tensor:
        """Ground-truth labels of the training set, for explicitly supervised stages (`reads_labels = True`)."""
        if not getattr(self.method, "reads_labels", False):
            raise RuntimeError(f"{type(self.method).__name__} is unsupervised (reads_labels is False): it may not "
                               f"read the training labels")
        from datasets import dataset_labels

        return dataset_labels(self.data.train)

    # ----- one pass over a dataset --------------------------------------------------------------------------------
    @torch.no_grad()
    def embed(self, dataset: Dataset, fn: Callable[[Tensor], Tensor | dict[str, Tensor]], *,
              batch_size: int | None = None, ranks: str = "gather", mode: str = "eval",
              augment_seed: int | None = None) -> Tensor | dict[str, Tensor]:
        """`fn(x)` over every sample of `dataset` (x: its evaluation view on the device, batches of
        `batch_size` (default eval_batch_size) in dataset order), with the method in eval mode (`mode="train"`:
        train mode, e.g. BatchNorm on batch statistics) under the precision scope, without gradients. With
        `augment_seed` (and `dataset` = `data.train`), fn gets the list of the training views of each batch
        instead, augmented with a generator seeded with it.

        fn returns (B, ...) tensors, or a dict of them; the rows are concatenated in dataset order (a method with
        `embeds_in_mixed_batches` is visited in a fixed seeded shuffled order, and its per-sample rows are put
        back in dataset order). Under DDP every
        rank must call it (rank 0's buffers, e.g. BatchNorm statistics, are used on every rank) and `ranks` says
        who embeds what: "gather" (each rank a contiguous shard, every rank gets all rows), "shard" (this rank's
        rows only; `shard_range(len(dataset))` gives their positions) or "none" (every rank embeds everything
        itself, in the same batches as one process). The run's global random stream is not touched.
        """
        if ranks not in ("gather", "shard", "none"):
            raise ValueError(f"embed: ranks must be gather, shard or none, not {ranks!r}")
        n = len(dataset)
        if ranks != "none" and n < self.world_size:
            raise RuntimeError(f"embed: {n} samples cannot be split over {self.world_size} processes")
        order = None
        if getattr(self.method, "embeds_in_mixed_batches", False):
            if ranks == "shard":
                raise ValueError("embed: ranks='shard' returns rows by position, which a shuffled pass cannot keep")
            order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed_for("embed_order")))
            dataset = Subset(dataset, order.tolist())
        start, stop = self.shard_range(n) if ranks != "none" else (0, n)
        part = dataset if (start, stop) == (0, n) else Subset(dataset, range(start, stop))
        loader = DataLoader(part, batch_size=int(batch_size or self.eval_batch_size), shuffle=False, num_workers=0,
                            generator=torch.Generator())
        dist_utils.broadcast_buffers(self.method)
        was_training = self.method.training
        self.method.train(mode == "train")
        chunks: list = []
        generator = torch.Generator().manual_seed(int(augment_seed)) if augment_seed is not None else None
        try:
            for batch in loader:
                x = (self.data.eval_view(batch, self.device) if generator is None else
                     self.data.train_views(batch, self.device, generator))
                with self.autocast():
                    chunks.append(fn(x))
        finally:
            self.method.train(was_training)
        rows = _concat(chunks)
        if ranks == "gather" and self.world_size > 1:
            rows = ({k: dist_utils.gather(v) for k, v in rows.items()} if isinstance(rows, dict)
                    else dist_utils.gather(rows))
        return rows if order is None or rows is None else _in_dataset_order(rows, order)

    def shard_range(self, n: int) -> tuple[int, int]:
        """[start, stop) of the contiguous shard of n samples that this rank embeds."""
        rank, world = self.rank, self.world_size
        return n * rank // world, n * (rank + 1) // world


def _in_dataset_order(rows: Tensor | dict[str, Tensor], order: Tensor) -> Tensor | dict[str, Tensor]:
    """Per-sample rows embedded in the order `order` (row i is sample order[i]) put back in dataset order; rows
    of another count (one per batch, e.g. summed losses) are left in pass order."""
    if isinstance(rows, dict):
        return {k: _in_dataset_order(v, order) for k, v in rows.items()}
    if rows.shape[0] != order.numel():
        return rows
    out = torch.empty_like(rows)
    out[order.to(rows.device)] = rows
    return out


def _concat(chunks: list) -> Tensor | dict[str, Tensor] | None:
    if not chunks:
        return None
    if isinstance(chunks[0], dict):
        return {k: torch.cat([c[k] for c in chunks]) for k in chunks[0]}
    return torch.cat(chunks)
