"""The sampling loop that DDS and the Jacobian-free successors of DPS share.

Every step: one network evaluation gives ``eps``; Tweedie's formula gives the denoised estimate
``x0_hat`` (clipped to the model range); a solver-specific **data step** moves ``x0_hat`` towards
the measurements without a backward pass through the network (CG for DDS, steepest descent for
MPGD, a pseudo-inverse for PiGDM, Langevin for DAPS); a **re-noising step** takes the corrected
``x0`` to the next, lower noise level (DDIM by default, fresh noise for DAPS). Optionally one more
network evaluation denoises the result (:func:`denoise`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from tqdm.auto import tqdm

from tomo.priors.noising import tweedie_x0

from .data_terms import DataFidelity
from .sampler_setup import SolverResult, network_precision, standard_normal
from .schedule import SamplingSchedule, ddim_step, timestep_for_noise

__all__ = ["guided_ddim", "ddim_renoise", "denoise"]

#: ``data_step(x0_hat, t, abar) -> x0``: the data-consistency step of one sampling step
DataStep = Callable[[torch.Tensor, int, float], torch.Tensor]
#: ``renoise(x0, eps, abar_prev, generator, like) -> x``: from the corrected ``x0`` to the next level
Renoise = Callable[[torch.Tensor, torch.Tensor, float, torch.Generator, torch.Tensor], torch.Tensor]


def ddim_renoise(eta: float) -> Renoise:
    """DDIM re-noising with ``eta`` of fresh noise (no noise drawn where none is added)."""

    def renoise(x0, eps, abar_prev, generator, like):
        noise = standard_normal(like.shape, generator, like) if abar_prev < 1.0 and eta > 0 else None
        return ddim_step(x0, eps, abar_prev, eta, noise)

    return renoise


def guided_ddim(
    prior,
    data: DataFidelity,
    schedule: SamplingSchedule,
    generator: torch.Generator,
    x: torch.Tensor,
    data_step: DataStep,
    renoise: Renoise,
    *,
    name: str,
    clip_x0: bool = True,
    denoise_sigma: float = 0.0,
    autocast_dtype: torch.dtype | None = None,
    progress: bool = True,
    divergence_hint: str = "",
) -> SolverResult:
    """Run the shared loop (module docstring) from the state ``x`` [B, 1, H, W] of
    :func:`~tomo.solvers.sampler_setup.start_sampling`.

    Parameters
    ----------
    prior, data, schedule, generator, x
        What :func:`~tomo.solvers.sampler_setup.start_sampling` returned (``x`` in model range).
    data_step : callable
        ``(x0_hat, t, abar) -> x0`` [B, 1, H, W].
    renoise : callable
        ``(x0, eps, abar_prev, generator, like) -> x`` at the next level (:func:`ddim_renoise`).
    name : str
        The solver's name, in the progress bar and in errors.
    clip_x0, denoise_sigma, autocast_dtype, progress
        As for :func:`~tomo.solvers.dds.dds`.
    divergence_hint : str
        Appended to the error when the state stops being finite (what to change).

    Returns
    -------
    SolverResult
        ``x`` [B, 1, H, W] in model range; ``network_evaluations`` = steps (+ 1 with
        ``denoise_sigma > 0``); ``residual_norms`` of every step's corrected ``x0``.
    """
    precision = network_precision(data.y.device, autocast_dtype)
    history = []
    with torch.no_grad():
        for t, abar, abar_prev in tqdm(schedule, desc=name, disable=None if progress else True, leave=False):
            with precision:
                eps = prior.eps(x, t, generator=generator).to(x.dtype)
            x0 = tweedie_x0(x, eps, abar)
            x0 = x0.clamp(-1.0, 1.0) if clip_x0 else x0
            x0 = data_step(x0, t, abar)
            history.append([float(v) for v in data.residual_norm(x0)])
            x = renoise(x0, eps, abar_prev, generator, x)
            if not bool(torch.isfinite(x).all()):
                raise FloatingPointError(f"{name} produced non-finite values at timestep {t}{divergence_hint}")
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


def denoise(prior, x: torch.Tensor, sigma: float, generator=None, *, clip: bool = True) -> torch.Tensor:
    """Tweedie's estimate of the clean image behind ``x`` [B, 1, H, W], read as a clean image plus
    white Gaussian noise of standard deviation ``sigma`` (model range).

    ``sqrt(abar_t) x`` at the timestep of the nearest noise level
    (:func:`~tomo.solvers.schedule.timestep_for_noise`) is what the network saw in training at
    ``t``; its ``x0`` estimate is the denoised image (clipped to [-1, 1] with ``clip``).
    """
    t = timestep_for_noise(prior.alphas_cumprod, sigma)
    abar = float(prior.alphas_cumprod[t])
    x_t = abar**0.5 * x
    x0 = tweedie_x0(x_t, prior.eps(x_t, t, generator=generator).to(x.dtype), abar)
    return x0.clamp(-1.0, 1.0) if clip else x0
