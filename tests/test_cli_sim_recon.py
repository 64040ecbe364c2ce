"""``tomo simulate`` and ``tomo reconstruct`` end to end on tiny inputs (32 x 32 grids)."""

import numpy as np
import pytest

from tomo.cli.main import main
from tomo.io.sinogram import geometry_name, load_sinogram


@pytest.fixture(scope="module")
def phantom_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("sim") / "phantom.npz"
    assert (
        main(
            [
                "simulate",
                "shepp-logan",
                "--grid",
                "32",
                "--geometry",
                "parallel",
                "--views",
                "16",
                "--i0",
                "1e5",
                "--seed",
                "1",
                "--out",
                str(path),
                "--quiet",
            ]
        )
        == 0
    )
    return path


def test_simulate_writes_the_exchange_file(phantom_file):
    sf = load_sinogram(phantom_file)
    assert sf.sinogram.shape == (16, 48) and sf.sinogram.dtype == np.float32
    assert sf.geometry.image_shape == (32, 32) and sf.i0 == 1e5
    assert sf.hu_reference.shape == (32, 32) and "shepp-logan" in sf.description


def test_simulate_config_shortcut_and_npz_volume(tmp_path):
    """An OpenKBP-style .npz volume, slice selection, and --config."""
    hu = np.full((3, 40, 40), -1000, np.int16)
    hu[:, 10:30, 10:30] = 0
    src = tmp_path / "vol.npz"
    np.savez(src, hu=hu, spacing_mm=np.array([2.0, 2.0, 3.0], np.float32))
    out = tmp_path / "s.npz"
    assert main(["simulate", str(src), "--config", "fanbeam-60", "--slices", "0:2", "--out", str(out), "--quiet"]) == 0
    sf = load_sinogram(out)
    assert sf.sinogram.shape == (2, 60, 40) and sf.i0 == 1e5  # grid 20 (half of 40): 2 x 20 fan bins
    assert geometry_name(sf.geometry) == "fanbeam" and sf.hu_reference.shape == (2, 20, 20)


@pytest.mark.parametrize(
    "method, extra",
    [
        ("fbp", ["--filter", "hann"]),
        ("sirt", ["--iterations", "30"]),
        ("cgls", ["--iterations", "10"]),
        ("tv", ["--iterations", "150", "--tv-weight", "1e-3"]),
        ("tv", []),
    ],
)  # tuned defaults, Poisson weights from the file's I0
def test_reconstruct_writes_hu_and_preview(phantom_file, tmp_path, capsys, method, extra):
    out = tmp_path / f"{method}{len(extra)}.npz"
    assert main(["reconstruct", str(phantom_file), "--method", method, "--out", str(out), *extra]) == 0
    with np.load(out) as d:
        hu = d["hu"]
        assert str(d["method"]) == method
    assert hu.shape == (32, 32) and hu.dtype == np.float32
    assert out.with_suffix(".png").stat().st_size > 1000
    printed = capsys.readouterr().out
    assert "PSNR" in printed and "SSIM" in printed
    ref = load_sinogram(phantom_file).hu_reference
    assert np.abs(hu - ref).mean() < 250  # HU, sanity: right units and orientation


def test_reconstruct_refuses_bad_requests(phantom_file, tmp_path, capsys):
    out = tmp_path / "r.npz"
    assert main(["reconstruct", str(phantom_file), "--out", str(out), "--quiet"]) == 0
    mtime = out.stat().st_mtime_ns
    cases = [
        (["--out", str(out)], "exists"),  # no overwrite
        (["--out", str(phantom_file)], "input"),  # never the input
        (["--out", str(tmp_path / "x.npz"), "--method", "sirt", "--tv-weight", "1"], "does not apply"),
        (["--out", str(tmp_path / "x.txt")], ".npz"),
        (["--out", str(tmp_path / "x.npz"), "--batch-size", "0"], "batch-size"),
        (
            ["--out", str(tmp_path / "x.npz"), "--device", "cuda:0"]
            if not _has_cuda()
            else (["--out", str(tmp_path / "x.npz"), "--device", "tpu"]),
            "device",
        ),
    ]
    for extra, message in cases:
        capsys.readouterr()
        assert main(["reconstruct", str(phantom_file), "--quiet", *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
    assert out.stat().st_mtime_ns == mtime
    assert main(["reconstruct", str(phantom_file), "--out", str(out), "--overwrite", "--quiet"]) == 0
    bad = tmp_path / "bad.npz"
    np.savez(bad, sinogram=np.zeros((3, 4), np.float32))
    assert main(["reconstruct", str(bad), "--out", str(tmp_path / "y.npz")]) == 2
    assert "missing keys" in capsys.readouterr().err
    assert main(["reconstruct", str(tmp_path / "absent.npz"), "--out", str(tmp_path / "y.npz")]) == 2


def _has_cuda():
    import torch

    return torch.cuda.is_available()


def test_simulate_refuses_bad_requests(tmp_path, capsys, phantom_file):
    cases = [
        (["shepp-logan", "--views", "4", "--out", str(tmp_path / "a.npz")], "--geometry"),
        (["shepp-logan", "--config", "parallel-8", "--views", "4", "--out", str(tmp_path / "a.npz")], "not both"),
        (["no-such-thing", "--config", "parallel-8", "--out", str(tmp_path / "a.npz")], "phantom"),
        (["shepp-logan", "--config", "parallel-8", "--out", str(phantom_file)], "exists"),
        (["shepp-logan", "--config", "parallel-8", "--out", str(tmp_path / "a.txt")], ".npz"),
        (
            ["shepp-logan", "--geometry", "parallel", "--views", "4", "--i0", "-3", "--out", str(tmp_path / "a.npz")],
            "i0",
        ),
    ]
    for argv, message in cases:
        capsys.readouterr()
        assert main(["simulate", *argv, "--quiet"]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "a.npz").exists()


def test_slice_spec_parsing():
    from tomo.cli.main import CommandError
    from tomo.cli.simulate import parse_slices

    assert parse_slices("all", 3) == [0, 1, 2]
    assert parse_slices("1:5:2", 6) == [1, 3]
    assert parse_slices("4,0", 6) == [4, 0]
    for bad in ("7", "a", "2:1", "1:2:0"):
        with pytest.raises(CommandError):
            parse_slices(bad, 6)


def test_dicom_in_dicom_out(tmp_path):
    """DICOM series -> simulate -> reconstruct --dicom-reference -> a derived series readable as HU."""
    write_series = pytest.importorskip("tomo.io.dicom_write").write_series
    from tomo.io.dicom_read import read_series

    hu = np.full((2, 48, 48), -1000.0, np.float32)
    hu[:, 12:36, 12:36] = 40.0
    src = tmp_path / "src"
    write_series(
        hu, src, pixel_spacing_mm=(1.5, 1.5), slice_spacing_mm=3.0, description="test source", derivation="synthetic"
    )
    sino = tmp_path / "s.npz"
    assert main(["simulate", str(src), "--geometry", "parallel", "--views", "20", "--out", str(sino), "--quiet"]) == 0
    out = tmp_path / "rec"
    assert (
        main(["reconstruct", str(sino), "--method", "fbp", "--dicom-reference", str(src), "--out", str(out), "--quiet"])
        == 0
    )
    vol = read_series(out)
    assert vol.hu.shape == (2, 24, 24) and vol.pixel_spacing_mm == pytest.approx((3.0, 3.0))
    assert "fbp" in str(vol.header.get("DerivationDescription", "")).lower()
    assert abs(float(np.median(vol.hu[:, 9:15, 9:15])) - 40.0) < 60.0  # water-ish square in HU
    assert (
        main(["reconstruct", str(sino), "--method", "fbp", "--dicom-reference", str(src), "--out", str(out), "--quiet"])
        == 2
    )  # exists, no --overwrite


@pytest.mark.parametrize("threads", [2, 0])
def test_threads_option_reaches_the_projector(phantom_file, tmp_path, monkeypatch, threads):
    """--threads N sets torch's threads and the operators' setting, which CTProjector and FBP honour,
    while the command runs; 0 (default) lets the projector follow torch's own choice."""
    import torch

    import operators
    from operators.settings import settings

    seen = []
    real = operators.CTProjector._forward

    def spy(self, x):
        seen.append((torch.get_num_threads(), settings.threads))
        return real(self, x)

    monkeypatch.setattr(operators.CTProjector, "_forward", spy)
    old, old_torch = operators.set_threads(1), torch.get_num_threads()
    torch.set_num_threads(3)  # torch's choice in this test
    try:
        out = tmp_path / "r.npz"
        args = ["reconstruct", str(phantom_file), "--method", "sirt", "--iterations", "2", "--out", str(out), "--quiet"]
        assert main(args + ["--threads", str(threads)]) == 0
        assert seen and set(seen) == ({(2, 2)} if threads else {(3, None)})
        # both settings are restored when the command ends
        assert settings.threads == 1 and torch.get_num_threads() == 3
    finally:
        operators.set_threads(old)
        torch.set_num_threads(old_torch)
