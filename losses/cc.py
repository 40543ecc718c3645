"""Contrastive Clustering losses (Li et al., AAAI 2021), as the official code computes them.

docs/methods/cc.md Paper Eq. (2)-(3) (instance NT-Xent), Eq. (5)-(6) (cluster NT-Xent over
the columns of the assignment matrix) and Eq. (7) (entropy of the cluster marginals). The official entropy term
adds the constant log K per view (value >= 0, same gradient) and normalises each view's marginal separately; we
follow the code, not the paper's joint notation.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor


def _check_pair(a: Tensor, b: Tensor, name: str) -> None:
    if a.dim() != 2 or a.shape != b.shape:
        raise ValueError(f"{name}: expected two (N, D) tensors of equal shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.shape[0] < 1:
        raise ValueError(f"{name}: empty batch")


def _nt_xent(rows: Tensor, temperature: float) -> Tensor:
    """NT-Xent over 2M rows whose positive pairs are (m, m + M): mean over rows of
    -s(m, pos(m)) + log sum_{m' != m} exp(s(m, m')), with s = rows rows^T / temperature."""
    two_m = rows.shape[0]
    half = two_m // 2
    sim = rows @ rows.t() / temperature                                   # (2M, 2M)
    eye = torch.eye(two_m, dtype=torch.bool, device=rows.device)
    sim_no_self = sim.masked_fill(eye, float("-inf"))                     # self excluded from the denominator
    positive_index = (torch.arange(two_m, device=rows.device) + half) % two_m
    positives = sim.gather(1, positive_index[:, None]).squeeze(1)         # (2M,)
    return (torch.logsumexp(sim_no_self, dim=1) - positives).mean()


def instance_contrastive_loss(z_i: Tensor, z_j: Tensor, *, temperature: float = 0.5) -> Tensor:
    """L_inst: NT-Xent over the 2N views, rows used as given.

    z_i, z_j: (N, D), expected L2-normalised by the caller (the model normalises, the loss does not).
    Returns the mean over the 2N rows of -S[r, pos(r)] + log sum_{c != r} exp(S[r, c]), S = Z Z^T / temperature.
    """
    _check_pair(z_i, z_j, "instance_contrastive_loss")
    return _nt_xent(torch.cat([z_i, z_j], dim=0), temperature)


def cluster_entropy_regulariser(c_i: Tensor, c_j: Tensor) -> Tensor:
    """(log K + sum_k P_i log P_i) + (log K + sum_k P_j log P_j), P = each view's column sums normalised.

    Equals KL(P_i || uniform) + KL(P_j || uniform) >= 0. No epsilon inside the log, as the official code.
    """
    _check_pair(c_i, c_j, "cluster_entropy_regulariser")
    log_k = math.log(c_i.shape[1])
    total = c_i.new_zeros(())
    for c in (c_i, c_j):
        marginal = c.sum(dim=0)
        marginal = marginal / marginal.sum()
        total = total + log_k + (marginal * marginal.log()).sum()
    return total


def cluster_contrastive_loss(c_i: Tensor, c_j: Tensor, *, temperature: float = 1.0,
                             entropy_weight: float = 1.0) -> Tensor:
    """L_clu (with the entropy term of Eq. 7): NT-Xent over the 2K cluster columns with cosine similarity, plus the entropy term.

    c_i, c_j: (N, K) softmax probabilities. Each column (a cluster's memberships over the batch) is divided by
    max(||column||, 1e-8) (torch >= 1.12 CosineSimilarity semantics, the official code), positives are the same cluster in
    the other view. entropy_weight = 1 reproduces the official ClusterLoss; 0 gives the contrastive part alone.
    """
    _check_pair(c_i, c_j, "cluster_contrastive_loss")
    columns = torch.cat([c_i.t(), c_j.t()], dim=0)                        # (2K, N)
    columns = columns / columns.norm(dim=1, keepdim=True).clamp_min(1e-8)
    loss = _nt_xent(columns, temperature)
    if entropy_weight:
        loss = loss + entropy_weight * cluster_entropy_regulariser(c_i, c_j)
    return loss


def cc_loss(z_i: Tensor, z_j: Tensor, c_i: Tensor, c_j: Tensor, *, instance_temperature: float = 0.5,
            cluster_temperature: float = 1.0, entropy_weight: float = 1.0) -> tuple[Tensor, Tensor, Tensor]:
    """CC's objective: (total, instance, cluster) with cluster including the entropy term; total = instance +
    cluster (paper Eq. (9) with the official entropy constant).

    z_i, z_j: (N, D) normalised instance projections; c_i, c_j: (N, K) cluster probabilities, or (C, N, K) for C
    clusterings composed with DivClust (its re-implementation of CC): the instance loss once, the cluster loss
    averaged over the clusterings.
    """
    instance = instance_contrastive_loss(z_i, z_j, temperature=instance_temperature)
    heads_i, heads_j = (c_i, c_j) if c_i.dim() == 3 else (c_i[None], c_j[None])
    cluster = torch.stack([cluster_contrastive_loss(a, b, temperature=cluster_temperature,
                                                    entropy_weight=entropy_weight)
                           for a, b in zip(heads_i, heads_j)]).mean()
    return instance + cluster, instance, cluster
