"""The sinogram exchange file (``.npz``) of ``docs/evaluation.md``.

Keys (a public contract; outside tools may write these files too):

========================  =====================================================================
``sinogram``              float32 [views, detectors] or [slices, views, detectors]: line
                          integrals of mu (1/mm) times length (mm), dimensionless
``angles``                float32 [views], radians (ASTRA's convention)
``geometry``              ``"parallel"`` or ``"fanbeam"``
``detector_spacing_mm``   bin width (fan beam: at the detector) [mm]
``pixel_spacing_mm``      reconstruction grid pixel size [mm]
``image_shape``           int [2]: reconstruction grid rows, columns
``source_origin_mm``,     fan beam only [mm]
``origin_detector_mm``
``i0``                    optional: photons per detector bin of the (simulated) scan
``hu_reference``          optional: ground truth in HU, float32 [H, W] or [slices, H, W]
``description``           optional: free text
``slice_spacing_mm``      optional: distance between slice planes [mm] (for NIfTI/DICOM output)
``orientation``           optional: float [6], DICOM ImageOrientationPatient of the slices (LPS
                          direction cosines of a row, then of a column)
``positions_mm``          optional: float [slices, 3], DICOM ImagePositionPatient (LPS, mm) of
                          the first pixel centre of each slice *of the reconstruction grid*;
                          given together with ``orientation``
``detector_offset_mm``    optional: shift of the detector along its direction (mm; fan beam: at
                          the detector), i.e. a centre of rotation that does not project onto
                          the detector centre: bin ``i`` sits at ``(i - (n-1)/2) * spacing +
                          offset`` (default 0; see ``operators.geometry``)
``flat``, ``dark``        optional: with ``flat`` present, ``sinogram`` holds raw detector
                          intensities ``I``, converted on reading to line integrals
                          ``-log((I - dark) / (flat - dark))`` (:func:`line_integrals`); each a
                          float scalar, [detectors] or [views, detectors]; ``dark`` defaults to
                          0; a non-positive ``I - dark`` or ``flat - dark`` is refused
``units``                 optional: the units of the reconstruction: ``"hu"`` (calibrated human
                          CT, the default) or ``"mu_per_mm"`` (anything else, e.g. a phantom or a
                          material sample: attenuation in 1/mm, no HU conversion)
========================  =====================================================================

Files without these optional keys read as before.

``tomo simulate`` records the placement keys ``slice_spacing_mm``, ``orientation`` and
``positions_mm`` from a volume with patient geometry, so that
``tomo reconstruct`` writes NIfTI (and DICOM) output in place without ``--reference`` or
``--slice-spacing``; :func:`recorded_placement` turns them into the reference volume the writers take.

The key names, their checks and conversions (geometry, raw intensities, units) live in
:mod:`tomo.io.sinogram_keys` and are re-exported here.
The geometry keys are converted by :func:`geometry_to_fields` and :func:`geometry_from_fields`, so any file made with ASTRA's
``create_proj_geom``/``create_sino`` on a volume geometry in mm reads correctly.

Public API: :class:`SinogramFile`, :func:`save_sinogram`, :func:`load_sinogram`,
:func:`open_sinogram` (a :class:`SinogramSource` that streams slices of a long series),
:class:`SinogramFormatError` (a ``ValueError``).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from operators.geometry import FanBeam2D, ParallelBeam2D

from .atomic import atomic_file
from .npzfile import NpzArchive
from .placement import PLACEMENT_KEYS, check_placement, placement_volume
from .sinogram_keys import (
    FANBEAM_KEYS,
    MEASURED_KEYS,
    OPTIONAL_KEYS,
    REQUIRED_KEYS,
    UNITS,
    SinogramFormatError,
    _check_units,
    _err,
    _float_array,
    geometry_from_fields,
    geometry_name,
    geometry_to_fields,
    line_integrals,
)
from .volume_types import CTVolume

__all__ = [
    "SinogramFile",
    "SinogramFormatError",
    "SinogramSource",
    "save_sinogram",
    "load_sinogram",
    "open_sinogram",
    "geometry_to_fields",
    "geometry_from_fields",
    "geometry_name",
    "REQUIRED_KEYS",
    "OPTIONAL_KEYS",
    "MEASURED_KEYS",
    "UNITS",
    "line_integrals",
    "PLACEMENT_KEYS",
    "recorded_placement",
]


@dataclass
class SinogramFile:
    """The content of a sinogram exchange file.

    Attributes
    ----------
    sinogram : np.ndarray, float32 [views, detectors] or [slices, views, detectors]
        Line integrals (mu [1/mm] x length [mm], dimensionless).
    geometry : ParallelBeam2D or FanBeam2D
        Acquisition and reconstruction-grid geometry (mm, radians).
    i0 : float or None
        Photons per detector bin (transmission Poisson noise level), if known.
    hu_reference : np.ndarray or None, float32 [H, W] or [slices, H, W]
        Ground truth in HU on the reconstruction grid, for scoring.
    description : str or None
        Free text (provenance).
    slice_spacing_mm : float or None
        Distance between slice planes [mm], if known.
    orientation : np.ndarray or None, float64 [6]
        ImageOrientationPatient (LPS row cosines, then column cosines), if known.
    positions_mm : np.ndarray or None, float64 [slices, 3]
        ImagePositionPatient (LPS, mm) of each slice's first pixel centre on the reconstruction
        grid; given together with ``orientation``.
    units : str
        ``"hu"`` (calibrated human CT, the default) or ``"mu_per_mm"`` (report attenuation).
    """

    sinogram: np.ndarray
    geometry: ParallelBeam2D | FanBeam2D
    i0: float | None = None
    hu_reference: np.ndarray | None = None
    description: str | None = None
    extra_keys: tuple = field(default=(), repr=False)
    slice_spacing_mm: float | None = None
    orientation: np.ndarray | None = None
    positions_mm: np.ndarray | None = None
    units: str = "hu"

    def __post_init__(self):
        _validate(self)

    @property
    def is_volume(self) -> bool:
        """True for a stack of slices ``[slices, views, detectors]``."""
        return self.sinogram.ndim == 3

    @property
    def num_slices(self) -> int:
        return self.sinogram.shape[0] if self.is_volume else 1

    def slices(self) -> np.ndarray:
        """The sinogram as ``[slices, views, detectors]`` (a view, no copy)."""
        return self.sinogram if self.is_volume else self.sinogram[None]

    def reference_slices(self) -> np.ndarray | None:
        """``hu_reference`` as ``[slices, H, W]`` or None."""
        if self.hu_reference is None:
            return None
        return self.hu_reference if self.hu_reference.ndim == 3 else self.hu_reference[None]


def _validate(f: SinogramFile, source=None) -> None:
    if not isinstance(f.geometry, (ParallelBeam2D, FanBeam2D)):
        raise _err(source, f"geometry must be ParallelBeam2D or FanBeam2D, got {type(f.geometry).__name__}")
    sino = _float_array(f.sinogram, "sinogram", source)
    if sino.ndim not in (2, 3):
        raise _err(source, f"sinogram must be [views, detectors] or [slices, views, detectors], got shape {sino.shape}")
    if sino.shape[-2:] != f.geometry.sinogram_shape:
        raise _err(
            source,
            f"sinogram has {sino.shape[-2]} views x {sino.shape[-1]} detectors but the geometry "
            f"has {f.geometry.num_views} angles x {f.geometry.detector_count} detectors",
        )
    f.sinogram = np.ascontiguousarray(sino)
    if f.i0 is not None:
        try:
            i0 = float(np.asarray(f.i0).item())
        except (TypeError, ValueError):
            raise _err(source, f"i0 must be a single number of photons, got {f.i0!r}") from None
        if not (math.isfinite(i0) and i0 > 0):
            raise _err(source, f"i0 must be a finite number of photons > 0, got {i0}")
        f.i0 = i0
    if f.hu_reference is not None:
        ref = _float_array(f.hu_reference, "hu_reference", source)
        expected = ((sino.shape[0],) if sino.ndim == 3 else ()) + tuple(f.geometry.image_shape)
        if ref.shape != expected:
            raise _err(source, f"hu_reference must have shape {expected} (slices and image_shape), got {ref.shape}")
        f.hu_reference = np.ascontiguousarray(ref)
    if f.description is not None:
        f.description = str(np.asarray(f.description).item()) if np.ndim(f.description) == 0 else str(f.description)
    _validate_placement(f, sino.shape[0] if sino.ndim == 3 else 1, source)
    f.units = _check_units(getattr(f, "units", "hu"), source)


def _validate_placement(f, num_slices: int, source) -> None:
    """Check and normalise ``slice_spacing_mm``, ``orientation`` and ``positions_mm`` of ``f``."""
    try:
        f.slice_spacing_mm, f.orientation, f.positions_mm = check_placement(
            getattr(f, "slice_spacing_mm", None),
            getattr(f, "orientation", None),
            getattr(f, "positions_mm", None),
            num_slices,
        )
    except ValueError as exc:
        raise _err(source, str(exc)) from None


def recorded_placement(f: SinogramFile | SinogramSource) -> CTVolume | None:
    """The placement a file records, as the reference volume the NIfTI/DICOM writers take
    (:func:`tomo.io.placement.placement_volume`: the reconstruction grid's shape and pixel spacing,
    no data, no DICOM header), or None when the file has no ``orientation``/``positions_mm``."""
    g = f.geometry
    return placement_volume(f.slice_spacing_mm, f.orientation, f.positions_mm, g.pixel_spacing_mm, g.image_shape)


def save_sinogram(
    path: str | os.PathLike,
    data: SinogramFile | np.ndarray,
    geometry=None,
    *,
    i0: float | None = None,
    hu_reference: np.ndarray | None = None,
    description: str | None = None,
    slice_spacing_mm: float | None = None,
    orientation=None,
    positions_mm=None,
    units: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a sinogram exchange file.

    Parameters
    ----------
    path : path-like
        Destination; must end in ``.npz``. An existing file is refused unless ``overwrite``.
    data : SinogramFile or np.ndarray
        The file content, or the sinogram array (float [views, det] or [slices, views, det],
        line integrals) together with ``geometry`` and the optional fields.
    geometry : ParallelBeam2D or FanBeam2D
        Needed when ``data`` is an array.
    i0, hu_reference, description, slice_spacing_mm, orientation, positions_mm, units
        Optional fields (see :class:`SinogramFile`), used when ``data`` is an array.
    overwrite : bool
        Replace an existing file (atomically: written to a temporary file first).

    Returns
    -------
    Path of the written file.
    """
    path = Path(path)
    if path.suffix != ".npz":
        raise ValueError(f"sinogram files end in .npz, got {path}")
    if isinstance(data, SinogramFile):
        placement = (slice_spacing_mm, orientation, positions_mm)
        if (
            geometry is not None
            or i0 is not None
            or hu_reference is not None
            or description is not None
            or any(v is not None for v in placement)
            or units is not None
        ):
            raise TypeError("pass either a SinogramFile or an array with geometry/i0/..., not both")
        f = data
        _validate(f)
    else:
        if geometry is None:
            raise TypeError("save_sinogram needs geometry= when data is an array")
        f = SinogramFile(
            np.asarray(data),
            geometry,
            i0=i0,
            hu_reference=hu_reference,
            description=description,
            slice_spacing_mm=slice_spacing_mm,
            orientation=orientation,
            positions_mm=positions_mm,
            units="hu" if units is None else units,
        )
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True (--overwrite) to replace it")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"folder {path.parent} does not exist")
    arrays = dict(geometry_to_fields(f.geometry))
    arrays["geometry"] = np.str_(arrays["geometry"])
    arrays["sinogram"] = f.sinogram
    if f.i0 is not None:
        arrays["i0"] = np.float64(f.i0)
    if f.hu_reference is not None:
        arrays["hu_reference"] = f.hu_reference
    if f.description is not None:
        arrays["description"] = np.str_(f.description)
    if f.slice_spacing_mm is not None:
        arrays["slice_spacing_mm"] = np.float64(f.slice_spacing_mm)
    if f.orientation is not None and f.positions_mm is not None:
        arrays["orientation"], arrays["positions_mm"] = f.orientation, f.positions_mm
    if f.units != "hu":  # the default is not written: files of human CT stay as they were
        arrays["units"] = np.str_(f.units)
    with atomic_file(path, overwrite=overwrite) as fh:
        np.savez_compressed(fh, **arrays)
    return path


class SinogramSource:
    """A sinogram file opened for streaming: geometry and shapes known, slices read on demand.

    Made by :func:`open_sinogram`, which validates everything but the bulk arrays without reading
    them; :meth:`iter_slices` then streams ``[slices, views, detectors]`` blocks (and the
    matching ``hu_reference`` blocks), checking each for NaN/Inf, in memory bounded by the block.

    Attributes
    ----------
    path : Path
    geometry : ParallelBeam2D or FanBeam2D
    shape : tuple of int
        The stored sinogram's shape, [views, detectors] or [slices, views, detectors].
    i0 : float or None
    description : str or None
    has_reference : bool
        Whether the file holds ``hu_reference``.
    extra_keys : tuple of str
    slice_spacing_mm, orientation, positions_mm
        The optional placement fields, or None (see :class:`SinogramFile`).
    units : str
        ``"hu"`` or ``"mu_per_mm"``.
    flat, dark : np.ndarray or None
        Open-beam and dark fields when the file holds raw intensities; the slices are converted
        to line integrals as they are read (:func:`line_integrals`).
    """

    units: str = "hu"
    flat: np.ndarray | None = None
    dark: np.ndarray | None = None

    def __init__(
        self,
        archive: NpzArchive,
        geometry,
        shape,
        i0,
        description,
        has_reference,
        extra_keys,
        *,
        slice_spacing_mm: float | None = None,
        orientation: np.ndarray | None = None,
        positions_mm: np.ndarray | None = None,
    ):
        self._archive = archive
        self.path = archive.path
        self.geometry, self.shape, self.i0 = geometry, tuple(shape), i0
        self.description, self.has_reference, self.extra_keys = description, has_reference, extra_keys
        self.slice_spacing_mm, self.orientation, self.positions_mm = slice_spacing_mm, orientation, positions_mm

    @property
    def is_volume(self) -> bool:
        return len(self.shape) == 3

    @property
    def num_slices(self) -> int:
        return self.shape[0] if self.is_volume else 1

    def __enter__(self) -> SinogramSource:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._archive.close()

    def iter_slices(self, start: int = 0, stop: int | None = None, rows: int = 1):
        """Yield ``(k, sinogram [n, views, det] float32, hu_reference [n, H, W] float32 or None)``.

        Blocks of ``rows`` slices from ``start`` to ``stop`` (default: all), in order.
        """
        stop = self.num_slices if stop is None else min(stop, self.num_slices)
        sino_blocks = self._blocks("sinogram", start, stop, rows)
        ref_blocks = self._blocks("hu_reference", start, stop, rows) if self.has_reference else None
        for k, block in sino_blocks:
            ref = None
            if ref_blocks is not None:
                _, ref = next(ref_blocks)
                ref = _float_array(ref, "hu_reference", self.path)
            yield k, self._line_integrals(block), ref

    def _line_integrals(self, block) -> np.ndarray:
        if self.flat is None:
            return _float_array(block, "sinogram", self.path)
        return line_integrals(block, self.flat, self.dark, self.path)

    def _blocks(self, key: str, start: int, stop: int, rows: int):
        if self.is_volume:
            yield from self._archive.iter_rows(key, start, stop, rows)
        elif start < stop:  # a single slice is stored without the slice axis
            yield 0, self._archive.read(key)[None]

    def load(self) -> SinogramFile:
        """Read the whole file (memory checked first) as a validated :class:`SinogramFile`."""
        arch = self._archive
        out = SinogramFile.__new__(SinogramFile)
        out.geometry, out.extra_keys, out.i0, out.description = (
            self.geometry,
            self.extra_keys,
            self.i0,
            self.description,
        )
        out.slice_spacing_mm, out.orientation, out.positions_mm = (
            self.slice_spacing_mm,
            self.orientation,
            self.positions_mm,
        )
        out.sinogram = self._line_integrals(arch.read("sinogram", f"the sinogram {list(self.shape)}"))
        out.units = self.units
        out.hu_reference = arch.read("hu_reference", "hu_reference") if self.has_reference else None
        _validate(out, source=self.path)
        return out


def open_sinogram(path: str | os.PathLike) -> SinogramSource:
    """Open a sinogram exchange file and validate all but its bulk data, which stays on disk.

    Returns
    -------
    SinogramSource
        Close it (or use it in a ``with`` block) when done.

    Raises
    ------
    FileNotFoundError
        No such file.
    SinogramFormatError (ValueError)
        Everything :func:`load_sinogram` refuses that can be seen without reading the sinogram
        and ``hu_reference`` data (NaN/Inf are found as blocks are read).
    """
    archive = NpzArchive(path, error=SinogramFormatError)
    try:
        return _open(archive)
    except BaseException:
        archive.close()
        raise


def _open(arch: NpzArchive) -> SinogramSource:
    path = arch.path
    keys = set(arch.files)
    missing = [k for k in REQUIRED_KEYS if k not in keys]
    if missing:
        raise _err(path, f"missing keys {missing} (required: {list(REQUIRED_KEYS)})")
    sino = arch.member("sinogram")
    for key in keys - {"sinogram", "hu_reference"}:  # the small fields: a few numbers or a string
        m = arch.member(key)
        per_slice = 32 * sino.shape[0] if key == "positions_mm" and len(sino.shape) == 3 else 0  # [slices, 3]
        if key in ("flat", "dark") and len(sino.shape) >= 2:  # up to [views, detectors] float64
            per_slice = 8 * sino.shape[-2] * sino.shape[-1]
        if m.nbytes > max(64 * sino.shape[-2] if len(sino.shape) >= 2 else 0, 1 << 16, per_slice):
            raise _err(path, f"field {key!r} is {list(m.shape)} {m.dtype}: too large for a sinogram-file field")
    d = {k: arch.read(k) for k in keys - {"sinogram", "hu_reference"}}
    kind = d["geometry"]
    if kind.dtype.kind not in "US" or kind.ndim != 0:
        raise _err(path, f"'geometry' must be the string 'parallel' or 'fanbeam', got {kind!r}")
    if kind.dtype.kind == "S":  # bytes written by some tools
        d["geometry"] = np.str_(kind.item().decode("ascii", errors="replace"))
    angles = d["angles"]
    if angles.dtype.kind != "f" or angles.ndim != 1:
        raise _err(
            path, f"'angles' must be a float32 vector [views] in radians, got dtype {angles.dtype} shape {angles.shape}"
        )
    if sino.dtype.kind != "f":
        raise _err(path, f"sinogram must be floating point (float32), got dtype {sino.dtype}")
    if len(sino.shape) not in (2, 3) or 0 in sino.shape:
        raise _err(path, f"sinogram must be [views, detectors] or [slices, views, detectors], got shape {sino.shape}")
    if sino.shape[-2] != angles.size:
        raise _err(path, f"sinogram has {sino.shape[-2]} views but 'angles' has {angles.size} entries")
    try:
        geometry = geometry_from_fields(d, detector_count=sino.shape[-1])
    except (ValueError, TypeError) as exc:
        raise _err(path, str(exc)) from None
    has_reference = "hu_reference" in keys
    if has_reference:
        ref = arch.member("hu_reference")
        expected = sino.shape[:-2] + tuple(geometry.image_shape)
        if ref.dtype.kind != "f":
            raise _err(path, f"hu_reference must be floating point (float32), got dtype {ref.dtype}")
        if ref.shape != expected:
            raise _err(path, f"hu_reference must have shape {expected} (slices and image_shape), got {ref.shape}")
    desc = d.get("description")
    if desc is not None and (desc.dtype.kind not in "US" or desc.ndim != 0):
        raise _err(path, f"'description' must be a string, got dtype {desc.dtype} shape {desc.shape}")
    probe = SinogramFile.__new__(SinogramFile)  # validate i0 and description with the shared rules
    probe.geometry, probe.sinogram, probe.hu_reference = geometry, np.zeros(sino.shape[-2:], np.float32), None
    probe.i0, probe.description = d.get("i0"), None if desc is None else str(desc)
    _validate(probe, source=path)
    probe.slice_spacing_mm, probe.orientation, probe.positions_mm = (d.get(k) for k in PLACEMENT_KEYS)
    _validate_placement(probe, sino.shape[0] if len(sino.shape) == 3 else 1, path)
    extra = tuple(
        sorted(
            keys
            - set(REQUIRED_KEYS)
            - set(FANBEAM_KEYS)
            - set(OPTIONAL_KEYS)
            - set(PLACEMENT_KEYS)
            - set(MEASURED_KEYS)
        )
    )
    if "dark" in keys and "flat" not in keys:
        raise _err(path, "'dark' without 'flat': raw intensities need a flat field (open beam) too")
    for key in ("flat", "dark"):
        if key in d:
            shape = d[key].shape
            if (
                d[key].dtype.kind != "f"
                or len(shape) > 2
                or (shape and tuple(shape) != tuple(sino.shape[-len(shape) :]))
            ):
                raise _err(
                    path,
                    f"'{key}' must be float: a scalar, [detectors] or [views, detectors] = {list(sino.shape[-2:])}, got {d[key].dtype} {list(shape)}",
                )
    units = _check_units(d.get("units"), path)
    source = SinogramSource(
        arch,
        geometry,
        sino.shape,
        probe.i0,
        probe.description,
        has_reference,
        extra,
        slice_spacing_mm=probe.slice_spacing_mm,
        orientation=probe.orientation,
        positions_mm=probe.positions_mm,
    )
    source.units, source.flat, source.dark = units, d.get("flat"), d.get("dark")
    return source


def load_sinogram(path: str | os.PathLike) -> SinogramFile:
    """Read and validate a sinogram exchange file.

    The shapes are checked from the arrays' headers and the memory the data needs is checked
    against what is available before anything large is read (:func:`open_sinogram`).

    Raises
    ------
    FileNotFoundError
        No such file.
    SinogramFormatError (ValueError)
        Not an ``.npz`` archive (or an empty or damaged one), missing keys, wrong dtype or
        shape, angle count different from the number of views, unknown geometry, NaN/Inf
        values, bad optional fields, or data larger than the available memory.
    """
    with open_sinogram(path) as source:
        return source.load()
