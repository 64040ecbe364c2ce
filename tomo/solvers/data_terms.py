"""The noise-aware, normalised data term of the diffusion solvers.

The data term of every solver is the weighted least-squares misfit

    r(x) = s * W^{1/2} (y - A x),        W = diag(weights),

for measurements ``y = A x + n``: ``weights = 1`` for white Gaussian noise, ``1 / variance``
for heteroscedastic noise (e.g. post-log transmission CT, see
:func:`operators.transmission_weights`). ``s = 1 / ||W^{1/2} A||_2`` (per slice) makes step sizes
and regularisation weights dimensionless, so the same ``zeta`` or ``lam`` works for a blur
(norm about 1) and a CT projector (norm in the hundreds of mm); it rescales the whole term and
does not change its minimisers. Solvers know nothing about CT: they see only the
:class:`~operators.base.LinearOperator` interface. The norm estimate and the conjugate
gradients are the shared kernels of :mod:`operators.linalg`.
"""

from __future__ import annotations

import torch

from operators.base import LinearOperator, check_tensor
from operators.linalg import (
    conjugate_gradient,
    gradient,
    gradient_adjoint,
    power_iteration,
    random_start,
    shrink_isotropic,
)
from operators.noise import transmission_weights

__all__ = ["DataFidelity", "conjugate_gradient", "transmission_poisson_weights", "batch_measurements"]

#: older name of :func:`operators.transmission_weights` (the same function)
transmission_poisson_weights = transmission_weights


def batch_measurements(operator: LinearOperator, y: torch.Tensor, name: str = "y") -> torch.Tensor:
    """Bring ``y`` to the solvers' layout ``[B, 1, *out_shape]``.

    Accepts ``[*out_shape]`` (one item), ``[B, *out_shape]`` and ``[B, 1, *out_shape]``.
    """
    check_tensor(y, name)
    out = operator.out_shape
    nd = len(out)
    if y.dim() < nd or tuple(y.shape[y.dim() - nd :]) != out:
        raise ValueError(f"{name} must end in the operator's measurement shape {out}, got shape {tuple(y.shape)}")
    lead = tuple(y.shape[: y.dim() - nd])
    if lead == ():
        return y.reshape((1, 1) + out)
    if len(lead) == 1:
        return y.reshape((lead[0], 1) + out)
    if len(lead) == 2 and lead[1] == 1:
        return y
    raise ValueError(
        f"{name} must have shape {out}, [B, {', '.join(map(str, out))}] or "
        f"[B, 1, {', '.join(map(str, out))}], got {tuple(y.shape)}"
    )


class DataFidelity:
    """The weighted, normalised least-squares term ``r(x) = s W^{1/2} (y - A x)`` of a batch.

    Parameters
    ----------
    operator : LinearOperator
        Forward model ``A`` with a 2-D ``in_shape`` ``(H, W)``.
    y : torch.Tensor
        Measurements, ``[*out_shape]``, ``[B, *out_shape]`` or ``[B, 1, *out_shape]``.
    weights : torch.Tensor or None
        Diagonal of ``W`` (inverse noise variances, >= 0), broadcastable to ``y``'s shape
        ``[B, 1, *out_shape]`` (``[*out_shape]`` and ``[B, *out_shape]`` are accepted too).
        ``None``: white noise (``W = I``).
    normalize : bool
        Scale by ``s = 1 / ||W^{1/2} A||`` per item (power iteration); otherwise ``s = 1``.
    power_iterations : int
        Iterations of the norm estimate.

    Attributes
    ----------
    y : torch.Tensor [B, 1, *out_shape]
    scale : torch.Tensor [B] (``s`` per item)
    operator_calls : int
        Applications of ``A`` or ``A^T`` so far (a batched call counts once).
    """

    def __init__(
        self,
        operator: LinearOperator,
        y: torch.Tensor,
        weights: torch.Tensor | None = None,
        *,
        normalize: bool = True,
        power_iterations: int = 20,
    ):
        if not isinstance(operator, LinearOperator):
            raise TypeError(f"operator must be an operators.LinearOperator, got {type(operator).__name__}")
        if len(operator.in_shape) != 2:
            raise ValueError(
                f"the solvers reconstruct 2-D images: operator.in_shape must be (H, W), got {operator.in_shape}"
            )
        self.operator = operator
        self.y = batch_measurements(operator, y)
        self.batch = self.y.shape[0]
        self.image_shape = (self.batch, 1) + operator.in_shape
        self.operator_calls = 0
        self.sqrt_w = self._sqrt_weights(weights)
        self.scale = torch.ones(self.batch, dtype=self.y.dtype, device=self.y.device)
        if normalize:
            self.scale = 1.0 / self._whitened_norm(power_iterations)

    # ----- set-up ------------------------------------------------------------------------------
    def _sqrt_weights(self, weights):
        if weights is None:
            return None
        check_tensor(weights, "weights")
        if weights.device != self.y.device:
            raise ValueError(f"weights are on {weights.device} but y is on {self.y.device}")
        if bool((weights < 0).any()):
            raise ValueError("weights (inverse noise variances) must be >= 0")
        out = self.operator.out_shape
        if weights.dim() >= len(out) and tuple(weights.shape[-len(out) :]) == out and weights.dim() <= len(out) + 1:
            weights = batch_measurements(self.operator, weights, "weights")
        try:
            w = torch.broadcast_to(weights, self.y.shape)
        except RuntimeError:
            raise ValueError(
                f"weights of shape {tuple(weights.shape)} do not broadcast to the measurements {tuple(self.y.shape)}"
            ) from None
        if bool((w.flatten(1).sum(dim=1) == 0).any()):
            raise ValueError("weights are all zero for at least one item: nothing to fit")
        return w.to(self.y.dtype).sqrt()

    def _whitened_norm(self, iterations: int) -> torch.Tensor:
        """``||W^{1/2} A||`` per item by power iteration (fixed seed: deterministic)."""
        v0 = random_start(self.image_shape, self.y.dtype, self.y.device)
        sigma2 = power_iteration(self._normal_unscaled, v0, max(int(iterations), 1))
        if bool((sigma2 <= 0).any()):
            raise ValueError("the weighted operator W^(1/2) A is zero for some item: nothing to fit")
        return sigma2.sqrt()

    # ----- the term ------------------------------------------------------------------------------
    def _apply(self, x):
        self.operator_calls += 1
        return self.operator(x)

    def _apply_adjoint(self, r):
        self.operator_calls += 1
        return self.operator.adjoint(r)

    def _weigh(self, r):
        return r if self.sqrt_w is None else r * self.sqrt_w

    def _scale_like(self, t, power: int = 1):
        return (self.scale**power).reshape((-1,) + (1,) * (t.dim() - 1))

    def _normal_unscaled(self, x):
        return self._apply_adjoint(self._weigh(self._weigh(self._apply(x))))

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        """``s W^{1/2} (y - A x)`` for ``x`` [B, 1, H, W]; differentiable (through ``A^T``)."""
        r = self._weigh(self.y - self._apply(x))
        return r * self._scale_like(r)

    def residual_norm(self, x: torch.Tensor) -> torch.Tensor:
        """``||r(x)||`` per item, shape [B]."""
        return self.residual(x).flatten(1).norm(dim=1)

    def weighted_forward(self, x: torch.Tensor) -> torch.Tensor:
        """``s W^{1/2} A x`` (one operator call): the normalised forward model."""
        ax = self._weigh(self._apply(x))
        return ax * self._scale_like(ax)

    def residual_gradient(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The gradient of ``1/2 ||r(x)||^2`` (``-s A^T W^{1/2} r``, [B, 1, H, W]) and ``||r(x)||`` [B].

        Two operator calls (``A`` and ``A^T``), no autograd: the data step of the solvers that take
        the residual's gradient on the denoised estimate instead of through the network.
        """
        r = self.residual(x)
        return self.gradient_from_residual(r), r.flatten(1).norm(dim=1)

    def gradient_from_residual(self, r: torch.Tensor) -> torch.Tensor:
        """The gradient of ``1/2 ||r||^2`` at the image whose residual is ``r`` (one call of ``A^T``)."""
        g = self._apply_adjoint(self._weigh(r))
        return -g * self._scale_like(g)

    def normal(self, x: torch.Tensor) -> torch.Tensor:
        """``s^2 A^T W A x``."""
        out = self._normal_unscaled(x)
        return out * self._scale_like(out, 2)

    def normal_rhs(self) -> torch.Tensor:
        """``s^2 A^T W y``."""
        out = self._apply_adjoint(self._weigh(self._weigh(self.y)))
        return out * self._scale_like(out, 2)

    def solve(self, x0: torch.Tensor, iterations: int, lam: float = 0.0, tol: float = 0.0) -> torch.Tensor:
        """A few CG iterations on ``(A^T W A + lam I) x = A^T W y + lam x0`` started at ``x0``.

        In normalised units (``||s W^{1/2} A|| = 1``), so ``lam`` is relative to the largest
        eigenvalue of the normal matrix. ``lam = 0``: plain (early-stopped) least squares.
        """
        rhs = self.normal_rhs()
        if lam > 0:
            rhs = rhs + lam * x0
            return conjugate_gradient(lambda v: self.normal(v) + lam * v, rhs, x0, iterations, tol)
        return conjugate_gradient(self.normal, rhs, x0, iterations, tol)

    def solve_tv(
        self,
        x0: torch.Tensor,
        tv_weight: float,
        *,
        admm_iterations: int = 4,
        cg_iterations: int = 3,
        rho: float | None = None,
        lam: float = 0.0,
        tv_z_weight: float = 0.0,
    ) -> torch.Tensor:
        """A few ADMM iterations on the data term plus isotropic TV, started at ``x0``.

        Minimises ``1/2 ||r(x)||^2 + lam/2 ||x - x0||^2 + tv_weight TV(x)`` by splitting
        ``z = D x`` (``D``: forward differences, :func:`operators.linalg.gradient`):

            x <- CG on (s^2 A^T W A + lam I + rho D^T D) x = s^2 A^T W y + lam x0 + rho D^T (z - u)
            z <- shrink(D x + u, tv_weight / rho),   u <- u + D x - z,

        the hybrid data step of DiffusionMBIR / 3-D DDS: the diffusion prior proposes ``x0``
        and the convex TV term suppresses the streaks the few views leave in its null space.
        Like :meth:`solve`, it is early-stopped from ``x0`` (``admm_iterations x cg_iterations``
        applications of the normal operator), in normalised units (``||s W^{1/2} A|| = 1``).

        Parameters
        ----------
        x0 : torch.Tensor [B, 1, H, W]
            Start (the prior's denoised estimate), model range.
        tv_weight : float
            TV weight per unit of model range per pixel (> 0).
        admm_iterations, cg_iterations : int
            Outer ADMM iterations and CG iterations per x-update.
        rho : float, optional
            ADMM penalty (relative to the normalised data term); default ``10 * tv_weight``:
            a penalty much larger than the weight lets ``D^T D`` dominate the x-update and
            stalls the few iterations (8-view test: error 0.35 at 10 x the weight, 1.5 at 100 x).
        lam : float
            Optional Tikhonov pull towards ``x0``.
        tv_z_weight : float
            > 0: the items of the batch are consecutive slices of one volume, in order, and
            ``tv_z_weight * sum |x[b+1] - x[b]|`` (anisotropic TV along z, same units as
            ``tv_weight``) couples them; the x-update is then one CG over the whole batch.

        Returns
        -------
        torch.Tensor [B, 1, H, W]
        """
        rho = 10.0 * tv_weight if rho is None else rho
        if not tv_weight > 0 or not rho > 0:
            raise ValueError(f"tv_weight and rho must be > 0, got {tv_weight}, {rho}")
        if admm_iterations < 1:
            raise ValueError(f"admm_iterations must be >= 1, got {admm_iterations}")
        if not tv_z_weight >= 0:
            raise ValueError(f"tv_z_weight must be >= 0, got {tv_z_weight}")
        coupled = tv_z_weight > 0 and x0.shape[0] > 1

        def diff(v):  # [B, 1, H, W] -> [B, 2 (+1 along z), H, W]
            g = gradient(v[:, 0])
            return torch.cat([g, z_difference(v)], dim=1) if coupled else g

        def diff_adjoint(g):  # the adjoint of diff: -> [B, 1, H, W]
            out = gradient_adjoint(g[:, :2])[:, None]
            return out + z_difference_adjoint(g[:, 2:]) if coupled else out

        def matrix(v):
            out = self.normal(v) + rho * diff_adjoint(diff(v))
            return out + lam * v if lam > 0 else out

        def shrink(g):
            planar = shrink_isotropic(g[:, :2], tv_weight / rho)
            if not coupled:
                return planar
            gz = g[:, 2:]
            return torch.cat([planar, gz.sign() * (gz.abs() - tv_z_weight / rho).clamp_min(0.0)], dim=1)

        # coupled slices form one linear system: one CG with global step lengths, not one per item
        solve = _as_one_system(conjugate_gradient) if coupled else conjugate_gradient
        data_rhs = self.normal_rhs() + (lam * x0 if lam > 0 else 0.0)
        x = x0
        z = diff(x0)
        u = torch.zeros_like(z)
        for _ in range(admm_iterations):
            x = solve(matrix, data_rhs + rho * diff_adjoint(z - u), x, cg_iterations)
            dxu = diff(x) + u
            z = shrink(dxu)
            u = dxu - z
        return x


def z_difference(v: torch.Tensor) -> torch.Tensor:
    """Forward difference along the batch (slices of one volume): ``[B, 1, H, W]`` -> ``[B, 1, H, W]``,
    ``v[b + 1] - v[b]``, 0 for the last slice (Neumann boundary)."""
    out = torch.zeros_like(v)
    out[:-1] = v[1:] - v[:-1]
    return out


def z_difference_adjoint(g: torch.Tensor) -> torch.Tensor:
    """Adjoint of :func:`z_difference`: ``[B, 1, H, W]`` -> ``[B, 1, H, W]``."""
    out = torch.zeros_like(g)
    out[:-1] -= g[:-1]
    out[1:] += g[:-1]
    return out


def _as_one_system(cg):
    """``cg`` on a batch [B, ...] treated as one unknown (a leading batch of one), not B systems."""

    def solve(apply_matrix, rhs, x0, iterations):
        shape = x0.shape
        flat = lambda t: t.reshape((1,) + tuple(shape))  # noqa: E731
        return cg(lambda v: flat(apply_matrix(v.reshape(shape))), flat(rhs), flat(x0), iterations).reshape(shape)

    return solve
