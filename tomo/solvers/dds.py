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

from operators.base import LinearOperator

from .sampler_setup import SolverResult, check_prior, start_sampling
from .x0_loop import ddim_renoise, denoise, guided_ddim

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

    def data_step(x0, t, abar):
        if tv_weight > 0:
            return data.solve_tv(
                x0,
                tv_weight,
                admm_iterations=admm_iterations,
                cg_iterations=cg_iterations,
                rho=admm_rho,
                lam=lam,
                tv_z_weight=tv_z_weight,
            )
        return data.solve(x0, cg_iterations, lam)

    return guided_ddim(
        prior, data, schedule, generator, x, data_step, ddim_renoise(eta), name="DDS", clip_x0=clip_x0,
        denoise_sigma=denoise_sigma, autocast_dtype=autocast_dtype, progress=progress,
    )  # fmt: skip
