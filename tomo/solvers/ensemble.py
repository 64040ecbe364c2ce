"""Posterior mean (and pixel-wise spread) from several posterior samples of a solver.

DDS and DPS draw samples of ``p(x | y)``; for PSNR-type scores the posterior *mean* is the
better point estimate (it minimises the expected squared error), and the spread of the samples
is a per-pixel uncertainty map. Samples of every item are run as one batch.
"""

from __future__ import annotations

import torch

from operators.base import LinearOperator

from .data_terms import batch_measurements
from .sampler_setup import SolverResult

__all__ = ["posterior_mean", "sample_or_mean"]


def sample_or_mean(
    solver, prior, operator: LinearOperator, y: torch.Tensor, *, samples: int = 1, **kwargs
) -> SolverResult:
    """One run of ``solver`` (``samples == 1``, ``std`` None) or :func:`posterior_mean` of ``samples`` runs."""
    if samples == 1:
        return solver(prior, operator, y, **kwargs)
    return posterior_mean(solver, prior, operator, y, samples=samples, **kwargs)


def posterior_mean(
    solver,
    prior,
    operator: LinearOperator,
    y: torch.Tensor,
    *,
    samples: int = 4,
    weights: torch.Tensor | None = None,
    x_init: torch.Tensor | None = None,
    **kwargs,
) -> SolverResult:
    """Average ``samples`` runs of ``solver`` (:func:`~tomo.solvers.dds` or :func:`~tomo.solvers.dps`).

    Parameters
    ----------
    solver : callable
        ``solver(prior, operator, y, weights=..., **kwargs) -> SolverResult``.
    prior, operator, y, weights
        As for the solver (``y``: ``[*out_shape]``, ``[B, *out_shape]`` or ``[B, 1, *out_shape]``).
    samples : int
        Posterior samples per item (>= 1); the network is evaluated on ``B * samples`` images.
    x_init : torch.Tensor, optional
        Warm start (``[B, 1, H, W]`` or broadcastable), repeated for every sample.
    **kwargs
        Passed to the solver (``steps``, ``seed``, ...): one seed draws all samples.

    Returns
    -------
    SolverResult
        ``x`` [B, 1, H, W] the sample mean, ``std`` [B, 1, H, W] the sample standard deviation
        (zero for one sample); counts are for the whole batch of samples; ``residual_norms``
        per step are averaged over each item's samples.
    """
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ValueError(f"samples must be an int >= 1, got {samples!r}")
    yb = batch_measurements(operator, y)
    b = yb.shape[0]
    repeat = lambda t: t.repeat_interleave(samples, dim=0)  # noqa: E731
    wb = None
    if weights is not None:
        wb = batch_measurements(operator, weights, "weights") if weights.dim() >= len(operator.out_shape) else weights
        wb = repeat(wb) if wb.dim() == yb.dim() and wb.shape[0] == b and b > 1 else wb
    if x_init is not None and x_init.dim() == 4 and x_init.shape[0] == b and b > 1:
        x_init = repeat(x_init)
    if x_init is not None:
        kwargs["x_init"] = x_init
    result = solver(prior, operator, repeat(yb), weights=wb, **kwargs)
    xs = result.x.reshape((b, samples) + tuple(result.x.shape[1:]))
    std = xs.std(dim=1, unbiased=True) if samples > 1 else torch.zeros_like(xs[:, 0])
    residuals = [
        [sum(row[i * samples : (i + 1) * samples]) / samples for i in range(b)] for row in result.residual_norms
    ]
    return SolverResult(
        x=xs.mean(dim=1),
        network_evaluations=result.network_evaluations,
        gradient_evaluations=result.gradient_evaluations,
        operator_calls=result.operator_calls,
        residual_norms=residuals,
        timesteps=result.timesteps,
        std=std,
    )
