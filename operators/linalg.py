"""Batched linear-algebra kernels shared by the reconstruction and posterior solvers.

Every function works on a batch of independent problems stacked along the first dimension
(``[B, ...]``): per-item inner products, the power iteration that estimates operator norms,
conjugate gradients, and the finite differences and shrinkage of total variation. They know nothing about CT; the classical solvers (:mod:`tomo.recon`),
the diffusion solvers (:mod:`tomo.solvers`) and :meth:`operators.LinearOperator.norm` all call
these, so each formula has one implementation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

__all__ = [
    "batch_dot",
    "random_start",
    "power_iteration",
    "conjugate_gradient",
    "gradient",
    "gradient_adjoint",
    "shrink_isotropic",
]


def batch_dot(a: torch.Tensor, b: torch.Tensor, keepdim: bool = False) -> torch.Tensor:
    """Per-item inner product of two ``[B, ...]`` tensors over every dimension but the first.

    Returns shape ``[B]``, or ``[B, 1, ..., 1]`` (broadcastable against ``a``) with ``keepdim``.
    """
    dot = (a * b).flatten(1).sum(dim=1)
    return dot.reshape((-1,) + (1,) * (a.dim() - 1)) if keepdim else dot


def _item_norms(x: torch.Tensor) -> torch.Tensor:
    """Euclidean norm of each item of ``[B, ...]``, shape ``[B]``."""
    return x.flatten(1).norm(dim=1)


def random_start(shape: Sequence[int], dtype: torch.dtype = torch.float32, device="cpu", seed: int = 0) -> torch.Tensor:
    """Standard-normal start vectors ``shape`` drawn on the CPU with ``seed`` (same on every device)."""
    g = torch.Generator(device="cpu").manual_seed(int(seed))
    return torch.randn(tuple(shape), generator=g, dtype=dtype).to(device)


def power_iteration(
    apply_normal: Callable[[torch.Tensor], torch.Tensor], x0: torch.Tensor, iterations: int
) -> torch.Tensor:
    """Largest eigenvalue of a batched symmetric positive semi-definite map, per item, ``[B]``.

    For ``apply_normal = x -> M^T M x`` this is ``||M||_2^2`` (take the square root for the
    operator norm). The estimate is from below and converges geometrically, at the rate of the
    ratio of the two largest eigenvalues.

    Parameters
    ----------
    apply_normal : callable
        ``x -> M^T M x`` on tensors shaped like ``x0``.
    x0 : torch.Tensor, [B, ...]
        Start vectors (any scale; see :func:`random_start`).
    iterations : int
        Applications of ``apply_normal`` (0 returns zeros).

    Returns
    -------
    torch.Tensor, [B]
        ``||M^T M x_k||`` for the last normalised iterate ``x_k`` (0 for an item where ``M`` is 0).
    """
    x = x0
    sigma2 = torch.zeros(x0.shape[0], dtype=x0.dtype, device=x0.device)
    with torch.no_grad():
        for _ in range(int(iterations)):
            x = x / _item_norms(x).clamp_min(1e-30).reshape((-1,) + (1,) * (x.dim() - 1))
            x = apply_normal(x)
            sigma2 = _item_norms(x)
    return sigma2


def conjugate_gradient(
    apply_matrix: Callable[[torch.Tensor], torch.Tensor],
    rhs: torch.Tensor,
    x0: torch.Tensor,
    iterations: int,
    tol: float = 0.0,
) -> torch.Tensor:
    """Batched conjugate gradients for ``M x = rhs`` with ``M`` symmetric positive semi-definite.

    Every item of the batch (first dimension) is an independent system with its own step
    lengths. Early-stopped CG started at ``x0`` is itself a regulariser (DDS relies on this).

    Parameters
    ----------
    apply_matrix : callable
        ``x -> M x`` on tensors shaped like ``rhs``.
    rhs, x0 : torch.Tensor, shape [B, ...]
        Right-hand side and starting point.
    iterations : int
        Maximum number of CG iterations (0 returns ``x0``).
    tol : float
        Stop an item once its residual norm falls below ``tol * ||rhs||``.

    Returns
    -------
    torch.Tensor, shape of ``x0``
    """
    if iterations < 0:
        raise ValueError(f"iterations must be >= 0, got {iterations}")
    x = x0.clone()
    if iterations == 0:
        return x
    r = rhs - apply_matrix(x)
    p = r.clone()
    rs = batch_dot(r, r, keepdim=True)
    stop = (tol * rhs.flatten(1).norm(dim=1)).reshape(rs.shape) ** 2
    for _ in range(iterations):
        active = rs > stop
        if not bool(active.any()):
            break
        mp = apply_matrix(p)
        pmp = batch_dot(p, mp, keepdim=True)
        # items that converged (or hit a null direction) keep their x: step 0
        alpha = torch.where(
            active & (pmp > 0), rs / torch.where(pmp > 0, pmp, torch.ones_like(pmp)), torch.zeros_like(pmp)
        )
        x = x + alpha * p
        r = r - alpha * mp
        rs_new = batch_dot(r, r, keepdim=True)
        beta = torch.where(rs > 0, rs_new / torch.where(rs > 0, rs, torch.ones_like(rs)), torch.zeros_like(rs))
        p = r + beta * p
        rs = rs_new
    return x


def gradient(u: torch.Tensor) -> torch.Tensor:
    """Forward-difference gradient of ``[B, H, W]`` images -> ``[B, 2, H, W]`` (rows, columns).

    Differences are per pixel (not divided by the pixel size); the last row/column difference
    is 0 (Neumann boundary).
    """
    g = torch.zeros((u.shape[0], 2) + tuple(u.shape[1:]), dtype=u.dtype, device=u.device)
    g[:, 0, :-1, :] = u[:, 1:, :] - u[:, :-1, :]
    g[:, 1, :, :-1] = u[:, :, 1:] - u[:, :, :-1]
    return g


def gradient_adjoint(g: torch.Tensor) -> torch.Tensor:
    """Adjoint of :func:`gradient` (minus the divergence): ``[B, 2, H, W]`` -> ``[B, H, W]``."""
    gr, gc = g[:, 0], g[:, 1]
    out = torch.zeros_like(gr)
    out[:, :-1, :] -= gr[:, :-1, :]
    out[:, 1:, :] += gr[:, :-1, :]
    out[:, :, :-1] -= gc[:, :, :-1]
    out[:, :, 1:] += gc[:, :, :-1]
    return out


def shrink_isotropic(g: torch.Tensor, threshold) -> torch.Tensor:
    """Proximal map of ``threshold * sum_pixels |g_pixel|_2`` for gradients ``[B, 2, H, W]``.

    Each pixel's 2-vector is shortened by ``threshold`` (and set to 0 when shorter): the
    isotropic soft threshold of TV splitting methods (ADMM, split Bregman).
    """
    magnitude = g.pow(2).sum(1, keepdim=True).sqrt()
    return g * (1.0 - threshold / magnitude.clamp_min(1e-12)).clamp_min(0.0)
