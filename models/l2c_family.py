"""What the L2C methods (mcl, kcl, spn) share: their config section and what they ask of the data.

* `l2c.classes`: a class subset of the dataset (the source / target split, e.g. digits 0-4 to train the
  similarity network and 5-9 to cluster). It is the *definition of the dataset*, chosen once from the ground truth
  before anything is built, for the training and the evaluation set alike (datasets.DataRequest.classes); training
  steps never see the labels unless the method is a supervised stage.
* `l2c.classes_per_batch`: the official `RandSubClassSampler` (datasets.samplers.ClassBalancedBatchSampler). It
  reads labels, so only supervised stages may use it.
* `l2c.crop_scale`: RandomResizedCrop(scale) as the only training augmentation (the official Omniglot pipeline, the
  `crop` augmentation family: per image with PIL on the CPU, batched on CUDA), in place of the run's augmentation
  (which must be `none`).
"""
from __future__ import annotations

from datasets import DataRequest
from datasets.samplers import ClassBalancedBatchSampler, ShuffledBatches
from engine.config import ConfigError, Key, Section, at_least, each, one_of, positive, unit_interval_pair

TARGETS = ("labels", "spn")

SECTION = Section("l2c", "L2C family: mcl / kcl / spn (Hsu & Kira 2016; Hsu, Lv & Kira ICLR 2018; Hsu et al. "
                         "ICLR 2019)", {
    "targets": Key("labels", "mcl/kcl pairwise targets: labels (pairwise-supervised mode, READS the ground truth) or "
                             "spn (transfer: a frozen similarity network's predictions; labels never read)",
                   one_of(*TARGETS)),
    "spn_checkpoint": Key(None, "mcl/kcl with targets spn: the similarity network, a `spn` run's "
                                "checkpoints/last.pt (or its run folder)"),
    "classes": Key([], "keep only these ground-truth classes for training and evaluation (source/target class "
                       "split, e.g. [0, 1, 2, 3, 4]); [] keeps all", each(at_least(0, integer=True))),
    "kcl_margin": Key(2.0, "kcl: hinge margin on the KL divergence of dissimilar pairs", positive),
    "head_hidden": Key(0, "mcl/kcl: width of a Linear-BN-ReLU layer between the backbone and the cluster layer "
                          "(0: none; official VGG-S: 512)", at_least(0, integer=True), shape=True),
    "spn_hidden": Key(0, "spn: width of the pair layer Linear(2d, h)-BN-ReLU-Linear(h, 2) (0: 4 d, as the official "
                         "model surgery)", at_least(0, integer=True), shape=True),
    "classes_per_batch": Key(0, "batches of this many random classes x batch_size / classes_per_batch images each "
                                "(official SPN on Omniglot: 20); needs labels (spn, or targets labels); 0: shuffled "
                                "batches", at_least(0, integer=True)),
    "crop_scale": Key([], "random-resized-crop area range as the only training augmentation (official Omniglot: "
                          "[0.85, 1.0]); needs augmentation none; []: off",
                      lambda v: None if v == [] else unit_interval_pair(v)),
}, owners=("mcl", "kcl", "spn"))


def check_l2c_config(cfg, *, supervised: bool) -> None:
    opts = cfg.l2c
    if opts.classes_per_batch and not supervised:
        raise ConfigError("l2c.classes_per_batch builds batches from the ground-truth classes, so only supervised "
                          "stages may use it (method spn, or mcl/kcl with l2c.targets labels).")
    if opts.crop_scale and cfg.augmentation != "none":
        raise ConfigError(f"l2c.crop_scale replaces the training augmentation: use it with --augmentation none "
                          f"(got {cfg.augmentation!r}).")


def l2c_data_request(cfg, views: int = 1) -> DataRequest:
    opts = cfg.l2c
    augmentation = ("crop", {"crop_scale": list(opts.crop_scale)}) if opts.crop_scale else None
    return DataRequest(views=views, classes=tuple(int(c) for c in opts.classes), augmentation=augmentation)


def class_balanced_batches(method, ctx, *, keep_last: bool = False):
    """The class-balanced batch sampler of a supervised L2C stage (l2c.classes_per_batch); without it shuffled
    batches, the last partial one kept when `keep_last` (the official clustering loaders), else None (the
    trainer's shuffled batches)."""
    per_batch = int(method.cfg.l2c.classes_per_batch)
    if not per_batch:
        if not keep_last:
            return None
        return ShuffledBatches(len(ctx.data.train), batch_size=int(method.cfg.batch_size), rank=ctx.rank,
                               world_size=ctx.world_size, seed=ctx.seed, keep_last=True)
    sampler = ClassBalancedBatchSampler(ctx.train_labels(), classes_per_batch=per_batch,
                                        batch_size=int(method.cfg.batch_size), seed=ctx.seed, rank=ctx.rank,
                                        world_size=ctx.world_size)
    ctx.info(f"l2c: class-balanced batches, {sampler.classes_per_batch} classes x {sampler.per_class} images, "
             f"{len(sampler)} batches per epoch")
    return sampler
