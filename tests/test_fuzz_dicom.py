"""Property-based fuzzing of the DICOM reader: bit flips, truncation, wrong VRs, absurd dimensions, relabelling.

Property: :func:`tomo.io.dicom_read.find_series` never raises (but FileNotFoundError), and
:func:`tomo.io.dicom_read.read_series` returns a consistent CT volume or raises
:class:`DicomReadError`; a file made from an MR image is never read as CT, whatever labels it
carries; a CT file (CT SOP class, Modality CT) carrying stray MR attributes, as real scanners
write them, is always read with the same HU. Each example runs under an address-space limit and
a deadline. Inputs are pydicom's own test files (``CT_small.dcm``, ``MR_small.dcm``), so no data
folder is needed.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.data import get_testdata_file
from pydicom.uid import RLELossless

from tests.memory_cap import memory_limit
from tomo.io.dicom_read import DicomReadError, find_series, read_series

EXAMPLE_MEMORY = 1 << 30
FUZZ = settings(
    max_examples=50, deadline=3000, suppress_health_check=[HealthCheck.function_scoped_fixture], derandomize=True
)
CT_SOP = "1.2.840.10008.5.1.4.1.1.2"


def _local(name: str) -> str:
    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"pydicom test file {name} not installed")
    return path


def _bytes(ds) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


CT = open(_local("CT_small.dcm"), "rb").read()
MR = open(_local("MR_small.dcm"), "rb").read()
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    _rle = pydicom.dcmread(io.BytesIO(CT))
    _rle.compress(RLELossless)
    CT_RLE = _bytes(_rle)
SOURCES = {"ct": CT, "ct_rle": CT_RLE, "mr": MR}


def _check(path, from_mr: bool) -> None:
    """The property, for one file."""
    with memory_limit(EXAMPLE_MEMORY), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scan = find_series(path, read_pixels=True)
        if from_mr:
            assert not any(s.readable for s in scan), [s.modality for s in scan]
        try:
            vol = read_series(path)
        except DicomReadError as exc:
            assert str(exc)
            return
    assert not from_mr, "an MR image was read as CT"
    assert vol.hu.dtype == np.float32 and vol.hu.ndim == 3 and np.isfinite(vol.hu).all()
    rows, cols = int(vol.header.Rows), int(vol.header.Columns)
    assert vol.hu.shape[1:] == (rows, cols) and len(vol.files) == vol.hu.shape[0]


def _element_offsets(blob: bytes) -> list[tuple[int, int]]:
    """(VR offset, 2 or 8 header bytes after the tag) of each top-level element of an explicit-VR file."""
    ds = pydicom.dcmread(io.BytesIO(blob), defer_size=None)
    out = []
    for elem in ds._dict.values():
        tell = getattr(elem, "value_tell", None)
        vr = getattr(elem, "VR", None)
        if tell is None or vr is None:
            continue
        long_vr = vr in ("OB", "OW", "OF", "OD", "OL", "OV", "SQ", "UT", "UN", "UC", "UR")
        out.append((tell - (8 if long_vr else 4), len(out)))
    return out


_OFFSETS = {k: _element_offsets(v) for k, v in SOURCES.items() if k != "ct_rle"}
_VRS = [
    vr.encode()
    for vr in (
        "AE",
        "AS",
        "CS",
        "DA",
        "DS",
        "FD",
        "FL",
        "IS",
        "LO",
        "OB",
        "OW",
        "SH",
        "SL",
        "SQ",
        "SS",
        "UI",
        "UL",
        "UN",
        "US",
        "UT",
        "XX",
        "\x00\x00",
    )
]


@FUZZ
@given(source=st.sampled_from(sorted(SOURCES)), data=st.data())
def test_bit_flips(tmp_path, source, data):
    blob = bytearray(SOURCES[source])
    for _ in range(data.draw(st.integers(1, 8))):
        pos, bit = data.draw(st.integers(0, len(blob) - 1)), data.draw(st.integers(0, 7))
        blob[pos] ^= 1 << bit
    (tmp_path / "f.dcm").write_bytes(bytes(blob))
    _check(tmp_path / "f.dcm", from_mr=source == "mr")


@FUZZ
@given(source=st.sampled_from(sorted(SOURCES)), fraction=st.floats(0, 1, exclude_max=True))
def test_truncation(tmp_path, source, fraction):
    blob = SOURCES[source]
    (tmp_path / "t.dcm").write_bytes(blob[: int(fraction * len(blob))])
    _check(tmp_path / "t.dcm", from_mr=source == "mr")


@FUZZ
@given(source=st.sampled_from(sorted(_OFFSETS)), data=st.data())
def test_wrong_vrs(tmp_path, source, data):
    blob = bytearray(SOURCES[source])
    offsets = _OFFSETS[source]
    for _ in range(data.draw(st.integers(1, 4))):
        at, _ = data.draw(st.sampled_from(offsets))
        blob[at : at + 2] = data.draw(st.sampled_from(_VRS))
    (tmp_path / "v.dcm").write_bytes(bytes(blob))
    _check(tmp_path / "v.dcm", from_mr=source == "mr")


@FUZZ
@given(
    source=st.sampled_from(sorted(SOURCES)),
    rows=st.integers(0, 65535),
    cols=st.integers(0, 65535),
    frames=st.one_of(st.none(), st.integers(-3, 10**12)),
    bits=st.sampled_from([None, 1, 8, 12, 16, 32, 64]),
)
def test_absurd_dimensions(tmp_path, source, rows, cols, frames, bits):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(io.BytesIO(SOURCES[source]))
        ds.Rows, ds.Columns = rows, cols
        if frames is not None:
            ds.NumberOfFrames = str(frames)
        if bits is not None:
            ds.BitsAllocated = bits
        ds.save_as(tmp_path / "d.dcm", enforce_file_format=True)
    _check(tmp_path / "d.dcm", from_mr=source == "mr")


@FUZZ
@given(
    modality=st.sampled_from([None, "CT", "ct", "MR", "OT", ""]),
    sop=st.sampled_from([None, CT_SOP, "1.2.3"]),
    meta_sop=st.sampled_from([None, CT_SOP, "keep"]),
    drop=st.sets(
        st.sampled_from(["EchoTime", "RepetitionTime", "ScanningSequence", "ImagingFrequency", "MagneticFieldStrength"])
    ),
)
def test_relabelled_mr_is_never_ct(tmp_path, modality, sop, meta_sop, drop):
    """Any mix of CT labels on an MR image; MR attributes partly removed."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(io.BytesIO(MR))
        for keyword, value in (("Modality", modality), ("SOPClassUID", sop)):
            if value is None:
                ds.pop(keyword, None)
            else:
                setattr(ds, keyword, value)
        if meta_sop is None:
            ds.file_meta.pop("MediaStorageSOPClassUID", None)
        elif meta_sop != "keep":
            ds.file_meta.MediaStorageSOPClassUID = meta_sop
        for keyword in drop:
            ds.pop(keyword, None)
        ds.save_as(tmp_path / "r.dcm", enforce_file_format=False)
    every_mr_mark_gone = drop >= {
        "EchoTime",
        "RepetitionTime",
        "ScanningSequence",
        "ImagingFrequency",
        "MagneticFieldStrength",
    }
    fully_relabelled = (
        modality in (None, "CT", "ct")
        and sop in (None, CT_SOP)
        and meta_sop != "keep"
        and (modality, sop) != (None, None)
    )
    # an MR image stripped of every MR attribute and every MR label is indistinguishable from CT
    _check(tmp_path / "r.dcm", from_mr=not (every_mr_mark_gone and fully_relabelled))


_MR_PHYSICAL = {
    "EchoTime": st.floats(0.5, 300),
    "RepetitionTime": st.floats(1, 9000),
    "MagneticFieldStrength": st.sampled_from([0.5, 1.5, 3.0]),
    "ImagingFrequency": st.floats(10, 300),
    "FlipAngle": st.floats(1, 180),
}
_MR_DESCRIPTIVE = {
    "ScanningSequence": st.sampled_from(["RM", "SE", "GR", ""]),
    "SequenceVariant": st.sampled_from(["NONE", "SK", ""]),
    "MRAcquisitionType": st.sampled_from(["2D", "3D"]),
    "SequenceName": st.sampled_from(["", "*se2d1"]),
    "EchoNumbers": st.integers(0, 3),
}
_XRAY = (
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
)
_CT_HU = {}


@FUZZ
@given(
    source=st.sampled_from(["ct", "ct_rle"]),
    physical=st.dictionaries(st.sampled_from(sorted(_MR_PHYSICAL)), st.just(None)),
    descriptive=st.dictionaries(st.sampled_from(sorted(_MR_DESCRIPTIVE)), st.just(None)),
    keep_xray=st.booleans(),
    data=st.data(),
)
def test_labelled_ct_with_stray_mr_attributes_is_read(tmp_path, source, physical, descriptive, keep_xray, data):
    """A CT Image Storage file with Modality CT is read, with the same HU, whatever MR attributes
    it carries as long as it has its X-ray attributes; without them, with any MR sequence
    attributes and at most one physical MR value."""
    if not keep_xray:
        physical = dict(list(physical.items())[:1])
    strays = {k: data.draw(_MR_PHYSICAL[k]) for k in physical} | {k: data.draw(_MR_DESCRIPTIVE[k]) for k in descriptive}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(io.BytesIO(SOURCES[source]))
        for keyword, value in strays.items():
            setattr(ds, keyword, value)
        if not keep_xray:
            for keyword in _XRAY:
                ds.pop(keyword, None)
        ds.save_as(tmp_path / "s.dcm", enforce_file_format=True)
        if source not in _CT_HU:
            (tmp_path / "plain.dcm").write_bytes(SOURCES[source])
            _CT_HU[source] = read_series(tmp_path / "plain.dcm").hu
        vol = read_series(tmp_path / "s.dcm")
    np.testing.assert_array_equal(vol.hu, _CT_HU[source])
