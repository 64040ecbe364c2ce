"""Random acrylic discs with holes, the object class of the HTC2022 challenge, for training.

A phantom is a disc of about 70 mm diameter on an ``n x n`` grid (pixel size in mm), with holes
of one of two kinds, as in the challenge's phantoms:

* ``"shapes"``: 1 to 14 separate holes, each an ellipse or a convex polygon of 3 to 9 corners,
  4 to 22 mm across, kept apart from each other and from the rim by a wall of at least 1 mm;
* ``"cells"``: a Voronoi pattern, the inner disc cut into 6 to 24 cells separated by walls of
  1.2 to 4 mm, each cell a hole (a few may stay filled).

The outer rim (wall between the outermost holes and the edge) is 2 to 8 mm. Everything is drawn
at 2x and averaged (anti-aliased), so the image is a fraction of acrylic per pixel in ``[0, 1]``;
the hole mask is ``image < 0.5``. Geometry of the grid follows ``operators.geometry``: x to the
right, y up, the origin at the grid centre.
"""

from __future__ import annotations

import numpy as np

__all__ = ["random_disc_phantom", "PHANTOM_KINDS"]

PHANTOM_KINDS = ("shapes", "cells")


def _coords(n: int, pixel_mm: float, oversample: int) -> tuple[np.ndarray, np.ndarray]:
    m = n * oversample
    c = (np.arange(m) + 0.5 - m / 2) * pixel_mm / oversample
    yy, xx = np.meshgrid(-c, c, indexing="ij")  # row 0 is the top (largest y)
    return xx, yy


def _convex_polygon(xx, yy, cx, cy, radius, corners, rng) -> np.ndarray:
    step = 2 * np.pi / corners  # evenly spread corners, jittered: never a degenerate sliver
    phi = rng.uniform(0, step) + step * np.arange(corners) + rng.uniform(-0.3, 0.3, corners) * step
    r = radius * rng.uniform(0.7, 1.0, corners)
    px, py = cx + r * np.cos(phi), cy + r * np.sin(phi)
    inside = np.ones(xx.shape, dtype=bool)
    # inside every edge's half-plane (corners counter-clockwise): the polygon, or its convex core
    for i in range(corners):
        x0, y0, x1, y1 = px[i], py[i], px[(i + 1) % corners], py[(i + 1) % corners]
        inside &= (x1 - x0) * (yy - y0) - (y1 - y0) * (xx - x0) >= 0
    return inside


def _ellipse(xx, yy, cx, cy, radius, rng) -> np.ndarray:
    a, b = radius, radius * rng.uniform(0.35, 1.0)
    t = rng.uniform(0, np.pi)
    u = (xx - cx) * np.cos(t) + (yy - cy) * np.sin(t)
    v = -(xx - cx) * np.sin(t) + (yy - cy) * np.cos(t)
    return (u / a) ** 2 + (v / b) ** 2 <= 1


def _shape_holes(xx, yy, inner_r, rng) -> np.ndarray:
    holes = np.zeros(xx.shape, dtype=bool)
    placed: list[tuple[float, float, float]] = []
    target = int(rng.integers(1, 15))
    for _ in range(200):
        if len(placed) == target:
            break
        radius = float(rng.uniform(2.0, 11.0 if target < 5 else 7.0))
        rho, ang = inner_r * np.sqrt(rng.uniform()), rng.uniform(0, 2 * np.pi)
        cx, cy = rho * np.cos(ang), rho * np.sin(ang)
        if rho + radius > inner_r or any(np.hypot(cx - x, cy - y) < radius + r + 1.0 for x, y, r in placed):
            continue
        placed.append((cx, cy, radius))
        if rng.uniform() < 0.5:
            holes |= _ellipse(xx, yy, cx, cy, radius, rng)
        else:
            holes |= _convex_polygon(xx, yy, cx, cy, radius, int(rng.integers(3, 10)), rng)
    return holes


def _cell_holes(xx, yy, inner_r, rng) -> np.ndarray:
    from scipy.spatial import cKDTree

    count = int(rng.integers(6, 25))
    rho, ang = inner_r * np.sqrt(rng.uniform(size=count)), rng.uniform(0, 2 * np.pi, count)
    seeds = np.stack([rho * np.cos(ang), rho * np.sin(ang)], 1)
    pts = np.stack([xx.ravel(), yy.ravel()], 1)
    dist, idx = cKDTree(seeds).query(pts, k=2)
    # a pixel is wall when its two nearest seeds are about equally near: the distance to the
    # bisector between them is (d2^2 - d1^2) / (2 |s1 - s2|)
    gap = np.linalg.norm(seeds[idx[:, 0]] - seeds[idx[:, 1]], axis=1)
    to_wall = (dist[:, 1] ** 2 - dist[:, 0] ** 2) / (2 * np.maximum(gap, 1e-9))
    wall = float(rng.uniform(1.2, 4.0))
    filled = rng.uniform(size=count) < rng.uniform(0.0, 0.25)
    holes = (to_wall > wall / 2) & ~filled[idx[:, 0]]
    holes &= np.hypot(pts[:, 0], pts[:, 1]) <= inner_r
    return holes.reshape(xx.shape)


def random_disc_phantom(
    rng: np.random.Generator, n: int = 256, pixel_mm: float = 80.0 / 256, kind: str | None = None
) -> np.ndarray:
    """One random disc with holes: acrylic fraction per pixel, ``float32 [n, n]`` in ``[0, 1]``.

    Parameters
    ----------
    rng : np.random.Generator
    n : int
        Grid size (pixels).
    pixel_mm : float
        Pixel size in mm (default: the HTC2022 grid, 80 mm over 256 pixels).
    kind : {"shapes", "cells"}, optional
        Kind of holes; random (equal odds) by default.
    """
    if kind is None:
        kind = PHANTOM_KINDS[int(rng.integers(len(PHANTOM_KINDS)))]
    if kind not in PHANTOM_KINDS:
        raise ValueError(f"kind must be one of {PHANTOM_KINDS}, got {kind!r}")
    oversample = 2
    xx, yy = _coords(n, pixel_mm, oversample)
    radius = float(rng.uniform(34.0, 36.0))
    cx, cy = rng.uniform(-2.0, 2.0, 2)
    xx, yy = xx - cx, yy - cy
    disc = np.hypot(xx, yy) <= radius
    inner = radius - float(rng.uniform(2.0, 8.0))
    holes = _shape_holes(xx, yy, inner, rng) if kind == "shapes" else _cell_holes(xx, yy, inner, rng)
    fine = (disc & ~holes).astype(np.float32)
    return fine.reshape(n, oversample, n, oversample).mean(axis=(1, 3))
