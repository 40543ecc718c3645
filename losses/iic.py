"""IIC loss: invariant information clustering (Ji, Henriques, Vedaldi, ICCV 2019).

Implements docs/methods/iic.md, i.e. the official ``IID_loss`` / ``compute_joint``
of ``xu-ji/IIC``: the negative mutual information between the cluster assignments of an image
and of its transformed partner, estimated from the symmetrised K x K joint of a batch.

Differences from the official code:
- the official function clamps small entries *in place*, writing into ``expand``-ed marginals;
  on current PyTorch its ``backward()`` fails. Here the clamp is out of place
  (``torch.where``), which gives the same values and the same gradients (zero gradient through
  a clamped entry, which still contributes ``eps * log eps``-sized terms to the sum);
- the official function also returns ``loss_no_lamb``; here that value is
  ``iic_loss(..., lamb=1.0)``.

Sub-head averaging and the r-fold repetition of the original view are done by the caller.
"""

from __future__ import annotations

import sys

import torch

__all__ = ["iic_joint", "iic_loss"]


def _check_pair(p_i: torch.Tensor, p_j: torch.Tensor) -> None:
    for name, x in (("p_i", p_i), ("p_j", p_j)):
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 2:
            raise ValueError(f"{name} must be a 2-D (samples, clusters) tensor, got shape {tuple(x.shape)}")
        if x.shape[0] == 0 or x.shape[1] == 0:
            raise ValueError(f"{name} must have at least one sample and one cluster, got shape {tuple(x.shape)}")
        if not torch.is_floating_point(x):
            raise ValueError(f"{name} must hold floating-point probabilities, got dtype {x.dtype}")
    if p_i.shape != p_j.shape:
        raise ValueError(
            f"p_i and p_j must have the same shape (row n of p_j pairs with row n of p_i), "
            f"got {tuple(p_i.shape)} and {tuple(p_j.shape)}"
        )


def _compute_dtype(p_i: torch.Tensor, p_j: torch.Tensor) -> torch.dtype:
    dtype = torch.promote_types(p_i.dtype, p_j.dtype)
    # Half precision cannot represent eps = 2.2e-16; compute in float32 instead.
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def iic_joint(p_i: torch.Tensor, p_j: torch.Tensor) -> torch.Tensor:
    """Symmetrised, normalised K x K joint distribution (docs/methods/iic.md; paper Eq. 4).

    ``J~ = sum_n p_i[n]^T p_j[n]``, ``J~ <- (J~ + J~^T) / 2``, ``J = J~ / sum(J~)`` (divided by the
    total, which equals N for probability rows).

    Args:
        p_i: (N, K) softmax probabilities of the original views.
        p_j: (N, K) softmax probabilities of the transformed views, row-aligned with ``p_i``.

    Returns:
        (K, K) tensor, symmetric, summing to 1.
    """
    _check_pair(p_i, p_j)
    dtype = _compute_dtype(p_i, p_j)
    p_i = p_i.to(dtype)
    p_j = p_j.to(dtype)
    joint = p_i.t() @ p_j  # (K, K): sum over samples of outer products
    joint = (joint + joint.t()) / 2.0
    return joint / joint.sum()


def iic_loss(
    p_i: torch.Tensor,
    p_j: torch.Tensor,
    *,
    lamb: float = 1.0,
    eps: float = sys.float_info.epsilon,
) -> torch.Tensor:
    """IIC loss ``-sum_{k,l} J_kl (log J_kl - lamb log m_col_l - lamb log m_row_k)`` (docs/methods/iic.md;
    paper Eq. 3, official ``IID_loss``).

    The marginals are taken from the unclamped joint; then the joint and both marginals are
    clamped from below at ``eps`` (out of place; clamped entries stay in the sum and pass no
    gradient). The result is a sum over the K x K entries, not a mean; for ``lamb=1`` it equals
    minus the mutual information, in [-log K, 0].

    Args:
        p_i: (N, K) softmax probabilities of the original views.
        p_j: (N, K) softmax probabilities of the transformed views, row-aligned with ``p_i``.
        lamb: weight of the marginal-entropy terms; official 1.0.
        eps: clamp value, the float64 machine epsilon as in the official code (used for float32
            inputs too, where it is exactly representable).

    Returns:
        0-dim tensor; symmetric in its two arguments.
    """
    joint = iic_joint(p_i, p_j)  # (K, K)
    m_row = joint.sum(dim=1)  # (K,), from the unclamped joint
    m_col = joint.sum(dim=0)  # (K,)

    joint = torch.where(joint < eps, torch.full_like(joint, eps), joint)
    m_row = torch.where(m_row < eps, torch.full_like(m_row, eps), m_row)
    m_col = torch.where(m_col < eps, torch.full_like(m_col, eps), m_col)

    log_ratio = torch.log(joint) - lamb * torch.log(m_col).unsqueeze(0) - lamb * torch.log(m_row).unsqueeze(1)
    return -(joint * log_ratio).sum()
