"""Batched box-constrained QPs of SCCBG's W-step and S-step (docs/methods/divclust.md).

Every row is an independent problem; a row leaves the working set as soon as its largest coordinate change
falls below ``QP_TOL`` (or after ``QP_MAX_ITER`` iterations). Callers pass blocks of rows.

- ``solve_w_rows``: W-step, a non-convex box QP per row: monotone projected gradient with per-row step
  1/L_i (Gershgorin bound), started from the previous W, so it stops at a local solution near the start.
- ``solve_s_rows``: S-step, a convex box QP per row, for any weights: FISTA with adaptive restart.
- ``solve_s_rows_unit_weights``: the same S-step QP when every weight of the row is 1 (what the W-step
  gives once the self-paced weights have saturated, from the first iteration on for the default gamma).
  Then all rows share one Hessian H = 2 I + 4 gamma (diag(A 1) - A), whose diagonal dominates it, and the
  QP is solved by projected Jacobi iterations x <- clamp((2 b - lam dist + 4 gamma A_off x) / diag(H)):
  one (rows x v) by (v x v) product per iteration. The map is a contraction in the max-norm (factor
  max_j 4 gamma (A 1 - diag A)_j / diag(H)_j < 1, about 0.09 for the default gamma), so it converges to the
  QP's unique minimiser, the same point FISTA converges to, in fewer and cheaper iterations.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["QP_TOL", "QP_MAX_ITER", "linear_row_step", "solve_w_rows", "solve_s_rows", "unit_weight_jacobi",
           "solve_s_rows_unit_weights"]

QP_TOL = 1e-10
QP_MAX_ITER = 5000
# Optional float32 warm-up of the unit-weight Jacobi sweeps (CPU float32 products are about twice as fast).
LOW_PRECISION_TOL = 1e-5
LOW_PRECISION_MAX_ITER = 100


def linear_row_step(x: Tensor, grad: Tensor) -> Tensor:
    """Minimiser of a linear objective over [0, 1]: each coordinate goes to the bound its gradient sign
    dictates (unchanged where the gradient is 0)."""
    return torch.where(grad < 0, torch.ones_like(x), torch.where(grad > 0, torch.zeros_like(x), x))


def solve_w_rows(s: Tensor, b: Tensor, w: Tensor, affinity: Tensor, affinity_rowsum: Tensor,
                  gamma: float, rho: float) -> Tensor:
    """W-step for a block of rows (docs/methods/divclust.md): local minimiser over [0,1]^v, started from ``w``, of
    f(w) = sum_j (s_j - b_j)^2 w_j^2 + gamma sum_jk A_jk (s_j - s_k)^2 w_j w_k - rho sum_j w_j."""
    delta = (s - b) ** 2  # [n, v]
    s_sq = s * s
    # Gershgorin bound of the Hessian 2 (diag(delta) + gamma Q), Q_jk = A_jk (s_j - s_k)^2 >= 0.
    q_rowsum = (s_sq * affinity_rowsum - 2 * s * (s @ affinity) + s_sq @ affinity).clamp_min(0)
    lipschitz = 2 * (delta + gamma * q_rowsum).amax(dim=1)  # [n]

    def gradient(w_: Tensor, s_: Tensor, s_sq_: Tensor, delta_: Tensor) -> Tensor:
        coupling = s_sq_ * (w_ @ affinity) - 2 * s_ * ((s_ * w_) @ affinity) + (s_sq_ * w_) @ affinity
        return 2 * delta_ * w_ + 2 * gamma * coupling - rho

    out = w.clone()
    flat = lipschitz <= 0
    if flat.any():
        out[flat] = linear_row_step(w[flat], gradient(w[flat], s[flat], s_sq[flat], delta[flat]))
    active = torch.nonzero(~flat).squeeze(1)
    step = 1.0 / lipschitz[active].clamp_min(1e-300)
    x, s, s_sq, delta = w[active], s[active], s_sq[active], delta[active]
    for _ in range(QP_MAX_ITER):
        if active.numel() == 0:
            break
        x_new = (x - step[:, None] * gradient(x, s, s_sq, delta)).clamp_(0.0, 1.0)
        moving = (x_new - x).abs().amax(dim=1) >= QP_TOL
        x = x_new
        if not bool(moving.all()):
            done = ~moving
            out[active[done]] = x[done]
            active, x, s, s_sq, delta, step = (t[moving] for t in (active, x, s, s_sq, delta, step))
    if active.numel():
        out[active] = x
    return out


def solve_s_rows(w: Tensor, b: Tensor, x0: Tensor, dist: Tensor, affinity: Tensor,
                  gamma: float, lam: float) -> Tensor:
    """S-step for a block of rows (docs/methods/divclust.md): minimiser over [0,1]^v, started from ``x0``, of
    g(x) = sum_j w_j^2 (x_j - b_j)^2 + gamma sum_jk A_jk w_j w_k (x_j - x_k)^2 + lam sum_j dist_j x_j
    (convex), by FISTA with adaptive restart."""
    w_affinity = w @ affinity  # [n, v]
    w_sq = w * w
    lipschitz = (2 * w_sq + 8 * gamma * w * w_affinity).amax(dim=1)  # [n], Gershgorin bound
    linear = lam * dist

    def gradient(x_: Tensor, w_: Tensor, w_sq_: Tensor, wa_: Tensor, b_: Tensor, lin_: Tensor) -> Tensor:
        smooth = w_ * wa_ * x_ - w_ * ((w_ * x_) @ affinity)
        return 2 * w_sq_ * (x_ - b_) + 4 * gamma * smooth + lin_

    out = x0.clone()
    flat = lipschitz <= 0
    if flat.any():
        i = flat
        out[i] = linear_row_step(x0[i], gradient(x0[i], w[i], w_sq[i], w_affinity[i], b[i], linear[i]))
    active = torch.nonzero(~flat).squeeze(1)
    x = x0[active]
    y = x.clone()
    t = torch.ones(active.numel(), dtype=x.dtype, device=x.device)
    w, w_sq, w_affinity, b, linear = w[active], w_sq[active], w_affinity[active], b[active], linear[active]
    step = 1.0 / lipschitz[active].clamp_min(1e-300)
    for _ in range(QP_MAX_ITER):
        if active.numel() == 0:
            break
        x_new = (y - step[:, None] * gradient(y, w, w_sq, w_affinity, b, linear)).clamp_(0.0, 1.0)
        change = x_new - x
        moving = change.abs().amax(dim=1) >= QP_TOL
        # Adaptive restart (O'Donoghue & Candes): drop the momentum when it points uphill.
        restart = ((y - x_new) * change).sum(dim=1) > 0
        t_new = torch.where(restart, torch.ones_like(t), (1 + torch.sqrt(1 + 4 * t * t)) / 2)
        momentum = torch.where(restart, torch.zeros_like(t), (t - 1) / t_new)
        y = x_new + momentum[:, None] * change
        x, t = x_new, t_new
        if not bool(moving.all()):
            done = ~moving
            out[active[done]] = x[done]
            keep = moving
            active, x, y, t, w, w_sq, w_affinity, b, linear, step = (
                v[keep] for v in (active, x, y, t, w, w_sq, w_affinity, b, linear, step)
            )
    if active.numel():
        out[active] = x
    return out


def unit_weight_jacobi(affinity: Tensor, gamma: float) -> tuple[Tensor, Tensor]:
    """Operators of the unit-weight S-step: (coupling [v, v], inv_diag [v]) with
    inv_diag = 1 / (2 + 4 gamma (A 1 - diag A)) and coupling_kj = 4 gamma A_kj inv_diag_j for k != j, 0 on
    the diagonal, so that one Jacobi sweep is ``x @ coupling + (2 b - lam dist) * inv_diag``."""
    off_diagonal = affinity - torch.diag(torch.diagonal(affinity))
    inv_diag = 1.0 / (2.0 + 4.0 * gamma * off_diagonal.sum(dim=1))  # [v]
    coupling = (4.0 * gamma) * off_diagonal * inv_diag[None, :]  # [v, v]
    return coupling, inv_diag


def solve_s_rows_unit_weights(b: Tensor, x0: Tensor, dist: Tensor, coupling: Tensor, inv_diag: Tensor,
                              lam: float, *, coupling_low: Tensor | None = None) -> Tensor:
    """S-step for a block of rows whose weights are all 1: minimiser over [0,1]^v, started from ``x0``, of
    g(x) = sum_j (x_j - b_j)^2 + gamma sum_jk A_jk (x_j - x_k)^2 + lam sum_j dist_j x_j, by projected Jacobi
    (``coupling``, ``inv_diag`` from ``unit_weight_jacobi``).

    With ``coupling_low`` (``coupling`` in float32), the first sweeps run in float32 until no coordinate
    moves by more than ``LOW_PRECISION_TOL``; the float64 sweeps then converge to the same fixed point (the
    map is a contraction whatever the start), only from a closer start. Each row stops when its largest
    change in a float64 sweep is below ``QP_TOL``."""
    offset = (2.0 * b - lam * dist) * inv_diag[None, :]  # [n, v]
    start = x0
    if coupling_low is not None:
        start = _jacobi_sweeps(offset.to(coupling_low.dtype), x0.to(coupling_low.dtype), coupling_low,
                               LOW_PRECISION_TOL, LOW_PRECISION_MAX_ITER).to(x0.dtype)
    return _jacobi_sweeps(offset, start, coupling, QP_TOL, QP_MAX_ITER)


def _jacobi_sweeps(offset: Tensor, x0: Tensor, coupling: Tensor, tol: float, max_iter: int) -> Tensor:
    """x <- clamp(offset + x @ coupling, 0, 1) per row until the row's largest change is below ``tol``."""
    out = x0.clone()
    active = torch.arange(x0.shape[0], device=x0.device)
    x = x0
    for _ in range(max_iter):
        if active.numel() == 0:
            break
        x_new = torch.addmm(offset, x, coupling).clamp_(0.0, 1.0)
        moving = (x_new - x).abs_().amax(dim=1) >= tol
        x = x_new
        if not bool(moving.all()):
            done = ~moving
            out[active[done]] = x[done]
            active, x, offset = active[moving], x[moving], offset[moving]
    if active.numel():
        out[active] = x
    return out
