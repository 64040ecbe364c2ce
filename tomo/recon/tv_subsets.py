"""TV reconstruction from many views: stochastic primal-dual (SPDHG) over interleaved view subsets.

Solves the same problem as :func:`tomo.recon.tv.tv_pdhg`,

    min_{0 <= mu <= upper}  1 / (2 c^2) sum_i || W_i^(1/2) (A_i mu - y_i) ||^2  +  weight * TV(mu / mu_water),

with the data split into ``m`` view subsets ``A_i`` (every ``m``-th view) and
``c^2 = sum_i ||W_i^(1/2) A_i||^2 mu_water^2`` (an upper bound of ``||W^(1/2) A||^2 mu_water^2``, equal
to it when the subsets' leading singular vectors agree, as they nearly do for interleaved views),
so the weight means what it means for :func:`tv_pdhg`.

Why: a full PDHG iteration costs one projection and one back-projection of *all* views, and TV
needs a few hundred iterations whatever the view count, so 181 views cost 6x as much as 30. SPDHG
(Chambolle, Ehrhardt, Richtarik, Schoenlieb, SIAM J. Optim. 2018, Alg. 1) updates the TV dual and
*one* data subset per iteration (serial sampling, probability ``1/m`` each), so an iteration costs
about what a 30-view PDHG iteration does, and it converges in about as many iterations as PDHG
does on the subset size (docs/benchmarks.md, HTC2022 section).

Step sizes (paper, Thm 4.3 condition ``tau sigma_i ||K_i||^2 < p_i``): ``sigma_i = rho r / ||K_i||``,
``tau = rho / (r max_i ||K_i|| / p_i)``, ``rho = 0.99``, with the blocks ``K_i = W_i^(1/2) A_i mu_w / c``
(``p_i = 1/m``) and ``G / sqrt(8)`` (TV, always updated, ``p = 1``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from operators.base import LinearOperator
from operators.linalg import gradient, gradient_adjoint, power_iteration, random_start
from operators.units import MU_WATER_PER_MM

from .iteration import Callback, Stopper, as_batch, check_iterations, initial_image
from .tv import _support, _tv_weights

__all__ = ["tv_spdhg", "SPDHG_BALANCE"]

#: primal-dual balance of SPDHG (sigma_i = rho r / ||K_i||); like tv_pdhg's it changes the speed only.
#: 0.1 was the fastest of {0.03, 0.1, 0.3} on the HTC2022 tb 90-degree file (docs/benchmarks.md).
SPDHG_BALANCE = 0.1
_RHO = 0.99


@torch.no_grad()
def tv_spdhg(
    ops: Sequence[LinearOperator],
    ys: Sequence[torch.Tensor],
    *,
    weight,
    iterations: int = 300,
    tol: float = 0.0,
    weights: Sequence[torch.Tensor] | None = None,
    nonneg: bool = True,
    upper: float | None = None,
    support: torch.Tensor | None = None,
    x0: torch.Tensor | None = None,
    balance: float = SPDHG_BALANCE,
    norm_iterations: int = 20,
    seed: int = 0,
    progress: bool = True,
    callback: Callback | None = None,
) -> torch.Tensor:
    """Isotropic-TV regularised least squares over view subsets, by SPDHG, with ``0 <= mu <= upper``.

    Parameters
    ----------
    ops : sequence of LinearOperator
        The forward models ``A_i`` of the ``m`` view subsets, all on the same 2-D image grid.
    ys : sequence of torch.Tensor
        Line integrals of each subset, ``[*A_i.out_shape]`` or ``[B, *A_i.out_shape]``.
    weight : float or sequence of float
        TV weight, as in :func:`tomo.recon.tv.tv_pdhg` (dimensionless), one or one per batch item.
    iterations : int
        Maximum number of iterations, each updating one subset (``m`` iterations = one epoch).
    tol : float
        Stop when the change over the last epoch ``||mu_k - mu_{k-m}|| <= tol ||mu_k||`` for every
        item (checked once per epoch; 0 disables).
    weights : sequence of torch.Tensor, optional
        Data weights per subset (e.g. Poisson), broadcastable to ``ys[i]``.
    nonneg : bool
        Constrain ``mu >= 0``.
    upper : float, optional
        Upper bound of ``mu`` in 1/mm (e.g. the known attenuation of the object's material).
    support : torch.Tensor, optional
        Boolean ``[H, W]`` mask; ``mu = 0`` outside (see :mod:`tomo.recon.support`).
    x0 : torch.Tensor, optional
        Start image (1/mm), ``[H, W]`` or ``[B, H, W]``.
    balance : float
        Primal-dual balance ``r``; speed only.
    norm_iterations : int
        Power iterations for each ``||W_i^(1/2) A_i||``.
    seed : int
        Seed of the subset order (a random permutation per epoch, so each subset is used once per epoch).
    progress : bool
        tqdm progress bar.
    callback : callable, optional
        ``callback(k, mu)`` after iteration ``k``; returning True stops.

    Returns
    -------
    torch.Tensor, [H, W] or [B, H, W]
        Attenuation [1/mm].
    """
    check_iterations(iterations, tol)
    m = len(ops)
    if m == 0 or len(ys) != m or (weights is not None and len(weights) != m):
        raise ValueError(f"need one data tensor (and weight) per subset operator, got {m} operators, {len(ys)} data")
    shape = ops[0].in_shape
    if len(shape) != 2 or any(op.in_shape != shape for op in ops):
        raise ValueError("all subset operators must act on the same 2-D image grid")
    if not balance > 0:
        raise ValueError(f"balance must be > 0, got {balance!r}")
    if upper is not None and not upper > 0:
        raise ValueError(f"upper must be a positive attenuation in 1/mm, got {upper!r}")
    batched = [as_batch(op, y) for op, y in zip(ops, ys)]
    yb = [b[0] for b in batched]
    unbatched = batched[0][1]
    nb = yb[0].shape[0]
    if any(y.shape[0] != nb for y in yb):
        raise ValueError("all subsets need the same batch size")
    dtype, device = yb[0].dtype, yb[0].device
    mu_w = MU_WATER_PER_MM
    sqrt_w = [
        torch.ones((), dtype=dtype, device=device)
        if weights is None
        else torch.broadcast_to(weights[i].to(yb[i]), yb[i].shape).sqrt()
        for i in range(m)
    ]

    # ||W_i^(1/2) A_i|| per subset and item
    def normal(i: int):
        def apply(x: torch.Tensor) -> torch.Tensor:
            return ops[i].adjoint(sqrt_w[i] * sqrt_w[i] * ops[i](x))

        return apply

    norms = []
    for i in range(m):
        start = random_start((nb,) + shape, dtype, device)
        norms.append(power_iteration(normal(i), start, norm_iterations).sqrt())
    a_norm = torch.stack(norms)  # [m, B]
    if bool((a_norm == 0).any()):
        raise ValueError("the (weighted) operator of a subset is zero: nothing to reconstruct")
    c = a_norm.pow(2).sum(0).sqrt() * mu_w  # [B]
    # ||K_i||, [m, B], with 2 % margin: power iteration estimates from below
    block = 1.02 * a_norm * mu_w / c
    lam = _tv_weights(weight, nb, yb[0]) * math.sqrt(8.0)
    inv_sqrt8 = 1.0 / math.sqrt(8.0)
    p_i = 1.0 / m
    tau = _RHO / (balance * torch.clamp(block.max(0).values / p_i, min=1.0))  # [B]; TV block: norm 1, p = 1
    sigma = _RHO * balance / block  # [m, B]
    sigma_tv = _RHO * balance
    view = (-1, 1, 1)
    cb = c.reshape(view)

    def fwd(i, u):
        return sqrt_w[i] * ops[i](u) * (mu_w / cb)

    def adj(i, p):
        return ops[i].adjoint(sqrt_w[i] * p) * (mu_w / cb)

    data = [sqrt_w[i] * yb[i] / cb for i in range(m)]
    lo, hi = (0.0 if nonneg else None), (None if upper is None else upper / mu_w)
    u = initial_image(ops[0], None if x0 is None else x0 / mu_w, yb[0])
    mask = _support(support, shape, u)
    if lo is not None or hi is not None:
        u.clamp_(min=lo, max=hi)
    if mask is not None:
        u.mul_(mask)
    p = [torch.zeros_like(y) for y in yb]
    q = torch.zeros((nb, 2) + shape, dtype=dtype, device=device)
    z = torch.zeros_like(u)  # sum_i K_i^T p_i + G^T q / sqrt(8)
    z_bar = z.clone()
    gen = torch.Generator().manual_seed(int(seed))
    order: list[int] = []
    u_epoch = u.clone()
    stop = Stopper(nb, iterations, 0.0, progress, "TV (SPDHG)", device)
    try:
        for k in range(1, iterations + 1):
            u = u - tau.reshape(view) * z_bar
            if lo is not None or hi is not None:
                u.clamp_(min=lo, max=hi)
            if mask is not None:
                u.mul_(mask)
            if not order:
                order = torch.randperm(m, generator=gen).tolist()
            i = order.pop()
            s_i = sigma[i].reshape(view)
            p_new = (p[i] + s_i * (fwd(i, u) - data[i])) / (1.0 + s_i)
            q_new = q + sigma_tv * inv_sqrt8 * gradient(u)
            norm = q_new.pow(2).sum(1, keepdim=True).sqrt()
            q_new = q_new * torch.where(norm > lam, lam / norm.clamp_min(1e-30), torch.ones_like(norm))
            dz_data = adj(i, p_new - p[i])
            dz_tv = inv_sqrt8 * gradient_adjoint(q_new - q)
            p[i], q = p_new, q_new
            z = z + dz_data + dz_tv
            z_bar = z + dz_data / p_i + dz_tv  # extrapolation by 1 / p for each updated block
            stop.update(torch.zeros(nb, device=device), torch.ones(nb, device=device))
            if callback is not None and callback(k, u * mu_w):
                break
            if k % m == 0:
                change = (u - u_epoch).flatten(1).norm(dim=1)
                if tol > 0 and bool((change <= tol * u.flatten(1).norm(dim=1)).all()):
                    break
                u_epoch = u.clone()
    finally:
        stop.close()
    mu = u * mu_w
    return mu[0] if unbatched else mu
