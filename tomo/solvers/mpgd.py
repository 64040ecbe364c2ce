"""Residual-gradient steps on the denoised estimate: MPGD (He et al., ICLR 2024) with DPS's step size.

DPS (:mod:`tomo.solvers.dps`) corrects ``x_t`` by ``zeta_t grad_{x_t} ||y - A x0_hat(x_t)||^2``,
a gradient through the network (one backward pass per step, and ~1000 steps). Manifold-preserving
guided diffusion takes the same residual gradient with respect to the denoised estimate itself,

    x0 <- x0_hat - c grad_{x0} ||r(x0)||^2          (repeated ``grad_steps`` times),

so the network's Jacobian ``d x0_hat / d x_t`` is replaced by the identity (up to
``1 / sqrt(abar_t)``): no backward pass, and the correction stays on the data manifold that
``x0_hat`` lies on. The corrected estimate is re-noised with DDIM (``eta``: fraction of fresh noise,
as in :func:`~tomo.solvers.dds.dds`), which is what lets tens of steps replace DPS's thousand.

Two step-size rules:

* ``"normalized"`` -- the DPS paper's ``c = zeta / ||r(x0)||`` (Algorithm 1): the step length does
  not depend on the scale of the residual, so ``zeta`` transfers between data sets;
* ``"lipschitz"`` -- ``c = zeta / 2`` in the normalised units of
  :class:`~tomo.solvers.data_terms.DataFidelity` (``||s W^{1/2} A|| = 1``), i.e. Landweber
  iterations with step ``zeta`` times the inverse Lipschitz constant (stable for ``zeta < 2``);
* ``"steepest"`` -- ``zeta`` times the exact line search along the gradient,
  ``||g||^2 / ||s W^{1/2} A g||^2`` (one more ``A`` per step), which adapts the step to how well
  the gradient's direction is measured.
"""

from __future__ import annotations

import torch

from operators.base import LinearOperator
from operators.linalg import gradient, gradient_adjoint

from .data_terms import DataFidelity
from .sampler_setup import SolverResult, check_number, check_prior, start_sampling
from .x0_loop import ddim_renoise, guided_ddim

__all__ = ["mpgd", "residual_descent", "STEP_RULES"]

STEP_RULES = ("normalized", "lipschitz", "steepest")


def smooth_tv(x: torch.Tensor, smoothing: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradient of the smoothed isotropic TV ``sum sqrt(|D x|^2 + smoothing^2)`` of ``x`` [B, 1, H, W],
    and the pixel weights ``1 / sqrt(|D x|^2 + smoothing^2)`` [B, 1, H, W] of its curvature."""
    d = gradient(x[:, 0])
    inv = 1.0 / (d.pow(2).sum(1, keepdim=True) + smoothing**2).sqrt()
    return gradient_adjoint(d * inv)[:, None], inv


def _steepest_descent(data, x0, steps: int, zeta: float, tv_weight: float, tv_smoothing: float):
    """Steepest descent with exact line search; the residual is updated, not recomputed
    (``A`` is linear: ``r(x - a g) = r(x) + a s W^{1/2} A g``), so a step costs one ``A`` and one ``A^T``."""
    shape = (-1,) + (1,) * (x0.dim() - 1)
    r = data.residual(x0)
    for _ in range(steps):
        grad = data.gradient_from_residual(r)
        curvature: torch.Tensor | float = 0.0
        if tv_weight > 0:
            tv_grad, inv = smooth_tv(x0, tv_smoothing)
            grad = grad + tv_weight * tv_grad
            curvature = tv_weight * (gradient(grad[:, 0]).pow(2).sum(1, keepdim=True) * inv).flatten(1).sum(1)
        ag = data.weighted_forward(grad)
        step = zeta * grad.flatten(1).pow(2).sum(1) / (ag.flatten(1).pow(2).sum(1) + curvature).clamp_min(1e-30)
        x0 = x0 - step.reshape(shape) * grad
        r = r + step.reshape((-1,) + (1,) * (r.dim() - 1)) * ag
    return x0


def residual_descent(
    data: DataFidelity,
    x0: torch.Tensor,
    steps: int,
    zeta: float,
    rule: str,
    tv_weight: float = 0.0,
    tv_smoothing: float = 0.01,
) -> torch.Tensor:
    """``steps`` gradient steps on ``||r(x0)||^2`` from ``x0`` [B, 1, H, W] (see the module's rules).

    Each item gets its own step under ``"normalized"`` (its own residual norm) and ``"steepest"``.
    ``tv_weight > 0`` (``"steepest"`` only) descends ``1/2 ||r||^2 + tv_weight TV_smoothing(x0)``
    instead, the line search using the TV term's curvature at ``x0`` (MPGD's loss guidance with
    a second loss).
    """
    if rule == "steepest":
        return _steepest_descent(data, x0, steps, zeta, tv_weight, tv_smoothing)
    for _ in range(steps):
        grad, norm = data.residual_gradient(x0)  # grad of 1/2 ||r||^2
        if rule == "normalized":
            # zeta / ||r|| * grad ||r||^2 = 2 zeta / ||r|| * grad (1/2 ||r||^2)
            factor = (2.0 * zeta / norm.clamp_min(1e-12)).reshape((-1,) + (1,) * (x0.dim() - 1))
            x0 = x0 - factor * grad
        else:
            x0 = x0 - zeta * grad
    return x0


def mpgd(
    prior,
    operator: LinearOperator,
    y: torch.Tensor,
    *,
    weights: torch.Tensor | None = None,
    steps: int = 25,
    eta: float = 0.85,
    grad_steps: int = 5,
    zeta: float = 1.0,
    step_rule: str = "lipschitz",
    tv_weight: float = 0.0,
    tv_smoothing: float = 0.01,
    denoise_sigma: float = 0.0,
    seed: int | torch.Generator | None = None,
    clip_x0: bool = True,
    normalize: bool = True,
    spacing: str = "trailing",
    x_init: torch.Tensor | None = None,
    start: float = 1.0,
    autocast_dtype: torch.dtype | None = None,
    progress: bool = True,
) -> SolverResult:
    """Sample ``p(x | y)`` for ``y = A x + n`` with residual-gradient steps on ``x0_hat`` (MPGD).

    Parameters
    ----------
    prior
        Diffusion prior with ``eps(x_t, t, generator=None)`` and ``alphas_cumprod`` [T].
    operator : LinearOperator
        Forward model on model-range images ``(H, W)``.
    y : torch.Tensor
        Measurements ``[*out_shape]``, ``[B, *out_shape]`` or ``[B, 1, *out_shape]``.
    weights : torch.Tensor, optional
        Inverse noise variances of ``y`` (``None``: white Gaussian noise).
    steps : int
        DDIM steps = network evaluations.
    eta : float in [0, 1]
        Fraction of fresh noise when re-noising (0 = deterministic DDIM).
    grad_steps : int
        Residual-gradient steps on ``x0_hat`` per DDIM step (0 = unconditional DDIM); each costs
        one ``A`` and one ``A^T``.
    zeta : float
        Step size (> 0) of the rule ``step_rule`` (module docstring).
    step_rule : {"lipschitz", "normalized"}
        ``"lipschitz"``: Landweber step ``zeta`` (normalised units, stable below 2);
        ``"normalized"``: the DPS paper's ``zeta / ||r||``; ``"steepest"``: ``zeta`` times the
        exact line search.
    tv_weight : float
        > 0 (with ``step_rule="steepest"``): descend ``1/2 ||r||^2 + tv_weight TV(x0)`` instead,
        TV smoothed by ``tv_smoothing`` (model-range units, 0.01 = 15 HU for a 1500 HU range).
    tv_smoothing : float
        Smoothing of the TV term (> 0).
    denoise_sigma : float
        > 0: end with one more network evaluation that denoises the result at this noise level
        (model range; :func:`~tomo.solvers.dds.denoise`).
    seed, clip_x0, normalize, spacing, x_init, start, autocast_dtype, progress
        As for :func:`~tomo.solvers.dds.dds`.

    Returns
    -------
    SolverResult
        ``x`` [B, 1, H, W] in model range (the corrected estimate of the last step, denoised with
        ``denoise_sigma > 0``); no gradient evaluations through the network.
    """
    check_prior(prior)
    check_number("eta", eta, 0.0, 1.0)
    check_number("grad_steps", grad_steps, 0, 10_000, integer=True)
    check_number("zeta", zeta, 0.0)
    check_number("denoise_sigma", denoise_sigma, 0.0)
    if step_rule not in STEP_RULES:
        raise ValueError(f"step_rule must be one of {', '.join(STEP_RULES)}, got {step_rule!r}")
    check_number("tv_weight", tv_weight, 0.0)
    check_number("tv_smoothing", tv_smoothing, 1e-12)
    if tv_weight > 0 and step_rule != "steepest":
        raise ValueError("tv_weight needs step_rule='steepest' (its line search sizes the TV term's step)")
    schedule, data, generator, x = start_sampling(
        prior, operator, y, weights, steps=steps, spacing=spacing, start=start, normalize=normalize, seed=seed,
        x_init=x_init,
    )  # fmt: skip

    def data_step(x0, t, abar):
        return residual_descent(data, x0, grad_steps, zeta, step_rule, tv_weight, tv_smoothing)

    return guided_ddim(
        prior, data, schedule, generator, x, data_step, ddim_renoise(eta), name="MPGD", clip_x0=clip_x0,
        denoise_sigma=denoise_sigma, autocast_dtype=autocast_dtype, progress=progress,
        divergence_hint=f"; lower zeta (now {zeta})",
    )  # fmt: skip
