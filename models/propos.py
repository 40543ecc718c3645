"""ProPos: prototype scattering and positive sampling (Huang et al., TPAMI 2022). Documentation: docs/methods/propos.md.

The whole method is the shared structure of models/momentum_family.py: BYOL with Gaussian positive sampling
(PSA, sigma = latent_std after warm-up) + lambda_psl * prototype scattering loss on k-means pseudo-labels (after
warm-up), EMA target (0.996, or its cosine increase to 1), per-epoch cosine k-means of the target projections.
`v2` (official CIFAR-20 / ImageNet-Dogs configs): EMA before the losses, both views as one batch, alignment
2 - 2 cos. Evaluation features: the L2-normalised 256-d target projector output. No cluster heads.

Not implemented: the ImageNet-1k queue (`queue_size`, no clustering preset uses it) and the asymmetric BYOL
transform of that config. In multi-GPU v2 the official code splits the *gathered* 2B-row batch in halves, which
pairs views and pseudo-labels of different ranks; here each view is gathered separately (the one-GPU semantics).
"""
from __future__ import annotations

from .momentum_family import MomentumFamily, family_section

SECTION = family_section("propos", "ProPos (Huang et al. TPAMI 2022); warm-up of PSL and noise = warmup_epochs")


class ProPos(MomentumFamily):
    config_sections = (SECTION,)
    section = "propos"


METHOD = ProPos
