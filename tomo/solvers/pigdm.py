"""Pseudo-inverse guidance (PiGDM; Song et al., ICLR 2023) with the Jacobian replaced by the identity.

DPS treats ``x0_hat`` as exact (``p(x0 | x_t)`` a Dirac). PiGDM gives it a variance,
``p(x0 | x_t) = N(x0_hat, r_t^2 I)`` with ``r_t^2 = 1 - abar_t`` (the variance of ``x0`` given ``x_t``
for data of unit variance), so that

    p(y | x_t) = N(A x0_hat, r_t^2 A A^T + beta^2 I),

and guides with ``r_t^2 A^T (r_t^2 A A^T + beta^2 I)^{-1} (y - A x0_hat)``, the residual pulled back
by a regularised pseudo-inverse instead of by ``A^T``. PiGDM multiplies this by the network's
Jacobian (a backward pass); as in MPGD (:mod:`tomo.solvers.mpgd`) the Jacobian is replaced here by
the identity, so the guided estimate is

    x0 = x0_hat + (A^T A + lam_t I)^{-1} A^T (y - A x0_hat),    lam_t = beta^2 / r_t^2,

the minimiser of ``||r(x)||^2 / (2 beta^2) + ||x - x0_hat||^2 / (2 r_t^2)`` (normalised units of
:class:`~tomo.solvers.data_terms.DataFidelity`). For a CT projector the inverse is approximated by
``cg_iterations`` conjugate-gradient iterations started at ``x0_hat``: the pseudo-inverse that
gradient steps (MPGD) reach only after hundreds of iterations on the poorly measured directions.
At high noise ``lam_t`` is small (trust the data), at low noise it pulls towards ``x0_hat``.
"""

from __future__ import annotations

import torch

from operators.base import LinearOperator
from operators.linalg import conjugate_gradient

from .data_terms import DataFidelity
from .sampler_setup import SolverResult, check_number, check_prior, start_sampling
from .x0_loop import ddim_renoise, guided_ddim

__all__ = ["pigdm", "pseudo_inverse_step"]


def pseudo_inverse_step(data: DataFidelity, x0_hat: torch.Tensor, lam: torch.Tensor, iterations: int) -> torch.Tensor:
    """``x0_hat + (A^T A + lam I)^{-1} A^T (y - A x0_hat)`` by ``iterations`` CG iterations from ``x0_hat``.

    ``lam`` [B] (one weight per item, >= 0); normalised units.
    """
    lam_b = lam.reshape((-1,) + (1,) * (x0_hat.dim() - 1)).to(x0_hat.dtype)
    rhs = data.normal_rhs() + lam_b * x0_hat
    return conjugate_gradient(lambda v: data.normal(v) + lam_b * v, rhs, x0_hat, iterations)


def pigdm(
    prior,
    operator: LinearOperator,
    y: torch.Tensor,
    *,
    weights: torch.Tensor | None = None,
    steps: int = 25,
    eta: float = 0.85,
    cg_iterations: int = 3,
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
    """Sample ``p(x | y)`` for ``y = A x + n`` with Jacobian-free pseudo-inverse guidance.

    Parameters
    ----------
    prior, operator, y, weights
        As for :func:`~tomo.solvers.mpgd.mpgd`.
    steps : int
        DDIM steps = network evaluations.
    eta : float in [0, 1]
        Fraction of fresh noise when re-noising.
    cg_iterations : int
        CG iterations of the pseudo-inverse per step (each one ``A^T A``).
    beta : float, optional
        Noise level of the normalised residual (> 0); ``None``: the measurement model's ``s``
        (:class:`~tomo.solvers.data_terms.DataFidelity`). Larger values trust the data less.
    denoise_sigma, seed, clip_x0, normalize, spacing, x_init, start, autocast_dtype, progress
        As for :func:`~tomo.solvers.mpgd.mpgd`.

    Returns
    -------
    SolverResult
        ``x`` [B, 1, H, W]: the guided estimate of the last step (denoised with ``denoise_sigma > 0``).
    """
    check_prior(prior)
    check_number("eta", eta, 0.0, 1.0)
    check_number("cg_iterations", cg_iterations, 0, 10_000, integer=True)
    check_number("denoise_sigma", denoise_sigma, 0.0)
    if beta is not None:
        check_number("beta", beta, 1e-30)
    schedule, data, generator, x = start_sampling(
        prior, operator, y, weights, steps=steps, spacing=spacing, start=start, normalize=normalize, seed=seed,
        x_init=x_init,
    )  # fmt: skip
    noise2 = data.scale**2 if beta is None else torch.full_like(data.scale, float(beta) ** 2)

    def data_step(x0, t, abar):
        return pseudo_inverse_step(data, x0, noise2 / (1.0 - abar), cg_iterations)

    return guided_ddim(
        prior, data, schedule, generator, x, data_step, ddim_renoise(eta), name="PiGDM", clip_x0=clip_x0,
        denoise_sigma=denoise_sigma, autocast_dtype=autocast_dtype, progress=progress,
    )  # fmt: skip
