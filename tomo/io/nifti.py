"""Read and write CT volumes as NIfTI-1/NIfTI-2 (``.nii``, ``.nii.gz``) through nibabel.

nibabel is optional (``pip install tomo-ct[nifti]``); tomo imports without it and says so when a
NIfTI file is read or written.

Conventions
-----------
:func:`read_nifti_volume` returns a :class:`tomo.io.volume.CTVolume` laid out as the DICOM reader
lays out a series stored in the standard orientation of its plane (see :mod:`tomo.io.dicom_read`):
``hu`` is ``[slices, rows, cols]``, positions and orientation cosines are in DICOM patient
coordinates (LPS: x to the patient's left, y posterior, z superior; NIfTI's world space is RAS,
so x and y change sign), pixel spacing is ``(row spacing, column spacing)`` in mm.

The slices are the planes of the file's third voxel axis (where every DICOM converter puts the
slices); the plane is named by the patient axis closest to that voxel axis, and rows and columns
follow the standard DICOM display of that plane:

========  =====================  ======================  ======================
plane     slices step toward     rows step toward        columns step toward
========  =====================  ======================  ======================
axial     superior (+z)          posterior (+y)          patient's left (+x)
coronal   posterior (+y)         inferior (-z)           patient's left (+x)
sagittal  patient's right (-x)   inferior (-z)           posterior (+y)
========  =====================  ======================  ======================

so the orientation is ``(1,0,0, 0,1,0)``, ``(1,0,0, 0,0,-1)`` or ``(0,1,0, 0,0,-1)`` for a volume
aligned with the patient axes, and the exact cosines of the file's affine for an oblique one.
Slices are ordered along ``row cosines x column cosines`` as in the DICOM reader. Only flips and
axis swaps are applied: voxel values are never resampled.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .atomic import atomic_file
from .resources import check_memory
from .volume_types import CTVolume, VolumeReadError, spacing_pair

if TYPE_CHECKING:
    import nibabel

__all__ = ["NiftiReadError", "NiftiDependencyError", "is_nifti_path", "read_nifti_volume", "write_nifti_volume"]

NIFTI_SUFFIXES = (".nii", ".nii.gz")
#: largest volume read (2**30 voxels = 4 GiB as float32); larger files are refused, not swapped
MAX_VOXELS = 2**30
# RAS (NIfTI world) <-> LPS (DICOM patient): flip x and y
_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])
# nibabel axis codes (each letter: where the index steps to) of (slices, rows, cols) per plane,
# keyed by the world axis (0 x, 1 y, 2 z) closest to the file's third voxel axis
_LAYOUTS = {2: ("S", "P", "L"), 1: ("P", "I", "L"), 0: ("R", "I", "P")}
_ORTHOGONAL_TOL = 1e-3  # |cos| between row and column directions (DICOM needs a right angle)
_TILT_TOL_DEG = 0.05


class NiftiReadError(VolumeReadError):
    """A NIfTI file that cannot be read as a CT volume; the message says why."""


class NiftiDependencyError(VolumeReadError, ImportError):
    """nibabel is not installed; raised as an ImportError and as a refusal to read."""


def is_nifti_path(path: str | os.PathLike) -> bool:
    """Whether ``path`` names a NIfTI file (``.nii`` or ``.nii.gz``, any case)."""
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def _nibabel():
    try:
        import nibabel
    except ImportError as exc:
        raise NiftiDependencyError(
            "NIfTI files need nibabel: pip install tomo-ct[nifti] (or pip install 'nibabel>=5')"
        ) from exc
    return nibabel


# ----------------------------------------------------------------------------- reading


def _load_image(path: Path):
    """The nibabel image with a checked 3-D shape, before any voxel is read."""
    nib = _nibabel()
    try:
        img = nib.load(str(path))
    except Exception as exc:  # nibabel raises several types for broken headers
        raise NiftiReadError(f"{path}: not a readable NIfTI file ({exc})") from exc
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise NiftiReadError(f"{path}: not a NIfTI image ({type(img).__name__})")
    shape = tuple(int(s) for s in img.shape)
    # trailing axes of length 1 (a 4-D file holding one volume) carry no data
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) == 2:
        shape = shape + (1,)  # one slice: the affine still places it in 3-D
    if len(shape) != 3:
        raise NiftiReadError(
            f"{path}: expected one 3-D volume, got shape {tuple(img.shape)} "
            "(a time series or multi-channel image: extract one volume first)"
        )
    n_voxels = int(np.prod(shape, dtype=np.int64))
    if min(shape) < 1 or n_voxels > MAX_VOXELS:
        raise NiftiReadError(
            f"{path}: implausible size {shape} ({n_voxels} voxels; at most {MAX_VOXELS}); crop or resample it first"
        )
    dtype = img.get_data_dtype()
    if dtype.fields is not None or not np.issubdtype(dtype, np.number) or np.issubdtype(dtype, np.complexfloating):
        raise NiftiReadError(f"{path}: voxels must be real numbers, got {dtype}")
    # the stored voxels plus the float32 HU volume
    check_memory(
        n_voxels * (dtype.itemsize + 4),
        f"reading {path.name} ({'x'.join(map(str, shape))} voxels)",
        "crop or resample the volume first",
    )
    return img, shape


def _checked_affine(img, path: Path) -> np.ndarray:
    """The voxel -> RAS mm affine (sform, else qform, as nibabel chooses), checked."""
    affine = np.asarray(img.affine, dtype=float)
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    if not np.all(np.isfinite(affine)) or np.any(spacing < 1e-4) or np.any(spacing > 1e4):
        raise NiftiReadError(
            f"{path}: implausible affine (voxel sizes {spacing.tolist()} mm); "
            "the file's sform/qform do not describe a CT grid"
        )
    if abs(np.linalg.det(affine[:3, :3])) < 1e-6 * np.prod(spacing):
        raise NiftiReadError(f"{path}: degenerate affine (voxel axes are not independent)")
    return affine


def _reorient(img, shape, affine):
    """(raw voxels [slices, rows, cols], affine of that layout) in the standard plane layout."""
    from nibabel import orientations as ornt

    source = ornt.io_orientation(affine)
    target = ornt.axcodes2ornt(_LAYOUTS[int(source[2, 0])])
    transform = ornt.ornt_transform(source, target)
    dataobj = img.dataobj
    raw = np.asanyarray(dataobj.get_unscaled() if hasattr(dataobj, "get_unscaled") else dataobj)
    raw = raw.reshape(shape)
    return ornt.apply_orientation(raw, transform), affine @ ornt.inv_ornt_aff(transform, shape)


def _to_hu(raw: np.ndarray, img, path: Path) -> np.ndarray:
    """float32 HU = stored * scl_slope + scl_inter, in float64 first (slice by slice)."""
    # nibabel moves scl_slope/scl_inter from the header into the array proxy on load
    proxy = img.dataobj
    if hasattr(proxy, "slope") and hasattr(proxy, "inter"):
        slope, inter = proxy.slope, proxy.inter
    else:
        slope, inter = img.header.get_slope_inter()
    slope = 1.0 if slope is None else float(slope)
    inter = 0.0 if inter is None else float(inter)
    hu = np.empty(raw.shape, dtype=np.float32)
    for k in range(raw.shape[0]):
        hu[k] = raw[k].astype(np.float64) * slope + inter
    bad = int(np.count_nonzero(~np.isfinite(hu)))
    if bad:
        raise NiftiReadError(
            f"{path}: {bad} voxels are NaN/Inf; fill them (e.g. with -1000 HU, air) before reading the file as CT"
        )
    return hu


def _geometry(affine: np.ndarray, n_slices: int, path: Path) -> dict:
    """CTVolume geometry fields from the affine of the [slices, rows, cols] layout."""
    lps = _RAS_TO_LPS @ affine[:3, :3]
    slice_step, row_step, col_step = lps[:, 0], lps[:, 1], lps[:, 2]
    row_spacing, col_spacing = float(np.linalg.norm(row_step)), float(np.linalg.norm(col_step))
    row_cos, col_cos = col_step / col_spacing, row_step / row_spacing  # DICOM naming
    if abs(row_cos @ col_cos) > _ORTHOGONAL_TOL:
        raise NiftiReadError(
            f"{path}: rows and columns are not perpendicular (cos "
            f"{row_cos @ col_cos:.4f}); DICOM-style geometry cannot describe it"
        )
    normal = np.cross(row_cos, col_cos)
    normal /= np.linalg.norm(normal)
    origin = _RAS_TO_LPS @ affine[:3, 3]
    positions = origin + np.outer(np.arange(n_slices), slice_step)
    plane = float(slice_step @ normal)
    tilt = float(np.degrees(np.arccos(min(1.0, abs(plane) / np.linalg.norm(slice_step)))))
    warnings = []
    if tilt > _TILT_TOL_DEG and n_slices > 1:
        warnings.append(
            f"gantry tilt: slice positions step {tilt:.2f} deg off the slice normal; use `positions` for true geometry"
        )
    return dict(
        pixel_spacing_mm=(row_spacing, col_spacing),
        slice_spacing_mm=abs(plane) if n_slices > 1 else None,
        positions=positions,
        orientation=tuple(float(v) for v in (*row_cos, *col_cos)),
        gantry_tilt_deg=tilt if tilt > _TILT_TOL_DEG and n_slices > 1 else 0.0,
        warnings=warnings,
    )


def read_nifti_volume(path: str | os.PathLike) -> CTVolume:
    """Read a NIfTI CT volume in HU with DICOM-style geometry.

    Parameters
    ----------
    path : str or Path
        ``.nii`` or ``.nii.gz`` file holding one 3-D volume (a 2-D image is one slice; trailing
        axes of length 1 are dropped).

    Returns
    -------
    CTVolume
        ``hu`` float32 [slices, rows, cols] = stored * scl_slope + scl_inter (the file's values
        are taken as HU, as dcm2niix writes them); pixel spacing (row, col) mm, slice spacing
        along the normal (None for one slice), LPS ``positions`` [slices, 3] mm of each slice's
        first pixel centre and orientation cosines from the affine (layout in the module
        docstring); no DICOM header, ``files`` repeats ``path``.

    Raises
    ------
    FileNotFoundError
        No such file.
    NiftiDependencyError
        nibabel is missing (``pip install tomo-ct[nifti]``).
    NiftiReadError
        Not NIfTI, not one 3-D volume, more than :data:`MAX_VOXELS` voxels, non-numeric or
        non-finite voxels, a degenerate affine or non-perpendicular rows and columns.
    tomo.io.resources.MemoryBudgetError
        The volume needs more memory than is available (checked before reading voxels).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    img, shape = _load_image(path)
    affine = _checked_affine(img, path)
    raw, layout_affine = _reorient(img, shape, affine)
    hu = _to_hu(raw, img, path)
    geometry = _geometry(layout_affine, hu.shape[0], path)
    if hu.size and float(hu.min()) >= 0:
        geometry["warnings"].append(
            f"no voxel below 0 (min {float(hu.min()):g}): the values may not "
            "be HU (e.g. stored with +1024 offset and no scl_inter)"
        )
    return CTVolume(hu=hu, files=[path] * hu.shape[0], **geometry)


# ----------------------------------------------------------------------------- writing


def _frame(orientation) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row cosines, column cosines and normal (LPS unit vectors) of 6 direction cosines."""
    o = np.asarray(orientation, dtype=float).ravel()
    if o.shape != (6,) or not np.all(np.isfinite(o)):
        raise ValueError(f"orientation must be 6 direction cosines, got {orientation!r}")
    row, col = o[:3] / np.linalg.norm(o[:3]), o[3:] / np.linalg.norm(o[3:])
    if abs(row @ col) > _ORTHOGONAL_TOL:
        raise ValueError(f"orientation {o.tolist()} is not two perpendicular directions")
    normal = np.cross(row, col)
    return row, col, normal / np.linalg.norm(normal)


def _grid_affine(shape, spacing, slice_spacing, reference: CTVolume | None) -> np.ndarray:
    """voxel (col, row, slice) -> RAS mm affine of the written grid."""
    n, rows, cols = shape
    orientation = reference.orientation if reference is not None else (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
    row_dir, col_dir, normal = _frame(orientation)
    step_dir = normal
    if reference is not None and len(reference.positions) > 1:
        # a tilted reference steps off the normal: keep its direction, with plane distance = spacing
        d = np.asarray(reference.positions[-1], float) - np.asarray(reference.positions[0], float)
        step_dir = d / (d @ normal) if abs(d @ normal) > 1e-6 else normal
    step = slice_spacing * step_dir
    half_extent = (cols - 1) / 2 * spacing[1] * row_dir + (rows - 1) / 2 * spacing[0] * col_dir + (n - 1) / 2 * step
    centre = np.zeros(3) if reference is None else _centre(reference)
    lps = np.column_stack([spacing[1] * row_dir, spacing[0] * col_dir, step, centre - half_extent])
    affine = np.eye(4)
    affine[:3, :] = _RAS_TO_LPS @ lps
    return affine


def _centre(volume: CTVolume) -> np.ndarray:
    """LPS centre (mm) of a volume's field of view: mid-way between its corner pixel centres."""
    _, rows, cols = volume.hu.shape
    row_dir, col_dir, _ = _frame(volume.orientation)
    ps = volume.pixel_spacing_mm
    pos = np.asarray(volume.positions, dtype=float)
    return (pos[0] + pos[-1]) / 2 + (cols - 1) / 2 * ps[1] * row_dir + (rows - 1) / 2 * ps[0] * col_dir


def _checked_hu(hu) -> np.ndarray:
    arr = np.asarray(hu)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or min(arr.shape) < 1:
        raise ValueError(f"hu must be [slices, rows, cols] or [rows, cols], got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
        raise TypeError(f"hu must be real numbers, got dtype {arr.dtype}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"hu contains {int(np.sum(~np.isfinite(arr)))} NaN/Inf values")
    return arr.astype(np.float32)


def _check_target(path: Path, reference: CTVolume | None, overwrite: bool) -> None:
    if not is_nifti_path(path):
        raise ValueError(f"{path}: a NIfTI file name ends in .nii or .nii.gz")
    sources = {Path(f).resolve() for f in (reference.files if reference is not None else [])}
    if path.resolve() in sources:
        raise ValueError(f"refusing to write {path}: it is the reference volume (inputs are never overwritten)")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists (use overwrite=True / --overwrite)")


def write_nifti_volume(
    path: str | os.PathLike,
    hu,
    pixel_spacing_mm,
    slice_spacing_mm: float | None,
    reference: CTVolume | None = None,
    *,
    overwrite: bool = False,
) -> Path:
    """Write HU slices as a NIfTI-1 volume (float32 HU, sform and qform "scanner").

    Parameters
    ----------
    path : str or Path
        Output ``.nii`` or ``.nii.gz`` (compressed by the suffix); missing folders are created.
        Written to a temporary sibling and renamed into place (:mod:`tomo.io.atomic`), so an
        interrupted run leaves no partial file.
    hu : array_like
        [slices, rows, cols] (or [rows, cols]) in HU, finite; e.g. a reconstruction.
    pixel_spacing_mm : float or (float, float)
        (row spacing, column spacing) of ``hu``, mm: the reconstruction grid's pixel size.
    slice_spacing_mm : float or None
        Distance between slice planes, mm; None takes the reference's (a single slice without
        one needs a value too: it is the voxel's thickness).
    reference : CTVolume, optional
        Volume the slices derive from. Its orientation is kept and so is the centre of its
        field of view (in-plane and along the slices): a 256x256 grid of doubled spacing over a
        512x512 slice covers the same field. Without it: axial orientation (1,0,0,0,1,0), centre
        at the origin.
    overwrite : bool
        Replace an existing ``path``.

    Returns
    -------
    Path
        ``path``; :func:`read_nifti_volume` reads it back with the same geometry, and the same
        array layout when the orientation is the standard one of its plane (module docstring).

    Raises
    ------
    NiftiDependencyError
        nibabel is missing (``pip install tomo-ct[nifti]``).
    ValueError, TypeError
        Bad shapes, values, spacing or file name; ``path`` is the reference's file.
    FileExistsError
        ``path`` exists and ``overwrite`` is false.
    """
    nib = _nibabel()
    path = Path(path)
    vol = _checked_hu(hu)
    spacing = spacing_pair(pixel_spacing_mm, "pixel_spacing_mm")
    if slice_spacing_mm is None and reference is not None:
        slice_spacing_mm = reference.slice_spacing_mm
    if slice_spacing_mm is None or not np.isfinite(slice_spacing_mm) or slice_spacing_mm <= 0:
        raise ValueError(
            f"slice_spacing_mm must be a positive mm value (got {slice_spacing_mm!r}; the "
            "reference has none for a single slice: give the slice thickness)"
        )
    _check_target(path, reference, overwrite)
    affine = _grid_affine(vol.shape, spacing, float(slice_spacing_mm), reference)
    img = nib.Nifti1Image(np.ascontiguousarray(vol.transpose(2, 1, 0)), affine)
    img.header.set_xyzt_units("mm")
    img.header["descrip"] = b"tomo CT volume, HU"
    img.set_sform(affine, code="scanner")
    img.set_qform(affine, code="scanner")
    _save_atomically(img, path, overwrite)
    return path


def _save_atomically(img: nibabel.Nifti1Image, path: Path, overwrite: bool) -> None:
    """Stream the image into a temporary sibling that replaces ``path`` when complete."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path, "wb", overwrite=overwrite) as fh:
        if str(path).lower().endswith(".gz"):
            # level 1 as nibabel's default: CT floats compress little, higher levels cost minutes
            with gzip.GzipFile(fileobj=fh, mode="wb", compresslevel=1, mtime=0) as gz:
                img.to_stream(gz)
        else:
            img.to_stream(fh)
