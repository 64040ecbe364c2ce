"""A disc-shaped support for limited-angle data, fitted to the shadow edges of the object.

Limited-angle data do not see the object's boundary in the missing directions, and no
reconstruction from them can place it there. When the object class is known to be a disc (a
phantom, a pipe, a core sample), its outline can still be measured: in every view the shadow of a
disc starts and ends at the two rays tangent to it, and a tangent ray is a line at distance ``r``
from the centre. :func:`fit_disc` finds, in each view, the first and last detector position where
the line integral exceeds a threshold (linear interpolation between bins), turns them into lines
``n . x = t`` and solves the linear least-squares problem ``+-(n . c - t) = r`` for the centre ``c``
and radius ``r``; :func:`disc_mask` rasterises it on the image grid, to be used as a support
constraint (``mu = 0`` outside) by the TV solvers.

Line parameters of a ray (ASTRA's conventions, ``operators.geometry``): parallel beam at angle
``theta`` and detector coordinate ``u``: normal ``(cos theta, sin theta)``, ``t = u``; fan beam at source
angle ``beta``: fan angle ``gamma = atan(u / (D_so + D_od))``, normal angle ``beta - gamma``,
``t = D_so sin gamma``.
"""

from __future__ import annotations

import numpy as np

from operators.geometry import FanBeam2D, ParallelBeam2D

__all__ = ["fit_disc", "disc_mask"]


def _edges(row: np.ndarray, positions: np.ndarray, threshold: float) -> tuple[float, float] | None:
    above = np.flatnonzero(row > threshold)
    if above.size == 0 or above[0] == 0 or above[-1] == row.size - 1:
        return None  # no shadow, or a truncated one (the object leaves the detector)
    i, j = above[0], above[-1]

    def cross(a: int, b: int) -> float:  # where the line between bins a and b crosses the threshold
        f = (threshold - row[a]) / (row[b] - row[a])
        return float(positions[a] + f * (positions[b] - positions[a]))

    return cross(i - 1, i), cross(j + 1, j)


def _line(geometry, angle: float, u: float) -> tuple[np.ndarray, float]:
    if isinstance(geometry, FanBeam2D):
        gamma = np.arctan(u / (geometry.source_origin_mm + geometry.origin_detector_mm))
        phi = angle - gamma
        return np.array([np.cos(phi), np.sin(phi)]), float(geometry.source_origin_mm * np.sin(gamma))
    return np.array([np.cos(angle), np.sin(angle)]), float(u)


def fit_disc(
    sinogram: np.ndarray, geometry: ParallelBeam2D | FanBeam2D, threshold: float | None = None
) -> tuple[float, float, float, float]:
    """Centre and radius of a disc-shaped object from its shadow edges.

    Parameters
    ----------
    sinogram : np.ndarray [views, detectors]
        Line integrals (dimensionless).
    geometry : ParallelBeam2D or FanBeam2D
    threshold : float, optional
        Line-integral level of the shadow edge; default 10 % of the sinogram's 99th percentile.

    Returns
    -------
    x_mm, y_mm, radius_mm, rms_mm : float
        Centre (image coordinates of ``operators.geometry``: x right, y up), radius, and the
        root-mean-square misfit of the tangent lines (a large value means: not a disc).

    Raises
    ------
    ValueError
        Fewer than 3 views with a complete (untruncated) shadow.
    """
    y = np.asarray(sinogram, dtype=np.float64)
    if y.ndim != 2 or y.shape != tuple(geometry.sinogram_shape):
        raise ValueError(f"sinogram must be [views, detectors] = {geometry.sinogram_shape}, got {y.shape}")
    level = 0.1 * float(np.percentile(y, 99)) if threshold is None else float(threshold)
    positions = geometry.detector_positions_mm()
    rows, rhs = [], []
    for angle, row in zip(geometry.angles_array, y):
        e = _edges(row, positions, level)
        if e is None:
            continue
        for u, sign in ((e[0], -1.0), (e[1], 1.0)):
            n, t = _line(geometry, float(angle), u)
            # the centre lies on the side of the edge line towards the shadow, at distance r:
            # sign * (t - n . c) = r  ->  -sign n . c - r = -sign t
            rows.append([-sign * n[0], -sign * n[1], -1.0])
            rhs.append(-sign * t)
    if len(rows) < 6:
        raise ValueError("fewer than 3 views show the whole object: cannot fit a disc to the shadow")
    a, b = np.asarray(rows), np.asarray(rhs)
    sol, *_ = np.linalg.lstsq(a, b, rcond=None)
    rms = float(np.sqrt(np.mean((a @ sol - b) ** 2)))
    return float(sol[0]), float(sol[1]), float(sol[2]), rms


def disc_mask(geometry: ParallelBeam2D | FanBeam2D, x_mm: float, y_mm: float, radius_mm: float) -> np.ndarray:
    """Boolean ``[H, W]`` mask of the pixels whose centres lie within the disc."""
    h, w = geometry.image_shape
    p = geometry.pixel_spacing_mm
    xs = (np.arange(w) + 0.5 - w / 2) * p
    ys = (h / 2 - np.arange(h) - 0.5) * p
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    return (xx - x_mm) ** 2 + (yy - y_mm) ** 2 <= radius_mm**2
