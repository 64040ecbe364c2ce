"""Algebraic iterative solvers on any :class:`operators.LinearOperator`: SIRT and (weighted) CGLS.

Both work in torch on the operator's device (CPU or CUDA), on one measurement ``[*out_shape]``
or a batch ``[B, *out_shape]`` (each item is solved independently: a batched run equals the
per-item runs, because items that meet the stopping rule are frozen).

Units follow the operator: for :class:`operators.CTProjector` the image is attenuation mu
[1/mm] and the data line integrals (dimensionless, mu x mm).
"""

from __future__ import annotations

import torch

from operators.base import LinearOperator, check_tensor
from operators.linalg import batch_dot

from .iteration import (
    Callback,
    Stopper,
    as_batch,
    check_iterations,
    expand_as,
    initial_image,
    safe_divide,
    where_active,
)

__all__ = ["sirt", "cgls"]


@torch.no_grad()
def sirt(
    op: LinearOperator,
    y: torch.Tensor,
    *,
    iterations: int = 100,
    tol: float = 0.0,
    relaxation: float = 1.0,
    nonneg: bool = True,
    x0: torch.Tensor | None = None,
    progress: bool = True,
    callback: Callback | None = None,
    upper: float | None = None,
) -> torch.Tensor:
    """Simultaneous Iterative Reconstruction Technique.

    ``x <- P(x + relaxation * C A^T R (y - A x))`` with ``R = 1 / A 1`` (inverse row sums),
    ``C = 1 / A^T 1`` (inverse column sums) and ``P`` the projection on ``x >= 0`` when
    ``nonneg``. Converges for ``0 < relaxation < 2`` to a weighted least-squares solution
    (for a non-negative ``A`` such as a CT projector).

    Parameters
    ----------
    op : LinearOperator
        Forward model ``A`` with non-negative entries (rows and columns with zero sum are
        ignored: pixels no ray sees stay at their start value).
    y : torch.Tensor, [*out_shape] or [B, *out_shape]
        Measurements (moved to ``op.device``).
    iterations : int
        Maximum number of iterations.
    tol : float
        Stop an item when ``||x_k+1 - x_k|| <= tol ||x_k+1||`` (0 disables).
    relaxation : float
        Step length in (0, 2).
    nonneg : bool
        Project on ``x >= 0`` after each step (attenuation cannot be negative).
    upper : float, optional
        Also project on ``x <= upper`` (same units as ``x``, e.g. 1/mm) after each step.
    x0 : torch.Tensor, optional
        Start image ``[*in_shape]`` or ``[B, *in_shape]``; zeros by default.
    progress : bool
        Show a tqdm progress bar.
    callback : callable, optional
        ``callback(k, x)`` after iteration ``k`` (1-based); returning True stops.

    Returns
    -------
    torch.Tensor, [*in_shape] or [B, *in_shape]
        The reconstruction, on ``op.device``.
    """
    check_iterations(iterations, tol)
    if upper is not None and not upper > 0:
        raise ValueError(f"upper must be > 0, got {upper!r}")
    if not 0.0 < relaxation < 2.0:
        raise ValueError(f"relaxation must be in (0, 2), got {relaxation}")
    yb, unbatched = as_batch(op, y)
    x = initial_image(op, x0, yb)
    ones_in = torch.ones(op.in_shape, dtype=yb.dtype, device=yb.device)
    ones_out = torch.ones(op.out_shape, dtype=yb.dtype, device=yb.device)
    row = op(ones_in)
    col = op.adjoint(ones_out)
    inv_row = safe_divide(torch.ones_like(row), row)
    inv_col = safe_divide(torch.ones_like(col), col) * relaxation
    stop = Stopper(yb.shape[0], iterations, tol, progress, "SIRT", yb.device)
    try:
        for k in range(1, iterations + 1):
            x_new = x + inv_col * op.adjoint(inv_row * (yb - op(x)))
            if nonneg or upper is not None:
                x_new.clamp_(min=0.0 if nonneg else None, max=upper)
            x_new = where_active(stop.active, x_new, x)
            stop.update((x_new - x).flatten(1).norm(dim=1), x_new.flatten(1).norm(dim=1))
            x = x_new
            if (callback is not None and callback(k, x)) or stop.done:
                break
    finally:
        stop.close()
    return x[0] if unbatched else x


@torch.no_grad()
def cgls(
    op: LinearOperator,
    y: torch.Tensor,
    *,
    iterations: int = 30,
    tol: float = 0.0,
    weights: torch.Tensor | None = None,
    x0: torch.Tensor | None = None,
    progress: bool = True,
    callback: Callback | None = None,
) -> torch.Tensor:
    """Conjugate gradients on the (weighted) normal equations ``A^T W A x = A^T W y``.

    Minimises ``||W^(1/2) (A x - y)||^2`` (least squares; weighted least squares with
    ``weights``, e.g. the inverse Poisson variance ``I0 exp(-y)``). CGLS has no constraint and
    semi-converges on noisy or under-determined data: the iteration count is the regulariser.

    Parameters
    ----------
    op : LinearOperator
        Forward model ``A``.
    y : torch.Tensor, [*out_shape] or [B, *out_shape]
        Measurements (moved to ``op.device``).
    iterations : int
        Maximum number of iterations.
    tol : float
        Stop an item when the normal-equation residual ``||A^T W (y - A x_k)||`` falls below
        ``tol`` times its start value (0 disables).
    weights : torch.Tensor, optional
        Non-negative data weights, broadcastable to ``y``'s shape.
    x0 : torch.Tensor, optional
        Start image ``[*in_shape]`` or ``[B, *in_shape]``; zeros by default.
    progress : bool
        Show a tqdm progress bar.
    callback : callable, optional
        ``callback(k, x)`` after iteration ``k`` (1-based); returning True stops.

    Returns
    -------
    torch.Tensor, [*in_shape] or [B, *in_shape]
        The reconstruction, on ``op.device``.
    """
    check_iterations(iterations, tol)
    yb, unbatched = as_batch(op, y)
    w = _check_weights(weights, yb)
    x = initial_image(op, x0, yb)
    r = yb - op(x)
    s = op.adjoint(w * r)
    p = s.clone()
    gamma = batch_dot(s, s)
    s0_norm = gamma.sqrt()
    stop = Stopper(yb.shape[0], iterations, tol, progress, "CGLS", yb.device)
    try:
        for k in range(1, iterations + 1):
            q = op(p)
            alpha = safe_divide(gamma, batch_dot(q, w * q)) * stop.active
            x = x + expand_as(alpha, x) * p
            r = r - expand_as(alpha, r) * q
            s = op.adjoint(w * r)
            gamma_new = batch_dot(s, s)
            beta = safe_divide(gamma_new, gamma)
            p = s + expand_as(beta, p) * p
            gamma = torch.where(stop.active, gamma_new, gamma)
            stop.update(gamma_new.sqrt(), s0_norm)
            if (callback is not None and callback(k, x)) or stop.done:
                break
    finally:
        stop.close()
    return x[0] if unbatched else x


def _check_weights(weights: torch.Tensor | None, yb: torch.Tensor) -> torch.Tensor | float:
    """Validate data weights (non-negative, finite, broadcastable to the batch) or return 1."""
    if weights is None:
        return 1.0
    check_tensor(weights, "weights")
    w = weights.to(device=yb.device, dtype=yb.dtype)
    try:
        fits = torch.broadcast_shapes(w.shape, yb.shape) == yb.shape
    except RuntimeError:
        fits = False
    if not fits:
        raise ValueError(f"weights of shape {tuple(w.shape)} do not broadcast to the data shape {tuple(yb.shape)}")
    if bool((w < 0).any()):
        raise ValueError("weights must be non-negative")
    return w
