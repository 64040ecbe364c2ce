"""`tomo info` on DICOM folders, an empty folder and .npz files."""

from __future__ import annotations

import numpy as np

from tomo.cli.main import main


def test_info_lists_series_and_skipped_files(shared_data, capsys):
    assert main(["info", str(shared_data / "dicom-cases" / "wg04" / "JPLL")]) == 0
    out = capsys.readouterr().out
    assert "2 CT series" in out
    assert "1 slice of 512x512, pixel 0.6615x0.6615 mm" in out
    assert "HU -3024 to 1254" in out  # CT1: stored -2000..2278, intercept -1024
    assert "JPEG Lossless" in out
    assert "1  not CT (modality MR, MR Image Storage)" in out


def test_info_reports_tilt_and_irregular_spacing(shared_data, capsys):
    assert main(["info", "--no-pixels", str(shared_data / "dicom-cases" / "gantry-tilt-ge-head")]) == 0
    out = capsys.readouterr().out
    assert "28 slices" in out and "warning: gantry tilt" in out and "irregular slice spacing" in out
    assert "HU" not in out.split("slice spacing")[1].split("\n")[0]  # --no-pixels: no HU range


def test_info_empty_folder_fails(tmp_path, capsys):
    assert main(["info", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no readable CT series" in err and len(err.strip().splitlines()) == 1


def test_info_non_ct_file_fails(shared_data, capsys):
    path = shared_data / "dicom-cases" / "transfer-syntaxes" / "TestPattern_RGB.dcm"
    assert main(["info", str(path)]) == 2
    assert "not CT" in capsys.readouterr().err


def test_info_npz(tmp_path, capsys):
    np.savez(tmp_path / "v.npz", hu=np.full((3, 8, 8), -1000, np.int16), spacing_mm=np.array([1, 1, 2.5], np.float32))
    np.savez(
        tmp_path / "s.npz",
        sinogram=np.zeros((30, 40), np.float32),
        angles=np.linspace(0, np.pi, 30),
        geometry="parallel",
    )
    assert main(["info", str(tmp_path / "v.npz")]) == 0
    out = capsys.readouterr().out
    assert "hu: int16 [3, 8, 8]" in out and "CT volume: 3 slices, HU -1000 to -1000" in out
    assert main(["info", str(tmp_path / "s.npz")]) == 0
    assert "sinogram: parallel beam, shape [30, 40]" in capsys.readouterr().out
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    assert main(["info", str(tmp_path / "bad.npz")]) == 2


def test_info_names_every_skipped_file_and_why(tmp_path, capsys):
    """Self-contained (pydicom's bundled files): each skipped file is named under its reason."""
    import shutil

    import pytest
    from pydicom.data import get_testdata_file

    ct, mr = get_testdata_file("CT_small.dcm", download=False), get_testdata_file("MR_small.dcm", download=False)
    if ct is None or mr is None:
        pytest.skip("pydicom's bundled test files are not installed")
    shutil.copy(ct, tmp_path / "a-ct.dcm")
    shutil.copy(ct, tmp_path / "b-ct-copy.dcm")  # found second (files are scanned in name order)
    shutil.copy(mr, tmp_path / "mr.dcm")
    (tmp_path / "notes.txt").write_text("not an image")
    assert main(["info", "--no-pixels", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "skipped 3 files:" in lines
    start = lines.index("skipped 3 files:")
    listing = [line.strip() for line in lines[start + 1 :]]
    for reason, name in (
        ("not CT (modality MR, MR Image Storage)", "mr.dcm"),
        ("not a DICOM file", "notes.txt"),
        ("duplicate of an image already found (same SOPInstanceUID)", "b-ct-copy.dcm"),
    ):
        at = listing.index(f"1  {reason}")
        assert listing[at + 1] == str(tmp_path / name)  # the file, under its reason
    assert str(tmp_path / "a-ct.dcm") not in listing  # the CT image read is not listed as skipped


def test_info_suggests_stacking_single_slice_series(tmp_path, capsys):
    import pydicom
    import pytest
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid

    ct = get_testdata_file("CT_small.dcm", download=False)
    if ct is None:
        pytest.skip("pydicom's bundled test files are not installed")
    for k in range(3):
        ds = pydicom.dcmread(ct)
        ds.SeriesInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid()
        ds.ImagePositionPatient = [0.0, 0.0, 3.0 * k]
        ds.save_as(tmp_path / f"{k}.dcm")
    assert main(["info", "--no-pixels", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "3 CT series" in out and "3 series of one slice each: `tomo simulate --stack-series`" in out
