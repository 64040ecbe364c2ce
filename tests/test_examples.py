"""The runnable quick starts in examples/ (README and docs) run on tiny inputs and report sane numbers.

Each runs as its users run it: ``python examples/NAME.py ...`` in a subprocess.
(examples/operators_quickstart.py is covered by tests/test_operators_demo.py.)
"""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _run(name: str, *args: str) -> str:
    done = subprocess.run([sys.executable, str(EXAMPLES / name), *args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def _value(stdout: str, key: str) -> float:
    (line,) = [ln for ln in stdout.splitlines() if ln.startswith(key + " ")]
    return float(line.split()[1])


def test_python_quickstart_of_the_readme():
    out = _run("python_quickstart.py", "--size", "32", "--views", "30")
    assert "sinogram (1, 1, 30, 48), back-projection (1, 1, 32, 32)" in out
    assert _value(out, "adjoint_rel_error") < 1e-12  # float64 adjoint test
    assert _value(out, "fbp_rel_error") < 0.25  # 32 x 32 from 30 views: about 0.13


def test_dicom_quickstart_tv_beats_fbp_and_writes_dicom(tmp_path):
    out = _run("dicom_quickstart.py", "--grid", "32", "--iterations", "20", "--out", str(tmp_path / "tv"))
    rows = {
        ln.split()[0]: [float(v) for v in ln.split()[1:]] for ln in out.splitlines() if ln.startswith(("fbp ", "tv "))
    }
    assert set(rows) == {"fbp", "tv"}
    assert rows["fbp"][0] > 20 and rows["tv"][0] > rows["fbp"][0]  # PSNR dB: TV denoises 30 views
    assert 0 < rows["fbp"][1] <= rows["tv"][1] <= 1  # SSIM
    from tomo.io.dicom_read import read_series

    vol = read_series(tmp_path / "tv")
    assert vol.hu.shape == (1, 32, 32)
    assert vol.pixel_spacing_mm[0] == pytest.approx(128 * 0.661468 / 32, rel=1e-5)


@pytest.mark.skipif(importlib.util.find_spec("nibabel") is None, reason="needs nibabel (tomo-ct[nifti])")
def test_nifti_roundtrip_example(tmp_path):
    out = _run("nifti_roundtrip.py", "--out", str(tmp_path))
    assert _value(out, "max_hu_diff") == 0
    assert _value(out, "max_position_diff_mm") < 1e-3
    assert _value(out, "max_orientation_diff") < 1e-6
    assert float(out.split("centre_shift_mm")[1].split()[0]) < 1e-3
    assert (tmp_path / "volume.nii.gz").is_file() and (tmp_path / "coarse.nii.gz").is_file()
