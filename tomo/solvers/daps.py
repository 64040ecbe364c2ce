"""Decoupled Annealing Posterior Sampling (DAPS; Zhang et al., CVPR 2025), with a one-step ODE.

DPS couples the data correction to the trajectory of ``x_t``: each step may move ``x_t`` only a
little, or it leaves the prior's noise level. DAPS decouples them. At every noise level it

1. maps ``x_t`` to the denoised estimate ``x0_hat`` (here Tweedie's estimate, one network call:
   the probability-flow ODE solved in one step);
2. samples ``x0 ~ p(x0 | x_t, y)`` with the Gaussian approximation
   ``p(x0 | x_t) = N(x0_hat, r_t^2 I)``, ``r_t = sqrt((1 - abar_t) / abar_t)``, by a few Langevin
   steps on

       log p(x0 | x_t, y) = -||x0 - x0_hat||^2 / (2 r_t^2) - ||r(x0)||^2 / (2 beta^2) + const

   (operator calls only: no backward pass through the network);
3. draws ``x_{t-1} = sqrt(abar_{t-1}) x0 + sqrt(1 - abar_{t-1}) z`` with fresh noise ``z``.

Because ``x_{t-1}`` is drawn afresh around the corrected ``x0``, the correction can be large at
high noise levels and still land where the network was trained. ``beta`` is the noise level of the
normalised residual ``r = s W^{1/2} (y - A x)``; the measurement model says ``beta = s`` (``None``),
larger values trust the data less. The Langevin step is ``lr / L`` with ``L = 1 / r_t^2 + 1 / beta^2``
the drift's Lipschitz constant, so it is stable for ``lr < 1`` at every level.
"""

from __future__ import annotations

import torch

from operators.base import LinearOperator
from tomo.priors.noising import add_noise

from .data_terms import DataFidelity
from .sampler_setup import SolverResult, check_number, check_prior, standard_normal, start_sampling
from .x0_loop import guided_ddim

__all__ = ["daps", "langevin_x0"]


def langevin_x0(
    data: DataFidelity,
    x0_hat: torch.Tensor,
    r2: float,
    beta: torch.Tensor,
    steps: int,
    lr: float,
    generator: torch.Generator,
) -> torch.Tensor:
    """``steps`` Langevin steps on ``p(x0 | x0_hat, y)`` from ``x0_hat`` [B, 1, H, W].

    ``r2`` is the prior variance ``r_t^2``, ``beta`` [B] the residual's noise level per item.
    """
    inv_b2 = (1.0 / beta**2).reshape((-1,) + (1,) * (x0_hat.dim() - 1))
    step = lr / (1.0 / r2 + inv_b2)
    x0 = x0_hat
    for _ in range(steps):
        grad, _ = data.residual_gradient(x0)  # grad of 1/2 ||r||^2
        drift = (x0_hat - x0) / r2 - inv_b2 * grad
        x0 = x0 + step * drift + (2.0 * step).sqrt() * standard_normal(x0.shape, generator, x0)
    return x0


def daps(
    prior,
    operator: LinearOperator,
    y: torch.Tensor,
    *,
    weights: torch.Tensor | None = None,
    steps: int = 25,
    langevin_steps: int = 10,
    lr: float = 0.5,
    beta: float | None = None,
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
    """Sample ``p(x | y)`` for ``y = A x + n`` with DAPS.

    Parameters
    ----------
    prior, operator, y, weights
        As for :func:`~tomo.solvers.mpgd.mpgd`.
    steps : int
        Annealing levels = network evaluations.
    langevin_steps : int
        Langevin steps per level (each one ``A`` and one ``A^T``).
    lr : float in (0, 1]
        Langevin step as a fraction of the inverse Lipschitz constant of the drift.
    beta : float, optional
        Noise level of the normalised residual (> 0); ``None``: the measurement model's ``s``.
    denoise_sigma, seed, clip_x0, normalize, spacing, x_init, start, autocast_dtype, progress
        As for :func:`~tomo.solvers.mpgd.mpgd`.

    Returns
    -------
    SolverResult
        ``x`` [B, 1, H, W]: the last level's posterior sample of ``x0`` (denoised with
        ``denoise_sigma > 0``).
    """
    check_prior(prior)
    check_number("langevin_steps", langevin_steps, 0, 10_000, integer=True)
    check_number("lr", lr, 0.0, 1.0)
    check_number("denoise_sigma", denoise_sigma, 0.0)
    if beta is not None:
        check_number("beta", beta, 1e-30)
    schedule, data, generator, x = start_sampling(
        prior, operator, y, weights, steps=steps, spacing=spacing, start=start, normalize=normalize, seed=seed,
        x_init=x_init,
    )  # fmt: skip
    noise_level = data.scale if beta is None else torch.full_like(data.scale, float(beta))

    def data_step(x0, t, abar):
        return langevin_x0(data, x0, (1.0 - abar) / abar, noise_level, langevin_steps, lr, generator)

    def renoise(x0, eps, abar_prev, generator, like):  # fresh noise: the annealing is decoupled
        return x0 if abar_prev >= 1.0 else add_noise(x0, standard_normal(like.shape, generator, like), abar_prev)

    return guided_ddim(
        prior, data, schedule, generator, x, data_step, renoise, name="DAPS", clip_x0=clip_x0,
        denoise_sigma=denoise_sigma, autocast_dtype=autocast_dtype, progress=progress,
    )  # fmt: skip
