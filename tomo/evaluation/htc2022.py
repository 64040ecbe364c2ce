"""The HTC2022 limited-angle evaluation: reference from the ``tb`` union, Otsu segmentation, MCC.

The Helsinki Tomography Challenge 2022 scored a reconstruction by segmenting it into acrylic (1)
and background/holes (0) and computing the Matthews correlation coefficient (MCC) against the
segmentation of a full-angle reconstruction. Here the full scan is not shared, so the reference
is the Otsu segmentation of an FBP (Hann) of the union of all ``tb`` subsets (549 of 721 views;
FBP weights for the non-uniform, gapped angle set: ``operators.fbp``). Used by
``examples/htc2022_limited_angle.py`` and ``scripts/benchmark_htc2022.py``.

Methods compared per arc (each time measured around the whole call, matrix build included):

* ``fbp``: FBP with the Hann filter (the angle-set weights of ``operators.fbp``);
* ``tv``: the ``tv`` method's defaults (what ``tomo reconstruct --method tv`` does);
* ``tv-la``: TV for limited angle: ``0 <= mu <= HTC_UPPER``, support = the disc fitted to the
  shadow edges (:mod:`tomo.recon.support`), weight ``HTC_TV_WEIGHT`` (tuned on ``tb`` only);
* ``disc-net``: the learned segmenter of :mod:`tomo.evaluation.disc_net`, trained on simulated
  discs with holes only; it returns the probability of acrylic (0-1), not attenuation;
* ``disc-net-tv``: ``disc-net``'s probability times ``HTC_ACRYLIC`` as the start of ``tv-la``
  (weight ``HTC_NET_TV_WEIGHT``), stopped after ``HTC_NET_TV_ITERATIONS``: the measured data correct what the network guessed
  where they can see, and the network's walls survive where the data cannot see (run to
  convergence, TV would forget its start: this is early stopping, tuned on ``tb``).
"""

from __future__ import annotations

import glob
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tomo.io.htc2022 import HTCScan, htc2022_geometry

__all__ = [
    "matthews_corrcoef",
    "otsu_segmentation",
    "union_scan",
    "reconstruct_htc",
    "ArcResult",
    "HTC_UPPER",
    "HTC_TV_WEIGHT",
    "HTC_ACRYLIC",
    "HTC_NET_TV_ITERATIONS",
    "HTC_NET_TV_WEIGHT",
    "METHODS",
]

#: upper bound of mu (1/mm): acrylic measures 0.031 /mm in the tb union FBP (median of the Otsu
#: foreground); 0.035 leaves room for noise (tuned on tb, docs/benchmarks.md)
HTC_UPPER = 0.035
#: TV weight of tv-la (tuned on tb only: docs/benchmarks.md)
HTC_TV_WEIGHT = 1e-3
#: attenuation of acrylic (1/mm), the scale of the ``disc-net-tv`` start
HTC_ACRYLIC = 0.031
#: TV iterations and weight of ``disc-net-tv`` from the network's image (tuned on tb only:
#: docs/benchmarks.md; more iterations or a larger weight drift back towards plain tv-la)
HTC_NET_TV_ITERATIONS = 100
HTC_NET_TV_WEIGHT = 3e-4
METHODS = ("fbp", "tv", "tv-la", "disc-net", "disc-net-tv")


def matthews_corrcoef(pred: np.ndarray, truth: np.ndarray) -> float:
    """MCC of two boolean masks (0 when a class is empty in either)."""
    a, b = np.asarray(pred, dtype=bool), np.asarray(truth, dtype=bool)
    tp, tn = float((a & b).sum()), float((~a & ~b).sum())
    fp, fn = float((a & ~b).sum()), float((~a & b).sum())
    den = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return float((tp * tn - fp * fn) / den) if den > 0 else 0.0


def otsu_segmentation(image: np.ndarray) -> np.ndarray:
    """Boolean mask ``image > threshold_otsu(image)`` (scikit-image)."""
    from skimage.filters import threshold_otsu

    x = np.asarray(image, dtype=np.float64)
    return x > threshold_otsu(x)


def union_scan(scans: list[HTCScan]) -> HTCScan:
    """One scan of all views of several files of the same scan (duplicate angles kept once)."""
    angles = np.concatenate([s.angles_deg for s in scans])
    sino = np.concatenate([s.sinogram for s in scans])
    angles, keep = np.unique(angles, return_index=True)
    first = scans[0]
    return HTCScan(
        sinogram=sino[keep],
        angles_deg=angles,
        source_origin_mm=first.source_origin_mm,
        source_detector_mm=first.source_detector_mm,
        detector_spacing_mm=first.detector_spacing_mm,
        name=f"{first.phantom}_union",
        phantom=first.phantom,
    )


def reconstruct_htc(
    scan: HTCScan, method: str, grid: int = 256, iterations: int = 300, weight: float = HTC_TV_WEIGHT
) -> tuple[np.ndarray, float]:
    """Reconstruct ``scan`` with ``method`` (one of :data:`METHODS`); returns (image [H, W], seconds).

    The image is attenuation mu in 1/mm, except for ``disc-net``: the probability of acrylic.
    """
    from tomo.methods import reconstruct

    geometry = htc2022_geometry(scan, grid=grid)
    y = torch.from_numpy(scan.sinogram)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the limited-angle warning is the point here
        if method == "fbp":
            mu = reconstruct(y, geometry, method="fbp", progress=False)
        elif method == "tv":
            mu = reconstruct(y, geometry, method="tv", progress=False, iterations=iterations)
        elif method == "tv-la":
            mu = reconstruct(
                y,
                geometry,
                method="tv",
                progress=False,
                iterations=iterations,
                tv_weight=weight,
                upper=HTC_UPPER,
                support="disc",
            )
        elif method in ("disc-net", "disc-net-tv"):
            from tomo.evaluation.disc_net import load_net, segment_probability

            if grid != 256:
                raise ValueError(f"{method} needs the 256 x 256 grid of 80 mm disc-net was trained on; got grid={grid}")
            prob = segment_probability(scan.sinogram, geometry, load_net())
            if method == "disc-net":
                return prob, time.perf_counter() - start
            mu = _tv_from(scan.sinogram, geometry, HTC_ACRYLIC * prob, HTC_NET_TV_ITERATIONS, HTC_NET_TV_WEIGHT)
        else:
            raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")
    return np.asarray(mu, dtype=np.float32), time.perf_counter() - start


def _tv_from(sinogram: np.ndarray, geometry, start: np.ndarray, iterations: int, weight: float) -> torch.Tensor:
    """``tv-la`` (bounds, fitted disc support) from the image ``start`` (1/mm), ``iterations`` steps."""
    from operators import CTProjector
    from tomo.recon.support import disc_mask, fit_disc
    from tomo.recon.tv import tv_pdhg

    support = torch.from_numpy(disc_mask(geometry, *fit_disc(sinogram, geometry)[:3]))
    return tv_pdhg(
        CTProjector(geometry),
        torch.from_numpy(sinogram),
        weight=weight,
        iterations=iterations,
        upper=HTC_UPPER,
        support=support,
        x0=torch.from_numpy(np.asarray(start, dtype=np.float32)),
        progress=False,
    )


@dataclass
class ArcResult:
    """MCC and seconds of one method on one file."""

    name: str
    arc_deg: float
    views: int
    method: str
    mcc: float | None
    seconds: float


def shared_files(data_dir: str | Path) -> list[Path]:
    """The ``.mat`` files of the shared HTC2022 folder, sorted."""
    return sorted(Path(p) for p in glob.glob(str(Path(data_dir) / "*.mat")))
