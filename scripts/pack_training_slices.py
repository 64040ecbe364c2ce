"""Pack a training set into small HU ``.npz`` volumes at the prior's pixel size.

Use this to move training data to another machine (a rented GPU, a cluster node) without the
original DICOM: every slice that ``tomo train`` would read from DATA is resampled to
``--pixel-size`` exactly as the trainer does (:func:`tomo.priors.training_data.resample`), rounded to
int16 HU (clipped to the window) and written as ``OUT/<group>/<n>.npz`` (``hu`` [1, H, W],
``spacing_mm`` (x, y, z), and the ``patient_id``, ``collection``, ``licence``, ``origin`` of the
source volume when it has them, so the model card can list the data by collection). The group
folders keep the per-patient sampling balance. Training on OUT then sees the same slices (to
within 0.5 HU of rounding) at the same pixel size, because the trainer skips resampling when the
spacing already matches.

To fit a size limit (the machine's upload limit): ``--compression lzma`` stores the same arrays
in LZMA-compressed ``.npz`` archives (``numpy.load`` reads them; smaller than deflate), and
``--quantize-hu Q`` rounds HU to multiples of Q (error at most Q/2 HU, standard deviation
Q/sqrt(12); far below the 10-30 HU noise of these CT slices, but no longer lossless).
``--max-mb`` makes the script fail, naming the size, when the packed set is larger.

Example::

    python scripts/pack_training_slices.py ../shared/data/train/dicom --out /tmp/train15
    tomo train /tmp/train15 --out runs/prior ...
"""

from __future__ import annotations

import argparse
import io
import sys
import zipfile
from pathlib import Path

import numpy as np

from tomo.priors.training_data import collect_slices, resample

#: string keys of the shared-data ``.npz`` volumes carried into every packed slice
META_KEYS = ("patient_id", "collection", "licence", "origin")


def source_metadata(source: str) -> dict[str, str]:
    """The META_KEYS strings of the ``.npz`` volume a slice came from (``path[k]``); {} for DICOM."""
    path = Path(source.rsplit("[", 1)[0])
    if path.suffix.lower() != ".npz" or not path.is_file():
        return {}
    with np.load(path, allow_pickle=False) as data:
        return {k: str(data[k]) for k in META_KEYS if k in data.files}


def write_npz(path: Path, arrays: dict[str, np.ndarray], compression: str) -> None:
    """An ``.npz`` archive (``numpy.load`` reads both compressions)."""
    method = {"deflate": zipfile.ZIP_DEFLATED, "lzma": zipfile.ZIP_LZMA}[compression]
    with zipfile.ZipFile(path, "w", compression=method) as zf:
        for name, value in arrays.items():
            buf = io.BytesIO()
            np.save(buf, np.asarray(value), allow_pickle=False)
            zf.writestr(f"{name}.npy", buf.getvalue())


def quantize(hu: np.ndarray, window, step: int) -> np.ndarray:
    """HU rounded to multiples of ``step`` counted from the window's low end, as int16 in the window."""
    lo, hi = window
    q = lo + np.rint((hu - lo) / step) * step
    return np.clip(q, lo, hi).astype(np.int16)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", nargs="+", help="DICOM folders / .npz volumes, as for tomo train")
    parser.add_argument("--out", required=True, type=Path, help="new or empty output folder")
    parser.add_argument("--pixel-size", type=float, default=1.5, help="target pixel size, mm (1.5)")
    parser.add_argument("--hu-window", default="-1000,2000", help="HU clip window LO,HI (-1000,2000)")
    parser.add_argument(
        "--compression",
        choices=("deflate", "lzma"),
        default="deflate",
        help="zip compression of the .npz files (deflate; lzma is smaller and slower)",
    )
    parser.add_argument(
        "--quantize-hu",
        type=int,
        default=1,
        metavar="Q",
        help="round HU to multiples of Q (1: plain rounding, lossless to 0.5 HU)",
    )
    parser.add_argument(
        "--max-mb", type=float, default=None, help="fail when the packed set is larger than this many MiB"
    )
    args = parser.parse_args(argv)
    if args.out.exists() and any(args.out.iterdir()):
        parser.error(f"{args.out} is not empty; choose a new folder")
    if args.quantize_hu < 1:
        parser.error("--quantize-hu must be >= 1")
    window = tuple(float(v) for v in args.hu_window.split(","))
    records, report = collect_slices(args.data, window)
    print(report.summary())
    counts: dict[str, int] = {}
    meta_cache: dict[str, dict] = {}
    for rec in records:
        volume = rec.source.rsplit("[", 1)[0]
        meta = meta_cache.setdefault(volume, source_metadata(rec.source))
        hu = quantize(resample(rec.hu, rec.spacing_mm, args.pixel_size), window, args.quantize_hu)
        n = counts[rec.group] = counts.get(rec.group, 0) + 1
        folder = args.out / rec.group
        folder.mkdir(parents=True, exist_ok=True)
        arrays = {"hu": hu[None], "spacing_mm": np.array([args.pixel_size, args.pixel_size, 1.0])}
        arrays.update({k: np.array(v) for k, v in meta.items()})
        write_npz(folder / f"{n:04d}.npz", arrays, args.compression)
    size = sum(f.stat().st_size for f in args.out.rglob("*.npz")) / 2**20
    print(
        f"wrote {len(records)} slices in {len(counts)} groups to {args.out}: {size:.1f} MiB "
        f"({args.compression}, HU step {args.quantize_hu})"
    )
    if args.max_mb is not None and size > args.max_mb:
        print(
            f"error: the packed set is {size:.1f} MiB, over --max-mb {args.max_mb}: use --compression lzma "
            f"or a larger --quantize-hu",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
