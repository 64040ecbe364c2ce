"""Training slices for the prior: DICOM series and HU ``.npz`` volumes -> resampled 2-D slices.

Every slice of every volume found is used, whatever its orientation (axial, coronal and
sagittal reformats alike). Slices are clipped to the prior's HU window, stored once at their
native resolution (int16 HU), resampled to the target pixel size on first use (anti-aliased
linear interpolation, :func:`skimage.transform.rescale`) and cached, then mapped to [-1, 1].

A training sample is a square crop (patch or whole canvas) at a random position, optionally
flipped, that may extend past the slice border; the part outside the slice is zero padding
and is masked out of the loss, exactly as the zero padding the patch prior sees at inference.
Optional augmentations (all off by default): a random rotation and a random isotropic scaling
of the slice about its centre (one affine resampling before cropping) and a random HU offset
inside the slice.
"""

from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .patches import position_grid


@dataclass
class SliceRecord:
    """One 2-D training slice at native resolution.

    Attributes
    ----------
    hu : numpy.ndarray
        int16 [rows, cols], HU clipped to the window.
    spacing_mm : (float, float)
        (row spacing, column spacing), mm.
    group : str
        Patient / volume group used for sampling balance (top folder under the data root,
        or the ``.npz`` file name).
    source : str
        The series UID or file it came from.
    """

    hu: np.ndarray
    spacing_mm: tuple[float, float]
    group: str
    source: str


@dataclass
class DataReport:
    """What :func:`collect_slices` found: counts for the log and the model card."""

    roots: list[str] = field(default_factory=list)
    n_volumes: int = 0
    n_slices: int = 0
    groups: dict[str, int] = field(default_factory=dict)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    spacing_range_mm: tuple[float, float] | None = None
    sources: dict[str, dict[str, str]] = field(default_factory=dict)  # group -> collection, licence

    def summary(self) -> str:
        text = f"{self.n_slices} slices from {self.n_volumes} series/volumes in {len(self.groups)} groups"
        if self.spacing_range_mm:
            text += f", pixel spacing {self.spacing_range_mm[0]:.3g}-{self.spacing_range_mm[1]:.3g} mm"
        if self.skipped:
            reasons = Counter(r for _, r in self.skipped)
            text += (
                f"; skipped {len(self.skipped)} files/series ("
                + ", ".join(f"{n} {r}" for r, n in reasons.most_common(5))
                + ")"
            )
        return text

    def as_dict(self) -> dict:
        return {
            "roots": self.roots,
            "n_volumes": self.n_volumes,
            "n_slices": self.n_slices,
            "groups": self.groups,
            "n_skipped": len(self.skipped),
            "skipped_reasons": dict(Counter(r for _, r in self.skipped)),
            "pixel_spacing_range_mm": list(self.spacing_range_mm) if self.spacing_range_mm else None,
            "sources": self.sources,
        }


def _short_reason(reason: str) -> str:
    """The first clause of a reader message, for counting skip reasons."""
    return reason.split(":")[0].split("(")[0].strip()[:80] or "unreadable"


def _to_int16(hu: np.ndarray, hu_window) -> np.ndarray:
    lo, hi = hu_window
    return np.clip(np.rint(hu), lo, hi).astype(np.int16)


def _group_of(path: Path, root: Path) -> str:
    try:
        rel = path.relative_to(root)
    except ValueError:
        return path.name
    return rel.parts[0] if len(rel.parts) > 1 else path.stem


def _add_volume(records: list, report: DataReport, hu: np.ndarray, spacing, group: str, source: str, hu_window) -> None:
    for k in range(hu.shape[0]):
        records.append(
            SliceRecord(_to_int16(hu[k], hu_window), (float(spacing[0]), float(spacing[1])), group, f"{source}[{k}]")
        )
    report.n_volumes += 1
    report.groups[group] = report.groups.get(group, 0) + hu.shape[0]


#: volume files read whole by :func:`tomo.io.volume.read_volume` (not DICOM)
VOLUME_SUFFIXES = (".npz", ".nii", ".nii.gz")


def _is_volume_file(path: Path) -> bool:
    return path.name.lower().endswith(VOLUME_SUFFIXES)


def _read_volume_file(path: Path, root: Path, records, report, hu_window) -> None:
    from tomo.io.volume import read_volume

    try:
        vol = read_volume(path)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is skipped and counted (e.g. BadZipFile)
        report.skipped.append((str(path), _short_reason(str(exc).replace(str(path), "").lstrip(": "))))
        return
    meta = _npz_metadata(path) if path.suffix.lower() == ".npz" else {}
    group = meta.get("patient_id") or _group_of(path, root)
    _add_volume(records, report, vol.hu, vol.pixel_spacing_mm, group, str(path), hu_window)
    source = {k: meta[k] for k in ("collection", "licence") if k in meta}
    if source:
        report.sources[group] = source


def _npz_metadata(path: Path) -> dict[str, str]:
    """The ``patient_id`` (several files can hold one patient), ``collection`` and ``licence``
    strings stored in a volume file, those it has."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: str(data[k]) for k in ("patient_id", "collection", "licence") if k in data.files}
    except (OSError, ValueError):
        return {}


def _read_dicom_tree(root: Path, records, report, hu_window) -> None:
    from tomo.io.dicom_read import find_series, read_series

    scan = find_series(root)
    for s in scan.skipped:
        if not _is_volume_file(s.path):  # volume files are read separately
            report.skipped.append((str(s.path), _short_reason(s.reason)))
    for info in scan:
        where = info.files[0] if len(info.files) == 1 else info.files[0].parent
        if not info.readable:
            report.skipped.append((str(where), "series problem: " + _short_reason("; ".join(info.problems))))
            continue
        try:
            vol = read_series(where, series_uid=info.uid)
        except Exception as exc:  # noqa: BLE001 - a series that fails to decode is skipped and counted
            report.skipped.append((str(where), _short_reason(str(exc))))
            continue
        _add_volume(records, report, vol.hu, vol.pixel_spacing_mm, _group_of(info.files[0], root), info.uid, hu_window)


def collect_slices(paths, hu_window, warn: bool = True) -> tuple[list[SliceRecord], DataReport]:
    """Read every CT slice under ``paths`` (folders searched recursively, or files).

    Parameters
    ----------
    paths : sequence of str or Path
        DICOM folders/files, NIfTI volumes (``.nii``, ``.nii.gz``; HU through their affine) and
        OpenKBP-style ``.npz`` volumes (``hu`` [slices, H, W] in HU,
        ``spacing_mm`` (x, y, z) in mm).
    hu_window : (float, float)
        HU range kept (values are clipped to it).
    warn : bool
        Emit one warning summarising skipped files.

    Returns
    -------
    records : list of SliceRecord
    report : DataReport

    Raises
    ------
    FileNotFoundError
        A path that does not exist.
    ValueError
        No readable CT slice anywhere (the message counts the skipped files and why).
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    records: list[SliceRecord] = []
    report = DataReport(roots=[str(p) for p in paths])
    for p in map(Path, paths):
        if not p.exists():
            raise FileNotFoundError(f"training data path does not exist: {p}")
        if p.is_file() and _is_volume_file(p):
            _read_volume_file(p, p.parent, records, report, hu_window)
            continue
        root = p if p.is_dir() else p.parent
        if p.is_dir():
            for f in sorted(f for f in p.rglob("*") if f.is_file() and _is_volume_file(f)):
                _read_volume_file(f, root, records, report, hu_window)
        _read_dicom_tree(p, records, report, hu_window)
    report.n_slices = len(records)
    if records:
        sp = [s for r in records for s in r.spacing_mm]
        report.spacing_range_mm = (float(min(sp)), float(max(sp)))
    if warn and report.skipped:
        first = "; ".join(f"{p}: {r}" for p, r in report.skipped[:3])
        warnings.warn(f"skipped {len(report.skipped)} files/series of the training data (e.g. {first})", stacklevel=2)
    if not records:
        where = ", ".join(report.roots)
        why = (
            f"{len(report.skipped)} files skipped: "
            + ", ".join(f"{n} {r}" for r, n in Counter(r for _, r in report.skipped).most_common(3))
            if report.skipped
            else "the folder is empty"
        )
        raise ValueError(f"no readable CT slices in {where} ({why})")
    return records, report


def resample(hu: np.ndarray, spacing_mm, pixel_size_mm: float) -> np.ndarray:
    """Resample a slice to square pixels of ``pixel_size_mm`` (anti-aliased when shrinking)."""
    from skimage.transform import rescale

    scale = (spacing_mm[0] / pixel_size_mm, spacing_mm[1] / pixel_size_mm)
    if abs(scale[0] - 1) < 1e-6 and abs(scale[1] - 1) < 1e-6:
        return hu.astype(np.float32)
    return rescale(
        hu.astype(np.float32), scale, order=1, mode="edge", preserve_range=True, anti_aliasing=min(scale) < 1
    ).astype(np.float32)


def check_augmentation(rotate_deg: float = 0.0, scale_jitter: float = 0.0, hu_jitter: float = 0.0) -> None:
    """Raise ``ValueError`` for augmentation amounts no run can use.

    Parameters
    ----------
    rotate_deg : float
        Largest rotation, degrees; must be in [0, 180].
    scale_jitter : float
        Largest relative change of scale (fraction, not percent); must be in [0, 0.5).
    hu_jitter : float
        Largest intensity offset, HU; must be >= 0 and finite.
    """
    if not 0 <= rotate_deg <= 180:
        raise ValueError(f"rotate_deg (--rotate-deg) must be between 0 and 180 degrees, got {rotate_deg}")
    if not 0 <= scale_jitter < 0.5:
        raise ValueError(
            f"scale_jitter (--scale-jitter) must be a fraction >= 0 and < 0.5 "
            f"(scale factors in [1 - j, 1 + j]), got {scale_jitter}"
        )
    if not 0 <= hu_jitter < float("inf"):
        raise ValueError(f"hu_jitter (--hu-jitter) must be a finite offset >= 0 in HU, got {hu_jitter}")


def rotate_scale(img: np.ndarray, angle_deg: float, scale: float, fill: float = -1.0) -> np.ndarray:
    """Rotate and scale a slice about its centre, keeping its shape (one linear resampling).

    Parameters
    ----------
    img : numpy.ndarray
        [rows, cols] slice (model range in the sampler).
    angle_deg : float
        Rotation, degrees; positive turns the image counter-clockwise as displayed (row 0 at
        the top).
    scale : float
        Isotropic scale factor about the centre (pixel (rows - 1) / 2, (cols - 1) / 2); > 1
        enlarges the anatomy (as a smaller pixel size would), < 1 shrinks it.
    fill : float
        Value of output pixels that come from outside the slice (-1 = air in model range).

    Returns
    -------
    numpy.ndarray
        float32, same shape as ``img``.
    """
    from scipy.ndimage import affine_transform

    theta = np.deg2rad(angle_deg)
    cos, sin = np.cos(theta), np.sin(theta)
    # output (row, col) offset from the centre -> input offset: inverse of scale * rotation
    matrix = np.array([[cos, sin], [-sin, cos]]) / scale
    centre = (np.array(img.shape, dtype=np.float64) - 1) / 2
    return affine_transform(
        np.ascontiguousarray(img, dtype=np.float32),
        matrix,
        offset=centre - matrix @ centre,
        order=1,
        mode="constant",
        cval=fill,
    ).astype(np.float32, copy=False)


class SliceSampler:
    """Draws training batches (crops with masks and position channels) from slice records.

    Parameters
    ----------
    records : list of SliceRecord
    config : dict
        Prior configuration (HU window, pixel size, patch/image size, position channels).
    hflip, vflip : bool
        Random left-right / up-down flips. Up-down is off by default: patients lie on the
        table the same way up, and the position channels should learn that.
    balance : {"slice", "sqrt", "group"}
        Sampling weight of a slice: uniform, 1/sqrt(slices in its group), or 1/(slices in its
        group). "sqrt" (default) keeps one long series from dominating the few-slice patients
        without repeating those few slices too often.
    cache_mb : float
        Memory for cached resampled slices, MiB; beyond it slices are resampled on every use.
    rotate_deg : float
        Random rotation about the slice centre by an angle uniform in
        [-rotate_deg, +rotate_deg], degrees (0, the default: none; at most 180).
    scale_jitter : float
        Random isotropic scaling about the slice centre by a factor uniform in
        [1 - scale_jitter, 1 + scale_jitter] (a fraction; 0, the default: none; below 0.5),
        as between scanners with different pixel sizes.
    hu_jitter : float
        Random intensity offset uniform in [-hu_jitter, +hu_jitter], HU (0, the default:
        none), added inside the slice only (the padding stays 0) and clipped to [-1, 1] in
        model range (an offset of ``d`` HU is ``2 d / (hi - lo)`` there).

    Notes
    -----
    Rotation and scaling are one affine resampling of the resampled slice (linear
    interpolation, same shape, pixels from outside the slice filled with -1 = air) before
    the crop, so crops, masks and position channels work as without them. Each enabled
    augmentation draws its random numbers from the generator given to :meth:`sample` after
    the slice, flip and crop draws; disabled ones draw nothing, so the default sampler's
    random stream is that of a sampler without augmentations.
    """

    def __init__(
        self,
        records: list[SliceRecord],
        config: dict,
        hflip: bool = True,
        vflip: bool = False,
        balance: str = "sqrt",
        cache_mb: float = 2048.0,
        rotate_deg: float = 0.0,
        scale_jitter: float = 0.0,
        hu_jitter: float = 0.0,
    ):
        if not records:
            raise ValueError("no training slices")
        if balance not in ("slice", "sqrt", "group"):
            raise ValueError(f"balance must be 'slice', 'sqrt' or 'group', got {balance!r}")
        check_augmentation(rotate_deg, scale_jitter, hu_jitter)
        self.rotate_deg, self.scale_jitter, self.hu_jitter = float(rotate_deg), float(scale_jitter), float(hu_jitter)
        self.records = records
        self.hu_window = tuple(config["hu_window"])
        self.pixel_size_mm = float(config["pixel_size_mm"])
        self.crop = int(config["patch_size"] or config["image_size"])
        self.patch_mode = config["patch_size"] is not None
        self.position_channels = bool(config["position_channels"])
        self.hflip, self.vflip = hflip, vflip
        counts = Counter(r.group for r in records)
        power = {"slice": 0.0, "sqrt": 0.5, "group": 1.0}[balance]
        self.weights = torch.tensor([counts[r.group] ** -power for r in records], dtype=torch.float64)
        self._cache: dict[int, np.ndarray] = {}
        self._cache_bytes, self._cache_limit = 0, cache_mb * 2**20

    def image(self, i: int) -> np.ndarray:
        """Slice ``i`` resampled to the target pixel size, model range [-1, 1], float32."""
        if i in self._cache:
            return self._cache[i]
        r = self.records[i]
        lo, hi = self.hu_window
        img = resample(r.hu, r.spacing_mm, self.pixel_size_mm)
        img = np.clip(2 * (img - lo) / (hi - lo) - 1, -1, 1).astype(np.float32)
        if self._cache_bytes + img.nbytes <= self._cache_limit:
            self._cache[i] = img
            self._cache_bytes += img.nbytes
        return img

    def _offset_range(self, n: int) -> tuple[int, int]:
        """Inclusive range of crop starts along an axis of ``n`` pixels."""
        c = self.crop
        if self.patch_mode:  # patches may hang over the border by up to half a patch
            return -(c // 2), max(n - c + c // 2, -(c // 2))
        return (0, n - c) if n >= c else (n - c, 0)

    def sample(self, batch: int, generator: torch.Generator):
        """A batch of crops.

        Returns
        -------
        x0 : Tensor [B, 1, C, C]
            Clean crops in model range, 0 outside the slice.
        mask : Tensor [B, 1, C, C]
            1 inside the slice, 0 in the padding.
        pos : Tensor [B, 2, C, C] or None
            Position channels (see :mod:`tomo.priors.patches`).
        """
        c = self.crop
        idx = torch.multinomial(self.weights, batch, replacement=True, generator=generator).tolist()
        flips = torch.rand(batch, 2, generator=generator)
        unif = torch.rand(batch, 2, generator=generator, dtype=torch.float64)
        # augmentations draw only when enabled (the default random stream stays unchanged)
        angles = self._uniform(batch, self.rotate_deg, generator)
        scales = 1 + self._uniform(batch, self.scale_jitter, generator)
        hu_offsets = self._uniform(batch, self.hu_jitter, generator)
        affine = self.rotate_deg > 0 or self.scale_jitter > 0
        x0 = torch.zeros(batch, 1, c, c)
        mask = torch.zeros(batch, 1, c, c)
        tops, lefts, hs, ws = [], [], [], []
        for b, i in enumerate(idx):
            img = self.image(i)
            if self.hflip and flips[b, 0] < 0.5:
                img = img[:, ::-1]
            if self.vflip and flips[b, 1] < 0.5:
                img = img[::-1, :]
            if affine:
                img = rotate_scale(img, float(angles[b]), float(scales[b]))
            h, w = img.shape
            (t0, t1), (l0, l1) = self._offset_range(h), self._offset_range(w)
            top = t0 + int(unif[b, 0] * (t1 - t0 + 1))
            left = l0 + int(unif[b, 1] * (l1 - l0 + 1))
            ys, ye = max(top, 0), min(top + c, h)
            xs, xe = max(left, 0), min(left + c, w)
            if ye > ys and xe > xs:
                x0[b, 0, ys - top : ye - top, xs - left : xe - left] = torch.from_numpy(
                    np.ascontiguousarray(img[ys:ye, xs:xe])
                )
                mask[b, 0, ys - top : ye - top, xs - left : xe - left] = 1
            tops.append(top), lefts.append(left), hs.append(h), ws.append(w)
        if self.hu_jitter > 0:
            lo, hi = self.hu_window
            shift = (2 * hu_offsets / (hi - lo)).to(x0.dtype).view(batch, 1, 1, 1)
            x0 = torch.where(mask > 0, (x0 + shift).clamp(-1, 1), x0)
        pos = position_grid(tops, lefts, c, hs, ws) if self.position_channels else None
        return x0, mask, pos

    @staticmethod
    def _uniform(batch: int, half_width: float, generator: torch.Generator) -> torch.Tensor:
        """``batch`` float64 draws uniform in [-half_width, +half_width]; zeros, drawing
        nothing from ``generator``, when ``half_width`` is 0."""
        if half_width <= 0:
            return torch.zeros(batch, dtype=torch.float64)
        return (2 * torch.rand(batch, generator=generator, dtype=torch.float64) - 1) * half_width


def pixel_statistics(sampler: SliceSampler, max_slices: int = 500) -> tuple[float, float]:
    """Mean and variance (model range) of training pixels, slices weighted as they are sampled.

    Uses at most ``max_slices`` slices (evenly spaced, deterministic) to bound the cost.
    """
    n = len(sampler.records)
    idx = np.unique(np.linspace(0, n - 1, min(n, max_slices)).round().astype(int))
    w = sampler.weights.numpy()[idx]
    w = w / w.sum()
    m1 = np.array([float(sampler.image(i).astype(np.float64).mean()) for i in idx])
    m2 = np.array([float(np.square(sampler.image(i).astype(np.float64)).mean()) for i in idx])
    mean = float(w @ m1)
    return mean, float(w @ m2 - mean**2)
