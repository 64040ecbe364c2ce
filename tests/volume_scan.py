"""A small simulated volume scan for the command-line tests (one recipe, several test modules)."""

from pathlib import Path

import numpy as np

from tomo.cli.main import main


def write_volume_scan(folder: Path, *, hu_step: float, extra_args: tuple = ()) -> Path:
    """Simulate a 5-slice parallel-beam scan (20 views, grid 24) of a 48 x 48 disk volume whose slice
    ``k`` is ``hu_step * k`` HU brighter; returns the scan's path (``folder/scan.npz``, with hu_reference)."""
    yy, xx = np.mgrid[:48, :48]
    hu = np.where((yy - 24) ** 2 + (xx - 22) ** 2 < 16**2, 40, -1000).astype(np.int16)
    np.savez(
        folder / "vol.npz",
        hu=np.stack([hu + hu_step * k for k in range(5)]),
        spacing_mm=np.array([1.0, 1.0, 2.5], np.float32),
    )
    scan = folder / "scan.npz"
    argv = ["simulate", str(folder / "vol.npz"), "--geometry", "parallel", "--views", "20", "--grid", "24"]
    assert main([*argv, *extra_args, "--out", str(scan), "--quiet"]) == 0
    return scan
