"""The project's image scores, as ``docs/evaluation.md`` (the measurement protocol) defines them.

* :func:`interval_coverage` and :func:`error_to_std_quantile` -- how often the truth lies in the
  interval ``mean +- z std`` of a posterior standard deviation, over tissue pixels (HU > -900).
* :func:`z_difference_rmse` -- how consistent a reconstructed volume is from slice to slice.
* PSNR and SSIM on the HU image mapped through the fixed window ``[-1000, 1000]`` HU to
  ``[0, 1]``, data range 1, over the whole image. There is deliberately no per-image min-max
  normalisation: that would hide a global bias in the reconstruction.

All functions accept NumPy arrays or torch tensors; scores are Python floats or a NumPy array
of per-image floats. Unit conversions live in :mod:`operators.units`.
"""

from __future__ import annotations

import numpy as np

from operators.units import check_finite

__all__ = [
    "WINDOW_HU",
    "TISSUE_MIN_HU",
    "Z_90",
    "window",
    "psnr",
    "ssim",
    "interval_coverage",
    "error_to_std_quantile",
    "z_difference_rmse",
    "error_to_std_quantiles",
    "QUANTILE_LEVELS",
    "coverage_from_quantiles",
    "calibration_factor",
]

#: pixels whose true value exceeds this [HU] count as tissue in the coverage scores (not air)
TISSUE_MIN_HU = -900.0
#: the two-sided 90 % quantile of the standard normal: ``mean +- Z_90 std`` is a 90 % interval
Z_90 = 1.6448536269514722

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


def _standardised_errors(mean_hu, std_hu, truth_hu, tissue_min_hu: float) -> np.ndarray:
    """``|mean - truth| / std`` over the pixels with ``truth > tissue_min_hu`` (1-D float64)."""
    mean, std, truth = (np.asarray(a, dtype=np.float64) for a in (mean_hu, std_hu, truth_hu))
    if not mean.shape == std.shape == truth.shape:
        raise ValueError(f"mean, std and truth must have one shape, got {mean.shape}, {std.shape}, {truth.shape}")
    if (std < 0).any():
        raise ValueError("std must be non-negative")
    tissue = truth > tissue_min_hu
    if not tissue.any():
        raise ValueError(f"no pixel of the truth exceeds {tissue_min_hu} HU (no tissue to score)")
    err = np.abs(mean - truth)[tissue]
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(err == 0, 0.0, err / std[tissue])


def interval_coverage(mean_hu, std_hu, truth_hu, z: float = Z_90, tissue_min_hu: float = TISSUE_MIN_HU) -> float:
    """Fraction of tissue pixels whose truth lies in ``mean +- z std``.

    Parameters
    ----------
    mean_hu, std_hu, truth_hu : array_like [..., H, W]
        Posterior mean, posterior standard deviation and ground truth (HU; std >= 0).
    z : float
        Half-width in standard deviations (default: 1.645, a 90 % interval for a Gaussian).
    tissue_min_hu : float
        Only pixels whose truth exceeds this value count (default -900 HU: not air).

    Returns
    -------
    float in [0, 1]; a calibrated std gives about 0.90 with the default ``z``.
    """
    return float(np.mean(_standardised_errors(mean_hu, std_hu, truth_hu, tissue_min_hu) <= z))


def error_to_std_quantile(mean_hu, std_hu, truth_hu, q: float = 0.9, tissue_min_hu: float = TISSUE_MIN_HU) -> float:
    """The ``q`` quantile of ``|mean - truth| / std`` over tissue pixels.

    ``error_to_std_quantile(...) / Z_90`` is the factor by which ``std`` must be multiplied for the
    interval ``mean +- 1.645 std`` to hold the truth in 90 % of the tissue pixels (the calibration
    factor of :data:`tomo.methods.diffusion.STD_CALIBRATION`).
    """
    if not 0.0 < q < 1.0:
        raise ValueError(f"q must lie in (0, 1), got {q}")
    return float(np.quantile(_standardised_errors(mean_hu, std_hu, truth_hu, tissue_min_hu), q))


#: the probabilities at which :func:`error_to_std_quantiles` samples the distribution
QUANTILE_LEVELS = np.round(np.arange(1, 1000) / 1000, 3)


def error_to_std_quantiles(mean_hu, std_hu, truth_hu, tissue_min_hu: float = TISSUE_MIN_HU) -> np.ndarray:
    """The 0.001 ... 0.999 quantiles (:data:`QUANTILE_LEVELS`) of ``|mean - truth| / std`` over tissue
    pixels: enough to give the coverage of ``mean +- z c std`` for any factor ``c`` afterwards
    (:func:`coverage_from_quantiles`), so a calibration factor found later on train/ can be
    applied to stored dev results without running them again."""
    return np.quantile(_standardised_errors(mean_hu, std_hu, truth_hu, tissue_min_hu), QUANTILE_LEVELS)


def coverage_from_quantiles(quantiles, factor: float = 1.0, z: float = Z_90) -> float:
    """Coverage of ``mean +- z factor std`` from :func:`error_to_std_quantiles` (interpolated, to 0.001)."""
    q = np.maximum.accumulate(np.asarray(quantiles, dtype=np.float64))
    levels = np.concatenate([[0.0], QUANTILE_LEVELS, [1.0]])
    knots = np.concatenate([[0.0], q, [np.inf]])
    return float(np.interp(z * factor, knots[:-1], levels[:-1], right=1.0))


def calibration_factor(quantile_sets, target: float = 0.90, z: float = Z_90) -> float:
    """The factor ``c`` for which ``mean +- z c std`` holds the truth in ``target`` of the tissue pixels,
    averaged over slices (each a list of :func:`error_to_std_quantiles`); found by bisection."""
    sets = [np.asarray(q, dtype=np.float64) for q in quantile_sets]
    if not sets:
        raise ValueError("need the quantiles of at least one slice")
    if not 0.0 < target < 1.0:
        raise ValueError(f"target must lie in (0, 1), got {target}")

    def coverage(c: float) -> float:
        return float(np.mean([coverage_from_quantiles(q, c, z) for q in sets]))

    lo, hi = 1e-3, 1e3
    for _ in range(60):  # geometric bisection: coverage grows with c
        mid = float(np.sqrt(lo * hi))
        lo, hi = (mid, hi) if coverage(mid) < target else (lo, mid)
    return float(np.sqrt(lo * hi))


def z_difference_rmse(volume_hu, truth_hu, tissue_min_hu: float = TISSUE_MIN_HU) -> float:
    """RMSE [HU] between the slice-to-slice differences of a volume and of the truth.

    ``volume[k + 1] - volume[k]`` against ``truth[k + 1] - truth[k]`` over the pixels where either
    truth slice exceeds ``tissue_min_hu``: 0 for a volume whose slices change exactly as the
    truth's do; independent errors in each slice add up here even when each slice scores well.

    Parameters
    ----------
    volume_hu, truth_hu : array_like [slices, H, W]
        Consecutive slices (at least 2), HU.
    """
    vol, truth = np.asarray(volume_hu, dtype=np.float64), np.asarray(truth_hu, dtype=np.float64)
    if vol.shape != truth.shape or vol.ndim != 3 or vol.shape[0] < 2:
        raise ValueError(f"need two volumes [slices >= 2, H, W] of one shape, got {vol.shape} and {truth.shape}")
    tissue = (truth[1:] > tissue_min_hu) | (truth[:-1] > tissue_min_hu)
    err = np.diff(vol, axis=0) - np.diff(truth, axis=0)
    return float(np.sqrt(np.mean(err[tissue] ** 2)))
