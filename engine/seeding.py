"""Seeds: the run's global seeding and the one rule that derives a seed for every other random stream.

Every random stream that must be re-made exactly (on resume, on every DDP rank) is drawn from a generator seeded
with `derive_seed(seed, purpose, counter)`: the run's seed, what the stream is for, and the position in the run
(epoch, step, outer iteration) where it is drawn. Purposes are named in `PURPOSES`; their offsets keep the
streams apart (the trainer's augmentation stream and ProPos's noise kept the values they had before the rule
was shared).
"""
from __future__ import annotations

import random

import numpy as np
import torch

# purpose -> offset inside the formula of derive_seed
PURPOSES = {
    "augment": 17,                      # the trainer's augmentation parameters, per epoch
    "noise_view_1": 104_729 + 13,       # ProPos family: Gaussian positive sampling of view 1, per step
    "noise_view_2": 2 * 104_729 + 13,   # ... of view 2
    "group_reset": 3 * 104_729 + 13,    # DigPro: the k-means of a group reset, per step
    "class_batches": 29,                # class-balanced batches (L2C supervised stages), per epoch
    "pseudo_label_resample": 4 * 104_729 + 13,   # ProPos data_resample, per epoch
    "kingdra_sets": 5 * 104_729 + 13,   # Kingdra: the shuffles of the balanced pseudo-label sets, per iteration
    "pair_scoring": 6 * 104_729 + 13,   # L2C: the batches that score a similarity network (analysis)
    "extra_stream": 7 * 104_729 + 13,   # the shuffled order of a method's extra data stream, per epoch
    "subhead_selection": 8 * 104_729 + 13,   # IIC: the augmentations of the eval-mode sub-head selection pass
    "shuffle_bn": 9 * 104_729 + 13,     # ProPos family: the permutation of the target's batch, per (step, direction)
    "embed_order": 10 * 104_729 + 13,   # the fixed shuffled order of embed passes for batch-statistics methods
}


def derive_seed(seed: int, purpose: str, counter: int = 0) -> int:
    """The seed of random stream `purpose` at position `counter` (epoch, step, ...) of a run seeded with `seed`:
    (seed * 1,000,003 + counter * 7,919 + offset(purpose)) mod 2^63. Deterministic, so any draw can be re-made."""
    if purpose not in PURPOSES:
        raise KeyError(f"unknown seed purpose {purpose!r}; add it to engine.seeding.PURPOSES")
    return (int(seed) * 1_000_003 + int(counter) * 7_919 + PURPOSES[purpose]) % (2 ** 63)


def generator(seed: int, purpose: str, counter: int = 0, device: torch.device | str = "cpu") -> torch.Generator:
    """A torch.Generator on `device` seeded with derive_seed(seed, purpose, counter)."""
    gen = torch.Generator(device=device)
    gen.manual_seed(derive_seed(seed, purpose, counter))
    return gen


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators (model initialisation draws from these)."""
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)
