"""Reader for the Helsinki Tomography Challenge 2022 (HTC2022) ``.mat`` files.

The HTC2022 data (Meaney, Silva de Moura, Siltanen, arXiv:2209.12723, CC BY 4.0) are fan-beam
sinograms of acrylic discs (70 mm) measured on a laboratory scanner. Each file holds a MATLAB
struct ``CtDataLimited`` (or ``CtDataFull``) with

* ``sinogram`` [views, 560]: line integrals (``-log(I / I0)``, already flat-field corrected),
  the detector binned 4x to 560 bins of 0.2 mm (at the detector);
* ``parameters``: ``angles`` (degrees), ``distanceSourceOrigin`` (410.66 mm),
  ``distanceSourceDetector`` (553.74 mm), ``pixelSizePost`` (0.2 mm), ``numDetectorsPost``
  (560) and the scanner's other settings.

Both MATLAB v5 files (``scipy.io.loadmat``) and v7.3 files (HDF5; needs ``h5py``, the
``tomo-ct[htc]`` extra; arrays come transposed and are turned back here) are read.

Geometry: the mid-plane of the cone beam, a 2D fan beam with a flat detector, the files' angles
taken in ASTRA's (and tomo's) convention. This was measured, not assumed: on the 549-view ``tb``
union the relative reprojection residual of a Hann FBP is 0.063 with the angles as they are and
0.080 with negated angles (equivalently, a mirrored detector); a detector offset of 0 mm fits
better than -0.4, -0.2, +0.2 and +0.4 mm (0.067-0.074). The object is acrylic, not a patient: files
written from here carry ``units = "mu_per_mm"``.

Public API: :func:`read_htc2022` -> :class:`HTCScan`, :func:`htc2022_geometry`,
:func:`htc2022_sinogram_file`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from operators.geometry import FanBeam2D

from .sinogram import SinogramFile

__all__ = [
    "HTCScan",
    "read_htc2022",
    "htc2022_geometry",
    "htc2022_sinogram_file",
    "HTC_DEFAULT_GRID",
    "HTC_DEFAULT_FOV_MM",
    "ANGLE_SIGN",
]

#: reconstruction grid (pixels per side) and field of view (mm) used by default: the 70 mm disc
#: with a margin; 80 mm / 256 = 0.3125 mm pixels (the detector samples 0.148 mm at the axis)
HTC_DEFAULT_GRID = 256
HTC_DEFAULT_FOV_MM = 80.0
#: the files' angles are ASTRA's (+1), measured on the tb union (module docstring)
ANGLE_SIGN = 1.0


class HTCFormatError(ValueError):
    """A file that is not an HTC2022 ``.mat`` file; the message says what is missing."""


@dataclass
class HTCScan:
    """One HTC2022 file.

    Attributes
    ----------
    sinogram : np.ndarray, float32 [views, detectors]
        Line integrals (dimensionless).
    angles_deg : np.ndarray, float64 [views]
        The file's projection angles in degrees (its own convention; see ``ANGLE_SIGN``).
    source_origin_mm, source_detector_mm : float
        Distances in mm.
    detector_spacing_mm : float
        Bin width at the detector (mm).
    name : str
        File stem (e.g. ``"tb_subsample_90"``); ``phantom`` the scan's ``projectName`` suffix
        (``"tb"``) when the file has one, else the stem's first part.
    parameters : dict
        Every scalar or string entry of ``parameters`` (for provenance).
    """

    sinogram: np.ndarray
    angles_deg: np.ndarray
    source_origin_mm: float
    source_detector_mm: float
    detector_spacing_mm: float
    name: str
    phantom: str
    parameters: dict = field(default_factory=dict, repr=False)

    @property
    def origin_detector_mm(self) -> float:
        return self.source_detector_mm - self.source_origin_mm

    @property
    def arc_deg(self) -> float:
        """Angular range covered, in degrees (last minus first angle)."""
        return float(self.angles_deg.max() - self.angles_deg.min())


def _is_hdf5(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(8) == b"\x89HDF\r\n\x1a\n" or _has_hdf5_signature_at_512(fh)


def _has_hdf5_signature_at_512(fh) -> bool:
    fh.seek(512)  # MATLAB v7.3 files have a 512-byte text header before the HDF5 superblock
    return fh.read(8) == b"\x89HDF\r\n\x1a\n"


def _struct_v5(path: Path) -> tuple[np.ndarray, dict]:
    from scipy.io import loadmat

    d = loadmat(path, squeeze_me=True, struct_as_record=False)
    key = next((k for k in ("CtDataLimited", "CtDataFull", "CtData") if k in d), None)
    if key is None:
        raise HTCFormatError(
            f"{path}: no CtDataLimited/CtDataFull struct (keys: {sorted(k for k in d if not k.startswith('__'))})"
        )
    ct = d[key]
    params = {name: getattr(ct.parameters, name) for name in ct.parameters._fieldnames}
    return np.asarray(ct.sinogram), params


def _struct_v73(path: Path) -> tuple[np.ndarray, dict]:
    try:
        import h5py  # type: ignore[import-untyped]  # no stubs; optional dependency
    except ImportError:
        raise ImportError(
            f"{path} is a MATLAB v7.3 (HDF5) file: reading it needs h5py (pip install 'tomo-ct[htc]')"
        ) from None
    with h5py.File(path, "r") as f:
        key = next((k for k in ("CtDataLimited", "CtDataFull", "CtData") if k in f), None)
        if key is None:
            raise HTCFormatError(f"{path}: no CtDataLimited/CtDataFull group (keys: {sorted(f.keys())})")
        g = f[key]
        sino = np.asarray(g["sinogram"][()]).T  # MATLAB is column-major: HDF5 holds the transpose
        params: dict[str, Any] = {}
        for name, item in g["parameters"].items():
            value = item[()]
            if isinstance(value, np.ndarray) and value.dtype == np.uint16:  # MATLAB char array
                value = "".join(map(chr, value.ravel()))
            elif isinstance(value, np.ndarray):
                value = value.T.squeeze()
            params[name] = value
    return sino, params


def _number(params: dict, key: str, path: Path) -> float:
    if key not in params:
        raise HTCFormatError(f"{path}: parameters has no {key!r}")
    return float(np.asarray(params[key]).reshape(-1)[0])


def read_htc2022(path: str | os.PathLike) -> HTCScan:
    """Read an HTC2022 ``.mat`` file (MATLAB v5 or v7.3).

    Parameters
    ----------
    path : path-like
        A ``*.mat`` file of the HTC2022 data set.

    Returns
    -------
    HTCScan

    Raises
    ------
    FileNotFoundError
        No such file.
    ValueError
        Not an HTC2022 file (missing struct or parameters, sinogram not [views, detectors]
        matching the angles and detector count, non-finite values).
    ImportError
        A v7.3 file without h5py installed.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    sino, params = _struct_v73(path) if _is_hdf5(path) else _struct_v5(path)
    sino = np.asarray(sino, dtype=np.float64)
    angles = np.asarray(params.get("angles", []), dtype=np.float64).reshape(-1)
    if sino.ndim != 2 or angles.size == 0:
        raise HTCFormatError(
            f"{path}: expected a [views, detectors] sinogram and angles, got {sino.shape} and {angles.size} angles"
        )
    if sino.shape[0] != angles.size and sino.shape[1] == angles.size:
        sino = sino.T  # some writers store [detectors, views]
    if sino.shape[0] != angles.size:
        raise HTCFormatError(f"{path}: sinogram has {sino.shape[0]} views but {angles.size} angles")
    ndet = int(_number(params, "numDetectorsPost", path)) if "numDetectorsPost" in params else sino.shape[1]
    if ndet != sino.shape[1]:
        raise HTCFormatError(f"{path}: numDetectorsPost = {ndet} but the sinogram has {sino.shape[1]} bins")
    if not np.isfinite(sino).all():
        raise HTCFormatError(f"{path}: the sinogram has {int((~np.isfinite(sino)).sum())} NaN/Inf values")
    project = str(params.get("projectName", "")).strip("_ ")
    phantom = project.split("_")[-1] if project else path.stem.split("_")[0]
    scalars = {k: (v.item() if isinstance(v, np.ndarray) and v.size == 1 else v) for k, v in params.items()}
    scalars = {k: v for k, v in scalars.items() if isinstance(v, (str, int, float, np.floating, np.integer))}
    return HTCScan(
        sinogram=sino.astype(np.float32),
        angles_deg=angles,
        source_origin_mm=_number(params, "distanceSourceOrigin", path),
        source_detector_mm=_number(params, "distanceSourceDetector", path),
        detector_spacing_mm=_number(params, "pixelSizePost", path),
        name=path.stem,
        phantom=phantom,
        parameters=scalars,
    )


def htc2022_geometry(
    scan: HTCScan,
    grid: int = HTC_DEFAULT_GRID,
    fov_mm: float = HTC_DEFAULT_FOV_MM,
    detector_offset_mm: float = 0.0,
    angles_deg: np.ndarray | None = None,
) -> FanBeam2D:
    """The fan-beam geometry of ``scan`` on a ``grid x grid`` image of ``fov_mm`` (mm).

    ``angles_deg`` replaces the scan's angles (e.g. for a union of several files); the sign
    convention ``ANGLE_SIGN`` is applied here.
    """
    angles = scan.angles_deg if angles_deg is None else np.asarray(angles_deg, dtype=np.float64)
    return FanBeam2D(
        image_shape=(grid, grid),
        pixel_spacing_mm=fov_mm / grid,
        angles=tuple(np.deg2rad(ANGLE_SIGN * angles)),
        detector_count=scan.sinogram.shape[1],
        detector_spacing_mm=scan.detector_spacing_mm,
        source_origin_mm=scan.source_origin_mm,
        origin_detector_mm=scan.origin_detector_mm,
        detector_offset_mm=detector_offset_mm,
    )


def htc2022_sinogram_file(
    scan: HTCScan, grid: int = HTC_DEFAULT_GRID, fov_mm: float = HTC_DEFAULT_FOV_MM, detector_offset_mm: float = 0.0
) -> SinogramFile:
    """The scan as a sinogram exchange file's content (``units = "mu_per_mm"``: acrylic, not HU)."""
    geometry = htc2022_geometry(scan, grid, fov_mm, detector_offset_mm)
    description = (
        f"HTC2022 {scan.name} (phantom {scan.phantom}): {scan.sinogram.shape[0]} views over "
        f"{scan.arc_deg:.1f} degrees ({scan.angles_deg.min():g}-{scan.angles_deg.max():g} in the file's "
        f"convention, stored as {ANGLE_SIGN:+g} x angle); Meaney et al., arXiv:2209.12723, CC BY 4.0"
    )
    return SinogramFile(scan.sinogram, geometry, description=description, units="mu_per_mm")
