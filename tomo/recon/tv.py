"""Total-variation regularised reconstruction by the primal-dual algorithm of Chambolle and Pock.

Solves, for attenuation ``mu`` [1/mm] on the operator's grid,

    min_{mu >= 0}  1 / (2 c^2) || W^(1/2) (A mu - y) ||^2  +  weight * TV(mu / mu_water)

with ``TV`` the isotropic total variation (sum over pixels of the Euclidean norm of the
forward-difference gradient, Neumann boundary), ``mu_water = 0.0192 / mm`` and
``c = || W^(1/2) A ||_2 * mu_water`` (estimated by power iteration).

Why this scaling: dividing the data term by ``c^2`` makes its curvature 1 at the best-seen
image frequency whatever the number of views, the detector, the pixel size or the scale of the
weights ``W``, and measuring the image in units of water makes it dimensionless; so one
``weight`` transfers across geometries (see ``docs/reconstruction.md`` and
``scripts/tune_tv.py`` for the tuned defaults).

The algorithm is PDHG (Chambolle & Pock 2011, Alg. 1 with theta = 1) on
``K = [B; G]`` with ``B = W^(1/2) A mu_water / c`` (norm 1) and ``G = grad / sqrt(8)``
(norm <= 1), so ``||K|| <= sqrt(2)`` and the step sizes ``tau = 1 / (L r)``, ``sigma = r / L``
(``L = 1.01 sqrt(2)``, ``r`` the primal-dual balance) satisfy ``tau sigma ||K||^2 < 1``.
"""

from __future__ import annotations

import math

import torch

from operators.base import LinearOperator
from operators.linalg import gradient, gradient_adjoint, power_iteration, random_start
from operators.units import MU_WATER_PER_MM

from .iteration import Callback, Stopper, as_batch, check_iterations, expand_as, initial_image, where_active
from .iterative import _check_weights

__all__ = ["tv_pdhg", "gradient", "gradient_adjoint", "total_variation", "MU_WATER_PER_MM"]

#: primal-dual balance ``r`` (``sigma = r / L``, ``tau = 1 / (r L)``). It changes the speed, not the
#: solution; 0.03 converged fastest of {0.01, 0.03, 0.1, 0.3, 1} on train slices (parallel 8/30
#: views, fan beam 60 views, 256 x 256, FBP start) and on a 64 x 64 phantom (see docs/reconstruction.md).
DEFAULT_BALANCE = 0.03


def total_variation(u: torch.Tensor) -> torch.Tensor:
    """Isotropic TV of ``[B, H, W]`` images, per item ``[B]``."""
    return gradient(u).pow(2).sum(1).sqrt().flatten(1).sum(1)


def _tv_weights(weight, batch: int, like: torch.Tensor) -> torch.Tensor:
    """Validate the TV weight(s) and return them as ``[B, 1, 1, 1]``."""
    lam = torch.as_tensor(weight, dtype=torch.float64).reshape(-1)
    if lam.numel() == 1:
        lam = lam.expand(batch)
    if lam.numel() != batch:
        raise ValueError(f"weight must be one number or one per batch item ({batch}), got {lam.numel()}")
    if not bool(torch.isfinite(lam).all()) or bool((lam < 0).any()):
        raise ValueError(f"TV weight must be finite and >= 0, got {weight!r}")
    return lam.to(device=like.device, dtype=like.dtype).reshape(batch, 1, 1, 1)


def _support(support: torch.Tensor | None, shape: tuple, like: torch.Tensor) -> torch.Tensor | None:
    """Validate a support mask ``[H, W]`` and return it as a 0/1 tensor like ``like``."""
    if support is None:
        return None
    mask = torch.as_tensor(support)
    if tuple(mask.shape) != tuple(shape):
        raise ValueError(f"support must be a mask of the image shape {tuple(shape)}, got {tuple(mask.shape)}")
    if not bool(mask.any()):
        raise ValueError("support is empty: no pixel may hold the object")
    return (mask.to(device=like.device) != 0).to(like.dtype)


@torch.no_grad()
def tv_pdhg(
    op: LinearOperator,
    y: torch.Tensor,
    *,
    weight,
    iterations: int = 300,
    tol: float = 0.0,
    weights: torch.Tensor | None = None,
    nonneg: bool = True,
    upper: float | None = None,
    support: torch.Tensor | None = None,
    x0: torch.Tensor | None = None,
    balance: float = DEFAULT_BALANCE,
    norm_iterations: int = 30,
    progress: bool = True,
    callback: Callback | None = None,
) -> torch.Tensor:
    """Isotropic-TV regularised (weighted) least squares by Chambolle-Pock, with ``mu >= 0``.

    Parameters
    ----------
    op : LinearOperator
        Forward model ``A`` on 2-D images ``(H, W)``: attenuation [1/mm] -> line integrals.
    y : torch.Tensor, [*out_shape] or [B, *out_shape]
        Line integrals (moved to ``op.device``).
    weight : float or sequence of float or torch.Tensor [B]
        Regularisation weight (dimensionless, relative to the normalised data term; see the
        module docstring), one for all items or one per batch item (e.g. to scan weights in
        one batched run). 0 gives non-negative (weighted) least squares.
    iterations : int
        Maximum number of iterations.
    tol : float
        Stop an item when ``||mu_k+1 - mu_k|| <= tol ||mu_k+1||`` (0 disables).
    weights : torch.Tensor, optional
        Non-negative data weights broadcastable to the data, e.g. the inverse Poisson variance
        ``I0 exp(-y)``; only their relative size matters.
    nonneg : bool
        Constrain ``mu >= 0``.
    upper : float, optional
        Upper bound of ``mu`` in 1/mm (e.g. the attenuation of the object's densest material):
        with limited-angle data it keeps the unmeasured directions from overshooting.
    support : torch.Tensor, optional
        Boolean ``[H, W]`` mask of where the object may be; ``mu = 0`` outside (e.g. a disc
        fitted to the shadow edges, :func:`tomo.recon.support.fit_disc`).
    x0 : torch.Tensor, optional
        Start image (attenuation [1/mm]), ``[H, W]`` or ``[B, H, W]``; zeros by default.
    balance : float
        Primal-dual step balance ``r`` (``sigma = r / L``, ``tau = 1 / (r L)``); affects speed only.
    norm_iterations : int
        Power iterations for ``||W^(1/2) A||`` (the unweighted norm is cached on the operator).
    progress : bool
        Show a tqdm progress bar.
    callback : callable, optional
        ``callback(k, mu)`` after iteration ``k`` (1-based) with the current attenuation;
        returning True stops.

    Returns
    -------
    torch.Tensor, [H, W] or [B, H, W]
        Attenuation [1/mm], on ``op.device``.
    """
    check_iterations(iterations, tol)
    if len(op.in_shape) != 2:
        raise ValueError(f"TV needs a 2-D image operator, got in_shape {op.in_shape}")
    if not balance > 0:
        raise ValueError(f"balance must be > 0, got {balance!r}")
    if upper is not None and not upper > 0:
        raise ValueError(f"upper must be a positive attenuation in 1/mm, got {upper!r}")
    lo, hi = (0.0 if nonneg else None), (None if upper is None else upper / MU_WATER_PER_MM)
    yb, unbatched = as_batch(op, y)
    w = _check_weights(weights, yb)
    mu_w = MU_WATER_PER_MM
    b_count = yb.shape[0]
    lam = _tv_weights(weight, b_count, yb) * math.sqrt(8.0)  # [B, 1, 1, 1]; TV weight on G = grad / sqrt(8)
    if weights is None:
        sqrt_w = torch.ones((), dtype=yb.dtype, device=yb.device)
        a_norm = torch.full((b_count,), op.norm(), dtype=yb.dtype, device=yb.device)
    else:
        w = torch.broadcast_to(w, yb.shape)
        sqrt_w = w.sqrt()
        start = random_start((b_count,) + op.in_shape, yb.dtype, yb.device)
        a_norm = power_iteration(lambda x: op.adjoint(w * op(x)), start, norm_iterations).sqrt()
    if bool((a_norm == 0).any()):
        raise ValueError("the (weighted) operator is zero for some item: nothing to reconstruct")
    c = expand_as(a_norm * mu_w, yb)  # [B, 1, 1]
    scale_img = mu_w / c.reshape((-1, 1, 1))  # B^T p = scale_img * A^T(sqrt_w * p)
    data = sqrt_w * yb / c  # b

    def fwd(u):  # B u
        return sqrt_w * op(u) * (mu_w / c)

    def adj(p):  # B^T p
        return op.adjoint(sqrt_w * p) * scale_img

    inv_sqrt8 = 1.0 / math.sqrt(8.0)
    lip = 1.01 * math.sqrt(2.0)
    sigma, tau = balance / lip, 1.0 / (balance * lip)

    u = initial_image(op, None if x0 is None else x0 / mu_w, yb)
    mask = _support(support, op.in_shape, u)
    if lo is not None or hi is not None:
        u.clamp_(min=lo, max=hi)
    if mask is not None:
        u.mul_(mask)
    u_bar = u.clone()
    p = torch.zeros_like(yb)
    q = torch.zeros((b_count, 2) + op.in_shape, dtype=yb.dtype, device=yb.device)
    stop = Stopper(b_count, iterations, tol, progress, "TV", yb.device)
    try:
        for k in range(1, iterations + 1):
            p_new = (p + sigma * (fwd(u_bar) - data)) / (1.0 + sigma)
            q_new = q + sigma * inv_sqrt8 * gradient(u_bar)
            # projection on {|q_pixel| <= lam}; lam = 0 gives q = 0 (no regularisation)
            norm = q_new.pow(2).sum(1, keepdim=True).sqrt()
            q_new = q_new * torch.where(norm > lam, lam / norm.clamp_min(1e-30), torch.ones_like(norm))
            u_new = u - tau * (adj(p_new) + inv_sqrt8 * gradient_adjoint(q_new))
            if lo is not None or hi is not None:
                u_new.clamp_(min=lo, max=hi)
            if mask is not None:
                u_new.mul_(mask)
            active = stop.active
            p, q = where_active(active, p_new, p), where_active(active, q_new, q)
            u_bar = where_active(active, 2.0 * u_new - u, u_bar)
            u_new = where_active(active, u_new, u)
            stop.update((u_new - u).flatten(1).norm(dim=1), u_new.flatten(1).norm(dim=1))
            u = u_new
            if (callback is not None and callback(k, u * mu_w)) or stop.done:
                break
    finally:
        stop.close()
    mu = u * mu_w
    return mu[0] if unbatched else mu
