"""Filtered back-projection for 2D parallel- and fan-beam geometries, in differentiable torch.

``fbp(sinogram, geometry)`` turns line integrals (dimensionless) back into attenuation mu in 1/mm
on the geometry's image grid. Steps:

1. (fan beam) cosine pre-weighting ``D / sqrt(D^2 + s^2)`` with ``D = source_origin_mm`` and ``s``
   the detector coordinate scaled to the rotation axis (the "virtual detector");
2. ramp filtering along the detector with an FFT, after zero-padding to at least twice the
   detector length (no circular wrap-around), with the band-limited ramp of Kak & Slaney
   (``h[0] = 1/4``, ``h[odd n] = -1/(n pi)^2``, spatial domain, so there is no DC offset) times an
   optional window: ``ram-lak`` (none), ``shepp-logan`` (sinc), ``cosine``, ``hamming``, ``hann``;
3. pixel-driven back-projection with linear interpolation on the detector (zero outside it), in
   torch (gather), scaled by the angular step; fan beam adds the ``1 / U^2`` distance weight,
   ``U = (D + l) / D`` with ``l`` the pixel's distance from the axis towards the detector.

Any angle set: each ray ``(view v, bin j)`` is multiplied, before filtering, by a weight
``w[v, j] = dbeta[v] * r[v, j]`` (:func:`ray_weights`):

* ``dbeta[v]`` is the view's angular quadrature weight (radians): half the angle to each
  neighbouring view on the circle, so non-uniform angle sets are integrated correctly; a gap
  wider than 3 x the median step counts as missing data, and a view beside it gets half a median
  step on that side;
* ``r[v, j]`` is the redundancy weight. A line is measured again by the conjugate ray
  (parallel: angle ``theta + pi``, bin ``-t``; fan beam: ``beta + pi - 2 gamma``, fan angle
  ``-gamma``). With ``s(beta)`` a smooth window that is 1 inside the scanned arcs and falls to 0
  (``sin^2``) over a width ``T`` at their ends, ``r = s(beta) / (s(beta) + s(beta'))``, so the
  weights of every measured line add to 1. For a full turn ``s = 1`` everywhere and ``r = 1/2``
  (the classical factor); for a fan-beam short scan over ``pi + fan angle`` this is a smooth
  Parker weighting (Parker 1982; normalised-window form as in Silver 2000); for a parallel half
  turn ``r = 1``. ``T`` is the full fan angle (at least 4 median steps) for fan beam and
  ``max(4 steps, 10 degrees)`` for parallel beam.

A uniform full turn (either geometry) and a uniform parallel half turn get exactly the previous
constant scale (``2 pi / V * 1/2`` and ``pi / V``). Where lines through the image were never
measured (limited angle), no weighting can supply them: :class:`FBP` then warns with the
fraction of unmeasured lines and the largest missing wedge of directions.

A ``detector_offset_mm`` of the geometry (centre of rotation off the detector centre) shifts the
detector coordinates of the bins.

Everything is torch: gradients flow to the sinogram, it runs on whatever device the sinogram is
on, and any leading batch dimensions are kept (``[..., views, detectors] -> [..., H, W]``).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch

from .base import check_tensor
from .geometry import FanBeam2D, ParallelBeam2D, _Beam2D
from .settings import settings, torch_threads

__all__ = ["fbp", "FBP", "FILTERS", "filter_response", "ray_weights", "missing_lines"]

FILTERS = ("ram-lak", "shepp-logan", "cosine", "hamming", "hann")
_ALIASES = {
    "ramlak": "ram-lak",
    "ram_lak": "ram-lak",
    "ramp": "ram-lak",
    "ram-lak": "ram-lak",
    "shepp-logan": "shepp-logan",
    "shepp_logan": "shepp-logan",
    "cosine": "cosine",
    "hamming": "hamming",
    "hann": "hann",
    "hanning": "hann",
}

#: elements of the [batch, views-chunk, pixels] temporaries in the back-projection
_CHUNK_ELEMENTS = 1 << 23


def _canonical_filter(name: str) -> str:
    if not isinstance(name, str) or name.lower() not in _ALIASES:
        raise ValueError(f"unknown filter {name!r}; choose one of {FILTERS}")
    return _ALIASES[name.lower()]


def padded_length(detector_count: int) -> int:
    """FFT length: the next power of two >= 2 * detector_count (at least 64)."""
    return max(64, 1 << int(math.ceil(math.log2(2 * detector_count))))


def filter_response(
    n_pad: int, filter: str = "ram-lak", cutoff: float = 1.0, dtype: torch.dtype = torch.float64, device="cpu"
) -> torch.Tensor:
    """Frequency response (``n_pad // 2 + 1`` rfft bins) of the discrete ramp times the window.

    Units: for unit detector spacing; the caller divides by the spacing. At frequency ``f``
    (cycles per bin, 0..0.5) the ramp is ~``|f|`` (exactly ``1/4`` at ``f = 1/2`` for ram-lak);
    windows: shepp-logan ``sinc(f)``, cosine ``cos(pi f)``, hamming ``0.54 + 0.46 cos(2 pi f)``,
    hann ``0.5 + 0.5 cos(2 pi f)``, with ``f`` stretched by ``1/cutoff`` and zero above
    ``cutoff * Nyquist``.
    """
    name = _canonical_filter(filter)
    if not (0 < float(cutoff) <= 1):
        raise ValueError(f"cutoff must be in (0, 1] (fraction of the Nyquist frequency), got {cutoff}")
    n = np.arange(n_pad)
    k = np.minimum(n, n_pad - n)  # circular distance
    h = np.zeros(n_pad)
    h[0] = 0.25
    odd = k % 2 == 1
    h[odd] = -1.0 / (np.pi * k[odd]) ** 2
    ramp = np.real(np.fft.rfft(h))  # h is real and symmetric -> real response, ~|f|
    f = np.fft.rfftfreq(n_pad)  # 0 .. 0.5 cycles per bin
    fs = f / float(cutoff)
    if name == "ram-lak":
        window = np.ones_like(f)
    elif name == "shepp-logan":
        window = np.sinc(fs)  # sin(pi fs) / (pi fs)
    elif name == "cosine":
        window = np.cos(np.pi * fs)
    elif name == "hamming":
        window = 0.54 + 0.46 * np.cos(2 * np.pi * fs)
    else:  # hann
        window = 0.5 + 0.5 * np.cos(2 * np.pi * fs)
    window = np.where(fs <= 0.5, window, 0.0)
    return torch.as_tensor(ramp * window, dtype=dtype, device=device)


def _pixel_coordinates(geometry: _Beam2D, dtype, device):
    """Centres ``x, y`` (mm) of all pixels, row-major, each of shape ``[H * W]``."""
    h, w = geometry.image_shape
    p = geometry.pixel_spacing_mm
    x = (torch.arange(w, dtype=dtype, device=device) + 0.5 - w / 2) * p
    y = (h / 2 - torch.arange(h, dtype=dtype, device=device) - 0.5) * p
    yy, xx = torch.meshgrid(y, x, indexing="ij")
    return xx.reshape(-1), yy.reshape(-1)


#: a gap between neighbouring views wider than this many median steps is missing data
_GAP_FACTOR = 3.0
#: lines counted as unmeasured above this fraction make FBP warn (limited angle)
_MISSING_TOLERANCE = 1e-3


def _circle_arcs(angles: np.ndarray) -> tuple[np.ndarray, float, np.ndarray]:
    """Angular quadrature of views on the circle ``[0, 2 pi)`` and the arcs they cover.

    Returns
    -------
    dbeta : np.ndarray [V]
        Quadrature weight of each view (radians): half the angle to each neighbour; beside a
        missing gap (wider than ``_GAP_FACTOR`` median steps) the view's step on its other side
        counts instead.
    step : float
        Median spacing of distinct neighbouring views (radians).
    arcs : np.ndarray [K, 2]
        Covered arcs ``(start, end)`` on the unwrapped circle, each extended by half the local
        step at both ends; empty when the views cover the whole circle.
    """
    two_pi = 2 * np.pi
    a = np.mod(angles, two_pi)
    order = np.argsort(a, kind="stable")
    b = a[order]
    gaps = np.diff(np.concatenate([b, [b[0] + two_pi]]))  # gaps[k]: from view k to view k + 1
    positive = gaps[gaps > 1e-9]
    step = float(np.median(positive)) if positive.size else two_pi
    missing = gaps > _GAP_FACTOR * step
    # beside a missing gap a view gets the step on its other side (its local spacing)
    inner = np.where(missing, np.where(np.roll(missing, 1), step, np.roll(gaps, 1)), gaps)
    prev_inner = np.where(np.roll(missing, 1), np.where(missing, step, gaps), np.roll(gaps, 1))
    dbeta_sorted = 0.5 * (inner + prev_inner)
    dbeta = np.empty_like(dbeta_sorted)
    dbeta[order] = dbeta_sorted
    if not missing.any():
        return dbeta, step, np.zeros((0, 2))
    ends = np.flatnonzero(missing)  # arc ends at b[k]; the next arc starts at b[k + 1]
    arcs = []
    for i, k in enumerate(ends):
        k_prev = ends[i - 1]
        first = (k_prev + 1) % b.size
        start, end = b[first], b[k]
        if end < start or (end == start and first != k):
            end += two_pi
        # extended by half the local step at each end (the angle each end view stands for)
        arcs.append((start - 0.5 * prev_inner[first], end + 0.5 * inner[k]))
    return dbeta, step, np.asarray(arcs, dtype=np.float64)


def _window(phi: np.ndarray, arcs: np.ndarray, taper: float) -> np.ndarray:
    """Smooth indicator of the arcs at angles ``phi``: 1 inside, ``sin^2`` ramps of width ``taper``
    at the ends, 0 outside (all ones when ``arcs`` is empty: a full circle)."""
    if arcs.shape[0] == 0:
        return np.ones_like(phi)
    out = np.zeros_like(phi)
    for start, end in arcs:
        rel = np.mod(phi - start, 2 * np.pi)  # position within the arc from its start
        inside = rel <= end - start
        dist = np.minimum(rel, end - start - rel)
        ramp = np.sin(0.5 * np.pi * np.clip(dist / taper, 0.0, 1.0)) ** 2
        out = np.maximum(out, np.where(inside, ramp, 0.0))
    return out


def _fan_angles(geometry: FanBeam2D) -> np.ndarray:
    """Fan angle ``gamma`` (radians) of each detector bin, offset included."""
    return np.arctan(geometry.detector_positions_mm() / (geometry.source_origin_mm + geometry.origin_detector_mm))


def ray_weights(geometry: _Beam2D) -> np.ndarray:
    """FBP weight of every ray ``[views, detectors]`` (radians): angular step times redundancy.

    See the module docstring. A uniform full turn gives ``pi / V`` everywhere (fan beam
    ``2 pi / V * 1/2``), a uniform parallel half turn ``pi / V``; a fan-beam scan over
    ``pi + fan angle`` gets smooth Parker-type weights; a non-uniform angle set gets each view's
    share of the angle.
    """
    angles = geometry.angles_array
    dbeta, step, arcs = _circle_arcs(angles)
    nd = geometry.detector_count
    if isinstance(geometry, FanBeam2D):
        gamma = _fan_angles(geometry)[None, :]
        taper = max(2.0 * float(np.abs(gamma).max()), 4.0 * step)
        conj = angles[:, None] + np.pi - 2.0 * gamma
    else:
        gamma = np.zeros((1, nd))
        taper = max(4.0 * step, np.deg2rad(10.0))
        conj = np.broadcast_to(angles[:, None] + np.pi, (angles.size, nd))
    here = np.broadcast_to(_window(angles, arcs, taper)[:, None], (angles.size, nd))
    there = _window(np.asarray(conj, dtype=np.float64), arcs, taper)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.where(here + there > 0, here / (here + there), 1.0)
    return dbeta[:, None] * r


def missing_lines(geometry: _Beam2D, directions: int = 720, offsets: int = 64) -> tuple[float, float]:
    """How much of the line set through the image the scan never measured (limited angle).

    Lines ``(theta, t)`` on a ``directions x offsets`` grid over ``theta in [0, pi)`` and ``|t|``
    up to the smaller of the image's inscribed radius and the detector's reach; a line counts as
    measured when it, or its conjugate, falls inside a scanned arc (widened by half the
    missing-gap threshold, so sparse but even sampling is not flagged) and on the detector.

    Returns
    -------
    fraction : float
        Fraction of the lines not measured (0 = complete data).
    wedge_deg : float
        Width in degrees of the largest run of directions with at least one unmeasured line.
    """
    _, step, arcs = _circle_arcs(geometry.angles_array)
    # a gap narrower than the missing-gap threshold is sparse sampling, not missing lines
    arcs = arcs + np.array([-1.0, 1.0]) * 0.5 * _GAP_FACTOR * step
    theta = (np.arange(directions) + 0.5) * np.pi / directions
    pos = geometry.detector_positions_mm()
    radius = 0.5 * min(geometry.extent_mm)
    if isinstance(geometry, FanBeam2D):
        so, sd = geometry.source_origin_mm, geometry.source_origin_mm + geometry.origin_detector_mm
        gmin, gmax = np.arctan(pos.min() / sd), np.arctan(pos.max() / sd)
        radius = min(radius, so * max(abs(np.sin(gmin)), abs(np.sin(gmax))))
    else:
        radius = min(radius, max(abs(pos.min()), abs(pos.max())))
    t = np.linspace(-radius, radius, offsets)
    th, tt = np.meshgrid(theta, t, indexing="ij")
    covered = np.zeros(th.shape, dtype=bool)
    for sign, shift in ((1.0, 0.0), (-1.0, np.pi)):  # the line and its conjugate (theta + pi, -t)
        if isinstance(geometry, FanBeam2D):
            g = np.arcsin(np.clip(sign * tt / so, -1, 1))  # line: theta = beta - gamma, t = so sin gamma
            beta = th + shift + g
            on_detector = (g >= gmin - 1e-12) & (g <= gmax + 1e-12)
        else:
            beta = th + shift
            on_detector = (sign * tt >= pos.min() - 1e-9) & (sign * tt <= pos.max() + 1e-9)
        inside = _window(beta, arcs, 1e-12) > 0 if arcs.shape[0] else np.ones_like(beta, dtype=bool)
        covered |= inside & on_detector
    fraction = float(1.0 - covered.mean())
    bad = ~covered.all(axis=1)
    if not bad.any():
        return fraction, 0.0
    if bad.all():
        return fraction, 180.0
    run = best = 0
    for flag in np.concatenate([bad, bad]):  # directions wrap around at pi
        run = run + 1 if flag else 0
        best = max(best, run)
    return fraction, min(best, directions) * 180.0 / directions


def _check_coverage(geometry: _Beam2D) -> None:
    a = geometry.angles_array
    if a.size < 2:
        warnings.warn("FBP with a single view is not a reconstruction", stacklevel=3)
        return
    fraction, wedge = missing_lines(geometry)
    if fraction > _MISSING_TOLERANCE:
        warnings.warn(
            f"limited-angle data: {100 * fraction:.1f} % of the lines through the image were never "
            f"measured (directions missing over up to {wedge:.0f} degrees); FBP cannot fill them in, "
            f"so expect streaks and distorted edges there; an iterative method with a prior "
            f"(e.g. method 'tv') can do better",
            stacklevel=3,
        )


class FBP(torch.nn.Module):
    """Filtered back-projection for a :class:`ParallelBeam2D` or :class:`FanBeam2D` geometry.

    Parameters
    ----------
    geometry : ParallelBeam2D or FanBeam2D
    filter : str
        ``"ram-lak"``, ``"shepp-logan"``, ``"cosine"``, ``"hamming"`` or ``"hann"``.
    cutoff : float
        Frequency cut-off as a fraction of the Nyquist frequency, in (0, 1].
    num_threads : int, optional
        CPU threads of each call; default ``operators.settings.threads`` read at each call (1
        unless changed with :func:`operators.set_threads`); 0 = leave torch's setting alone.

    Notes
    -----
    Call with a sinogram tensor ``[..., views, detectors]`` of line integrals (dimensionless);
    returns mu in 1/mm, ``[..., H, W]``, differentiable, on the sinogram's device and dtype.
    """

    def __init__(self, geometry: _Beam2D, filter: str = "ram-lak", cutoff: float = 1.0, num_threads: int | None = None):
        super().__init__()
        if num_threads is not None and int(num_threads) < 0:
            raise ValueError(f"num_threads must be >= 0 (0 = torch's setting), got {num_threads}")
        self.num_threads = None if num_threads is None else int(num_threads)
        if not isinstance(geometry, (ParallelBeam2D, FanBeam2D)):
            raise TypeError(f"FBP needs a ParallelBeam2D or FanBeam2D geometry, got {type(geometry).__name__}")
        self.geometry = geometry
        self.filter = _canonical_filter(filter)
        self.cutoff = float(cutoff)
        self.n_pad = padded_length(geometry.detector_count)
        filter_response(self.n_pad, self.filter, self.cutoff)  # validates cutoff now
        _check_coverage(geometry)
        #: per-ray weights [views, detectors] (radians), see :func:`ray_weights`
        self._weights = torch.as_tensor(ray_weights(geometry), dtype=torch.float64)

    def extra_repr(self) -> str:
        return f"{type(self.geometry).__name__}, filter={self.filter!r}, cutoff={self.cutoff}"

    # ----- steps ----------------------------------------------------------------------------------
    def _detector_coordinates(self, dtype, device) -> torch.Tensor:
        return torch.as_tensor(self.geometry.detector_positions_mm(), dtype=dtype, device=device)

    def filtered(self, sinogram: torch.Tensor, weighted: bool = True) -> torch.Tensor:
        """Pre-weighted and ramp-filtered sinogram ``[N, views, detectors]`` (units 1/mm).

        ``weighted``: include the per-ray angular and redundancy weights of :func:`ray_weights`
        (radians); without them the result is the plain (fan: cosine-weighted) filtered data.
        """
        g = self.geometry
        n_det = g.detector_count
        if weighted:
            sinogram = sinogram * self._weights.to(dtype=sinogram.dtype, device=sinogram.device)
        if isinstance(g, FanBeam2D):
            d = g.source_origin_mm
            s = self._detector_coordinates(sinogram.dtype, sinogram.device) / g.magnification
            sinogram = sinogram * (d / torch.sqrt(d * d + s * s))
            tau = g.detector_spacing_mm / g.magnification  # bin width on the virtual detector
        else:
            tau = g.detector_spacing_mm
        resp = filter_response(self.n_pad, self.filter, self.cutoff, sinogram.dtype, sinogram.device)
        spec = torch.fft.rfft(sinogram, n=self.n_pad, dim=-1)
        return torch.fft.irfft(spec * resp, n=self.n_pad, dim=-1)[..., :n_det] / tau

    def backproject(self, q: torch.Tensor) -> torch.Tensor:
        """Pixel-driven back-projection of a filtered sinogram ``[N, V, D]`` -> ``[N, H * W]``.

        Each pixel reads the detector at its projected position with linear interpolation
        (zero outside the detector); fan beam multiplies by ``1 / U^2``. Geometry-only arrays
        are computed in place per chunk of views; the sinogram-dependent steps (two gathers, a
        multiply-add, a sum) are ordinary differentiable torch operations.
        """
        g = self.geometry
        nb, nv, nd = q.shape
        dtype, device = q.dtype, q.device
        xs, ys = _pixel_coordinates(g, dtype, device)
        npix = xs.numel()
        angles = torch.as_tensor(g.angles_array, dtype=dtype, device=device)
        # one zero bin before and two after the detector: every sample reads bins i and i + 1 of
        # a padded row, with positions clamped to [0, nd + 1]
        qpad = torch.nn.functional.pad(q, (1, 2))
        slope = (qpad[..., 1:] - qpad[..., :-1]).reshape(nb, nv * (nd + 2))  # q[i + 1] - q[i]
        qpad = qpad[..., :-1].reshape(nb, nv * (nd + 2))
        out = q.new_zeros(nb, npix)
        chunk = max(1, _CHUNK_ELEMENTS // max(1, nb * npix))
        fan = isinstance(g, FanBeam2D)
        inv_ds = 1.0 / g.detector_spacing_mm
        off = float(getattr(g, "detector_offset_mm", 0.0))
        for v0 in range(0, nv, chunk):
            th = angles[v0 : v0 + chunk, None]
            c, s = torch.cos(th), torch.sin(th)
            if fan:
                so, od = g.source_origin_mm, g.origin_detector_mm
                dist = ys * c  # source-to-pixel distance along the central ray: so - x sin + y cos
                dist.addcmul_(xs, s, value=-1.0).add_(so)
                pos = xs * (c * ((so + od) * inv_ds))
                pos.addcmul_(ys, s * ((so + od) * inv_ds)).div_(dist)
                weight = dist.reciprocal_().mul_(so).square_()  # 1 / U^2 (reuses dist's memory)
            else:
                pos = xs * (c * inv_ds)
                pos.addcmul_(ys, s * inv_ds)
            # bin index of detector coordinate u: (u - offset) / spacing + (n - 1) / 2; +1: the leading zero bin
            pos.add_((nd - 1) / 2 + 1 - off * inv_ds).clamp_(0, nd + 1)
            i0 = pos.to(torch.int64)  # truncation == floor for pos >= 0
            frac = pos.sub_(i0)
            i0.add_(torch.arange(v0, v0 + th.shape[0], device=device)[:, None] * (nd + 2))
            idx = i0.reshape(-1)
            val = torch.addcmul(qpad.index_select(1, idx), frac.reshape(-1), slope.index_select(1, idx))
            if fan:
                val = val * weight.reshape(-1)
            out = out + val.reshape(nb, th.shape[0], npix).sum(1)
        return out

    def forward(self, sinogram: torch.Tensor) -> torch.Tensor:
        check_tensor(sinogram, "sinogram")
        if sinogram.device.type == "cpu":
            # the same CPU thread policy as CTProjector (operators.settings.threads)
            threads = settings.threads if self.num_threads is None else (self.num_threads or None)
            with torch_threads(threads):
                return self._reconstruct(sinogram)
        return self._reconstruct(sinogram)

    def _reconstruct(self, sinogram: torch.Tensor) -> torch.Tensor:
        g = self.geometry
        if sinogram.dim() < 2 or tuple(sinogram.shape[-2:]) != g.sinogram_shape:
            raise ValueError(
                f"FBP: sinogram must end in (views, detectors) = {g.sinogram_shape}, got shape {tuple(sinogram.shape)}"
            )
        lead = sinogram.shape[:-2]
        flat = sinogram.reshape((-1,) + g.sinogram_shape)
        # the angular step and the redundancy weights are in the filtered data (ray_weights)
        image = self.backproject(self.filtered(flat))
        return image.reshape(tuple(lead) + tuple(g.image_shape))


def fbp(
    sinogram: torch.Tensor,
    geometry: _Beam2D,
    filter: str = "ram-lak",
    cutoff: float = 1.0,
    num_threads: int | None = None,
) -> torch.Tensor:
    """Filtered back-projection: line integrals ``[..., views, detectors]`` -> mu [1/mm] ``[..., H, W]``.

    See :class:`FBP` (this builds one and applies it).
    """
    return FBP(geometry, filter=filter, cutoff=cutoff, num_threads=num_threads)(sinogram)
