"""L2C pairwise criteria: MCL and KCL, the similarity network's loss, and their pair bookkeeping.

Documentation: docs/methods/l2c.md. Papers: Hsu & Kira 2016 (KCL), Hsu, Lv &
Kira ICLR 2018 (L2C, the similarity prediction network), Hsu et al. ICLR 2019 (MCL). The framework follows the official
PyTorch code (GT-RIPL/L2C), and so does this module, including where the code and the papers' wording differ:

* Pairs: all N^2 ordered pairs of the batch, self-pairs (a, a) included, both (a, b) and (b, a); pair k = a*N + b
  is row a, column b of the N x N target matrix. The mean runs over all of them (or over the kept ones).
* A target of 0 ("unknown") is NOT ignored, despite the official comment: MCL adds -log(eps) for such a pair,
  KCL adds KL + max(0, margin - KL) (PyTorch HingeEmbeddingLoss semantics). The keep-mask is the only way to leave
  pairs out.
* eps = 1e-7 is added to the probabilities (KCL, both sides, no renormalisation) or to the pair probability (MCL),
  it is not a clamp.
* KCL's target side p_a is detached, so each ordered pair back-propagates into its prediction side p_b only; the
  symmetric KCL cost of the paper comes from enumerating both orders.

All functions are pure (no state, no randomness); tensors may live on any device; the float dtype follows `prob`
(or `pair_logits`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

EPS = 1e-7  # "the small value of float16" (official comment): keeps -log(P + eps) <= 16.12


def _check_square(matrix: Tensor, n: int, name: str, caller: str) -> None:
    if matrix.dim() != 2 or matrix.shape[0] != n or matrix.shape[1] != n:
        raise ValueError(f"{caller}: {name} must be ({n}, {n}) for a batch of {n}, got {tuple(matrix.shape)}")


def _check_prob(prob: Tensor, caller: str) -> None:
    if prob.dim() != 2 or prob.shape[0] < 1 or prob.shape[1] < 1:
        raise ValueError(f"{caller}: prob must be (N, K) softmax probabilities with N, K >= 1, got {tuple(prob.shape)}")
    if not prob.is_floating_point():
        raise ValueError(f"{caller}: prob must be a floating-point tensor, got {prob.dtype}")


def _keep(mask: Tensor | None, n: int, caller: str) -> Tensor | None:
    """Flattened boolean keep-vector (row-major, length N^2) from a (N, N) mask of any dtype (nonzero = keep)."""
    if mask is None:
        return None
    _check_square(mask, n, "mask", caller)
    return (mask != 0).reshape(-1).to(device=mask.device)


def _labels(labels: Tensor, caller: str) -> Tensor:
    if labels.dim() != 1 or labels.shape[0] < 1:
        raise ValueError(f"{caller}: labels must be a non-empty 1-D tensor, got shape {tuple(labels.shape)}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"{caller}: labels must be an integer tensor, got {labels.dtype}")
    return labels


def pair_enum(x: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Enumerate the ordered pairs of the rows of x.

    x: (N, D). Returns (x1, x2), each (P, D) with P = N^2, or the number of nonzero entries of the (N, N) mask.
    Pair k = a*N + b (row-major, row a, column b) has x1[k] = x[b] and x2[k] = x[a]; a mask keeps its pairs in
    the same row-major order.
    """
    if x.dim() != 2:
        raise ValueError(f"pair_enum: x must be (N, D), got shape {tuple(x.shape)}")
    n = x.shape[0]
    keep = _keep(mask, n, "pair_enum")
    x1 = x.repeat(n, 1)                         # (N^2, D): row a*N + b is x[b]
    x2 = x.repeat_interleave(n, dim=0)          # (N^2, D): row a*N + b is x[a]
    if keep is not None:
        keep = keep.to(x.device)
        x1, x2 = x1[keep], x2[keep]
    return x1, x2


def pairwise_targets(labels: Tensor, *, mode: str = "hinge") -> Tensor:
    """Dense pairwise targets from class labels, as an (N, N) matrix.

    "hinge": float64, +1 where labels[a] == labels[b], -1 otherwise (targets of MCL / KCL).
    "cls":   int64, 1 where equal, 0 otherwise (targets of the similarity network's cross-entropy).
    The diagonal is always similar. Labels are compared as given: two unknown labels (-1) count as equal, so a
    caller with unknown labels masks those pairs out.
    """
    labels = _labels(labels, "pairwise_targets")
    same = labels[:, None] == labels[None, :]                              # (N, N)
    if mode == "hinge":
        return same.to(torch.float64) * 2 - 1
    if mode == "cls":
        return same.to(torch.int64)
    raise ValueError(f"pairwise_targets: mode must be 'hinge' or 'cls', not {mode!r}")


def _batch_size_of_pairs(pair_logits: Tensor, caller: str) -> int:
    if pair_logits.dim() != 2 or pair_logits.shape[1] != 2:
        raise ValueError(f"{caller}: pair_logits must be (N*N, 2), got shape {tuple(pair_logits.shape)}")
    p = pair_logits.shape[0]
    n = int(round(p ** 0.5))
    if n < 1 or n * n != p:
        raise ValueError(f"{caller}: pair_logits has {p} rows, which is not N*N for any batch size N")
    return n


def spn_logits_to_simi(pair_logits: Tensor) -> Tensor:
    """Hard clustering targets from the similarity network: (N*N, 2) logits -> (N, N) matrix.

    +1 where argmax == 1 ("similar"), else -1 (never 0), in the dtype of `pair_logits`; row a*N + b -> [a, b]. The
    result may be asymmetric (the network sees [f_b, f_a], the official code). No gradient flows (argmax).
    """
    n = _batch_size_of_pairs(pair_logits, "spn_logits_to_simi")
    if not pair_logits.is_floating_point():
        raise ValueError(f"spn_logits_to_simi: pair_logits must be floating point, got {pair_logits.dtype}")
    similar = pair_logits.detach().argmax(dim=1) == 1                      # (N^2,)
    one = torch.ones((), dtype=pair_logits.dtype, device=pair_logits.device)
    return torch.where(similar, one, -one).reshape(n, n)


def spn_pair_loss(pair_logits: Tensor, labels: Tensor) -> Tensor:
    """Dense-pair-similarity ("DPS") loss of the similarity network.

    pair_logits: (N*N, 2), row a*N + b for pair (a, b); labels: (N,) integer classes. Plain cross-entropy, mean
    over all N^2 ordered pairs (self-pairs included), targets 1 = same class, 0 = different; no re-weighting.
    """
    n = _batch_size_of_pairs(pair_logits, "spn_pair_loss")
    labels = _labels(labels, "spn_pair_loss")
    if labels.shape[0] != n:
        raise ValueError(f"spn_pair_loss: {pair_logits.shape[0]} pair rows need {n} labels, got {labels.shape[0]}")
    target = pairwise_targets(labels, mode="cls").reshape(-1).to(pair_logits.device)   # (N^2,)
    return F.cross_entropy(pair_logits, target)


def mcl_loss(prob: Tensor, simi: Tensor, mask: Tensor | None = None, *, eps: float = EPS) -> Tensor:
    """Meta Classification Likelihood (Hsu et al. ICLR 2019; the official code): mean over kept ordered pairs of
    -log(P_ab + eps), with s_ab = p_a . p_b and P_ab = s_ab * S_ab + [S_ab == -1].

    prob: (N, K) softmax rows; simi: (N, N) targets, +1 similar / -1 dissimilar / 0 "unknown" (any numeric dtype,
    cast to prob's); mask: optional (N, N) keep-mask (nonzero = keep). An S = 0 pair contributes -log(eps) with zero
    gradient and still counts in the mean (official behaviour). Gradient flows through both p_a and p_b. A mask that
    keeps no pair gives NaN (the mean of nothing), as the official code.
    """
    _check_prob(prob, "mcl_loss")
    n = prob.shape[0]
    _check_square(simi, n, "simi", "mcl_loss")
    keep = _keep(mask, n, "mcl_loss")
    # s[a, b] = sum_k p_a[k] p_b[k]: the official per-pair product summed over k, as one matrix product.
    s = (prob @ prob.t()).reshape(-1)                                      # (N^2,)
    target = simi.to(device=prob.device, dtype=prob.dtype).reshape(-1)     # (N^2,)
    if keep is not None:
        keep = keep.to(prob.device)
        s, target = s[keep], target[keep]
    p = s * target + (target == -1).to(prob.dtype)
    return -(p + eps).log().mean()


def kcl_loss(prob: Tensor, simi: Tensor, mask: Tensor | None = None, *, margin: float = 2.0,
             eps: float = EPS) -> Tensor:
    """KL-divergence contrastive loss (Hsu & Kira 2016; the official code): mean over kept ordered pairs (a, b) of
    KL_ab if S_ab = +1, max(0, margin - KL_ab) if S_ab = -1, and KL_ab + max(0, margin - KL_ab) otherwise (0),
    where KL_ab = sum_k (t_k + eps)(log(t_k + eps) - log(q_k + eps)), t = p_a detached (target side), q = p_b.

    prob: (N, K) softmax rows; simi: (N, N) targets (+1 / -1 / 0, cast to prob's dtype); mask: optional (N, N)
    keep-mask (nonzero = keep). Memory is O(N^2 K), as the official pair enumeration.
    """
    _check_prob(prob, "kcl_loss")
    n = prob.shape[0]
    _check_square(simi, n, "simi", "kcl_loss")
    keep = _keep(mask, n, "kcl_loss")
    t = prob.detach() + eps                                                # (N, K) target side, no gradient
    q = prob + eps                                                         # (N, K) prediction side
    # kl[a, b] = sum_k t[a, k] (log t[a, k] - log q[b, k]): each pair computed on its own, as the official code.
    kl = (t[:, None, :] * (t.log()[:, None, :] - q.log()[None, :, :])).sum(dim=2).reshape(-1)   # (N^2,)
    target = simi.to(device=prob.device, dtype=prob.dtype).reshape(-1)
    if keep is not None:
        keep = keep.to(prob.device)
        kl, target = kl[keep], target[keep]
    # torch.nn.HingeEmbeddingLoss: the margin term wherever y != 1, the KL term wherever y != -1.
    hinge = (margin - kl).clamp(min=0)
    zero = kl.new_zeros(())
    loss = torch.where(target != 1, hinge, zero) + torch.where(target != -1, kl, zero)
    return loss.mean()


def cluster_acc(pred: Tensor, target: Tensor, *, n_clusters: int) -> Tensor:
    """Clustering accuracy as the official `Confusion`: a K x K confusion matrix (K = n_clusters; rows =
    ground-truth class, columns = predicted cluster), Hungarian assignment on -conf, ACC = matched / N.

    pred, target: (N,) integer tensors with values in [0, K). With K larger than the number of classes, each class
    gets at most one cluster and every other cluster's samples count as errors. Returns a float64 scalar tensor on
    pred's device.
    """
    from scipy.optimize import linear_sum_assignment

    pred, target = _labels(pred, "cluster_acc"), _labels(target, "cluster_acc")
    if pred.shape != target.shape:
        raise ValueError(f"cluster_acc: pred and target differ in length ({pred.shape[0]} vs {target.shape[0]})")
    k = int(n_clusters)
    if k < 1:
        raise ValueError(f"cluster_acc: n_clusters must be >= 1, got {n_clusters}")
    low = min(int(pred.min()), int(target.min()))
    high = max(int(pred.max()), int(target.max()))
    if low < 0 or high >= k:
        raise ValueError(f"cluster_acc: pred and target must lie in [0, {k}), found values in [{low}, {high}]")
    conf = torch.zeros(k * k, dtype=torch.int64)
    conf.index_add_(0, (target.cpu().long() * k + pred.cpu().long()), torch.ones(pred.shape[0], dtype=torch.int64))
    conf = conf.reshape(k, k).numpy()
    rows, cols = linear_sum_assignment(-conf)
    matched = float(conf[rows, cols].sum())
    return torch.tensor(matched / pred.shape[0], dtype=torch.float64, device=pred.device)
