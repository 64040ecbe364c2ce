"""Diffusion Posterior Sampling (Chung et al., ICLR 2023), as written in ``method.md``.

One line added to the ancestral DDPM sampler: after the usual step ``x'_{t-1}`` from ``x_t``,

    x_{t-1} = x'_{t-1} - zeta_t grad_{x_t} ||y - A(x0_hat(x_t))||^2,
    zeta_t  = zeta / ||y - A(x0_hat(x_t))||,

with Tweedie's ``x0_hat(x_t) = (x_t - sqrt(1 - abar_t) eps_theta(x_t, t)) / sqrt(abar_t)`` and the
gradient taken through the network with autograd. ``method.md`` writes the residual norm
without the square; the DPS paper (Algorithm 1) squares it, which is what is implemented
here: the update is ``2 zeta grad ||r||`` (the official code's ``scale`` is ``2 zeta``).

The residual is the noise-aware, normalised one of :class:`~tomo.solvers.data_terms.DataFidelity`,
``r = s W^{1/2} (y - A x)`` with ``||s W^{1/2} A|| = 1``, so ``zeta`` is dimensionless and
transfers between operators.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from operators.base import LinearOperator
from tomo.priors.noising import tweedie_x0

from .sampler_setup import SolverResult, check_prior, network_precision, standard_normal, start_sampling
from .schedule import ddpm_posterior_step

__all__ = ["dps", "default_zeta"]


def default_zeta(steps: int) -> float:
    """A step size for ``steps`` DPS steps: ``1000 / steps`` (1.0 at the full 1000 steps).

    The correction is applied once per step, so its accumulated pull scales with the number of
    steps; keeping ``zeta * steps`` near 1000 worked best on train/ CT slices with the shipped prior
    (parallel-30, 200 steps: zeta 2 -> 24.6 dB / SSIM 0.68, zeta 6 -> 25.8 dB / 0.51;
    100 steps: zeta 1 -> 18.4 dB, 5 -> 23.0 dB). See docs/benchmarks_diffusion.md.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")
    return 1000.0 / steps


def dps(
    prior,
    operator: LinearOperator,
    y: torch.Tensor,
    *,
    weights: torch.Tensor | None = None,
    steps: int = 1000,
    zeta: float = 1.0,
    seed: int | torch.Generator | None = None,
    clip_x0: bool = True,
    normalize: bool = True,
    spacing: str = "trailing",
    x_init: torch.Tensor | None = None,
    start: float = 1.0,
    autocast_dtype: torch.dtype | None = None,
    progress: bool = True,
) -> SolverResult:
    """Sample ``p(x | y)`` for ``y = A x + n`` with DPS.

    Parameters
    ----------
    prior
        Diffusion prior: ``eps(x_t, t, generator=None)`` differentiable in ``x_t`` and
        ``alphas_cumprod`` [T] (e.g. :class:`tomo.priors.DiffusionPrior`).
    operator : LinearOperator
        Forward model on model-range images ``(H, W)`` (see :mod:`tomo.solvers.problem` to
        move a physical problem there).
    y : torch.Tensor
        Measurements ``[*out_shape]``, ``[B, *out_shape]`` or ``[B, 1, *out_shape]``; every item
        is reconstructed independently.
    weights : torch.Tensor, optional
        Inverse noise variances of ``y`` (``None``: white Gaussian noise).
    steps : int
        Number of DDPM steps (respaced schedule; 1000 = the full training schedule).
    zeta : float
        Step size of the data-consistency correction (>= 0; 0 is unconditional sampling).
        Too small gives prior-like images that ignore ``y``, too large diverges.
    seed : int, torch.Generator or None
        Randomness of the initial noise, ancestral noise and the prior's patch shifts.
    clip_x0 : bool
        Clip ``x0_hat`` to [-1, 1] in the ancestral step (as the DPS code does); the gradient
        is always taken through the unclipped estimate.
    normalize : bool
        Normalise the data term so that ``||s W^{1/2} A|| = 1`` (recommended).
    spacing : str
        diffusers timestep spacing of the respaced schedule.
    x_init : torch.Tensor, optional
        Warm start in model range (broadcastable to [B, 1, H, W]), e.g. an FBP or TV image.
    start : float in (0, 1]
        Run only the last ``start`` fraction of the schedule, starting from ``x_init`` noised to
        that level (Chung et al., "come closer, diffuse faster", CVPR 2022); 1 = from noise.
    autocast_dtype : torch.dtype, optional
        Evaluate the network under ``torch.autocast`` (``torch.bfloat16``: faster on CPUs with
        native bf16, AVX512-BF16 or AMX, much slower without; ~0.4 % error in ``eps``); None =
        the network's own precision.
    progress : bool
        Show a tqdm progress bar.

    Returns
    -------
    SolverResult
        ``x`` [B, 1, H, W] in model range; ``network_evaluations == gradient_evaluations == steps``.
    """
    check_prior(prior)
    if not (isinstance(zeta, (int, float)) and zeta >= 0 and zeta == zeta and zeta != float("inf")):
        raise ValueError(f"zeta must be a finite number >= 0, got {zeta!r}")
    schedule, data, generator, x = start_sampling(
        prior,
        operator,
        y,
        weights,
        steps=steps,
        spacing=spacing,
        start=start,
        normalize=normalize,
        seed=seed,
        x_init=x_init,
    )
    history = []
    for t, abar, abar_prev in tqdm(schedule, desc="DPS", disable=None if progress else True, leave=False):
        x = x.detach().requires_grad_(True)
        with torch.enable_grad():
            with network_precision(data.y.device, autocast_dtype):
                eps = prior.eps(x, t, generator=generator)
            x0 = tweedie_x0(x, eps.to(x.dtype), abar)
            residual_norm = data.residual_norm(x0)
            # grad ||r_b|| for every item at once: items do not interact, so the gradient of the
            # sum is the stack of the per-item gradients
            (grad,) = torch.autograd.grad(residual_norm.sum(), x)
        with torch.no_grad():
            x0 = x0.detach()
            x0_step = x0.clamp(-1.0, 1.0) if clip_x0 else x0
            noise = standard_normal(x.shape, generator, x) if abar_prev < 1.0 else None
            x_prev = ddpm_posterior_step(x.detach(), x0_step, abar, abar_prev, noise)
            # zeta / ||r|| * grad ||r||^2 == 2 zeta grad ||r||
            x = x_prev - 2.0 * zeta * grad
        history.append([float(v) for v in residual_norm.detach()])
        if not bool(torch.isfinite(x).all()):
            raise FloatingPointError(f"DPS diverged at timestep {t} (non-finite image); lower zeta (now {zeta})")
    return SolverResult(
        x=x.detach(),
        network_evaluations=len(schedule),
        gradient_evaluations=len(schedule),
        operator_calls=data.operator_calls,
        residual_norms=history,
        timesteps=list(schedule.timesteps),
    )
