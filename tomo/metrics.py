"""Unit conversions between Hounsfield units and attenuation, and the project's image scores.

The conversions and the scores follow ``evaluation.md`` (the project's measurement protocol):

* ``mu = MU_WATER * (1 + HU / 1000)`` with ``MU_WATER = 0.0192 / mm`` (water at about 70 keV),
  HU clipped to ``[-1024, 3071]`` (the 12-bit CT range) before the conversion;
* PSNR and SSIM on the HU image mapped through the fixed window ``[-1000, 1000]`` HU to
  ``[0, 1]``, data range 1, over the whole image. There is deliberately no per-image min-max
  normalisation: that would hide a global bias in the reconstruction.

All functions accept NumPy arrays or torch tensors (returned in the same kind for the
conversions; scores are Python floats or a NumPy array of per-image floats).
"""
from __future__ import annotations

import numpy as np

__all__ = ["MU_WATER_PER_MM", "HU_MIN", "HU_MAX", "WINDOW_HU", "hu_to_mu", "mu_to_hu",
           "window", "psnr", "ssim"]

#: linear attenuation coefficient of water used throughout the project [1/mm]
MU_WATER_PER_MM = 0.0192
#: clip range applied to HU before conversion to attenuation (12-bit CT range)
HU_MIN, HU_MAX = -1024.0, 3071.0
#: display/scoring window [HU]
WINDOW_HU = (-1000.0, 1000.0)


def _is_torch(x) -> bool:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a hard dependency
        return False
    return isinstance(x, torch.Tensor)


def _check_finite(x, name: str) -> None:
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
    _check_finite(hu, "hu")
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
    _check_finite(mu, "mu")
    if _is_torch(mu):
        m = mu if mu.is_floating_point() else mu.float()
        return 1000.0 * (m / MU_WATER_PER_MM - 1.0)
    m = np.asarray(mu)
    if m.dtype.kind != "f":
        m = m.astype(np.float32)
    return (1000.0 * (m / MU_WATER_PER_MM - 1.0)).astype(m.dtype, copy=False)


def window(hu, lo: float = WINDOW_HU[0], hi: float = WINDOW_HU[1]) -> np.ndarray:
    """Map HU through the window ``[lo, hi]`` to ``[0, 1]`` (clipped), as float64 NumPy."""
    if _is_torch(hu):
        hu = hu.detach().cpu().numpy()
    h = np.asarray(hu, dtype=np.float64)
    return np.clip((h - lo) / (hi - lo), 0.0, 1.0)


def _pair(hu, ref) -> tuple[np.ndarray, np.ndarray]:
    _check_finite(hu, "hu")
    _check_finite(ref, "ref")
    a, b = window(hu), window(ref)
    if a.shape != b.shape:
        raise ValueError(f"hu and ref must have the same shape, got {a.shape} and {b.shape}")
    if a.ndim < 2:
        raise ValueError(f"images must be at least 2-D [H, W], got shape {a.shape}")
    return a, b


def psnr(hu, ref):
    """Peak signal-to-noise ratio [dB] on the [-1000, 1000] HU window, data range 1.

    Parameters
    ----------
    hu, ref : array_like or torch.Tensor, shape [H, W] or [N, H, W]
        Reconstruction and reference in HU.

    Returns
    -------
    float for one image, else a float64 array [N] of per-image PSNR. ``inf`` for identical
    windowed images.
    """
    a, b = _pair(hu, ref)
    mse = np.mean((a - b) ** 2, axis=(-2, -1))
    with np.errstate(divide="ignore"):
        out = 10.0 * np.log10(1.0 / mse)
    return float(out) if out.ndim == 0 else out.reshape(-1)


def ssim(hu, ref):
    """Structural similarity on the [-1000, 1000] HU window, data range 1.

    Uses :func:`skimage.metrics.structural_similarity` with its defaults (7 x 7 uniform window,
    K1 = 0.01, K2 = 0.03) and ``data_range=1``.

    Parameters
    ----------
    hu, ref : array_like or torch.Tensor, shape [H, W] or [N, H, W]
        Reconstruction and reference in HU (each image at least 7 x 7).

    Returns
    -------
    float for one image, else a float64 array [N] of per-image SSIM.
    """
    from skimage.metrics import structural_similarity

    a, b = _pair(hu, ref)
    if min(a.shape[-2:]) < 7:
        raise ValueError(f"SSIM needs images of at least 7 x 7 pixels, got {a.shape[-2:]}")
    if a.ndim == 2:
        return float(structural_similarity(a, b, data_range=1.0))
    flat_a = a.reshape((-1,) + a.shape[-2:])
    flat_b = b.reshape((-1,) + b.shape[-2:])
    return np.array([structural_similarity(x, y, data_range=1.0) for x, y in zip(flat_a, flat_b)])
