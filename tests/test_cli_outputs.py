"""``tomo reconstruct`` outputs for researchers' tools: posterior std (npz, PNG, NIfTI, DICOM) and NIfTI.

Most tests use ``fakestd``, a registered method that returns FBP and a known standard deviation
(fast and exact); one runs the real DDS with a tiny random prior.
"""

from __future__ import annotations

import shutil
import sys

import numpy as np
import pytest
import torch

from operators.units import MU_WATER_PER_MM
from tests.volume_scan import write_volume_scan
from tomo.cli.main import main
from tomo.io.sinogram import load_sinogram
from tomo.methods import MethodOption
from tomo.methods.registry import MethodOutput, ReconMethod, default_registry, get_method, reconstruct

HU_PER_MU = 1000.0 / MU_WATER_PER_MM  # HU = 1000 (mu / mu_water - 1): slope of the affine map


def _fake_std(sinogram, problem, samples=None):
    """FBP, and with samples >= 2 a std [1/mm] that depends on the data (so chunks differ)."""
    mu = get_method("fbp").run(sinogram, problem)
    if (samples or 1) < 2:
        return mu
    return MethodOutput(mu, 1e-4 + 0.05 * mu.abs())


@pytest.fixture
def fakestd(monkeypatch):
    entry = ReconMethod(
        "fakestd",
        _fake_std,
        "FBP with a made-up posterior std (tests)",
        (MethodOption("--samples", "samples", int, "samples"),),
        batch_size=2,
    )
    monkeypatch.setitem(default_registry(), "fakestd", entry)
    return entry


@pytest.fixture(scope="module")
def volume_scan(tmp_path_factory):
    """A 5-slice parallel-beam scan of a 48 x 48 .npz volume (grid 24), with hu_reference."""
    return write_volume_scan(tmp_path_factory.mktemp("vol"), hu_step=20, extra_args=())


@pytest.fixture(scope="module")
def dicom_series(tmp_path_factory):
    """A 3-slice DICOM series rotated 30 degrees in-plane (an unusual orientation to carry over) and its scan."""
    from tomo.io.dicom_write import write_series

    folder = tmp_path_factory.mktemp("dcm")
    hu = np.full((3, 40, 40), -1000.0, np.float32)
    hu[:, 10:30, 12:32] = 50.0
    c, s = np.cos(np.radians(30)), np.sin(np.radians(30))
    write_series(
        hu,
        folder / "src",
        pixel_spacing_mm=(1.2, 1.2),
        slice_spacing_mm=4.0,
        orientation=(c, s, 0, -s, c, 0),
        positions=[(-20.0, 5.0, 10.0 + 4.0 * k) for k in range(3)],
        description="rotated source",
        derivation="synthetic",
    )
    scan = folder / "scan.npz"
    assert (
        main(
            ["simulate", str(folder / "src"), "--geometry", "parallel", "--views", "20", "--out", str(scan), "--quiet"]
        )
        == 0
    )
    return folder / "src", scan


def test_std_goes_into_npz_png_and_survives_resume(volume_scan, fakestd, tmp_path, monkeypatch, capsys):
    import tomo.cli.reconstruct as rec

    out = tmp_path / "r.npz"
    argv = ["reconstruct", str(volume_scan), "--method", "fakestd", "--samples", "2", "--out", str(out)]
    real = rec.PartialRun.save

    def save_then_die(self, start, *a, **k):
        real(self, start, *a, **k)
        raise KeyboardInterrupt  # a kill after the first chunk

    monkeypatch.setattr(rec.PartialRun, "save", save_then_die)
    assert main(argv) == 130
    with np.load(tmp_path / "r.npz.partial" / "slices-000000.npz") as chunk:
        assert chunk["std_hu"].shape == (2, 24, 24)
    monkeypatch.setattr(rec.PartialRun, "save", real)
    capsys.readouterr()
    assert main([*argv, "--resume"]) == 0
    assert "resuming: 1 of 3 chunks" in capsys.readouterr().out
    sf = load_sinogram(volume_scan)
    expected = reconstruct(sf.sinogram, sf.geometry, "fakestd", samples=2, return_std=True)[1].numpy()
    with np.load(out) as d:
        assert d["std_hu"].dtype == np.float32 and d["std_hu"].shape == d["hu"].shape == (5, 24, 24)
        np.testing.assert_allclose(d["std_hu"], HU_PER_MU * expected, rtol=1e-6)
    assert (tmp_path / "r.png").is_file() and (tmp_path / "r_std.png").stat().st_size > 5000


def test_one_sample_or_a_classical_method_writes_no_std(volume_scan, fakestd, tmp_path):
    for method, extra in (("fakestd", ["--samples", "1"]), ("fbp", [])):
        out = tmp_path / f"{method}.nii.gz"
        pytest.importorskip("nibabel")
        assert (
            main(
                [
                    "reconstruct",
                    str(volume_scan),
                    "--method",
                    method,
                    *extra,
                    "--slice-spacing",
                    "2.5",
                    "--out",
                    str(out),
                    "--quiet",
                ]
            )
            == 0
        )
        assert out.is_file() and (tmp_path / f"{method}.png").is_file()
        assert not list(tmp_path.glob("*_std*"))
    assert main(["reconstruct", str(volume_scan), "--out", str(tmp_path / "f.npz"), "--quiet"]) == 0
    assert "std_hu" not in np.load(tmp_path / "f.npz").files


def test_dds_samples_std_is_the_methods_std_in_hu(volume_scan, tmp_path):
    """The real solver: DDS with 2 posterior samples from a tiny random prior (2 steps, cold start)."""
    from tomo.priors import build_unet, make_config
    from tomo.priors.checkpoint import save_config, save_tensors

    torch.manual_seed(0)
    arch = {
        "class": "UNet2DModel",
        "block_out_channels": [8, 16],
        "layers_per_block": 1,
        "down_block_types": ["DownBlock2D", "DownBlock2D"],
        "up_block_types": ["UpBlock2D", "UpBlock2D"],
        "norm_num_groups": 4,
    }
    config = make_config(architecture=arch, patch_size=16, image_size=32)
    prior = tmp_path / "prior"
    prior.mkdir()
    save_config(prior / "prior.json", config)
    save_tensors(prior / "prior.safetensors", build_unet(config).state_dict())
    options = dict(steps=2, samples=2, init="none", prior=str(prior))
    out = tmp_path / "d.npz"
    assert (
        main(
            [
                "reconstruct",
                str(volume_scan),
                "--method",
                "dds",
                "--steps",
                "2",
                "--samples",
                "2",
                "--init",
                "none",
                "--prior",
                str(prior),
                "--batch-size",
                "5",
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    sf = load_sinogram(volume_scan)
    _, std = reconstruct(
        sf.sinogram, sf.geometry, "dds", i0=sf.i0, batch_size=5, progress=False, return_std=True, **options
    )
    with np.load(out) as d:
        # zero only where every sample was clipped to the same bound (the final denoising clips)
        assert d["std_hu"].shape == (5, 24, 24) and (d["std_hu"] >= 0).all() and (d["std_hu"] > 0).mean() > 0.3
        np.testing.assert_allclose(d["std_hu"], HU_PER_MU * std.numpy(), rtol=1e-5)
    assert (tmp_path / "d_std.png").is_file()


def test_nifti_keeps_grid_spacing_and_reference_geometry(dicom_series, tmp_path, capsys):
    pytest.importorskip("nibabel")
    from tomo.io.dicom_read import read_series
    from tomo.io.nifti import read_nifti_volume

    src, scan = dicom_series
    ref = read_series(src)
    out = tmp_path / "rec.nii.gz"
    assert main(["reconstruct", str(scan), "--reference", str(src), "--out", str(out), "--quiet"]) == 0
    assert main(["reconstruct", str(scan), "--out", str(tmp_path / "flat.npz"), "--quiet"]) == 0
    vol = read_nifti_volume(out)
    spacing = load_sinogram(scan).geometry.pixel_spacing_mm
    assert vol.pixel_spacing_mm == pytest.approx((spacing, spacing))
    assert vol.slice_spacing_mm == pytest.approx(4.0)
    np.testing.assert_allclose(vol.orientation, ref.orientation, atol=1e-6)
    np.testing.assert_allclose(_fov_centre(vol), _fov_centre(ref), atol=1e-4)  # the same field of view
    np.testing.assert_array_equal(vol.hu, np.load(tmp_path / "flat.npz")["hu"])  # float32 HU, unchanged
    assert (tmp_path / "rec.png").is_file()
    capsys.readouterr()
    assert main(["info", str(out)]) == 0
    text = capsys.readouterr().out
    assert f"3 slices of {vol.hu.shape[1]}x{vol.hu.shape[2]}" in text and "slice spacing 4 mm" in text
    assert "orientation oblique (closest: axial)" not in text and "orientation axial" in text
    assert f"row cosines ({np.cos(np.radians(30)):.4g}, 0.5, 0)" in text
    lo, hi = float(vol.hu.min()), float(vol.hu.max())
    assert f"HU {lo:.0f} to {hi:.0f}" in text


def _fov_centre(vol) -> np.ndarray:
    """LPS centre of a volume's field of view, mm (mid-way between its corner pixel centres)."""
    _, rows, cols = vol.hu.shape
    row_dir, col_dir = np.reshape(vol.orientation, (2, 3))
    return (
        vol.positions.mean(0)
        + (cols - 1) / 2 * vol.pixel_spacing_mm[1] * row_dir
        + (rows - 1) / 2 * vol.pixel_spacing_mm[0] * col_dir
    )


def test_nifti_std_beside_the_volume(volume_scan, fakestd, tmp_path):
    pytest.importorskip("nibabel")
    from tomo.io.nifti import read_nifti_volume

    out = tmp_path / "v.nii"
    assert (
        main(
            [
                "reconstruct",
                str(volume_scan),
                "--method",
                "fakestd",
                "--samples",
                "3",
                "--slice-spacing",
                "2.5",
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    image, std = read_nifti_volume(out), read_nifti_volume(tmp_path / "v_std.nii")
    np.testing.assert_array_equal(std.positions, image.positions)
    assert std.slice_spacing_mm == pytest.approx(2.5) and (tmp_path / "v_std.png").is_file()
    sf = load_sinogram(volume_scan)
    expected = reconstruct(sf.sinogram, sf.geometry, "fakestd", samples=3, return_std=True)[1].numpy()
    np.testing.assert_allclose(std.hu, HU_PER_MU * expected, rtol=1e-6)


def test_dicom_std_is_a_second_series_of_the_same_study(dicom_series, fakestd, tmp_path):
    from tomo.io.dicom_read import read_series

    src, scan = dicom_series
    out = tmp_path / "dcm"
    assert (
        main(
            [
                "reconstruct",
                str(scan),
                "--method",
                "fakestd",
                "--samples",
                "2",
                "--dicom-reference",
                str(src),
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    image, std = read_series(out), read_series(tmp_path / "dcm_std")
    h, s = image.header, std.header
    assert s.SeriesInstanceUID != h.SeriesInstanceUID
    for keyword in ("StudyInstanceUID", "FrameOfReferenceUID", "PatientID", "ImageOrientationPatient", "PixelSpacing"):
        assert s.get(keyword) == h.get(keyword), keyword
    np.testing.assert_array_equal(std.positions, image.positions)
    assert list(s.ImageType[:2]) == ["DERIVED", "SECONDARY"] and int(s.SeriesNumber) == int(h.SeriesNumber) + 1
    assert "posterior std" in s.SeriesDescription and "HU" in s.SeriesDescription
    assert "standard deviation" in s.DerivationDescription and h.SeriesInstanceUID in s.DerivationDescription
    sf = load_sinogram(scan)
    expected = HU_PER_MU * reconstruct(sf.sinogram, sf.geometry, "fakestd", samples=2, return_std=True)[1].numpy()
    assert float(s.RescaleSlope) == pytest.approx(0.1)
    np.testing.assert_allclose(std.hu, expected, atol=0.05 + 1e-4)  # stored in 0.1 HU steps
    assert not (tmp_path / "dcm.png").exists()
    # an existing std series is refused like the image itself, before any work
    shutil.copytree(tmp_path / "dcm_std", tmp_path / "again_std")
    assert (
        main(
            [
                "reconstruct",
                str(scan),
                "--method",
                "fakestd",
                "--samples",
                "2",
                "--dicom-reference",
                str(src),
                "--out",
                str(tmp_path / "again"),
                "--quiet",
            ]
        )
        == 2
    )
    assert not (tmp_path / "again").exists() and not (tmp_path / "again.partial").exists()


def test_refusals_are_one_line(volume_scan, tmp_path, capsys, monkeypatch):
    unplaced = tmp_path.parent / f"{tmp_path.name}-unplaced.npz"  # as written before placement was recorded
    with np.load(volume_scan) as d:
        np.savez(unplaced, **{k: d[k] for k in d.files if k not in ("slice_spacing_mm", "orientation", "positions_mm")})
    cases = [
        (volume_scan, ["--out", str(tmp_path / "a.npz"), "--slice-spacing", "2"], "NIfTI output only"),
        (unplaced, ["--out", str(tmp_path / "a.nii.gz")], "--slice-spacing"),  # 5 slices, no distance known
        (volume_scan, ["--out", str(tmp_path / "a.nii.gz"), "--slice-spacing", "-1"], "positive"),
    ]
    for scan, extra, message in cases:
        capsys.readouterr()
        assert main(["reconstruct", str(scan), "--quiet", *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
    assert not list(tmp_path.iterdir())
    unplaced.unlink()
    monkeypatch.setitem(sys.modules, "nibabel", None)  # as if it were not installed
    (tmp_path / "b.nii").write_bytes(b"")
    for argv in (
        ["reconstruct", str(volume_scan), "--out", str(tmp_path / "a.nii")],
        ["info", str(tmp_path / "b.nii")],
    ):
        capsys.readouterr()
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert "pip install tomo-ct[nifti]" in err and len(err.splitlines()) == 1, err


def test_dicom_std_rescale_keeps_tenths():
    from tomo.io.dicom_write import choose_rescale

    assert choose_rescale(0.0, 250.0, 0.1) == (0.1, 0.0)
    assert choose_rescale(-1000.0, 2000.0) == (1.0, -1024.0)  # images: unchanged
    slope, intercept = choose_rescale(0.0, 5000.0, 0.1)  # 0.1 steps from 0 stop at 3276.7: the int16
    assert round((0.0 - intercept) / slope) >= -32768 and round((5000.0 - intercept) / slope) <= 32767  # range spans it
