"""Decomposed Diffusion Sampler (Chung, Lee & Ye, ICLR 2024).

DDIM with few network evaluations; at every step the denoised estimate ``x0_hat`` is made
data-consistent by a few conjugate-gradient iterations on the (noise-weighted, optionally
Tikhonov-regularised) normal equations

    (A^T W A + lam I) x = A^T W y + lam x0_hat,      started at x0_hat,

and the result is re-noised with DDIM (``eta`` ~ 0.85 of fresh noise). Early-stopped CG from
``x0_hat`` stays in the Krylov neighbourhood of the prior's estimate, so it never needs a
backward pass through the network.

The last data-consistent estimate fits the measurement noise too; ``denoise_sigma`` ends with one
more network evaluation that treats it as an image with that much white noise (Tweedie's estimate
at the matching timestep), the step that plug-and-play solvers such as DiffPIR end with.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from operators.base import LinearOperator
from tomo.priors.noising import tweedie_x0

from .sampler_setup import SolverResult, check_prior, network_precision, standard_normal, start_sampling
from .schedule import ddim_step, timestep_for_noise

__all__ = ["dds", "denoise"]


def dds(
    prior,
    operator: LinearOperator,
    y: torch.Tensor,
    *,
    weights: torch.Tensor | None = None,
    steps: int = 50,
    eta: float = 0.85,
    cg_iterations: int = 5,
    lam: float = 0.0,
    tv_weight: float = 0.0,
    admm_iterations: int = 4,
    admm_rho: float | None = None,
    tv_z_weight: float = 0.0,
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
    """Reconstruct ``x`` from ``y = A x + n`` with DDS.

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
        DDIM steps = network evaluations (about 50).
    eta : float in [0, 1]
        Fraction of fresh noise when re-noising (DDS convention; 0 = deterministic DDIM).
    cg_iterations : int
        CG iterations per step (0 = unconditional DDIM).
    lam : float
        Tikhonov weight pulling towards ``x0_hat``, relative to ``||s W^{1/2} A||^2 = 1``
        (0: plain early-stopped least squares, as in the DDS paper).
    tv_weight : float
        > 0: the hybrid data step, ADMM on the data term plus ``tv_weight`` times isotropic TV
        (:meth:`~tomo.solvers.data_terms.DataFidelity.solve_tv`, ``admm_iterations`` outer
        iterations of ``cg_iterations`` CG each, penalty ``admm_rho``), as DiffusionMBIR and the
        3-D DDS do; 0 (default): plain early-stopped CG.
    admm_iterations : int
        ADMM iterations per step (with ``tv_weight > 0``).
    admm_rho : float, optional
        ADMM penalty (with ``tv_weight > 0``; default ``10 * tv_weight``).
    tv_z_weight : float
        > 0 (with ``tv_weight > 0``): the batch holds consecutive slices of one volume, in order,
        and the hybrid data step adds TV along z with this weight, coupling the slices
        (:meth:`~tomo.solvers.data_terms.DataFidelity.solve_tv`).
    denoise_sigma : float
        > 0: denoise the final estimate once more, as if it carried white Gaussian noise of this
        standard deviation (model range): Tweedie's estimate at the training timestep of the
        nearest noise level (:func:`~tomo.solvers.schedule.timestep_for_noise`), clipped like
        ``x0_hat``; one more network evaluation. 0 (default): the last data-consistent estimate.
    seed : int, torch.Generator or None
        Randomness of the initial and re-noising noise and of the prior's patch shifts.
    clip_x0 : bool
        Clip the network's ``x0_hat`` to [-1, 1] before CG.
    normalize : bool
        Normalise the data term so that ``||s W^{1/2} A|| = 1``.
    spacing : str
        diffusers timestep spacing.
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
        ``x`` [B, 1, H, W] in model range (the data-consistent estimate of the last step, denoised
        with ``denoise_sigma > 0``); ``network_evaluations`` = ``steps`` (+ 1 with
        ``denoise_sigma > 0``), no gradient evaluations.
    """
    check_prior(prior)
    if not (isinstance(eta, (int, float)) and 0.0 <= eta <= 1.0):
        raise ValueError(f"eta must be in [0, 1], got {eta!r}")
    if isinstance(cg_iterations, bool) or not isinstance(cg_iterations, int) or cg_iterations < 0:
        raise ValueError(f"cg_iterations must be an int >= 0, got {cg_iterations!r}")
    if not (isinstance(tv_weight, (int, float)) and 0.0 <= tv_weight < float("inf")):
        raise ValueError(f"tv_weight must be a finite number >= 0, got {tv_weight!r}")
    if tv_z_weight and not tv_weight > 0:
        raise ValueError("tv_z_weight (TV along z) needs the hybrid data step: set tv_weight > 0 too")
    if not (isinstance(lam, (int, float)) and 0.0 <= lam < float("inf")):
        raise ValueError(f"lam must be a finite number >= 0, got {lam!r}")
    if not (isinstance(denoise_sigma, (int, float)) and 0.0 <= denoise_sigma < float("inf")):
        raise ValueError(f"denoise_sigma must be a finite number >= 0, got {denoise_sigma!r}")
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
    precision = network_precision(data.y.device, autocast_dtype)
    history = []
    with torch.no_grad():
        for t, abar, abar_prev in tqdm(schedule, desc="DDS", disable=None if progress else True, leave=False):
            with precision:
                eps = prior.eps(x, t, generator=generator).to(x.dtype)
            x0 = tweedie_x0(x, eps, abar)
            if clip_x0:
                x0 = x0.clamp(-1.0, 1.0)
            if tv_weight > 0:
                x0 = data.solve_tv(
                    x0,
                    tv_weight,
                    admm_iterations=admm_iterations,
                    cg_iterations=cg_iterations,
                    rho=admm_rho,
                    lam=lam,
                    tv_z_weight=tv_z_weight,
                )
            else:
                x0 = data.solve(x0, cg_iterations, lam)
            history.append([float(v) for v in data.residual_norm(x0)])
            noise = standard_normal(x.shape, generator, x) if abar_prev < 1.0 and eta > 0 else None
            x = ddim_step(x0, eps, abar_prev, eta, noise)
            if not bool(torch.isfinite(x).all()):
                raise FloatingPointError(f"DDS produced non-finite values at timestep {t}")
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
