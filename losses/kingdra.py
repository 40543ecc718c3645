"""Kingdra (Gupta et al., ICLR 2020): Ladder-IM losses and the ensemble pseudo-label machinery, as the official
code (divamgupta/deep-clustering-kingdra @ c16d3e1) computes them.

the ladder network pieces, the losses, the similarity graph and pseudo-labels (with their alignment and
balanced set), and the ensemble prediction and ACC (docs/methods/kingdra.md). Every function is pure: no
module state, no randomness (callers shuffle the balanced set with their own generator).

Where the paper and the code differ, the code is followed:
* the similarity graph checks only the SEED point's confidence, with strict thresholds (`>`), so the first group
  may contain unconfident points;
* the ladder cost compares the reconstruction with the clean encoder value without re-normalising it and without
  a stop-gradient on the clean target; NKL stops the gradient on the clean side only;
* pseudo-label groups are renamed to a model's ids by the same Hungarian algorithm as scikit-learn 0.20's
  `linear_assignment` (Munkres, with its tie-breaking), because a different optimal matching renames groups
  differently when the optimum is not unique.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

LOG_EPS = 1e-16          # inside every log of IM / NKL (official unsup_losses.py)
BN_EPS = 1e-10           # parameter-free batch normalisation (official ladder_utils.py)
KERAS_EPS = 1e-7         # Keras 2.1.4 categorical_crossentropy clipping


def _check_2d(x: Tensor, name: str, what: str = "(B, K)") -> None:
    if not isinstance(x, Tensor) or x.dim() != 2:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"{name}: expected a {what} tensor, got {shape}")
    if x.shape[0] < 1:
        raise ValueError(f"{name}: empty batch")


def _check_same(a: Tensor, b: Tensor, name: str) -> None:
    _check_2d(a, name, "(B, D)")
    if a.shape != b.shape:
        raise ValueError(f"{name}: expected tensors of equal shape, got {tuple(a.shape)} and {tuple(b.shape)}")


def _entropy_rows(p: Tensor) -> Tensor:
    """H(p) = -sum_k p_k log(p_k + 1e-16) over the last axis."""
    return -(p * torch.log(p + LOG_EPS)).sum(dim=-1)


# ---------------------------------------------------------------------------------------------------- losses

def im_loss(logits: Tensor, *, mu: float = 4.0) -> Tensor:
    """Information-maximisation loss (the official code `IM`, official `mut_inf_loss`).

    p_i = softmax(logits_i), p_bar = mean_i p_i: returns mean_i H(p_i) - mu * H(p_bar). logits: (B, K).
    """
    _check_2d(logits, "im_loss")
    p = torch.softmax(logits, dim=1)                                  # (B, K)
    return _entropy_rows(p).mean() - mu * _entropy_rows(p.mean(dim=0))


def noise_kl(clean_logits: Tensor, corr_logits: Tensor) -> Tensor:
    """KL(clean || corrupted) (the official code `NKL`): mean_i sum_k p_ik (log(p_ik + 1e-16) - log(q_ik + 1e-16)).

    p = softmax(clean_logits) with the gradient stopped (official `tf.stop_gradient`), q = softmax(corr_logits).
    Both (B, K).
    """
    _check_same(clean_logits, corr_logits, "noise_kl")
    p = torch.softmax(clean_logits.detach(), dim=1)                   # (B, K), no gradient
    q = torch.softmax(corr_logits, dim=1)                             # (B, K)
    return (p * (torch.log(p + LOG_EPS) - torch.log(q + LOG_EPS))).sum(dim=1).mean()


def ladder_batchnorm(x: Tensor, *, eps: float = BN_EPS) -> Tensor:
    """Parameter-free batch normalisation of the ladder: (x - mean_b) / sqrt(var_b + eps).

    Batch statistics only (training and prediction), biased (population) variance, no affine part. x: (B, D).
    """
    _check_2d(x, "ladder_batchnorm", "(B, D)")
    mean = x.mean(dim=0, keepdim=True)                                # (1, D)
    var = ((x - mean) ** 2).mean(dim=0, keepdim=True)                 # (1, D), biased
    return (x - mean) / torch.sqrt(var + eps)


def ladder_combinator(z_corr: Tensor, u: Tensor, params: Tensor) -> Tensor:
    """The "vanilla" per-unit denoising function g(z~, u) of Rasmus et al..

    params: (10, D), rows a1..a10. mu = a1 sigmoid(a2 u + a3) + a4 u + a5, v = a6 sigmoid(a7 u + a8) + a9 u + a10,
    returns (z_corr - mu) * v + mu. z_corr, u: (B, D).
    """
    _check_same(z_corr, u, "ladder_combinator")
    if params.dim() != 2 or params.shape != (10, z_corr.shape[1]):
        raise ValueError(f"ladder_combinator: params must be (10, {z_corr.shape[1]}), got {tuple(params.shape)}")
    a1, a2, a3, a4, a5, a6, a7, a8, a9, a10 = params.unbind(0)          # each (D,)
    mu = a1 * torch.sigmoid(a2 * u + a3) + a4 * u + a5
    v = a6 * torch.sigmoid(a7 * u + a8) + a9 * u + a10
    return (z_corr - mu) * v + mu


def denoising_cost(z_est: Tensor, z_clean: Tensor, *, weight: float = 1.0) -> Tensor:
    """Ladder layer cost: weight * mean_b sum_d (z_est - z_clean)^2 / D.

    z_clean is the clean encoder value, used as is: no re-normalisation and no stop-gradient, so the
    gradient reaches both arguments. Both (B, D).
    """
    _check_same(z_est, z_clean, "denoising_cost")
    return weight * ((z_est - z_clean) ** 2).sum(dim=1).mean() / z_est.shape[1]


def sup_ce_loss(prob: Tensor, target: Tensor) -> Tensor:
    """Keras 2.1.4 `categorical_crossentropy` on probabilities (the official code `CE`): p <- p / sum_k p_k,
    p <- clip(p, 1e-7, 1 - 1e-7), mean over rows of -sum_k y_k log p_k. All-zero target rows give 0. (B, K) each.
    """
    _check_same(prob, target, "sup_ce_loss")
    p = prob / prob.sum(dim=1, keepdim=True)
    p = torch.clamp(p, KERAS_EPS, 1.0 - KERAS_EPS)
    return -(target * torch.log(p)).sum(dim=1).mean()


# ------------------------------------------------------------------------------------------ pseudo-labels

def _check_probs(ensemble_probs: Tensor, name: str) -> None:
    if not isinstance(ensemble_probs, Tensor) or ensemble_probs.dim() != 3:
        shape = tuple(ensemble_probs.shape) if isinstance(ensemble_probs, Tensor) else type(ensemble_probs).__name__
        raise ValueError(f"{name}: expected ensemble probabilities of shape (M, N, K), got {shape}")
    if min(ensemble_probs.shape) < 1:
        raise ValueError(f"{name}: empty ensemble_probs {tuple(ensemble_probs.shape)}")


def _agreement(rows: Tensor, signatures: Tensor) -> Tensor:
    """(R, U) number of members that give the same id to each row signature and each signature, in chunks."""
    chunk = max(1, (1 << 25) // max(signatures.numel(), 1))
    return torch.cat([(rows[s:s + chunk, None, :] == signatures[None, :, :]).sum(dim=-1)
                      for s in range(0, rows.shape[0], chunk)]) if rows.shape[0] else \
        rows.new_zeros((0, signatures.shape[0]))


def _pairs_within_buckets(bucket: Tensor) -> tuple[Tensor, Tensor]:
    """Every ordered pair (a, b), a self-pair included, of items that share a bucket id."""
    num = bucket.shape[0]
    order = torch.argsort(bucket, stable=True)
    sizes = torch.bincount(bucket)
    starts = torch.cumsum(sizes, 0) - sizes
    partners = sizes[bucket]                                          # (U,) partners of each item
    src = torch.repeat_interleave(torch.arange(num, device=bucket.device), partners)
    offset = torch.arange(src.shape[0], device=bucket.device) - torch.repeat_interleave(
        torch.cumsum(partners, 0) - partners, partners)
    return src, order[starts[bucket[src]] + offset]


class _HighAgreementGraph:
    """The "positive" links between the U distinct signatures: pairs on which more than t_high members agree.

    Such a pair differs in at most d = M - t_high - 1 members. d = 0 (the official t_high = M - 1) links a
    signature to itself only; d = 1 (t_high = M - 2, Reuters) is found by bucketing the signatures with one member
    masked, linear in U; both keep an edge list. Larger d would make the edge list up to U x U, so the links are
    recomputed from the signatures, in chunks, whenever they are needed.
    """

    def __init__(self, signatures: Tensor, seeds: Tensor, t_high: int):
        self.signatures, self.t_high = signatures, t_high
        num, members = signatures.shape
        differ = members - t_high - 1
        self.edges: tuple[Tensor, Tensor] | None = None
        if differ < 0:
            empty = torch.zeros(0, dtype=torch.long, device=signatures.device)
            self.edges = (empty, empty)
        elif differ == 0:
            idx = torch.nonzero(seeds).flatten()
            self.edges = (idx, idx)
        elif differ == 1:
            sentinel = int(signatures.max()) + 1
            found = []
            for m in range(members):
                keys = signatures.clone()
                keys[:, m] = sentinel
                src, dst = _pairs_within_buckets(torch.unique(keys, dim=0, return_inverse=True)[1])
                keep = seeds[src]                                     # only a possible seed needs its list
                found.append(src[keep] * num + dst[keep])
            code = torch.unique(torch.cat(found))
            self.edges = (code // num, code % num)

    def degrees(self, weight: Tensor, rows: Tensor) -> Tensor:
        """(U,) sum of `weight` over each row signature's neighbours (0 outside the boolean mask `rows`)."""
        num = self.signatures.shape[0]
        if self.edges is not None:
            src, dst = self.edges
            return torch.zeros(num, dtype=weight.dtype, device=weight.device).index_add_(0, src, weight[dst]) * rows
        out = torch.zeros(num, dtype=weight.dtype, device=weight.device)
        idx = torch.nonzero(rows).flatten()
        chunk = max(1, (1 << 25) // max(self.signatures.numel(), 1))
        for s in range(0, idx.shape[0], chunk):
            linked = _agreement(self.signatures[idx[s:s + chunk]], self.signatures) > self.t_high
            out[idx[s:s + chunk]] = (linked.double() @ weight.double()).round().to(weight.dtype)
        return out

    def neighbours(self, seed: int) -> Tensor:
        """Indices of the signatures linked to `seed` (itself included)."""
        if self.edges is not None:
            src, dst = self.edges
            return dst[src == seed]
        return torch.nonzero(_agreement(self.signatures[seed:seed + 1], self.signatures)[0] > self.t_high).flatten()


@torch.no_grad()
def kingdra_pseudo_labels(ensemble_probs: Tensor, *, t_low: int = 1, t_high: int = 9,
                          thresh: float = 0.9) -> Tensor:
    """High-precision pseudo-labels from the ensemble's similarity graph.

    ensemble_probs: (M, N, K) softmax outputs of the M members. Returns (N,) int64: group index (extraction
    order, at most K groups) or -1 for points left unlabelled.

    Exactly the official greedy extraction: agree(i, j) = #members with the same id for i and j; H[i] = {j :
    agree > t_high} when EVERY member's top probability of the seed i is > thresh (j's confidence is not
    checked), else empty; Lo[i] = {j : agree > t_low}. Repeatedly take the smallest index with the largest |H|,
    emit H[seed] as a group, empty H[j] for every j in Lo of a group member, drop emptied nodes from every list.

    Points with the same prediction vector ("signature") are interchangeable in this graph, so the work is done on
    the U distinct signatures (the high-agreement edges between them, and Lo rows on demand) instead of N x N
    lists. Before the first extraction a list counts every point of its signature neighbours; afterwards only
    the live points (confident and not removed), which is what the official cleanup pass leaves.
    """
    _check_probs(ensemble_probs, "kingdra_pseudo_labels")
    members, n, k = ensemble_probs.shape
    device = ensemble_probs.device
    top = ensemble_probs.amax(dim=-1)                                 # (M, N) each member's top probability
    ids = ensemble_probs.argmax(dim=-1).t().contiguous()              # (N, M), first maximum on ties
    confident = (top > thresh).all(dim=0)                             # (N,)
    signatures, group_of, group_size = torch.unique(ids, dim=0, return_inverse=True, return_counts=True)
    num_groups = signatures.shape[0]                                  # U distinct prediction vectors
    index = torch.arange(n, device=device)
    confident_count = torch.zeros(num_groups, dtype=torch.long, device=device).index_add_(
        0, group_of, confident.long())
    graph = _HighAgreementGraph(signatures, confident_count > 0, t_high)
    first_confident = torch.full((num_groups,), n, dtype=torch.long, device=device).scatter_reduce_(
        0, group_of[confident], index[confident], reduce="amin")
    removed = torch.zeros(num_groups, dtype=torch.bool, device=device)
    labels = torch.full((n,), -1, dtype=torch.long, device=device)
    for group in range(k):
        first = group == 0
        live = confident_count * (~removed)                           # live points per signature
        weight = group_size if first else live                        # who counts in a list H[i]
        eligible = live > 0                                           # who has a non-empty list
        degree = graph.degrees(weight, eligible)                      # |H[i]| of every point of a signature
        best = degree.max()
        if best.item() == 0:
            break
        candidates = torch.where(degree == best, first_confident, torch.full_like(first_confident, n))
        seed = int(torch.argmin(candidates))                          # the smallest index among the largest lists
        neighbours = graph.neighbours(seed)                           # signatures in H[seed]
        if not first:
            neighbours = neighbours[live[neighbours] > 0]
        in_group = torch.zeros(num_groups, dtype=torch.bool, device=device)
        in_group[neighbours] = True
        point_in = in_group[group_of]
        if not first:
            point_in &= confident & ~removed[group_of]
        labels[point_in] = group
        not_negative = _agreement(signatures[neighbours], signatures) > t_low   # (|group signatures|, U)
        removed |= not_negative.any(dim=0)
    return labels


def _munkres_square(cost: np.ndarray) -> np.ndarray:
    """Minimum-cost perfect matching of a square matrix; returns the column matched to each row.

    The Munkres steps in the order scikit-learn 0.20's `linear_assignment` runs them (row reduction only; star the
    zeros in row-major order; prime the first uncovered zero in row-major order; alternating path through the
    first star of a column and the first prime of a row), so that ties between optimal matchings are broken the
    same way as in the official code.
    """
    c = np.array(cost, dtype=np.int64 if np.issubdtype(np.asarray(cost).dtype, np.integer) else np.float64)
    n = c.shape[0]
    star = np.zeros((n, n), dtype=bool)
    prime = np.zeros((n, n), dtype=bool)
    row_cov = np.zeros(n, dtype=bool)
    col_cov = np.zeros(n, dtype=bool)
    c -= c.min(axis=1, keepdims=True)
    for i, j in zip(*np.nonzero(c == 0)):
        if not row_cov[i] and not col_cov[j]:
            star[i, j] = row_cov[i] = col_cov[j] = True
    row_cov[:] = False
    col_cov[:] = False
    while True:
        col_cov[star.any(axis=0)] = True
        if star.sum() >= n:
            return np.argmax(star, axis=1)
        while True:                                                   # prime uncovered zeros / adjust the matrix
            free = (c == 0) & ~row_cov[:, None] & ~col_cov[None, :]
            if not free.any():
                if (~row_cov).any() and (~col_cov).any():
                    smallest = c[~row_cov][:, ~col_cov].min()
                    c[row_cov] += smallest
                    c[:, ~col_cov] -= smallest
                continue
            i, j = divmod(int(np.argmax(free)), n)
            prime[i, j] = True
            starred = np.nonzero(star[i])[0]
            if starred.size == 0:
                path = [(i, j)]
                break
            row_cov[i] = True
            col_cov[starred[0]] = False
        while True:                                                   # augmenting path of primes and stars
            col = path[-1][1]
            rows = np.nonzero(star[:, col])[0]
            if rows.size == 0:
                break
            path.append((int(rows[0]), col))
            path.append((int(rows[0]), int(np.nonzero(prime[rows[0]])[0][0])))
        for i, j in path:
            star[i, j] = not star[i, j]
        row_cov[:] = False
        col_cov[:] = False
        prime[:] = False


def _check_labels(x: Tensor, name: str, what: str) -> None:
    if not isinstance(x, Tensor) or x.dim() != 1 or x.is_floating_point() or x.is_complex():
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"{name}: {what} must be a 1-D integer tensor, got {shape}")


@torch.no_grad()
def align_pseudo_labels(pseudo_labels: Tensor, model_pred: Tensor) -> Tensor:
    """Rename pseudo-label groups to a model's cluster ids.

    Over the labelled points: W[c, b] = #points with model id c and group b, square of size D = max id + 1;
    maximum-weight matching (Munkres on W.max() - W, scikit-learn 0.20 tie-breaking); group b becomes its
    matched id. -1 (unlabelled) is kept. Both (N,) integer tensors; returns (N,) int64.
    """
    _check_labels(pseudo_labels, "align_pseudo_labels", "pseudo_labels")
    _check_labels(model_pred, "align_pseudo_labels", "model_pred")
    if pseudo_labels.shape != model_pred.shape:
        raise ValueError(f"align_pseudo_labels: pseudo_labels {tuple(pseudo_labels.shape)} and model_pred "
                         f"{tuple(model_pred.shape)} differ in length")
    pseudo = pseudo_labels.long()
    labelled = pseudo >= 0
    if not labelled.any():
        return pseudo.clone()
    groups = pseudo[labelled].cpu().numpy()
    ids = model_pred.long()[labelled].cpu().numpy()
    if ids.min() < 0:
        raise ValueError("align_pseudo_labels: model_pred must be >= 0 on the labelled points")
    size = int(max(groups.max(), ids.max())) + 1
    weight = np.zeros((size, size), dtype=np.int64)
    np.add.at(weight, (ids, groups), 1)                               # rows: model ids, columns: groups
    model_of_row = _munkres_square(weight.max() - weight)             # row (model id) -> matched group
    rename = np.empty(size, dtype=np.int64)
    rename[model_of_row] = np.arange(size)                            # group -> model id
    out = pseudo.clone()
    out[labelled] = torch.from_numpy(rename[groups]).to(out.device)
    return out


@torch.no_grad()
def balanced_pseudo_label_set(pseudo_labels: Tensor) -> tuple[Tensor, Tensor]:
    """The class-balanced supervised set of N rows.

    pseudo_labels: (N,) with classes 0..K-1 (K = max + 1, every class non-empty) and -1 for unlabelled points.
    Row p takes class p mod K and that class's next member (members in ascending index order, each class wrapping
    around on its own). Returns (idx, y), both (N,) int64, in this UNSHUFFLED round-robin order.
    """
    _check_labels(pseudo_labels, "balanced_pseudo_label_set", "pseudo_labels")
    labels = pseudo_labels.long()
    n = labels.shape[0]
    labelled = labels >= 0
    if not labelled.any():
        raise ValueError("balanced_pseudo_label_set: no labelled point")
    k = int(labels.max()) + 1
    sizes = torch.bincount(labels[labelled], minlength=k)             # (K,)
    if (sizes == 0).any():
        empty = torch.nonzero(sizes == 0).flatten().tolist()
        raise ValueError(f"balanced_pseudo_label_set: classes {empty} have no member (classes must be 0..K-1)")
    index = torch.arange(n, device=labels.device)
    members = index[labelled][torch.argsort(labels[labelled], stable=True)]   # by class, ascending index inside
    offsets = torch.cumsum(sizes, 0) - sizes                          # (K,) start of each class in `members`
    position = torch.arange(n, device=labels.device)
    y = position % k
    rank = (position // k) % sizes[y]
    return members[offsets[y] + rank], y


def ensemble_predict(ensemble_probs: Tensor, *, common_mapping: bool = True) -> Tensor:
    """Final labels: argmax of the members' mean softmax, or of member 0 alone when common_mapping is
    False (CIFAR-10 config). ensemble_probs (M, N, K) -> (N,) int64."""
    _check_probs(ensemble_probs, "ensemble_predict")
    probs = ensemble_probs.mean(dim=0) if common_mapping else ensemble_probs[0]
    return probs.argmax(dim=-1)


def cluster_acc(y_true: Tensor, y_pred: Tensor) -> Tensor:
    """Clustering accuracy: D = max(max pred, max true) + 1, w[pred, true] (D x D),
    the best one-to-one matching's matched count / N. Any optimal matching gives this value, so
    scipy's solver is used. Returns a float64 scalar tensor."""
    from scipy.optimize import linear_sum_assignment

    _check_labels(y_true, "cluster_acc", "y_true")
    _check_labels(y_pred, "cluster_acc", "y_pred")
    if y_true.shape != y_pred.shape or y_true.numel() == 0:
        raise ValueError(f"cluster_acc: y_true {tuple(y_true.shape)} and y_pred {tuple(y_pred.shape)} must be "
                         f"non-empty and of equal length")
    true = y_true.long().cpu().numpy()
    pred = y_pred.long().cpu().numpy()
    if min(true.min(), pred.min()) < 0:
        raise ValueError("cluster_acc: labels must be >= 0")
    size = int(max(true.max(), pred.max())) + 1
    weight = np.zeros((size, size), dtype=np.int64)
    np.add.at(weight, (pred, true), 1)
    rows, cols = linear_sum_assignment(weight, maximize=True)
    return torch.tensor(weight[rows, cols].sum() / true.size, dtype=torch.float64)
