"""Test phantoms in physical units (linear attenuation mu in 1/mm)."""

from __future__ import annotations

import math

import numpy as np
import torch

from .units import MU_WATER_PER_MM
from .validation import positive_float, positive_int, positive_shape

__all__ = ["shepp_logan"]

# Modified Shepp-Logan (Toft 1996): intensity, semi-axes a (x) b (y), centre (x0, y0), angle (deg),
# in units of the phantom half-width, y pointing up.
_ELLIPSES = (
    (1.0, 0.69, 0.92, 0.0, 0.0, 0.0),
    (-0.8, 0.6624, 0.8740, 0.0, -0.0184, 0.0),
    (-0.2, 0.1100, 0.3100, 0.22, 0.0, -18.0),
    (-0.2, 0.1600, 0.4100, -0.22, 0.0, 18.0),
    (0.1, 0.2100, 0.2500, 0.0, 0.35, 0.0),
    (0.1, 0.0460, 0.0460, 0.0, 0.1, 0.0),
    (0.1, 0.0460, 0.0460, 0.0, -0.1, 0.0),
    (0.1, 0.0460, 0.0230, -0.08, -0.605, 0.0),
    (0.1, 0.0230, 0.0230, 0.0, -0.606, 0.0),
    (0.1, 0.0230, 0.0460, 0.06, -0.605, 0.0),
)


def shepp_logan(
    shape=(256, 256),
    pixel_spacing_mm: float = 1.0,
    *,
    water_mu: float = MU_WATER_PER_MM,
    supersample: int = 3,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Modified Shepp-Logan head phantom as linear attenuation mu in 1/mm.

    The phantom's outer ellipse spans 0.92 of the half-height of the smaller image side. The
    classic intensities are mapped to tissue-like values: air outside (0), the "skull" ring at
    2x water (+1000 HU), "brain" at water (``water_mu``, 0 HU), the two dark ellipses at
    0.75x water (-250 HU) and the small features at 1.125x water (+125 HU).

    Parameters
    ----------
    shape : (int, int)
        ``(H, W)`` pixels.
    pixel_spacing_mm : float
        Pixel side in mm (the phantom is defined relative to the image size, so this only sets
        the physical scale, which does not change mu).
    water_mu : float
        Attenuation of water in 1/mm.
    supersample : int
        Sub-samples per pixel side for anti-aliased edges (pixel value = area average).
    dtype : torch.dtype

    Returns
    -------
    torch.Tensor
        ``[H, W]`` mu in 1/mm; row 0 is the top (largest y), as in ASTRA.
    """
    h, w = positive_shape(shape, "shape", 2)
    positive_float(pixel_spacing_mm, "pixel_spacing_mm")
    water_mu = positive_float(water_mu, "water_mu")
    ss = positive_int(supersample, "supersample")
    half = min(h, w) / 2  # pixels per phantom unit
    # sub-sample centres in phantom units (x right, y up)
    sub = (np.arange(ss) + 0.5) / ss
    xs = ((np.arange(w)[:, None] + sub[None, :]).reshape(-1) - w / 2) / half
    ys = (h / 2 - (np.arange(h)[:, None] + sub[None, :]).reshape(-1)) / half
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    value = np.zeros_like(xx)
    for amp, a, b, x0, y0, phi in _ELLIPSES:
        c, s = math.cos(math.radians(phi)), math.sin(math.radians(phi))
        u = (xx - x0) * c + (yy - y0) * s
        v = -(xx - x0) * s + (yy - y0) * c
        value += amp * ((u / a) ** 2 + (v / b) ** 2 <= 1.0)
    inside = ((xx / 0.69) ** 2 + (yy / 0.92) ** 2) <= 1.0
    # classic 0.2 -> water, 1.0 -> 2x water, linear in between; air outside the head
    mu = np.where(inside, water_mu * (1.0 + 1.25 * (value - 0.2)), 0.0)
    mu = mu.reshape(h, ss, w, ss).mean(axis=(1, 3))
    return torch.as_tensor(mu, dtype=dtype)
