"""The sinogram exchange file (evaluation.md): round trip, validation errors, ASTRA-written files."""

import numpy as np
import pytest
import torch

from operators import CTProjector, FanBeam2D, ParallelBeam2D, shepp_logan
from tomo.io.sinogram import SinogramFile, SinogramFormatError, geometry_to_fields, load_sinogram, save_sinogram


def _parallel(n=16, views=6, det=24, px=1.5):
    return ParallelBeam2D(
        image_shape=(n, n),
        pixel_spacing_mm=px,
        angles=np.linspace(0, np.pi, views, endpoint=False),
        detector_count=det,
        detector_spacing_mm=px,
    )


def _fan(n=16, views=8, det=32, px=1.5):
    fov = n * px
    return FanBeam2D(
        image_shape=(n, n),
        pixel_spacing_mm=px,
        angles=np.linspace(0, 2 * np.pi, views, endpoint=False),
        detector_count=det,
        detector_spacing_mm=px * 1.5,
        source_origin_mm=2 * fov,
        origin_detector_mm=fov,
    )


def _valid_arrays(geometry, slices=None):
    shape = geometry.sinogram_shape if slices is None else (slices,) + geometry.sinogram_shape
    d = dict(geometry_to_fields(geometry))
    d["sinogram"] = np.random.default_rng(0).random(shape).astype(np.float32)
    return d


@pytest.mark.parametrize("geometry", [_parallel(), _fan()], ids=["parallel", "fanbeam"])
@pytest.mark.parametrize("slices", [None, 3])
def test_round_trip_keeps_everything(tmp_path, geometry, slices):
    d = _valid_arrays(geometry, slices)
    ref_shape = tuple(geometry.image_shape) if slices is None else (slices,) + tuple(geometry.image_shape)
    ref = np.random.default_rng(1).normal(0, 500, ref_shape).astype(np.float32)
    path = save_sinogram(
        tmp_path / "s.npz", d["sinogram"], geometry, i0=1e5, hu_reference=ref, description="round trip"
    )
    f = load_sinogram(path)
    assert f.geometry == geometry
    np.testing.assert_array_equal(f.sinogram, d["sinogram"])
    np.testing.assert_array_equal(f.hu_reference, ref)
    assert f.i0 == 1e5 and f.description == "round trip"
    assert f.num_slices == (1 if slices is None else slices)
    # the file holds exactly the contract's keys, with the contract's dtypes
    with np.load(path) as npz:
        assert npz["sinogram"].dtype == np.float32 and npz["angles"].dtype == np.float32
        assert str(npz["geometry"]) == ("parallel" if isinstance(geometry, ParallelBeam2D) else "fanbeam")
        expected = {
            "sinogram",
            "angles",
            "geometry",
            "detector_spacing_mm",
            "pixel_spacing_mm",
            "image_shape",
            "i0",
            "hu_reference",
            "description",
        }
        if isinstance(geometry, FanBeam2D):
            expected |= {"source_origin_mm", "origin_detector_mm"}
        assert set(npz.files) == expected


def test_refuses_to_overwrite_unless_asked(tmp_path):
    g = _parallel()
    d = _valid_arrays(g)
    path = save_sinogram(tmp_path / "s.npz", d["sinogram"], g)
    with pytest.raises(FileExistsError, match="exists"):
        save_sinogram(path, d["sinogram"] * 2, g)
    np.testing.assert_array_equal(load_sinogram(path).sinogram, d["sinogram"])
    save_sinogram(path, d["sinogram"] * 2, g, overwrite=True)
    np.testing.assert_array_equal(load_sinogram(path).sinogram, d["sinogram"] * 2)
    assert [p.name for p in tmp_path.iterdir()] == ["s.npz"]  # no temporary left behind


def test_save_validates(tmp_path):
    g = _parallel()
    good = _valid_arrays(g)["sinogram"]
    with pytest.raises(ValueError, match=".npz"):
        save_sinogram(tmp_path / "s.npy", good, g)
    with pytest.raises(ValueError, match="views"):
        save_sinogram(tmp_path / "s.npz", good[:-1], g)
    with pytest.raises(ValueError, match="NaN or Inf"):
        save_sinogram(tmp_path / "s.npz", np.where(good > 0.5, np.nan, good).astype(np.float32), g)
    with pytest.raises(ValueError, match="hu_reference"):
        save_sinogram(tmp_path / "s.npz", good, g, hu_reference=np.zeros((3, 3), np.float32))
    with pytest.raises(ValueError, match="i0"):
        save_sinogram(tmp_path / "s.npz", good, g, i0=-5)
    with pytest.raises(ValueError, match="floating point"):
        save_sinogram(tmp_path / "s.npz", (good * 10).astype(np.int32), g)
    assert not (tmp_path / "s.npz").exists()


def _write(tmp_path, d, name="bad.npz"):
    path = tmp_path / name
    np.savez(path, **d)
    return path


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d.pop("angles"), r"missing keys \['angles'\]"),
        (lambda d: d.pop("sinogram"), "missing keys"),
        (lambda d: d.update(geometry=np.str_("cone")), "unknown geometry 'cone'"),
        (lambda d: d.update(angles=d["angles"][:-1]), "views but 'angles' has"),
        (lambda d: d.update(sinogram=d["sinogram"].astype(np.int16)), "floating point"),
        (lambda d: d.update(sinogram=d["sinogram"][0]), "sinogram must be"),
        (lambda d: d.update(sinogram=np.full_like(d["sinogram"], np.inf)), "NaN or Inf"),
        (lambda d: d.update(angles=np.arange(6)), "angles"),
        (lambda d: d.update(pixel_spacing_mm=-1.0), "pixel_spacing_mm"),
        (lambda d: d.update(image_shape=np.array([16])), "image_shape"),
        (lambda d: d.update(i0=np.float64(0.0)), "i0"),
        (lambda d: d.update(hu_reference=np.zeros((8, 8), np.float32)), "hu_reference must have shape"),
        (lambda d: d.update(description=np.arange(3)), "description"),
    ],
)
def test_load_reports_bad_files(tmp_path, mutate, message):
    d = _valid_arrays(_parallel())
    mutate(d)
    with pytest.raises(SinogramFormatError, match=message):
        load_sinogram(_write(tmp_path, d))


def test_load_fanbeam_needs_distances(tmp_path):
    d = _valid_arrays(_fan())
    d.pop("source_origin_mm")
    with pytest.raises(SinogramFormatError, match="source_origin_mm"):
        load_sinogram(_write(tmp_path, d))


def test_load_refuses_non_npz_and_missing(tmp_path):
    (tmp_path / "x.npz").write_bytes(b"not a zip")
    with pytest.raises(SinogramFormatError, match="readable"):
        load_sinogram(tmp_path / "x.npz")
    with pytest.raises(FileNotFoundError):
        load_sinogram(tmp_path / "absent.npz")


def test_load_accepts_float64_and_bytes_geometry(tmp_path):
    """Tolerant of what other writers commonly produce: float64 arrays, a bytes geometry name."""
    d = _valid_arrays(_parallel())
    d["sinogram"] = d["sinogram"].astype(np.float64)
    d["angles"] = d["angles"].astype(np.float64)
    d["geometry"] = np.bytes_(b"parallel")
    f = load_sinogram(_write(tmp_path, d))
    assert f.sinogram.dtype == np.float32 and f.geometry == _parallel()


def test_dataclass_validates_shapes():
    g = _parallel()
    with pytest.raises(ValueError, match="detectors"):
        SinogramFile(np.zeros((6, 23), np.float32), g)


@pytest.mark.parametrize("kind", ["parallel", "fanflat"])
def test_file_written_by_plain_astra_is_read_and_reproduced(tmp_path, kind):
    """evaluation.md: ASTRA create_vol_geom (mm) + create_proj_geom + create_sino -> readable file."""
    astra = pytest.importorskip("astra")
    n, px, views, det = 24, 0.8, 10, 40
    angles = np.linspace(0, np.pi if kind == "parallel" else 2 * np.pi, views, endpoint=False).astype(np.float32)
    half = n * px / 2
    vol_geom = astra.create_vol_geom(n, n, -half, half, -half, half)
    if kind == "parallel":
        proj_geom = astra.create_proj_geom("parallel", px, det, angles)
        proj_id = astra.create_projector("linear", proj_geom, vol_geom)
        extra = {}
    else:
        so, od, spacing = 3 * n * px, 1.5 * n * px, px * 1.5
        proj_geom = astra.create_proj_geom("fanflat", spacing, det, angles, so, od)
        proj_id = astra.create_projector("line_fanflat", proj_geom, vol_geom)
        extra = {"source_origin_mm": so, "origin_detector_mm": od}
    image = shepp_logan((n, n), px).numpy()
    sid, sino = astra.create_sino(image, proj_id)
    astra.data2d.delete(sid)
    astra.projector.delete(proj_id)
    path = tmp_path / "astra.npz"
    np.savez(
        path,
        sinogram=sino.astype(np.float32),
        angles=angles,
        geometry="parallel" if kind == "parallel" else "fanbeam",
        detector_spacing_mm=px if kind == "parallel" else px * 1.5,
        pixel_spacing_mm=px,
        image_shape=np.array([n, n]),
        **extra,
    )
    f = load_sinogram(path)
    assert f.geometry.sinogram_shape == (views, det)
    reproduced = CTProjector(f.geometry)(torch.from_numpy(image)).numpy()
    err = np.abs(reproduced - sino).max() / np.abs(sino).max()
    assert err < 1e-5, f"projector differs from the ASTRA-written sinogram by {err:.2e} (relative max)"


# ----------------------------------------------------------------------------- placement fields

_OBLIQUE = np.array([1.0, 0.0, 0.0, 0.0, np.cos(0.3), -np.sin(0.3)])  # a coronal-ish tilt of the column axis


def test_placement_fields_round_trip_and_streaming_source_sees_them(tmp_path):
    from tomo.io.sinogram import open_sinogram, recorded_placement

    g = _parallel()
    positions = np.array([[-11.25, -11.25, 5.0 + 2.5 * k] for k in range(3)])
    d = _valid_arrays(g, slices=3)
    path = save_sinogram(
        tmp_path / "p.npz", d["sinogram"], g, slice_spacing_mm=2.5, orientation=_OBLIQUE, positions_mm=positions
    )
    f = load_sinogram(path)
    assert f.slice_spacing_mm == 2.5 and f.extra_keys == ()
    np.testing.assert_array_equal(f.orientation, _OBLIQUE)
    np.testing.assert_array_equal(f.positions_mm, positions)
    with open_sinogram(path) as src:
        assert src.slice_spacing_mm == 2.5
        np.testing.assert_array_equal(src.positions_mm, positions)
        ref = recorded_placement(src)
    assert ref.hu.shape == (3, 16, 16) and ref.hu.strides == (0, 0, 0)  # no memory held
    assert ref.pixel_spacing_mm == (1.5, 1.5) and ref.slice_spacing_mm == 2.5
    np.testing.assert_allclose(ref.orientation, _OBLIQUE)


def test_files_without_placement_keep_loading(tmp_path):
    from tomo.io.sinogram import recorded_placement

    g = _parallel()
    path = save_sinogram(tmp_path / "old.npz", _valid_arrays(g)["sinogram"], g)
    with np.load(path) as z:
        assert not {"slice_spacing_mm", "orientation", "positions_mm"} & set(z.files)
    f = load_sinogram(path)
    assert f.slice_spacing_mm is None and f.orientation is None and f.positions_mm is None
    assert recorded_placement(f) is None


def test_spacing_from_positions_when_only_positions_are_recorded(tmp_path):
    from tomo.io.sinogram import recorded_placement

    g = _parallel()
    positions = np.array([[0.0, 0.0, 3.0 * k] for k in range(4)])
    f = SinogramFile(_valid_arrays(g, 4)["sinogram"], g, orientation=[1, 0, 0, 0, 1, 0], positions_mm=positions)
    assert recorded_placement(f).slice_spacing_mm == pytest.approx(3.0)


@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(slice_spacing_mm=0.0), "slice_spacing_mm must be a finite distance"),
        (dict(slice_spacing_mm="thin"), "slice_spacing_mm must be a single number"),
        (dict(orientation=[1, 0, 0, 0, 1, 0]), "go together"),
        (dict(orientation=[1, 0, 0, 1, 0, 0], positions_mm=np.zeros((2, 3))), "perpendicular unit vectors"),
        (dict(orientation=[1, 0, 0, 0, 1], positions_mm=np.zeros((2, 3))), "6 finite direction cosines"),
        (dict(orientation=[1, 0, 0, 0, 1, 0], positions_mm=np.zeros((3, 3))), r"positions_mm must be finite \[2, 3\]"),
    ],
)
def test_bad_placement_fields_are_refused_on_save_and_load(tmp_path, fields, message):
    g = _parallel()
    d = _valid_arrays(g, slices=2)
    with pytest.raises(SinogramFormatError, match=message):
        SinogramFile(d["sinogram"], g, **fields)
    with pytest.raises(SinogramFormatError, match=message):
        load_sinogram(_write(tmp_path, {**d, **{k: np.asarray(v) for k, v in fields.items()}}))
