"""Move a physical inverse problem into the prior's model range with an affine change of variable.

The prior works on ``x`` in its model range (about [-1, 1]); measurements live in physical
units (CT: line integrals of mu [1/mm]; image restoration: HU). When the physical image is
``u = a x + b`` (``a``, ``b`` scalars), ``y = A u + n`` becomes

    y' = y - b A(1) = (a A) x + n,

so a solver only needs the operator ``A' = a A`` (:class:`~operators.base.ScaledOperator`) and
the shifted data ``y'``; the noise, and hence the weights, are unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from operators.base import LinearOperator, ScaledOperator

from .data_terms import batch_measurements

__all__ = ["ModelDomainProblem", "affine_problem", "model_to_hu_affine"]


@dataclass
class ModelDomainProblem:
    """A linear inverse problem ``y = A x + n`` in the prior's model range.

    Attributes
    ----------
    operator : LinearOperator
        ``A' = a A`` acting on model-range images ``[B, 1, H, W]``.
    y : torch.Tensor [B, 1, *out_shape]
        Shifted measurements ``y - b A(1)``.
    weights : torch.Tensor or None
        Inverse noise variances of ``y`` (``None``: white noise).
    scale, offset : float
        The physical image is ``u = scale * x + offset``.
    unit : str
        Unit of ``u`` (``"1/mm"`` for CT attenuation, ``"HU"``).
    """

    operator: LinearOperator
    y: torch.Tensor
    weights: torch.Tensor | None
    scale: float
    offset: float
    unit: str

    def to_physical(self, x: torch.Tensor) -> torch.Tensor:
        """Model-range image -> physical image ``scale * x + offset`` (in :attr:`unit`)."""
        return self.scale * x + self.offset

    def solver_args(self) -> dict:
        """Keyword arguments ``operator``, ``y``, ``weights`` for :func:`dps` / :func:`dds`."""
        return {"operator": self.operator, "y": self.y, "weights": self.weights}


def model_to_hu_affine(prior) -> tuple[float, float]:
    """``(h1, h0)`` such that ``prior.model_to_hu(x) == h1 * x + h0``.

    Read off the prior's own map at ``x = 0`` and ``x = 1``; a map that is not affine (checked at
    ``x = -0.5``) is refused, since the change of variable needs an affine one.
    """
    probe = torch.tensor([0.0, 1.0, -0.5], dtype=torch.float64)
    hu = torch.as_tensor(prior.model_to_hu(probe), dtype=torch.float64).reshape(-1)
    h0, h1 = float(hu[0]), float(hu[1] - hu[0])
    if h1 == 0 or abs(float(hu[2]) - (h0 - 0.5 * h1)) > 1e-6 * max(1.0, abs(h1)):
        raise ValueError(
            "prior.model_to_hu is not an affine map with non-zero slope; the model-domain change of variable needs one"
        )
    return h1, h0


def affine_problem(
    operator: LinearOperator,
    y: torch.Tensor,
    scale: float,
    offset: float,
    weights: torch.Tensor | None = None,
    unit: str = "",
) -> ModelDomainProblem:
    """The model-domain problem for a physical image ``u = scale * x + offset``.

    Parameters
    ----------
    operator : LinearOperator
        Physical forward model ``A`` (``in_shape`` ``(H, W)``).
    y : torch.Tensor
        Physical measurements ``[*out_shape]``, ``[B, *out_shape]`` or ``[B, 1, *out_shape]``.
    scale, offset : float
        Affine map from model range to physical units (``scale != 0``).
    weights : torch.Tensor or None
        Inverse noise variances of ``y``.
    unit : str
        Unit of ``u``, for display.
    """
    if not scale or not torch.isfinite(torch.tensor(float(scale))) or not torch.isfinite(torch.tensor(float(offset))):
        raise ValueError(f"scale must be finite and non-zero and offset finite, got {scale}, {offset}")
    yb = batch_measurements(operator, y)
    with torch.no_grad():
        ones = torch.ones((1, 1) + operator.in_shape, dtype=yb.dtype, device=yb.device)
        shifted = yb - float(offset) * operator(ones)
    return ModelDomainProblem(
        ScaledOperator(operator, float(scale)), shifted, weights, float(scale), float(offset), unit
    )
