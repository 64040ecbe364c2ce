"""Diffusion with Spherical Gaussian constraint (DSG; Yang et al., ICML 2024), Jacobian-free.

DPS adds ``-zeta_t grad`` to the sample of ``x_{t-1}``; with few steps a step large enough to fit
the data throws ``x_{t-1}`` off the thin shell where the prior's ``x_{t-1}`` live (radius
``sqrt(n) sigma_t`` around the step's mean, ``n`` pixels), and the network is then evaluated where
it was never trained. DSG instead *chooses* the noise of the step on that sphere: the direction is
a mix of a fresh Gaussian draw and the steepest-descent direction of the residual,

    d* = -sqrt(n) sigma_t g / ||g||,   d = sigma_t z + w (d* - sigma_t z),
    x_{t-1} = mean + sqrt(n) sigma_t d / ||d||,

(``w`` the guidance rate, 1 = deterministic descent). The step length is fixed by the noise level,
not by a step size, so it cannot diverge. The paper takes ``g = grad_{x_t} ||y - A x0_hat(x_t)||``
through the network; here ``g = grad_{x0} ||r(x0_hat)||^2`` on the denoised estimate (as in MPGD,
:mod:`tomo.solvers.mpgd`): no backward pass. ``mean`` and ``sigma_t`` are the DDIM step's
(``eta``: fraction of fresh noise, as in :func:`~tomo.solvers.dds.dds`).
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from operators.base import LinearOperator
from tomo.priors.noising import tweedie_x0

from .sampler_setup import (
    SolverResult,
    check_number,
    check_prior,
    network_precision,
    standard_normal,
    start_sampling,
)
from .x0_loop import denoise

__all__ = ["dsg", "spherical_step"]


def _item_norm(v: torch.Tensor) -> torch.Tensor:
    return v.flatten(1).norm(dim=1).clamp_min(1e-12).reshape((-1,) + (1,) * (v.dim() - 1))


def spherical_step(
    mean: torch.Tensor, sigma: float, grad: torch.Tensor, noise: torch.Tensor, weight: float
) -> torch.Tensor:
    """``x_{t-1}`` on the sphere of radius ``sqrt(n) sigma`` around ``mean`` (all [B, 1, H, W]).

    The direction mixes ``noise`` (standard normal) and ``-grad`` with the guidance rate ``weight``
    in [0, 1]; every item is normalised on its own.
    """
    radius = sigma * mean[0].numel() ** 0.5
    d_star = -radius * grad / _item_norm(grad)
    d_sample = sigma * noise
    d = d_sample + weight * (d_star - d_sample)
    return mean + radius * d / _item_norm(d)


def dsg(
    prior,
    operator: LinearOperator,
    y: torch.Tensor,
    *,
    weights: torch.Tensor | None = None,
    steps: int = 25,
    eta: float = 0.85,
    weight: float = 0.2,
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
    """Sample ``p(x | y)`` for ``y = A x + n`` with DDIM steps constrained to the noise sphere (DSG).

    Parameters
    ----------
    prior, operator, y, weights
        As for :func:`~tomo.solvers.mpgd.mpgd`.
    steps : int
        DDIM steps = network evaluations.
    eta : float in (0, 1]
        Fraction of fresh noise of the step; the guidance acts through it (0 = no guidance).
    weight : float in [0, 1]
        Guidance rate ``w``: 0 = unconditional DDIM, 1 = the whole noise of the step spent on
        descending the residual.
    denoise_sigma, seed, clip_x0, normalize, spacing, x_init, start, autocast_dtype, progress
        As for :func:`~tomo.solvers.mpgd.mpgd`.

    Returns
    -------
    SolverResult
        ``x`` [B, 1, H, W]: the last step's ``x0_hat`` (denoised with ``denoise_sigma > 0``).
    """
    check_prior(prior)
    check_number("eta", eta, 0.0, 1.0)
    check_number("weight", weight, 0.0, 1.0)
    check_number("denoise_sigma", denoise_sigma, 0.0)
    schedule, data, generator, x = start_sampling(
        prior, operator, y, weights, steps=steps, spacing=spacing, start=start, normalize=normalize, seed=seed,
        x_init=x_init,
    )  # fmt: skip
    precision = network_precision(data.y.device, autocast_dtype)
    history = []
    with torch.no_grad():
        for t, abar, abar_prev in tqdm(schedule, desc="DSG", disable=None if progress else True, leave=False):
            with precision:
                eps = prior.eps(x, t, generator=generator).to(x.dtype)
            x0 = tweedie_x0(x, eps, abar)
            x0 = x0.clamp(-1.0, 1.0) if clip_x0 else x0
            if abar_prev >= 1.0:  # the last step has no noise left to steer
                x = x0
                history.append([float(v) for v in data.residual_norm(x0)])
                break
            grad, norm = data.residual_gradient(x0)
            history.append([float(v) for v in norm])
            scale = (1.0 - abar_prev) ** 0.5
            mean = abar_prev**0.5 * x0 + scale * (1.0 - eta**2) ** 0.5 * eps
            x = spherical_step(mean, scale * eta, grad, standard_normal(x.shape, generator, x), weight)
            if not bool(torch.isfinite(x).all()):
                raise FloatingPointError(f"DSG produced non-finite values at timestep {t}")
        if denoise_sigma > 0:
            with precision:
                x = denoise(prior, x, denoise_sigma, generator, clip=clip_x0)
    return SolverResult(
        x=x,
        network_evaluations=len(schedule) + (1 if denoise_sigma > 0 else 0),
        gradient_evaluations=0,
        operator_calls=data.operator_calls,
        residual_norms=history,
        timesteps=list(schedule.timesteps),
    )
