"""Noise schedules and the single-step update rules shared by the diffusion solvers.

Kept apart from the sampling loops (as in diffusers): a loop asks :func:`make_schedule` for the
respaced timesteps and uses the pure functions below for one step, so every formula can be
tested on its own.

Notation (DDPM, Ho et al. 2020): ``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps`` with
``abar_t = alphas_cumprod[t]`` of the prior's training schedule. That noising and its Tweedie
inverse live with the prior, in :mod:`tomo.priors.noising` (``tweedie_x0`` is re-exported here).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tomo.priors.noising import tweedie_x0

__all__ = [
    "SamplingSchedule",
    "make_schedule",
    "tweedie_x0",
    "ddpm_posterior_step",
    "ddim_step",
    "timestep_for_noise",
]


@dataclass(frozen=True)
class SamplingSchedule:
    """A respaced, descending list of timesteps with their cumulative alphas.

    Attributes
    ----------
    timesteps : list of int
        Training timesteps visited, descending (``timesteps[0]`` is the noisiest).
    abar : list of float
        ``alphas_cumprod[timesteps[i]]``.
    abar_prev : list of float
        Cumulative alpha of the *next* visited timestep, ``1.0`` after the last one (the
        clean image), as in diffusers' ``set_alpha_to_one``.
    """

    timesteps: list
    abar: list
    abar_prev: list

    def __len__(self) -> int:
        return len(self.timesteps)

    def __iter__(self):
        return iter(zip(self.timesteps, self.abar, self.abar_prev))


def make_schedule(alphas_cumprod, steps: int, spacing: str = "trailing", start: float = 1.0) -> SamplingSchedule:
    """Respace a training schedule to ``steps`` timesteps (diffusers' timestep selection).

    Parameters
    ----------
    alphas_cumprod : sequence or tensor of float, shape [T]
        Cumulative products of ``1 - beta_t`` of the prior's training schedule (decreasing).
    steps : int
        Number of timesteps to visit, ``1 <= steps <= T``.
    spacing : {"trailing", "leading", "linspace"}
        diffusers' ``timestep_spacing``; "trailing" starts at ``T - 1`` (pure noise), which
        matters when few steps are used.
    start : float in (0, 1]
        Fraction of the schedule to run: the ``steps`` timesteps span ``[0, start T)`` (for a
        warm start from an initial image, "come closer, diffuse faster"); 1 = from pure noise.

    Returns
    -------
    SamplingSchedule
    """
    from diffusers import DDIMScheduler

    abar = torch.as_tensor(alphas_cumprod, dtype=torch.float64).detach().cpu().reshape(-1)
    total = abar.numel()
    if total < 1:
        raise ValueError("alphas_cumprod is empty")
    if not bool(torch.isfinite(abar).all()) or bool((abar <= 0).any()) or bool((abar > 1).any()):
        raise ValueError("alphas_cumprod must lie in (0, 1]")
    if bool((abar[1:] > abar[:-1]).any()):
        raise ValueError("alphas_cumprod must be non-increasing in t")
    if isinstance(steps, bool) or not isinstance(steps, int):
        raise TypeError(f"steps must be an int, got {type(steps).__name__}")
    if not 1 <= steps <= total:
        raise ValueError(f"steps must be between 1 and the {total} training timesteps, got {steps}")
    if spacing not in ("trailing", "leading", "linspace"):
        raise ValueError(f"spacing must be 'trailing', 'leading' or 'linspace', got {spacing!r}")
    if not (isinstance(start, (int, float)) and 0.0 < start <= 1.0):
        raise ValueError(f"start must be a fraction in (0, 1], got {start!r}")
    total = max(1, int(round(start * total)))
    if steps > total:
        raise ValueError(f"steps ({steps}) exceed the {total} timesteps of the schedule's first {start:g}")
    scheduler = DDIMScheduler(num_train_timesteps=total, timestep_spacing=spacing)
    scheduler.set_timesteps(steps)
    timesteps = [int(t) for t in scheduler.timesteps]
    values = [float(abar[t]) for t in timesteps]
    return SamplingSchedule(timesteps=timesteps, abar=values, abar_prev=values[1:] + [1.0])


def ddpm_posterior_step(
    x_t: torch.Tensor, x0: torch.Tensor, abar: float, abar_prev: float, noise: torch.Tensor | None
) -> torch.Tensor:
    """One ancestral DDPM step: a sample of ``q(x_prev | x_t, x0)`` (respaced schedule).

    With ``beta = 1 - abar / abar_prev`` the posterior is Gaussian with mean
    ``sqrt(abar_prev) beta / (1 - abar) x0 + sqrt(1 - beta) (1 - abar_prev) / (1 - abar) x_t``
    and variance ``beta (1 - abar_prev) / (1 - abar)`` (diffusers' "fixed_small").
    ``noise`` (standard normal, shape of ``x_t``) is ignored when ``abar_prev == 1``.
    """
    beta = 1.0 - abar / abar_prev
    c0 = abar_prev**0.5 * beta / (1.0 - abar)
    ct = (1.0 - beta) ** 0.5 * (1.0 - abar_prev) / (1.0 - abar)
    mean = c0 * x0 + ct * x_t
    variance = beta * (1.0 - abar_prev) / (1.0 - abar)
    if noise is None or variance <= 0.0:
        return mean
    return mean + variance**0.5 * noise


def ddim_step(
    x0: torch.Tensor, eps: torch.Tensor, abar_prev: float, eta: float, noise: torch.Tensor | None
) -> torch.Tensor:
    """Re-noise an estimate ``x0`` to the level ``abar_prev``, as in DDS (Chung et al. 2024).

    ``x_prev = sqrt(abar_prev) x0 + sqrt(1 - abar_prev) (eta z + sqrt(1 - eta^2) eps)``:
    ``eta = 0`` is the deterministic DDIM update, ``eta = 1`` fresh noise. (This ``eta`` is the
    fraction of fresh noise used by the DDS reference code, not DDIM's own ``eta``.)
    """
    if abar_prev >= 1.0:
        return x0
    scale = (1.0 - abar_prev) ** 0.5
    out = abar_prev**0.5 * x0 + scale * (1.0 - eta**2) ** 0.5 * eps
    if noise is not None and eta > 0.0:
        out = out + scale * eta * noise
    return out


def timestep_for_noise(alphas_cumprod, sigma: float) -> int:
    """The training timestep whose noise matches white noise of standard deviation ``sigma`` on a clean image.

    ``x + sigma n`` scaled by ``sqrt(abar_t)`` is distributed like ``x_t`` when
    ``sigma = sqrt((1 - abar_t) / abar_t)``; this returns the ``t`` whose ratio is nearest to
    ``sigma`` (model range), so a prior can denoise an image that carries ``sigma`` of noise.

    Parameters
    ----------
    alphas_cumprod : sequence or tensor of float, shape [T]
        The prior's training schedule (decreasing).
    sigma : float
        Noise standard deviation in model range, > 0.
    """
    if not (isinstance(sigma, (int, float)) and 0.0 < sigma < float("inf")):
        raise ValueError(f"sigma must be a finite number > 0, got {sigma!r}")
    abar = torch.as_tensor(alphas_cumprod, dtype=torch.float64).detach().cpu().reshape(-1)
    ratio = ((1.0 - abar) / abar).sqrt()
    return int((ratio - float(sigma)).abs().argmin())
