"""DICOM reading and writing without the shared data folder: pydicom's bundled CT objects and
variants of them built in ``tmp_path`` (multi-slice series, damaged files, gantry tilt, an
Enhanced CT multi-frame object, other modalities).

Expected HU come from the stored bytes (``stored * RescaleSlope + RescaleIntercept``) or, for
compressed files, from pydicom's own decoder; never from the reader under test.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from tomo.io.dicom_read import DicomReadError, SeveralSeriesError, find_series, read_series
from tomo.io.dicom_write import write_series
from tomo.io.volume import CTVolume, VolumeReadError, read_volume

ENHANCED_CT = "1.2.840.10008.5.1.4.1.1.2.1"
DERIVATION = "test derivation"


def _bundled(name: str) -> Path:
    """A test file that ships inside the pydicom wheel (no download)."""
    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"pydicom does not ship {name}")
    return Path(path)


@pytest.fixture(scope="module")
def ct_small() -> Path:
    """128 x 128 axial CT, explicit VR little endian, slope 1, intercept -1024."""
    return _bundled("CT_small.dcm")


def _stored(ds: Dataset) -> np.ndarray:
    """Stored values of an uncompressed little-endian single-frame file, straight from the bytes."""
    dtype = "<i2" if int(ds.PixelRepresentation) == 1 else "<u2"
    return np.frombuffer(ds.PixelData, dtype=dtype).reshape(int(ds.Rows), int(ds.Columns))


def _hu(ds: Dataset) -> np.ndarray:
    return _stored(ds).astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)


def _write_series(
    src: Path,
    folder: Path,
    positions,
    *,
    orientation=None,
    offsets=None,
    tilt_deg: float | None = None,
    series_uid: str | None = None,
    names=None,
) -> list[np.ndarray]:
    """Copies of ``src`` as one series: new UIDs, the given positions [n, 3] mm, stored values
    raised by ``offsets[k]`` so slices are told apart. Returns each file's expected HU."""
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid()
    offsets = offsets if offsets is not None else [10 * k for k in range(len(positions))]
    names = names or [f"s{k:02d}.dcm" for k in range(len(positions))]
    expected = []
    for k, (pos, offset) in enumerate(zip(positions, offsets)):
        ds = pydicom.dcmread(src)
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [float(v) for v in pos]
        if orientation is not None:
            ds.ImageOrientationPatient = [float(v) for v in orientation]
        if tilt_deg is not None:
            ds.GantryDetectorTilt = tilt_deg
        ds.PixelData = (_stored(ds) + offset).astype("<i2").tobytes()
        ds.save_as(folder / names[k])
        expected.append(_hu(ds))
    return expected


# ----------------------------------------------------------------------------- single files


def test_bundled_ct_small_read_in_hu(ct_small):
    ds = pydicom.dcmread(ct_small)
    vol = read_series(ct_small)
    assert isinstance(vol, CTVolume) and vol.hu.dtype == np.float32 and vol.hu.shape == (1, 128, 128)
    np.testing.assert_array_equal(vol.hu[0], _hu(ds).astype(np.float32))
    assert vol.pixel_spacing_mm == pytest.approx([float(v) for v in ds.PixelSpacing])
    np.testing.assert_allclose(vol.positions, [[float(v) for v in ds.ImagePositionPatient]])
    assert vol.orientation == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
    assert vol.slice_spacing_mm is None and vol.gantry_tilt_deg == 0.0 and not vol.irregular_spacing
    assert vol.series_uid == ds.SeriesInstanceUID and vol.study_uid == ds.StudyInstanceUID
    assert vol.header is not None and "PixelData" not in vol.header
    assert vol.transfer_syntaxes == ["Explicit VR Little Endian"]
    # read_volume dispatches a DICOM path to read_series
    np.testing.assert_array_equal(read_volume(ct_small).hu, vol.hu)


def test_find_series_on_one_file(ct_small):
    (info,) = find_series(ct_small, read_pixels=True)
    ds = pydicom.dcmread(ct_small)
    hu = _hu(ds)
    assert info.readable and info.modality == "CT" and info.n_slices == 1
    assert (info.rows, info.cols) == (128, 128)
    assert info.hu_range == (pytest.approx(hu.min()), pytest.approx(hu.max()))
    assert info.files == [ct_small] and info.slice_spacing_mm is None
    assert find_series(ct_small)[0].hu_range is None  # pixels only read on request


def test_bundled_jpeg2000_ct_files(ct_small):
    lossy = read_series(_bundled("693_J2KI.dcm"))  # JPEG 2000 irreversible, LossyImageCompression 01
    assert lossy.hu.shape == (1, 512, 512)
    assert any("lossy compression" in w for w in lossy.warnings)
    # JPEG 2000 lossless with a header/codestream sign mismatch and a real 22 degree gantry tilt
    path = _bundled("J2K_pixelrep_mismatch.dcm")
    ds = pydicom.dcmread(path)
    vol = read_series(path)
    np.testing.assert_array_equal(vol.hu[0], ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept))
    assert vol.hu.min() < 0  # signed values kept (not wrapped to large positive numbers)
    assert vol.gantry_tilt_deg == pytest.approx(-22.0)
    assert any(w.startswith("gantry tilt: GantryDetectorTilt -22") for w in vol.warnings)
    # the tilt is also in the image plane: the column direction is 22 degrees off the y axis
    assert np.degrees(np.arccos(vol.orientation[4])) == pytest.approx(22.0, abs=0.01)


# ----------------------------------------------------------------------------- series


@pytest.mark.parametrize("orientation", [(1, 0, 0, 0, 1, 0), (-1, 0, 0, 0, 1, 0)], ids=["normal+z", "normal-z"])
def test_series_ordered_along_the_slice_normal(ct_small, tmp_path, orientation):
    z = np.array([0.0, 2.5, 5.0, 7.5, 10.0])
    positions = [(-80.0, -90.0, zk) for zk in z]
    # file names in a shuffled order: only the positions may decide the order
    names = [f"{n}.dcm" for n in ("c", "a", "e", "b", "d")]
    expected = _write_series(ct_small, tmp_path / "s", positions, orientation=orientation, names=names)
    vol = read_series(tmp_path / "s")
    normal = np.cross(orientation[:3], orientation[3:])
    order = np.argsort(np.array(positions) @ normal)  # increasing distance along the normal
    assert vol.hu.shape == (5, 128, 128)
    for k, i in enumerate(order):
        np.testing.assert_array_equal(vol.hu[k], expected[i].astype(np.float32))
    np.testing.assert_allclose(vol.positions, np.array(positions)[order])
    assert vol.slice_spacing_mm == pytest.approx(2.5) and not vol.irregular_spacing
    assert vol.gantry_tilt_deg == 0.0 and not any("tilt" in w for w in vol.warnings)
    assert [f.name for f in vol.files] == [names[i] for i in order]
    (info,) = find_series(tmp_path / "s")
    assert info.n_slices == 5 and info.slice_spacing_mm == pytest.approx(2.5)
    np.testing.assert_array_equal(read_volume(tmp_path / "s").hu, vol.hu)


def test_irregular_spacing_read_with_a_warning(ct_small, tmp_path):
    z = [0.0, 2.5, 5.0, 10.0]
    _write_series(ct_small, tmp_path, [(0.0, 0.0, zk) for zk in z])
    vol = read_series(tmp_path)
    assert vol.irregular_spacing and vol.slice_spacing_mm == pytest.approx(2.5)  # the median step
    assert any(w.startswith("irregular slice spacing: plane distances 2.500 to 5.000 mm") for w in vol.warnings)
    np.testing.assert_allclose(vol.positions[:, 2], z)  # the true geometry stays available


def test_series_that_cannot_be_ordered_are_refused(ct_small, tmp_path):
    _write_series(ct_small, tmp_path / "dup", [(0, 0, 0), (0, 0, 0), (0, 0, 2)])
    (info,) = find_series(tmp_path / "dup")
    assert not info.readable and "2 images share a slice position" in info.problems[0]
    with pytest.raises(DicomReadError, match="share a slice position"):
        read_series(tmp_path / "dup")
    _write_series(ct_small, tmp_path / "nopos", [(0, 0, 0), (0, 0, 2)])
    for f in (tmp_path / "nopos").iterdir():
        ds = pydicom.dcmread(f)
        del ds.ImagePositionPatient
        ds.save_as(f)
    with pytest.raises(DicomReadError, match="ImagePositionPatient/ImageOrientationPatient missing"):
        read_series(tmp_path / "nopos")
    _write_series(ct_small, tmp_path / "mixed", [(0, 0, 0), (0, 0, 2)])
    coronal = sorted((tmp_path / "mixed").iterdir())[1]
    ds = pydicom.dcmread(coronal)
    ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
    ds.save_as(coronal)
    with pytest.raises(DicomReadError, match="mixed slice orientations"):
        read_series(tmp_path / "mixed")


def test_two_series_listed_and_chosen_by_uid(ct_small, tmp_path):
    uid_a, uid_b = generate_uid(), generate_uid()
    _write_series(ct_small, tmp_path / "a", [(0, 0, 0), (0, 0, 3)], series_uid=uid_a)
    _write_series(ct_small, tmp_path / "b", [(0, 0, 0)], series_uid=uid_b)
    scan = find_series(tmp_path)
    assert sorted(s.uid for s in scan) == sorted([uid_a, uid_b])
    with pytest.raises(DicomReadError, match="holds 2 CT series") as info:
        read_series(tmp_path)
    assert uid_a in str(info.value) and uid_b in str(info.value) and "series_uid=" in str(info.value)
    assert read_series(tmp_path, series_uid=uid_a).hu.shape == (2, 128, 128)
    with pytest.raises(DicomReadError, match="not found"):
        read_series(tmp_path, series_uid="1.2.3")


def _single_slice_series(ct_small: Path, folder: Path, heights) -> list[np.ndarray]:
    """One series of one slice at each height (mm), as some exporters write a scan; each slice's
    stored values raised by 10 * its index so the order can be checked. Expected HU by height order."""
    expected = []
    for k, z in enumerate(heights):
        expected += _write_series(ct_small, folder, [(0, 0, z)], offsets=[10 * k], names=[f"slice{k:02d}.dcm"])
    return [expected[k] for k in np.argsort(heights)]


def test_single_slice_series_stacked_into_one_scan(ct_small, tmp_path):
    heights = [5.0, 0.0, 7.5, 2.5]  # file order is not slice order
    expected = _single_slice_series(ct_small, tmp_path / "scan", heights)
    with pytest.raises(SeveralSeriesError) as info:
        read_series(tmp_path / "scan")
    message = str(info.value)
    assert "holds 4 CT series" in message and "series_uid=UID" in message and "stack_series=True" in message
    vol = read_series(tmp_path / "scan", stack_series=True)
    assert vol.hu.shape == (4, 128, 128) and vol.slice_spacing_mm == pytest.approx(2.5)
    np.testing.assert_array_equal(vol.hu, np.stack(expected).astype(np.float32))
    np.testing.assert_allclose(vol.positions[:, 2], sorted(heights))
    assert vol.series_uid is None and any("4 series stacked" in w for w in vol.warnings)
    assert read_volume(tmp_path / "scan", stack_series=True).hu.shape == (4, 128, 128)
    with pytest.raises(DicomReadError, match="not both"):
        read_series(tmp_path / "scan", series_uid=vol.header.SeriesInstanceUID, stack_series=True)


def test_stacking_refuses_series_that_are_not_one_scan(ct_small, tmp_path):
    _single_slice_series(ct_small, tmp_path / "frames", [0.0, 2.0, 4.0])
    other = sorted((tmp_path / "frames").iterdir())[0]
    ds = pydicom.dcmread(other)
    ds.FrameOfReferenceUID = generate_uid()
    ds.save_as(other)
    with pytest.raises(DicomReadError, match="3 CT series .* 2 frames of reference"):
        read_series(tmp_path / "frames", stack_series=True)
    _single_slice_series(ct_small, tmp_path / "same", [0.0, 0.0, 4.0])
    with pytest.raises(DicomReadError, match="2 images share a slice position"):
        read_series(tmp_path / "same", stack_series=True)
    _single_slice_series(ct_small, tmp_path / "mixed", [0.0, 2.0])
    coronal = sorted((tmp_path / "mixed").iterdir())[1]
    ds = pydicom.dcmread(coronal)
    ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
    ds.save_as(coronal)
    with pytest.raises(DicomReadError, match="mixed slice orientations"):
        read_series(tmp_path / "mixed", stack_series=True)
    with pytest.raises(ValueError, match="DICOM input only"):
        read_volume(tmp_path / "v.npz", stack_series=True)


def test_simulate_names_its_own_options_for_several_series(ct_small, tmp_path, capsys):
    from tomo.cli.main import main

    _single_slice_series(ct_small, tmp_path / "scan", [0.0, 2.5, 5.0])
    argv = ["simulate", str(tmp_path / "scan"), "--config", "parallel-30", "--grid", "32"]
    assert main([*argv, "--out", str(tmp_path / "a.npz")]) == 2
    err = capsys.readouterr().err
    assert "--series UID" in err and "--stack-series" in err and "series_uid" not in err, err
    assert not (tmp_path / "a.npz").exists()
    assert main([*argv, "--stack-series", "--out", str(tmp_path / "b.npz")]) == 0
    with np.load(tmp_path / "b.npz") as sino:
        assert sino["sinogram"].shape[0] == 3  # the three single-slice series, one scan
    # reconstruct --reference on the same folder: the same options, the same stacking
    recon = ["reconstruct", str(tmp_path / "b.npz"), "--method", "fbp", "--reference", str(tmp_path / "scan")]
    assert main([*recon, "--no-preview", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "--series UID" in err and "--stack-series" in err and "series_uid" not in err, err
    assert main([*recon, "--stack-series", "--no-preview", "--out", str(tmp_path / "out")]) == 0
    assert read_series(tmp_path / "out").hu.shape[0] == 3


# ----------------------------------------------------------------------------- gantry tilt


@pytest.mark.parametrize("header_tilt", [None, -15.0], ids=["measured", "header"])
def test_gantry_tilted_series(ct_small, tmp_path, header_tilt):
    """Tilt t about the x axis: image planes tilted, couch steps d along z (a sheared volume)."""
    t, d = np.radians(15.0), 3.0
    orientation = (1.0, 0.0, 0.0, 0.0, np.cos(t), -np.sin(t))
    positions = [(-80.0, -90.0, k * d) for k in range(4)]
    _write_series(ct_small, tmp_path, positions, orientation=orientation, tilt_deg=header_tilt)
    vol = read_series(tmp_path)
    # planes are d cos(t) apart along the normal; the positions step t off the normal
    assert vol.slice_spacing_mm == pytest.approx(d * np.cos(t), rel=1e-5)
    expected_tilt = 15.0 if header_tilt is None else header_tilt  # header value wins, sign kept
    assert vol.gantry_tilt_deg == pytest.approx(expected_tilt, abs=1e-3)
    assert any(w.startswith("gantry tilt: slice positions step 15.00 deg off the slice normal") for w in vol.warnings)
    np.testing.assert_allclose(vol.positions, positions, atol=1e-5)


def test_tilted_series_survives_a_write_read_round_trip(ct_small, tmp_path):
    t = np.radians(20.0)
    orientation = (1.0, 0.0, 0.0, 0.0, np.cos(t), -np.sin(t))
    positions = [(-80.0, -90.0, 2.0 * k) for k in range(3)]
    _write_series(ct_small, tmp_path / "src", positions, orientation=orientation)
    src = read_series(tmp_path / "src")
    write_series(
        src.hu,
        tmp_path / "out",
        src,
        pixel_spacing_mm=src.pixel_spacing_mm,
        description="round trip",
        derivation=DERIVATION,
    )
    back = read_series(tmp_path / "out")
    np.testing.assert_array_equal(back.hu, src.hu)
    np.testing.assert_allclose(back.positions, src.positions, atol=1e-4)
    np.testing.assert_allclose(back.orientation, src.orientation, atol=1e-6)
    assert back.gantry_tilt_deg == pytest.approx(20.0, abs=1e-2)  # measured from the positions


# ----------------------------------------------------------------------------- damaged files


def test_truncated_files_refused_with_a_reason(ct_small, tmp_path):
    data = ct_small.read_bytes()
    pixel = pydicom.dcmread(ct_small, defer_size=1024).get_item("PixelData", keep_deferred=True)
    pixel_end = pixel.value_tell + pixel.length
    cases = {
        0: "not a DICOM file",
        100: "not a DICOM file",  # inside the preamble
        400: "truncated or corrupt file (no SOPClassUID or Modality)",
        1000: "truncated or corrupt CT header",
        pixel.value_tell + 100: "truncated file (pixel data runs past the end of the file)",
        pixel_end - 1: "truncated file (pixel data runs past the end of the file)",
    }
    for n, reason in cases.items():
        path = tmp_path / f"cut{n}.dcm"
        path.write_bytes(data[:n])
        with pytest.raises(DicomReadError, match=re.escape(reason)):
            read_series(path)
    scan = find_series(tmp_path)
    assert len(scan) == 0 and len(scan.skipped) == len(cases)
    # elements after the pixel data are not needed: cutting them loses no image
    assert pixel_end < len(data)
    (tmp_path / "tail.dcm").write_bytes(data[:pixel_end])
    np.testing.assert_array_equal(read_series(tmp_path / "tail.dcm").hu, read_series(ct_small).hu)


def test_bit_flip_in_pixel_data_changes_one_value(ct_small, tmp_path):
    """DICOM has no checksum: a flipped pixel bit is read, and changes exactly one HU value."""
    data = bytearray(ct_small.read_bytes())
    tell = pydicom.dcmread(ct_small, defer_size=1024).get_item("PixelData", keep_deferred=True).value_tell
    pixel = 37 * 128 + 91
    data[tell + 2 * pixel + 1] ^= 0x04  # bit 10 of a little-endian int16: +-1024 HU
    (tmp_path / "flip.dcm").write_bytes(bytes(data))
    diff = read_series(tmp_path / "flip.dcm").hu - read_series(ct_small).hu
    assert np.count_nonzero(diff) == 1 and abs(diff.reshape(-1)[pixel]) == 1024


def test_bit_flips_in_the_header_read_or_refused_never_crash(ct_small, tmp_path):
    data = ct_small.read_bytes()
    tell = pydicom.dcmread(ct_small, defer_size=1024).get_item("PixelData", keep_deferred=True).value_tell
    rng = np.random.default_rng(0)
    outcomes = {"read": 0, "refused": 0}
    for trial in range(60):
        damaged = bytearray(data)
        damaged[int(rng.integers(132, tell))] ^= 1 << int(rng.integers(8))  # file meta and header
        path = tmp_path / f"flip{trial}.dcm"
        path.write_bytes(bytes(damaged))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns about odd values it still reads
            try:
                vol = read_series(path)
            except DicomReadError as exc:  # any other exception type fails the test
                assert str(path) in str(exc)
                outcomes["refused"] += 1
                continue
        assert vol.hu.shape == (1, 128, 128) and vol.hu.dtype == np.float32
        outcomes["read"] += 1
        path.unlink()
    assert outcomes["read"] > 0 and outcomes["refused"] > 0  # both paths were exercised


# ----------------------------------------------------------------------------- other objects


def test_other_modalities_refused(ct_small, tmp_path):
    with pytest.raises(DicomReadError, match=re.escape("not CT (modality MR, MR Image Storage)")):
        read_series(_bundled("MR_small.dcm"))
    relabelled = {
        "ct_says_mr.dcm": (ct_small, {"Modality": "MR"}, "not CT (modality MR, CT Image Storage)"),
        "mr_says_ct.dcm": (
            _bundled("MR_small.dcm"),
            {"Modality": "CT"},
            "not CT (SOP class MR Image Storage is not a CT image class, though Modality is CT)",
        ),
        # an MR acquisition in all but name: CT labels, MR physics, no X-ray exposure at all
        "ct_labels_on_mr_physics.dcm": (
            ct_small,
            {"EchoTime": 12.0, "RepetitionTime": 500.0, "MagneticFieldStrength": 1.5, **_NO_XRAY},
            "not CT (labelled CT but carries MR attributes: MagneticFieldStrength, EchoTime, RepetitionTime; "
            "no X-ray attributes)",
        ),
        "no_modality_mr_physics.dcm": (
            ct_small,
            {"Modality": None, "EchoTime": 12.0, "ScanningSequence": "SE", **_NO_XRAY},
            "not CT (no Modality but carries MR attributes: EchoTime, ScanningSequence; no X-ray attributes)",
        ),
    }
    for name, (src, changes, reason) in relabelled.items():
        ds = pydicom.dcmread(src)
        for keyword, value in changes.items():
            if value is None:
                ds.pop(keyword, None)
            else:
                setattr(ds, keyword, value)
        ds.save_as(tmp_path / name)
        with pytest.raises(DicomReadError, match=re.escape(reason)):
            read_series(tmp_path / name)
    assert len(find_series(tmp_path).skipped) == len(relabelled)


#: CT_small's X-ray exposure attributes, removed (a header with no evidence of an X-ray tube)
_NO_XRAY = dict.fromkeys(
    [
        "KVP",
        "XRayTubeCurrent",
        "Exposure",
        "ExposureTime",
        "DataCollectionDiameter",
        "DistanceSourceToDetector",
        "DistanceSourceToPatient",
        "FilterType",
        "FocalSpots",
        "ConvolutionKernel",
    ]
)


def test_stray_mr_attribute_never_vetoes_a_labelled_ct(ct_small, tmp_path):
    """A CT Image Storage file with Modality CT reads whatever one MR attribute it carries, and
    with the X-ray attributes of a real scan, whatever MR attributes it carries."""
    strays = {
        "echo_time": {"EchoTime": 12.0},
        "all_of_mr_but_xray_kept": {
            "EchoTime": 12.0,
            "RepetitionTime": 500.0,
            "MagneticFieldStrength": 1.5,
            "ImagingFrequency": 63.9,
            "ScanningSequence": "SE",
        },
        "one_physical_no_xray": {"EchoTime": 12.0, "ScanningSequence": "SE", **_NO_XRAY},
        "sequence_attributes_no_xray": {
            "ScanningSequence": "RM",
            "SequenceVariant": "NONE",
            "EchoNumbers": 1,
            **_NO_XRAY,
        },
        "zeros_are_no_evidence": {
            "EchoTime": 0.0,
            "RepetitionTime": 0.0,
            "MagneticFieldStrength": "",
            "ScanningSequence": "RM",
            **_NO_XRAY,
        },
    }
    expected = _hu(pydicom.dcmread(ct_small)).astype(np.float32)
    for name, changes in strays.items():
        ds = pydicom.dcmread(ct_small)
        for keyword, value in changes.items():
            if value is None:
                ds.pop(keyword, None)
            else:
                setattr(ds, keyword, value)
        ds.save_as(tmp_path / f"{name}.dcm")
        vol = read_series(tmp_path / f"{name}.dcm")
        np.testing.assert_array_equal(vol.hu[0], expected, err_msg=name)
    scan = find_series(tmp_path)  # one SOP instance in five copies: four skipped as duplicates, none as not CT
    assert len(scan) == 1 and scan[0].readable and all(s.reason.startswith("duplicate") for s in scan.skipped)


def _enhanced_ct(ct_small: Path, z_frames, slope_per_frame=None) -> tuple[Dataset, np.ndarray]:
    """An Enhanced CT Image Storage object: frames of CT_small at heights ``z_frames`` mm,
    geometry and rescale in the shared functional groups, positions per frame."""
    src = pydicom.dcmread(ct_small)
    base = _stored(src).astype(np.int16)
    stored = np.stack([base + 7 * k for k in range(len(z_frames))])
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = ENHANCED_CT, generate_uid()
    ds.Modality, ds.SeriesInstanceUID, ds.StudyInstanceUID = "CT", generate_uid(), src.StudyInstanceUID
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL", "NONE"]
    ds.Rows, ds.Columns, ds.NumberOfFrames = 128, 128, len(z_frames)
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    measures, orient, rescale = Dataset(), Dataset(), Dataset()
    measures.PixelSpacing, measures.SliceThickness = [0.5, 0.75], 2.0
    orient.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    rescale.RescaleSlope, rescale.RescaleIntercept, rescale.RescaleType = 1, -1024, "HU"
    shared = Dataset()
    shared.PixelMeasuresSequence, shared.PlaneOrientationSequence = [measures], [orient]
    shared.PixelValueTransformationSequence = [rescale]
    ds.SharedFunctionalGroupsSequence = [shared]
    per_frame = []
    for k, z in enumerate(z_frames):
        item, plane = Dataset(), Dataset()
        plane.ImagePositionPatient = [-32.0, -48.0, float(z)]
        item.PlanePositionSequence = [plane]
        if slope_per_frame is not None and slope_per_frame[k] is not None:
            own = Dataset()
            own.RescaleSlope, own.RescaleIntercept, own.RescaleType = slope_per_frame[k], -1024, "HU"
            item.PixelValueTransformationSequence = [own]
        per_frame.append(item)
    ds.PerFrameFunctionalGroupsSequence = per_frame
    ds.PixelData = stored.astype("<i2").tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = ENHANCED_CT, ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds, stored


def test_enhanced_ct_multiframe(ct_small, tmp_path):
    z = [6.0, 0.0, 3.0]  # frames stored out of order
    ds, stored = _enhanced_ct(ct_small, z, slope_per_frame=[None, 2, None])
    ds.save_as(tmp_path / "enhanced.dcm", enforce_file_format=True)
    vol = read_series(tmp_path / "enhanced.dcm")
    assert vol.hu.shape == (3, 128, 128)
    order = np.argsort(z)
    slopes = [1.0, 2.0, 1.0]  # the per-frame rescale of frame 1 overrides the shared one
    for k, i in enumerate(order):
        np.testing.assert_array_equal(vol.hu[k], (stored[i] * slopes[i] - 1024.0).astype(np.float32))
    assert vol.pixel_spacing_mm == (0.5, 0.75) and vol.slice_spacing_mm == pytest.approx(3.0)
    np.testing.assert_allclose(vol.positions[:, 2], sorted(z))
    (info,) = find_series(tmp_path)
    assert info.n_slices == 3 and info.files == [tmp_path / "enhanced.dcm"]


def test_enhanced_ct_with_too_little_pixel_data_refused(ct_small, tmp_path):
    ds, _ = _enhanced_ct(ct_small, [0.0, 3.0])
    ds.NumberOfFrames = 40  # the header promises more frames than the pixel data holds
    ds.save_as(tmp_path / "short.dcm", enforce_file_format=True)
    with pytest.raises(DicomReadError, match="header promises 128 x 128 x 40 frames"):
        read_series(tmp_path / "short.dcm")


# ----------------------------------------------------------------------------- writing


def test_write_half_resolution_keeps_patient_study_and_field_of_view(ct_small, tmp_path):
    ref = read_series(ct_small)
    small = ref.hu[:, ::2, ::2]
    spacing = (2 * ref.pixel_spacing_mm[0], 2 * ref.pixel_spacing_mm[1])
    (path,) = write_series(
        small, tmp_path / "out", ref, pixel_spacing_mm=spacing, description="half", derivation=DERIVATION
    )
    back = read_series(path)
    np.testing.assert_array_equal(back.hu, small)  # integer HU are stored exactly
    assert back.pixel_spacing_mm == pytest.approx(spacing)
    # the image centre stays: the first pixel centre moves by half a new minus half an old pixel
    shift = (spacing[1] - ref.pixel_spacing_mm[1]) / 2, (spacing[0] - ref.pixel_spacing_mm[0]) / 2
    np.testing.assert_allclose(back.positions[0, :2], ref.positions[0, :2] + shift, atol=1e-5)
    h = back.header
    for keyword in ("PatientName", "PatientID", "StudyInstanceUID"):
        assert h.get(keyword) == ref.header.get(keyword), keyword
    assert back.series_uid != ref.series_uid and h.DerivationDescription == DERIVATION
    assert list(h.ImageType[:2]) == ["DERIVED", "SECONDARY"] and h.RescaleType == "HU"


def test_write_refuses_the_reference_folder_and_a_full_folder(ct_small, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "ct.dcm").write_bytes(ct_small.read_bytes())
    ref = read_series(src)
    kwargs = dict(pixel_spacing_mm=ref.pixel_spacing_mm, description="x", derivation=DERIVATION)
    with pytest.raises(ValueError, match="holds the reference"):
        write_series(ref.hu, src, ref, overwrite=True, **kwargs)
    assert [p.name for p in src.iterdir()] == ["ct.dcm"]
    write_series(ref.hu, tmp_path / "out", ref, **kwargs)
    with pytest.raises(FileExistsError, match="not empty"):
        write_series(ref.hu, tmp_path / "out", ref, **kwargs)


def test_read_volume_refusals(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_volume(tmp_path / "absent")
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(VolumeReadError, match="not a DICOM file"):
        read_volume(tmp_path)
    np.savez(tmp_path / "v.npz", hu=np.zeros((2, 4, 4)))
    with pytest.raises(VolumeReadError, match="spacing_mm"):
        read_volume(tmp_path / "v.npz")
