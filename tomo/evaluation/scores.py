"""The project's image scores, as ``docs/evaluation.md`` (the measurement protocol) defines them.

* PSNR and SSIM on the HU image mapped through the fixed window ``[-1000, 1000]`` HU to
  ``[0, 1]``, data range 1, over the whole image. There is deliberately no per-image min-max
  normalisation: that would hide a global bias in the reconstruction.

All functions accept NumPy arrays or torch tensors; scores are Python floats or a NumPy array
of per-image floats. Unit conversions live in :mod:`operators.units`.
"""

from __future__ import annotations

import numpy as np

from operators.units import check_finite

__all__ = ["WINDOW_HU", "window", "psnr", "ssim"]

#: display/scoring window [HU]
WINDOW_HU = (-1000.0, 1000.0)


def window(hu, lo: float = WINDOW_HU[0], hi: float = WINDOW_HU[1]) -> np.ndarray:
    """Map HU through the window ``[lo, hi]`` to ``[0, 1]`` (clipped), as float64 NumPy."""
    if hasattr(hu, "detach"):  # a torch tensor (torch is not imported for NumPy input)
        hu = hu.detach().cpu().numpy()
    h = np.asarray(hu, dtype=np.float64)
    return np.clip((h - lo) / (hi - lo), 0.0, 1.0)


def _pair(hu, ref) -> tuple[np.ndarray, np.ndarray]:
    check_finite(hu, "hu")
    check_finite(ref, "ref")
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
