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

Scaling: parallel beam assumes the views cover ``[0, pi)`` uniformly (step ``pi / V``); fan beam
assumes a full ``2 pi`` scan (step ``2 pi / V`` and the factor 1/2 for the double coverage). A
warning is issued for angle sets that do not cover that range.

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

__all__ = ["fbp", "FBP", "FILTERS", "filter_response"]

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


def _covers_uniformly(angles: np.ndarray, period: float) -> bool:
    """True if ``angles`` (mod ``period``) leave no gap larger than twice the mean spacing."""
    a = np.sort(np.mod(angles, period))
    gaps = np.diff(np.concatenate([a, [a[0] + period]]))
    return bool(gaps.max() <= 2.0 * period / a.size + 1e-6)


def _check_coverage(geometry: _Beam2D) -> None:
    a = geometry.angles_array
    if a.size < 2:
        warnings.warn("FBP with a single view is not a reconstruction", stacklevel=3)
        return
    if isinstance(geometry, FanBeam2D):
        ok, what = _covers_uniformly(a, 2 * np.pi), "a full turn [0, 2 pi)"
    else:
        # pi / V per view is right both for a half turn and for a uniform full turn
        ok, what = _covers_uniformly(a, np.pi), "[0, pi) (or a full turn)"
    if not ok:
        warnings.warn(
            f"FBP assumes the {a.size} views cover {what} uniformly; these angles do not, "
            f"so the reconstruction is distorted and its scaling approximate "
            f"(short scans would need Parker weights, which are not implemented)",
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

    def extra_repr(self) -> str:
        return f"{type(self.geometry).__name__}, filter={self.filter!r}, cutoff={self.cutoff}"

    # ----- steps ----------------------------------------------------------------------------------
    def _detector_coordinates(self, dtype, device) -> torch.Tensor:
        n = self.geometry.detector_count
        return (torch.arange(n, dtype=dtype, device=device) - (n - 1) / 2) * self.geometry.detector_spacing_mm

    def filtered(self, sinogram: torch.Tensor) -> torch.Tensor:
        """Pre-weighted and ramp-filtered sinogram ``[N, views, detectors]`` (units 1/mm)."""
        g = self.geometry
        n_det = g.detector_count
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
            pos.add_((nd - 1) / 2 + 1).clamp_(0, nd + 1)  # +1: the leading zero bin
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
        q = self.filtered(flat)
        span = 2 * math.pi if isinstance(g, FanBeam2D) else math.pi
        # fan beam: angular step 2 pi / V times 1/2 for the double coverage of a full turn
        scale = (span / g.num_views) * (0.5 if isinstance(g, FanBeam2D) else 1.0)
        image = self.backproject(q) * scale
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
