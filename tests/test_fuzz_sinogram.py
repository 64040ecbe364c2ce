"""Property-based fuzzing of the sinogram reader: damaged bytes, wrong fields, absurd shapes.

Property: :func:`tomo.io.sinogram.load_sinogram` (and :func:`open_sinogram` with streaming) either
returns a valid file or raises :class:`SinogramFormatError`; no other exception, no allocation
beyond a fixed budget (an address-space limit is set around every example), no example slower
than its deadline.
"""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from operators.geometry import ParallelBeam2D

#: extra address space an example may use beyond what the test process already maps
from tests.memory_cap import memory_limit
from tomo.io.sinogram import SinogramFormatError, load_sinogram, open_sinogram, save_sinogram

EXAMPLE_MEMORY = 1 << 30
FUZZ = settings(
    max_examples=60, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture], derandomize=True
)


def _valid_bytes() -> bytes:
    geometry = ParallelBeam2D(
        image_shape=(8, 8),
        pixel_spacing_mm=1.0,
        angles=np.linspace(0, np.pi, 6, endpoint=False),
        detector_count=12,
        detector_spacing_mm=1.0,
    )
    buf = io.BytesIO()
    path_free = np.random.default_rng(0).random((3, 6, 12)).astype(np.float32)
    # save_sinogram writes a path; write to a BytesIO the same arrays it would
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        p = save_sinogram(
            Path(d) / "s.npz",
            path_free,
            geometry,
            i0=1e5,
            hu_reference=np.zeros((3, 8, 8), np.float32),
            description="fuzz",
        )
        buf.write(p.read_bytes())
    return buf.getvalue()


VALID = _valid_bytes()


def _check(path) -> None:
    """The property: a valid result, or SinogramFormatError; streaming agrees with loading."""
    with memory_limit(EXAMPLE_MEMORY):
        try:
            sf = load_sinogram(path)
        except SinogramFormatError as exc:
            assert str(exc) and "\n" not in str(exc)
            return
        assert sf.sinogram.dtype == np.float32 and np.isfinite(sf.sinogram).all()
        assert sf.sinogram.shape[-2:] == sf.geometry.sinogram_shape
        with open_sinogram(path) as source:
            blocks = [b for _, b, _ in source.iter_slices(rows=2)]
        np.testing.assert_array_equal(np.concatenate(blocks), sf.slices())


@FUZZ
@given(flips=st.lists(st.tuples(st.integers(0, len(VALID) - 1), st.integers(0, 7)), min_size=1, max_size=8))
def test_bit_flips(tmp_path, flips):
    data = bytearray(VALID)
    for pos, bit in flips:
        data[pos] ^= 1 << bit
    (tmp_path / "f.npz").write_bytes(bytes(data))
    _check(tmp_path / "f.npz")


@FUZZ
@given(cut=st.integers(0, len(VALID) - 1))
def test_truncation(tmp_path, cut):
    (tmp_path / "t.npz").write_bytes(VALID[:cut])
    _check(tmp_path / "t.npz")


_DTYPES = st.sampled_from(["<f4", ">f8", "<i2", "|u1", "<c8", "|b1", "<U3", "|S4", "<M8[s]"])


@st.composite
def npy_members(draw):
    """A mapping key -> raw .npy bytes whose header may promise any shape (up to 10^15 elements)."""
    keys = draw(
        st.lists(
            st.sampled_from(
                [
                    "sinogram",
                    "angles",
                    "geometry",
                    "detector_spacing_mm",
                    "pixel_spacing_mm",
                    "image_shape",
                    "i0",
                    "hu_reference",
                    "description",
                    "source_origin_mm",
                    "extra",
                ]
            ),
            min_size=1,
            max_size=11,
            unique=True,
        )
    )
    members = {}
    for key in keys:
        shape = tuple(draw(st.lists(st.one_of(st.integers(0, 8), st.integers(10**4, 10**5)), max_size=3)))
        dtype = np.dtype(draw(_DTYPES))
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(
            header, {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": draw(st.booleans()), "shape": shape}
        )
        payload = draw(st.binary(max_size=256))  # usually far less than the header promises
        members[key] = header.getvalue() + payload
    return members


@FUZZ
@given(members=npy_members())
def test_arbitrary_headers_and_absurd_shapes(tmp_path, members):
    path = tmp_path / "h.npz"
    with zipfile.ZipFile(path, "w") as zf:
        for key, blob in members.items():
            zf.writestr(key + ".npy", blob)
    _check(path)


@FUZZ
@given(
    image_shape=st.tuples(st.integers(-5, 10**6), st.integers(-5, 10**6)),
    pixel=st.floats(allow_nan=True, allow_infinity=True),
    kind=st.sampled_from(["parallel", "fanbeam", "cone", ""]),
    angles=st.integers(0, 8),
    i0=st.one_of(st.none(), st.floats()),
)
def test_wrong_field_values(tmp_path, image_shape, pixel, kind, angles, i0):
    fields = dict(
        sinogram=np.zeros((6, 12), np.float32),
        angles=np.linspace(0, np.pi, angles).astype(np.float32),
        geometry=np.str_(kind),
        detector_spacing_mm=1.0,
        pixel_spacing_mm=pixel,
        image_shape=np.array(image_shape),
    )
    if i0 is not None:
        fields["i0"] = np.float64(i0)
    np.savez(tmp_path / "w.npz", **fields)
    _check(tmp_path / "w.npz")


def test_a_header_promising_a_petabyte_is_refused_before_reading(tmp_path):
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (10**6, 10**6, 300)})
    buf = io.BytesIO(VALID)
    with zipfile.ZipFile(buf, "a") as zf:
        names = [n for n in zf.namelist() if n != "sinogram.npy"]
        members = {n: zf.read(n) for n in names}
    path = tmp_path / "pb.npz"
    with zipfile.ZipFile(path, "w") as zf:
        for n, blob in members.items():
            zf.writestr(n, blob)
        zf.writestr("sinogram.npy", header.getvalue())
    with memory_limit(EXAMPLE_MEMORY), pytest.raises(SinogramFormatError) as info:
        load_sinogram(path)
    assert "views but 'angles'" in str(info.value) or "memory" in str(info.value)
