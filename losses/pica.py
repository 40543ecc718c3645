"""PICA loss: partition confidence maximisation (Huang, Gong, Zhu, CVPR 2020).

Implements docs/methods/pica.md, i.e. the official ``PUILoss`` of
``Raymond-sci/PICA``: a K-way cross-entropy over the K x K *Partition Uncertainty Index* (cosine
similarity between clean-view and perturbed-view cluster columns), plus lamda times the
KL divergence between the clean view's batch cluster marginal and the uniform distribution.

Differences from the paper text, following the official code:
- the PUI cross-entropy has no temperature and is averaged over the K rows;
- the balance term uses the clean view only and, officially, no epsilon inside the log
  (``eps=0.0``: a cluster with exactly zero batch mass makes the loss NaN, as in the official
  code); DivClust's ``PICALoss`` uses ``eps=1e-6``;
- several perturbed copies per clean image are handled by block-tiling the clean view
  (``p_i.repeat(R, 1)``), matching the ``[batch] * R`` layout of the perturbed loader.

Nothing is detached: both views receive gradients.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["pica_loss"]

# F.normalize's default; the documented column normalisation uses exactly this value.
_COLUMN_NORM_EPS = 1e-12


def _as_probability_matrix(name: str, x: torch.Tensor) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 2:
        raise ValueError(f"{name} must be a 2-D (samples, clusters) tensor, got shape {tuple(x.shape)}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{name} must have at least one sample and one cluster, got shape {tuple(x.shape)}")
    if not torch.is_floating_point(x):
        raise ValueError(f"{name} must hold floating-point probabilities, got dtype {x.dtype}")
    return x


def pica_loss(p_i: torch.Tensor, p_j: torch.Tensor, *, lamda: float = 2.0, eps: float = 0.0) -> torch.Tensor:
    """PICA loss ``L_ce + lamda * L_ne`` (docs/methods/pica.md; paper Eq. 4-6, official ``PUILoss``).

    Args:
        p_i: (N, K) softmax probabilities of the clean ("original") view.
        p_j: (R*N, K) softmax probabilities of the perturbed views, R >= 1, in block layout:
            row ``r*N + n`` is a perturbation of clean image ``n``.
        lamda: weight of the balance (negative-entropy) term; official 2.0.
        eps: added to the marginal inside the log of the balance term; 0.0 is the official
            PICA value, 1e-6 reproduces DivClust's ``PICALoss``.

    Returns:
        0-dim tensor. Half-precision inputs are computed (and returned) in float32; otherwise the
        common dtype of the inputs is used.

    Both inputs must be probabilities (the heads end in a softmax); do not pass logits.
    """
    _as_probability_matrix("p_i", p_i)
    _as_probability_matrix("p_j", p_j)
    n_clean, k = p_i.shape
    n_pert, k_pert = p_j.shape
    if k_pert != k:
        raise ValueError(f"p_i and p_j must have the same number of clusters, got {k} and {k_pert}")
    if n_pert % n_clean != 0:
        raise ValueError(
            f"p_j has {n_pert} rows, which is not a multiple of the {n_clean} rows of p_i "
            "(expected R*N rows in block layout)"
        )
    dtype = torch.promote_types(p_i.dtype, p_j.dtype)
    if dtype in (torch.float16, torch.bfloat16):
        dtype = torch.float32
    p_i = p_i.to(dtype)
    p_j = p_j.to(dtype)

    repeats = n_pert // n_clean
    p_tiled = p_i.repeat(repeats, 1) if repeats > 1 else p_i  # (R*N, K), block repetition

    # Partition Uncertainty Index: cosine similarity between cluster columns of the two views.
    col_i = F.normalize(p_tiled, p=2, dim=0, eps=_COLUMN_NORM_EPS)  # (R*N, K)
    col_j = F.normalize(p_j, p=2, dim=0, eps=_COLUMN_NORM_EPS)  # (R*N, K)
    pui = col_i.t() @ col_j  # (K, K): rows clean clusters, columns perturbed clusters

    # Row-wise softmax cross-entropy with the diagonal as target, mean over the K rows.
    targets = torch.arange(k, device=pui.device)
    loss_ce = F.cross_entropy(pui, targets)

    # Balance term on the clean view only: KL(pi || uniform) = log K + sum_k pi_k log pi_k.
    mass = p_tiled.sum(dim=0)  # (K,)
    pi = mass / mass.sum()  # (K,)
    loss_ne = math.log(k) + (pi * torch.log(pi + eps)).sum()

    return loss_ce + lamda * loss_ne
