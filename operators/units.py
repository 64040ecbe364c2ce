"""Units: Hounsfield units <-> linear attenuation [1/mm], with the project's water constant.

``mu = MU_WATER_PER_MM * (1 + HU / 1000)`` with ``MU_WATER_PER_MM = 0.0192 / mm`` (water at about
70 keV, docs/evaluation.md), HU clipped to ``[-1024, 3071]`` (the 12-bit CT range) before the
conversion. Both functions accept NumPy arrays or torch tensors and return the same kind.

>>> float(hu_to_mu(0.0)), float(hu_to_mu(-1000.0))
(0.0192, 0.0)
>>> round(float(mu_to_hu(0.0192 * 2)), 6)
1000.0
"""

from __future__ import annotations

import numpy as np

__all__ = ["MU_WATER_PER_MM", "HU_MIN", "HU_MAX", "hu_to_mu", "mu_to_hu", "check_finite"]

#: linear attenuation coefficient of water used throughout the project [1/mm]
MU_WATER_PER_MM = 0.0192
#: clip range applied to HU before conversion to attenuation (12-bit CT range)
HU_MIN, HU_MAX = -1024.0, 3071.0


def _is_torch(x) -> bool:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a hard dependency
        return False
    return isinstance(x, torch.Tensor)


def check_finite(x, name: str) -> None:
    """``TypeError`` for non-real input, ``ValueError`` for NaN/Inf (NumPy or torch)."""
    if _is_torch(x):
        import torch

        if x.is_complex() or x.dtype == torch.bool:
            raise TypeError(f"{name} must be a real numeric tensor, got {x.dtype}")
        if x.is_floating_point() and not bool(torch.isfinite(x).all()):
            raise ValueError(f"{name} contains NaN or Inf values")
        return
    arr = np.asarray(x)
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{name} must be a real numeric array, got dtype {arr.dtype}")
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or Inf values")


def hu_to_mu(hu):
    """Convert Hounsfield units to linear attenuation [1/mm].

    Parameters
    ----------
    hu : array_like or torch.Tensor, any shape
        CT numbers [HU]. Clipped to ``[HU_MIN, HU_MAX]`` = [-1024, 3071] first.

    Returns
    -------
    mu : same kind and shape as ``hu`` (float32 for integer NumPy input)
        ``0.0192 / mm * (1 + HU / 1000)``; water 0.0192/mm, air (-1000 HU) 0.
    """
    check_finite(hu, "hu")
    if _is_torch(hu):
        h = hu if hu.is_floating_point() else hu.float()
        return MU_WATER_PER_MM * (1.0 + h.clamp(HU_MIN, HU_MAX) / 1000.0)
    h = np.asarray(hu)
    if h.dtype.kind != "f":
        h = h.astype(np.float32)
    return (MU_WATER_PER_MM * (1.0 + np.clip(h, HU_MIN, HU_MAX) / 1000.0)).astype(h.dtype, copy=False)


def mu_to_hu(mu):
    """Convert linear attenuation [1/mm] to Hounsfield units (no clipping).

    Parameters
    ----------
    mu : array_like or torch.Tensor, any shape
        Linear attenuation [1/mm].

    Returns
    -------
    hu : same kind and shape as ``mu``
        ``1000 * (mu / 0.0192 - 1)`` [HU].
    """
    check_finite(mu, "mu")
    if _is_torch(mu):
        m = mu if mu.is_floating_point() else mu.float()
        return 1000.0 * (m / MU_WATER_PER_MM - 1.0)
    m = np.asarray(mu)
    if m.dtype.kind != "f":
        m = m.astype(np.float32)
    return (1000.0 * (m / MU_WATER_PER_MM - 1.0)).astype(m.dtype, copy=False)
