"""Filtered back-projection as a reconstruction method (wraps :func:`operators.fbp`)."""

from __future__ import annotations

import torch

from operators import FILTERS, fbp
from operators.geometry import FanBeam2D, ParallelBeam2D

__all__ = ["fbp_reconstruct", "FILTERS"]


def fbp_reconstruct(
    sinogram: torch.Tensor,
    geometry: ParallelBeam2D | FanBeam2D,
    *,
    filter: str = "ram-lak",
    cutoff: float = 1.0,
    nonneg: bool = False,
) -> torch.Tensor:
    """FBP of line integrals to attenuation.

    Parameters
    ----------
    sinogram : torch.Tensor, [..., views, detectors]
        Line integrals (dimensionless); the reconstruction runs on its device.
    geometry : ParallelBeam2D or FanBeam2D
    filter : str
        One of :data:`operators.FILTERS` (``ram-lak``, ``shepp-logan``, ``cosine``,
        ``hamming``, ``hann``).
    cutoff : float
        Filter cut-off as a fraction of Nyquist, in (0, 1].
    nonneg : bool
        Clip negative attenuation to 0 (off by default: FBP is linear and unbiased).

    Returns
    -------
    torch.Tensor, [..., H, W]
        Attenuation mu [1/mm].
    """
    mu = fbp(sinogram, geometry, filter=filter, cutoff=cutoff)  # differentiable in the sinogram
    return mu.clamp_min(0.0) if nonneg else mu
