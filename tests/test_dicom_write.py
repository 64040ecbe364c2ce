"""DICOM writing: round trip, geometry of a resampled grid, refusal to overwrite, dcmdump."""

from __future__ import annotations

import copy
import shutil
import subprocess

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

import tomo.io.dicom_write as dicom_write
from tomo.io.dicom_read import read_series
from tomo.io.dicom_write import WINDOW_PRESETS, choose_rescale, default_series_number, write_series

DERIVATION = "DDS reconstruction, parallel beam 30 views, I0=1e6"


@pytest.fixture(scope="module")
def small_reference():
    """pydicom's bundled CT_small (128 x 128, SeriesNumber 1, no window): no data folder needed."""
    path = get_testdata_file("CT_small.dcm", download=False)
    if path is None:
        pytest.skip("pydicom does not ship CT_small.dcm")
    return read_series(path)


@pytest.fixture(scope="module")
def reference(shared_data):
    # 3 slices of a real series keep the test quick; positions/orientation are the real ones
    vol = read_series(shared_data / "train" / "dicom" / "lung-pet-ct-dx-a0002")
    vol.hu, vol.positions, vol.files = vol.hu[:3], vol.positions[:3], vol.files[:3]
    return vol


def _corner(positions, orientation, spacing):
    """Outer corner of the first pixel (position is its centre), mm."""
    o = np.asarray(orientation)
    return positions - 0.5 * spacing[1] * o[:3] - 0.5 * spacing[0] * o[3:]


def test_round_trip_half_resolution_same_field_of_view(reference, tmp_path):
    small = reference.hu[:, ::2, ::2]  # 256 x 256 of the 512 x 512 slices
    spacing = (2 * reference.pixel_spacing_mm[0], 2 * reference.pixel_spacing_mm[1])
    files = write_series(
        small, tmp_path / "out", reference, pixel_spacing_mm=spacing, description="tomo test", derivation=DERIVATION
    )
    assert [f.name for f in files] == ["CT000001.dcm", "CT000002.dcm", "CT000003.dcm"]
    back = read_series(tmp_path / "out")
    np.testing.assert_array_equal(back.hu, small)  # integer HU: exact with slope 1
    assert back.pixel_spacing_mm == pytest.approx(spacing)
    assert back.slice_spacing_mm == pytest.approx(reference.slice_spacing_mm)
    assert back.orientation == pytest.approx(reference.orientation)
    # same field of view: the outer corner stays, the first pixel centre moves
    np.testing.assert_allclose(
        _corner(back.positions, back.orientation, spacing),
        _corner(reference.positions, reference.orientation, reference.pixel_spacing_mm),
        atol=1e-5,
    )
    assert np.abs(back.positions - reference.positions).max() > 0.3
    h, r = back.header, reference.header
    assert h.SOPClassUID == pydicom.uid.CTImageStorage
    assert h.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert list(h.ImageType[:2]) == ["DERIVED", "SECONDARY"]
    assert h.DerivationDescription == DERIVATION and h.SeriesDescription == "tomo test"
    for keyword in ("PatientName", "PatientID", "StudyInstanceUID", "FrameOfReferenceUID", "StudyDate"):
        assert h.get(keyword) == r.get(keyword), keyword
    assert back.series_uid != reference.series_uid and back.study_uid == reference.study_uid
    sop_uids = {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in files}
    assert len(sop_uids) == 3 and h.SOPInstanceUID in sop_uids
    assert float(h.SliceThickness) == pytest.approx(float(r.SliceThickness))
    assert float(h.SpacingBetweenSlices) == pytest.approx(reference.slice_spacing_mm)


@pytest.mark.parametrize("low, high", [(-1024.0, 3000.0), (-5e4, 8e4), (-1e-3, 1e-3)])
def test_round_trip_within_quantisation(tmp_path, low, high):
    hu = np.random.default_rng(1).uniform(low, high, size=(2, 12, 10))
    write_series(
        hu, tmp_path / "o", None, pixel_spacing_mm=(0.7, 0.8), slice_spacing_mm=2.5, description="x", derivation="test"
    )
    back = read_series(tmp_path / "o")
    slope, _ = choose_rescale(hu.min(), hu.max())
    # half a storage step, plus float32 rounding of the result
    assert np.abs(back.hu - hu).max() <= slope / 2 + 1e-6 * max(abs(low), abs(high)) + 1e-6
    assert back.pixel_spacing_mm == pytest.approx((0.7, 0.8)) and back.slice_spacing_mm == pytest.approx(2.5)
    assert str(back.header.PatientName) == "ANONYMOUS"
    # no reference: image centre on the axis through the origin
    centre = back.positions[0] + 4.5 * 0.8 * np.array([1, 0, 0]) + 5.5 * 0.7 * np.array([0, 1, 0])
    np.testing.assert_allclose(centre, 0.0, atol=1e-6)


def test_choose_rescale():
    assert choose_rescale(-1024, 3071) == (1.0, -1024.0)
    slope, intercept = choose_rescale(-1e5, 1e5)
    assert slope > 1 and -32768 <= round((-1e5 - intercept) / slope) and round((1e5 - intercept) / slope) <= 32767
    with pytest.raises(ValueError):
        choose_rescale(np.nan, 1.0)


def test_refuses_to_overwrite(reference, tmp_path):
    out = tmp_path / "out"
    kwargs = dict(pixel_spacing_mm=reference.pixel_spacing_mm, description="a", derivation=DERIVATION)
    first = write_series(reference.hu, out, reference, **kwargs)
    with pytest.raises(FileExistsError, match="not empty"):
        write_series(reference.hu, out, reference, **kwargs)
    assert sorted(out.iterdir()) == first  # untouched
    second = write_series(reference.hu - 1, out, reference, overwrite=True, **kwargs)
    assert read_series(out).hu.max() == pytest.approx(reference.hu.max() - 1)
    assert len(second) == 3 and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    (out / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="more than .dcm"):
        write_series(reference.hu, out, reference, overwrite=True, **kwargs)


def test_never_writes_over_the_reference(reference, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for f in reference.files:
        shutil.copy(f, src / f.name)
    local = read_series(src)
    with pytest.raises(ValueError, match="holds the reference"):
        write_series(
            local.hu,
            src,
            local,
            pixel_spacing_mm=local.pixel_spacing_mm,
            description="a",
            derivation=DERIVATION,
            overwrite=True,
        )
    assert sorted(p.name for p in src.iterdir()) == sorted(f.name for f in reference.files)


def test_interrupted_write_leaves_nothing(reference, tmp_path, monkeypatch):
    real = dicom_write._slice_dataset

    def failing(base, k, *args):
        if k == 2:
            raise KeyboardInterrupt
        return real(base, k, *args)

    monkeypatch.setattr(dicom_write, "_slice_dataset", failing)
    with pytest.raises(KeyboardInterrupt):
        write_series(
            reference.hu,
            tmp_path / "out",
            reference,
            pixel_spacing_mm=reference.pixel_spacing_mm,
            description="a",
            derivation=DERIVATION,
        )
    assert list(tmp_path.iterdir()) == []


def test_bad_input_rejected(tmp_path):
    ok = dict(pixel_spacing_mm=1.0, description="a", derivation="b")
    with pytest.raises(ValueError, match="NaN"):
        write_series(np.full((4, 4), np.nan), tmp_path / "a", **ok)
    with pytest.raises(ValueError, match="shape"):
        write_series(np.zeros((1, 2, 3, 4)), tmp_path / "a", **ok)
    with pytest.raises(ValueError, match="slice_spacing_mm"):
        write_series(np.zeros((2, 4, 4)), tmp_path / "a", **ok)
    with pytest.raises(ValueError, match="orthonormal"):
        write_series(np.zeros((4, 4)), tmp_path / "a", orientation=(1, 0, 0, 1, 0, 0), **ok)
    with pytest.raises(ValueError, match="pixel_spacing_mm"):
        write_series(np.zeros((4, 4)), tmp_path / "a", pixel_spacing_mm=-1, description="a", derivation="b")
    assert not (tmp_path / "a").exists()


def test_dcmdump_parses_without_warnings(small_reference, tmp_path):
    dcmdump = shutil.which("dcmdump")
    if dcmdump is None:
        pytest.skip("dcmtk's dcmdump not installed")
    files = write_series(
        small_reference.hu[:1, :64, :64],
        tmp_path / "o",
        None,
        pixel_spacing_mm=0.5,
        description="a",
        derivation=DERIVATION,
        window=(40, 400),
    )
    result = subprocess.run([dcmdump, "-dc", str(files[0])], capture_output=True, text=True)
    assert result.returncode == 0
    bad = [line for line in (result.stdout + result.stderr).splitlines() if line.startswith(("W:", "E:", "F:"))]
    assert bad == []
    assert "CTImageStorage" in result.stdout and "LittleEndianExplicit" in result.stdout


# ----------------------------------------------------------------------------- display window


def _window(files) -> tuple[list[float], list[float], list[str]]:
    ds = pydicom.dcmread(files[0], stop_before_pixels=True)
    as_list = lambda v: [v] if isinstance(v, (str, float, int)) else list(v)  # noqa: E731
    return (
        [float(v) for v in as_list(ds.WindowCenter)],
        [float(v) for v in as_list(ds.WindowWidth)],
        [str(v) for v in as_list(ds.WindowCenterWidthExplanation)],
    )


def test_window_from_the_reference_else_a_preset(small_reference, tmp_path):
    ref = copy.deepcopy(small_reference)
    hu = ref.hu[:, ::2, ::2]
    common = dict(pixel_spacing_mm=1.0, description="tomo TV reconstruction", derivation=DERIVATION)
    # CT_small carries no window: the soft-tissue preset
    files = write_series(hu, tmp_path / "none", ref, **common)
    assert _window(files) == ([40.0], [400.0], ["SOFT TISSUE"])
    # a reference with two windows (as scanners write them): both copied, with their names
    ref.header.WindowCenter, ref.header.WindowWidth = ["40", "-600"], ["400", "1500"]
    ref.header.WindowCenterWidthExplanation = ["MEDIASTINUM", "LUNG"]
    files = write_series(hu, tmp_path / "ref", ref, **common)
    assert _window(files) == ([40.0, -600.0], [400.0, 1500.0], ["MEDIASTINUM", "LUNG"])
    # presets and a pair
    for name, (centre, width) in WINDOW_PRESETS.items():
        files = write_series(hu, tmp_path / name, ref, window=name, **common)
        assert _window(files)[:2] == ([centre], [width])
    files = write_series(hu, tmp_path / "pair", ref, window=(50, 350), **common)
    assert _window(files) == ([50.0], [350.0], ["USER"])
    # auto: the 1st to 99th percentile of what is written (a standard-deviation map in HU)
    std = np.random.default_rng(0).uniform(0.0, 50.0, hu.shape)
    files = write_series(std, tmp_path / "auto", ref, window="auto", hu_step=0.1, **common)
    (centre,), (width,), _ = _window(files)
    assert centre == pytest.approx(25.0, abs=1.0) and width == pytest.approx(49.0, abs=1.0)
    # an unusable reference window falls back to the preset
    ref.header.WindowWidth = ["0", "1500"]
    assert _window(write_series(hu, tmp_path / "bad", ref, **common))[:2] == ([40.0], [400.0])
    for bad, message in (("mediastinum", "unknown window"), ((40, 0), "width >= 1"), ("auto x", "unknown")):
        with pytest.raises(ValueError, match=message):
            write_series(hu, tmp_path / "x", ref, window=bad, **common)
    assert not (tmp_path / "x").exists()


# ----------------------------------------------------------------------------- series numbers


def test_series_numbers_differ_by_method_and_beside_each_other(small_reference, tmp_path):
    ref = small_reference  # SeriesNumber 1
    hu = ref.hu[:, ::2, ::2]

    def write(folder, description):
        files = write_series(hu, folder, ref, pixel_spacing_mm=1.0, description=description, derivation=DERIVATION)
        return int(pydicom.dcmread(files[0], stop_before_pixels=True).SeriesNumber)

    study = tmp_path / "study"
    tv, dds = write(study / "tv", "tomo TV reconstruction"), write(study / "dds", "tomo DDS reconstruction")
    assert tv != dds and {tv % 10, dds % 10} == {1}  # 1000 + the reference's 1 + 10 * slot
    # the same method written twice beside itself: the next free block
    tv_again = write(study / "tv-weight-2", "tomo TV reconstruction")
    assert tv_again not in (tv, dds) and tv_again % 10 == 1
    # deterministic: the same description gives the same number where nothing else is written
    assert write(tmp_path / "elsewhere" / "tv", "tomo TV reconstruction") == tv
    assert tv == default_series_number(ref, description="tomo TV reconstruction")
    # overwriting a series keeps its number (its own folder does not count as taken)
    files = write_series(
        hu,
        study / "tv",
        ref,
        pixel_spacing_mm=1.0,
        description="tomo TV reconstruction",
        derivation="x",
        overwrite=True,
    )
    assert int(pydicom.dcmread(files[0], stop_before_pixels=True).SeriesNumber) == tv
    # another study's series beside it take no number
    other = write_series(
        hu, study / "other", None, pixel_spacing_mm=1.0, description="tomo TV reconstruction", derivation="x"
    )
    assert int(pydicom.dcmread(other[0], stop_before_pixels=True).SeriesNumber) == tv - 1  # no reference: base 1000


def test_builtin_methods_get_distinct_series_numbers():
    """Slots of the descriptions tomo writes (reconstruct and demo) never collide."""
    methods = ("FBP", "SIRT", "CGLS", "TV", "DDS", "DPS")
    numbers = [default_series_number(None, description=f"tomo {m} reconstruction") for m in methods]
    numbers += [default_series_number(None, description=f"tomo {m} demo") for m in methods]
    assert len(set(numbers)) == len(numbers) and all(1000 <= n < 1900 and n % 10 == 0 for n in numbers)
    assert default_series_number(None) == 1000 and default_series_number(None, 1, description="x") % 10 == 1


def test_reconstruct_window_option(tmp_path, capsys):
    """`tomo reconstruct --window` sets the derived series' window; a bad one is refused at parsing."""
    from tomo.cli.main import main

    ct = get_testdata_file("CT_small.dcm", download=False)
    if ct is None:
        pytest.skip("pydicom does not ship CT_small.dcm")
    sino = tmp_path / "s.npz"
    assert main(["simulate", ct, "--config", "parallel-30", "--grid", "32", "--out", str(sino)]) == 0
    base = ["reconstruct", str(sino), "--method", "fbp", "--reference", ct, "--no-preview"]
    assert main([*base, "--window", "lung", "--out", str(tmp_path / "lung")]) == 0
    assert main([*base, "--window", "30,300", "--out", str(tmp_path / "pair")]) == 0
    assert main([*base, "--out", str(tmp_path / "default")]) == 0
    windows = {}
    for name in ("lung", "pair", "default"):
        ds = pydicom.dcmread(sorted((tmp_path / name).glob("*.dcm"))[0], stop_before_pixels=True)
        windows[name] = (float(ds.WindowCenter), float(ds.WindowWidth))
    assert windows == {"lung": (-600.0, 1500.0), "pair": (30.0, 300.0), "default": (40.0, 400.0)}
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main([*base, "--window", "mediastinum", "--out", str(tmp_path / "bad")])
    assert exit_info.value.code == 2 and "unknown window 'mediastinum'" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
