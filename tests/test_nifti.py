"""NIfTI volumes (tomo.io.nifti): geometry through the affine, HU scaling, refusals, round trips,
and agreement with tomo's DICOM reader on series converted by dcm2niix."""

import copy
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tomo.io.volume import CTVolume, read_volume

nib = pytest.importorskip("nibabel")
from nibabel import orientations as ornt  # noqa: E402

from tomo.io.nifti import NiftiReadError, read_nifti_volume, write_nifti_volume  # noqa: E402

RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])


def _index_to_lps(vol: CTVolume) -> np.ndarray:
    """4x4: (slice, row, col, 1) -> LPS mm, from the CTVolume's own fields."""
    o = np.asarray(vol.orientation)
    step = vol.positions[1] - vol.positions[0] if len(vol.positions) > 1 else vol.normal
    m = np.eye(4)
    m[:3, 0] = step
    m[:3, 1] = o[3:] * vol.pixel_spacing_mm[0]
    m[:3, 2] = o[:3] * vol.pixel_spacing_mm[1]
    m[:3, 3] = vol.positions[0]
    return m


def _same_voxels(a: CTVolume, b: CTVolume, tol_mm=1e-3):
    """Every voxel of b sits at the world position of a voxel of a with the same HU."""
    idx = np.stack(np.meshgrid(*[np.arange(s) for s in b.hu.shape], indexing="ij"), -1).reshape(-1, 3)
    world = _index_to_lps(b) @ np.c_[idx, np.ones(len(idx))].T
    in_a = np.linalg.solve(_index_to_lps(a), world)[:3].T
    rounded = np.rint(in_a).astype(int)
    spacing = min(*a.pixel_spacing_mm, a.slice_spacing_mm or np.inf)
    assert np.abs(in_a - rounded).max() * spacing < tol_mm
    assert sorted(a.hu.shape) == sorted(b.hu.shape)
    np.testing.assert_array_equal(a.hu[tuple(rounded.T)], b.hu.reshape(-1))


def _axial_volume(shape=(3, 5, 7), seed=0) -> CTVolume:
    rng = np.random.default_rng(seed)
    hu = rng.integers(-1024, 2000, size=shape).astype(np.float32)
    n = shape[0]
    positions = np.array([[-20.0, -30.0, 10.0 + 2.5 * k] for k in range(n)])
    return CTVolume(
        hu=hu,
        pixel_spacing_mm=(0.7, 0.8),
        slice_spacing_mm=2.5,
        positions=positions,
        orientation=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
    )


def _save_lps(path, data_ijk, affine_lps, slope=None, inter=None):
    """Save voxels [i, j, k] with an i,j,k -> LPS affine (converted to NIfTI's RAS)."""
    affine = np.eye(4)
    affine[:3, :] = RAS_TO_LPS @ affine_lps[:3, :]
    img = nib.Nifti1Image(data_ijk, affine)
    if slope is not None:
        img.header.set_slope_inter(slope, inter)
    nib.save(img, str(path))
    return path


# ----------------------------------------------------------------------------- reading


@pytest.mark.parametrize(
    "axcodes", [("L", "P", "S"), ("R", "A", "S"), ("L", "A", "I"), ("P", "R", "S"), ("A", "L", "I"), ("R", "P", "S")]
)
def test_any_axial_storage_order_reads_as_the_dicom_layout(tmp_path, axcodes):
    """The same axial volume stored with flipped/swapped in-plane axes reads back identically."""
    ref = _axial_volume()
    # reference storage: i = column (+x), j = row (+y), k = slice (+z), all LPS
    data = ref.hu.transpose(2, 1, 0)
    affine_lps = _index_to_lps(ref)[:, [2, 1, 0, 3]]
    affine_ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine_lps
    transform = ornt.ornt_transform(ornt.io_orientation(affine_ras), ornt.axcodes2ornt(axcodes))
    stored = ornt.apply_orientation(data, transform)
    affine = affine_ras @ ornt.inv_ornt_aff(transform, data.shape)
    path = tmp_path / "v.nii.gz"
    nib.save(nib.Nifti1Image(stored, affine), str(path))
    vol = read_nifti_volume(path)
    np.testing.assert_array_equal(vol.hu, ref.hu)
    np.testing.assert_allclose(vol.positions, ref.positions, atol=1e-4)
    np.testing.assert_allclose(vol.orientation, ref.orientation, atol=1e-6)
    np.testing.assert_allclose(vol.pixel_spacing_mm, ref.pixel_spacing_mm, rtol=1e-6)
    assert vol.slice_spacing_mm == pytest.approx(2.5)
    assert vol.hu.dtype == np.float32 and vol.header is None and vol.warnings == []


def test_coronal_and_sagittal_files_keep_their_plane(tmp_path):
    """Slices follow the third voxel axis; rows point to the feet as in DICOM's display."""
    rng = np.random.default_rng(1)
    data = rng.integers(-1000, 1000, size=(4, 6, 3)).astype(np.int16)  # i, j, k
    for plane, affine, expected in [
        # i -> +x (left), j -> +z (head), k -> -y (anterior): a coronal stack
        (
            "coronal",
            np.array([[0.9, 0, 0, 5], [0, 0, -3.0, 7], [0, 1.1, 0, -9], [0, 0, 0, 1]]),
            (1.0, 0.0, 0.0, 0.0, 0.0, -1.0),
        ),
        # i -> +y (posterior), j -> -z (feet), k -> +x: a sagittal stack
        (
            "sagittal",
            np.array([[0, 0, 2.0, 5], [0.9, 0, 0, 7], [0, -1.1, 0, -9], [0, 0, 0, 1]]),
            (0.0, 1.0, 0.0, 0.0, 0.0, -1.0),
        ),
    ]:
        path = _save_lps(tmp_path / f"{plane}.nii", data, affine)
        vol = read_nifti_volume(path)
        assert vol.hu.shape == (3, 6, 4), plane
        np.testing.assert_allclose(vol.orientation, expected, atol=1e-6)
        # the slices step along the normal, as the DICOM reader orders them
        assert np.all(np.diff(vol.positions @ vol.normal) > 0)
        stored = CTVolume(
            hu=data.transpose(2, 1, 0).astype(np.float32),
            pixel_spacing_mm=(1.1, 0.9),
            slice_spacing_mm=abs(affine[:3, 2]).max(),
            positions=np.array([affine[:3, 3] + k * affine[:3, 2] for k in range(3)]),
            orientation=(*(affine[:3, 0] / 0.9), *(affine[:3, 1] / 1.1)),
        )
        _same_voxels(stored, vol)


def test_oblique_affine_gives_exact_cosines(tmp_path):
    theta = np.radians(12.0)
    rot = np.array([[np.cos(theta), -np.sin(theta), 0], [np.sin(theta), np.cos(theta), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([0.5, 0.6, 2.0])
    affine[:3, 3] = [1.0, 2.0, 3.0]
    data = np.arange(5 * 4 * 2, dtype=np.float32).reshape(5, 4, 2)
    vol = read_nifti_volume(_save_lps(tmp_path / "o.nii", data, affine))
    np.testing.assert_allclose(vol.orientation[:3], rot[:, 0], atol=1e-6)
    np.testing.assert_allclose(vol.orientation[3:], rot[:, 1], atol=1e-6)
    np.testing.assert_allclose(vol.pixel_spacing_mm, (0.6, 0.5), rtol=1e-6)
    np.testing.assert_allclose(vol.positions[0], [1.0, 2.0, 3.0], atol=1e-5)
    np.testing.assert_array_equal(vol.hu, data.transpose(2, 1, 0))


def test_scl_slope_and_inter_give_hu(tmp_path):
    stored = np.array([[[0, 1000], [2000, 3071]]], dtype=np.int16).transpose(2, 1, 0)
    path = _save_lps(tmp_path / "s.nii.gz", stored, np.diag([1.0, 1.0, 1.0, 1.0]), slope=0.5, inter=-1024)
    vol = read_nifti_volume(path)
    np.testing.assert_array_equal(vol.hu[0], [[-1024.0, -524.0], [-24.0, 511.5]])
    assert vol.slice_spacing_mm is None  # one slice, as the DICOM reader reports it


def test_values_that_are_not_hu_are_flagged(tmp_path):
    path = _save_lps(tmp_path / "u.nii", np.full((2, 2, 2), 24, np.uint16), np.eye(4))
    assert any("may not be HU" in w for w in read_nifti_volume(path).warnings)


def test_refusals_say_why(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_nifti_volume(tmp_path / "absent.nii")
    garbage = tmp_path / "garbage.nii"
    garbage.write_bytes(b"not a nifti file" * 40)
    with pytest.raises(NiftiReadError, match="not a readable NIfTI"):
        read_nifti_volume(garbage)
    series = _save_lps(tmp_path / "t.nii", np.zeros((2, 2, 2, 3), np.float32), np.eye(4))
    with pytest.raises(NiftiReadError, match="one 3-D volume"):
        read_nifti_volume(series)
    nan = np.zeros((2, 2, 2), np.float32)
    nan[0, 0, 0] = np.nan
    with pytest.raises(NiftiReadError, match="NaN"):
        read_nifti_volume(_save_lps(tmp_path / "nan.nii", nan, np.eye(4)))
    flat = _save_lps(tmp_path / "flat.nii", np.zeros((2, 2, 2), np.float32), np.eye(4))
    raw = bytearray(flat.read_bytes())
    assert nib.load(str(flat)).header["sform_code"] > 0  # nibabel reads the sform
    raw[312:328] = np.zeros(4, "<f4").tobytes()  # srow_z = 0: slices of no thickness
    flat.write_bytes(bytes(raw))
    with pytest.raises(NiftiReadError, match="affine"):
        read_nifti_volume(flat)


def test_absurd_header_size_is_refused_before_reading(tmp_path):
    path = _save_lps(tmp_path / "big.nii", np.zeros((2, 2, 2), np.int16), np.eye(4))
    header = bytearray(path.read_bytes())
    header[40:48] = np.array([3, 4096, 4096, 4096], "<i2").tobytes()  # dim[0..3]
    path.write_bytes(bytes(header))
    with pytest.raises(NiftiReadError, match="implausible size"):
        read_nifti_volume(path)


def test_read_volume_dispatches_nifti(tmp_path):
    ref = _axial_volume()
    path = write_nifti_volume(tmp_path / "CT.NII.GZ", ref.hu, ref.pixel_spacing_mm, 2.5, ref)
    vol = read_volume(path)
    np.testing.assert_array_equal(vol.hu, ref.hu)


def test_without_nibabel_tomo_imports_and_says_what_to_install(tmp_path):
    """A fresh interpreter where nibabel cannot be imported (sys.modules entry None)."""
    code = (
        "import sys; sys.modules['nibabel'] = None\n"
        "import tomo, tomo.io.volume, tomo.io.nifti, tomo.cli.main\n"
        "from tomo.io.nifti import NiftiDependencyError\n"
        "try:\n"
        f"    tomo.io.volume.read_volume({str(tmp_path / 'x.nii')!r})\n"
        "except NiftiDependencyError as e:\n"
        "    assert isinstance(e, ImportError) and isinstance(e, ValueError)\n"
        "    print(e)\n"
        "sys.exit(tomo.cli.main.main(['simulate', "
        f"{str(tmp_path / 'x.nii')!r}, '--config', 'parallel-30', '--out', {str(tmp_path / 's.npz')!r}, '--quiet']))\n"
    )
    (tmp_path / "x.nii").write_bytes(b"\0" * 400)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "pip install tomo-ct[nifti]" in done.stdout
    assert "tomo simulate: error:" in done.stderr and "pip install tomo-ct[nifti]" in done.stderr


# ----------------------------------------------------------------------------- writing


def test_round_trip_without_reference(tmp_path):
    hu = np.random.default_rng(2).normal(0, 300, size=(2, 4, 6)).astype(np.float32)
    path = write_nifti_volume(tmp_path / "r.nii", hu, (0.5, 0.75), 3.0)
    vol = read_nifti_volume(path)
    np.testing.assert_array_equal(vol.hu, hu)
    assert vol.orientation == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
    np.testing.assert_allclose(vol.pixel_spacing_mm, (0.5, 0.75))
    assert vol.slice_spacing_mm == pytest.approx(3.0)
    # the grid is centred on the origin
    centre = vol.positions.mean(0) + np.array([5 * 0.75 / 2, 3 * 0.5 / 2, 0])
    np.testing.assert_allclose(centre, 0, atol=1e-5)


def test_round_trip_with_reference_keeps_its_geometry(tmp_path):
    ref = _axial_volume()
    vol = read_nifti_volume(write_nifti_volume(tmp_path / "same.nii.gz", ref.hu, ref.pixel_spacing_mm, None, ref))
    np.testing.assert_array_equal(vol.hu, ref.hu)
    np.testing.assert_allclose(vol.positions, ref.positions, atol=1e-4)
    # a coarser reconstruction grid over the same field: same field-of-view centre
    coarse = np.zeros((3, 3, 4), np.float32)
    vol = read_nifti_volume(write_nifti_volume(tmp_path / "coarse.nii", coarse, (1.4, 1.6), 2.5, ref))
    ref_centre = ref.positions.mean(0) + [6 * 0.8 / 2, 4 * 0.7 / 2, 0]
    centre = vol.positions.mean(0) + [3 * 1.6 / 2, 2 * 1.4 / 2, 0]
    np.testing.assert_allclose(centre, ref_centre, atol=1e-4)
    np.testing.assert_allclose(vol.pixel_spacing_mm, (1.4, 1.6), rtol=1e-6)


def test_round_trip_of_an_oblique_coronal_reference(tmp_path):
    c, s = np.cos(0.1), np.sin(0.1)
    row, col = np.array([c, s, 0.0]), np.array([0.0, 0.0, -1.0])
    normal = np.cross(row, col)
    hu = np.random.default_rng(3).integers(-1000, 1000, (3, 4, 5)).astype(np.float32)
    ref = CTVolume(
        hu=hu,
        pixel_spacing_mm=(0.9, 0.8),
        slice_spacing_mm=2.0,
        positions=np.array([[4.0, 5.0, 6.0] + 2.0 * k * normal for k in range(3)]),
        orientation=(*row, *col),
    )
    vol = read_nifti_volume(write_nifti_volume(tmp_path / "cor.nii", hu, (0.9, 0.8), 2.0, ref))
    np.testing.assert_allclose(vol.orientation, ref.orientation, atol=1e-6)
    np.testing.assert_allclose(vol.positions, ref.positions, atol=1e-4)
    np.testing.assert_array_equal(vol.hu, hu)


def test_round_trip_of_a_tilted_reference_keeps_positions_and_reports_tilt(tmp_path):
    """Gantry tilt: slices step off the normal; NIfTI's sheared affine keeps the true positions."""
    tilt = np.radians(15.0)
    hu = np.random.default_rng(4).integers(-1000, 1000, (4, 3, 3)).astype(np.float32)
    step = 2.0 * np.array([0.0, np.tan(tilt), 1.0])  # plane distance 2 mm along z
    ref = CTVolume(
        hu=hu,
        pixel_spacing_mm=(0.5, 0.5),
        slice_spacing_mm=2.0,
        positions=np.array([[1.0, 2.0, 3.0] + k * step for k in range(4)]),
        orientation=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
    )
    vol = read_nifti_volume(write_nifti_volume(tmp_path / "tilt.nii", hu, 0.5, None, ref))
    np.testing.assert_allclose(vol.positions, ref.positions, atol=1e-4)
    assert vol.slice_spacing_mm == pytest.approx(2.0)
    assert vol.gantry_tilt_deg == pytest.approx(15.0, abs=1e-3)
    assert any("gantry tilt" in w for w in vol.warnings)


def test_writer_refuses_and_leaves_no_partial_file(tmp_path):
    ref = _axial_volume()
    out = write_nifti_volume(tmp_path / "a.nii.gz", ref.hu, 0.7, 2.5)
    with pytest.raises(FileExistsError, match="overwrite"):
        write_nifti_volume(out, ref.hu, 0.7, 2.5)
    write_nifti_volume(out, ref.hu + 1, 0.7, 2.5, overwrite=True)
    assert read_nifti_volume(out).hu[0, 0, 0] == ref.hu[0, 0, 0] + 1
    src = read_nifti_volume(out)
    with pytest.raises(ValueError, match="reference"):
        write_nifti_volume(out, ref.hu, 0.7, 2.5, src, overwrite=True)
    with pytest.raises(ValueError, match=".nii"):
        write_nifti_volume(tmp_path / "a.npz", ref.hu, 0.7, 2.5)
    with pytest.raises(ValueError, match="slice_spacing_mm"):
        write_nifti_volume(tmp_path / "b.nii", ref.hu, 0.7, None)
    with pytest.raises(ValueError, match="NaN"):
        write_nifti_volume(tmp_path / "c.nii", np.full((2, 2), np.nan), 0.7, 1.0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.nii.gz"]


# ----------------------------------------------------------------------------- dcm2niix

needs_dcm2niix = pytest.mark.skipif(
    shutil.which("dcm2niix") is None, reason="dcm2niix not installed (apt-get install dcm2niix)"
)


def _dcm2niix(series: Path, out: Path) -> list[Path]:
    out.mkdir()
    done = subprocess.run(
        ["dcm2niix", "-z", "y", "-b", "n", "-f", "%j", "-o", str(out), str(series)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return sorted(out.glob("*.nii.gz"))


def _assert_same_geometry(dicom: CTVolume, nifti: CTVolume):
    np.testing.assert_array_equal(nifti.hu, dicom.hu)
    np.testing.assert_allclose(nifti.pixel_spacing_mm, dicom.pixel_spacing_mm, rtol=1e-6)
    if dicom.slice_spacing_mm is None:
        assert nifti.slice_spacing_mm is None
    else:
        assert nifti.slice_spacing_mm == pytest.approx(dicom.slice_spacing_mm, abs=1e-4)
    np.testing.assert_allclose(nifti.positions, dicom.positions, atol=1e-3)  # NIfTI stores float32
    np.testing.assert_allclose(nifti.orientation, dicom.orientation, atol=1e-5)


def _small_series(folder: Path, n=4, step_mm=2.5) -> Path:
    """n slices from pydicom's CT_small.dcm (128x128 GE CT), each shifted and with other pixels."""
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid

    src = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    folder.mkdir()
    first = np.array([float(v) for v in src.ImagePositionPatient])
    for k in range(n):
        ds = copy.deepcopy(src)
        pos = first + [0.0, 0.0, step_mm * k]
        ds.ImagePositionPatient = [f"{v:.6f}" for v in pos]
        ds.SliceLocation = f"{pos[2]:.4f}"
        ds.InstanceNumber = k + 1
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.PixelData = (np.roll(src.pixel_array, 7 * k, axis=0) + k).astype(np.int16).tobytes()
        ds.save_as(folder / f"s{n - k}.dcm")  # file order opposite to slice order
    return folder


@needs_dcm2niix
def test_dcm2niix_of_ct_small_series_matches_the_dicom_reader(tmp_path):
    from tomo.io.dicom_read import read_series

    series = _small_series(tmp_path / "series")
    (nii,) = _dcm2niix(series, tmp_path / "nii")
    _assert_same_geometry(read_series(series), read_nifti_volume(nii))


@needs_dcm2niix
@pytest.mark.parametrize("case", ["lung-pet-ct-dx-a0002", "covid-ny-sbu-A002304/coronal"])
def test_dcm2niix_of_real_series_matches_the_dicom_reader(tmp_path, shared_data, case):
    """An axial chest series (30 slices) and single oblique coronal reformats."""
    from tomo.io.dicom_read import find_series, read_series

    series = shared_data / "train" / "dicom" / case
    if not series.is_dir():
        pytest.skip(f"{series} not present")
    converted = _dcm2niix(series, tmp_path / "nii")
    uids = [s.uid for s in find_series(series)]
    assert len(converted) == len(uids)
    for uid in uids:
        (nii,) = [p for p in converted if p.name.startswith(uid)]
        _assert_same_geometry(read_series(series, uid), read_nifti_volume(nii))


# ----------------------------------------------------------------------------- tomo simulate -> reconstruct


def _fov_centre(vol: CTVolume) -> np.ndarray:
    """LPS centre of the volume's field of view (mid-way between its corner voxel centres)."""
    s, r, c = vol.hu.shape
    return (_index_to_lps(vol) @ np.array([(s - 1) / 2, (r - 1) / 2, (c - 1) / 2, 1.0]))[:3]


def _oblique_input(path: Path) -> CTVolume:
    """3 coronal-ish slices of 16 rows x 20 columns (3 mm pixels, 4 mm apart), tilted 0.1 rad."""
    c, s = np.cos(0.1), np.sin(0.1)
    row, col = np.array([c, s, 0.0]), np.array([0.0, 0.0, -1.0])
    normal = np.cross(row, col)
    hu = np.full((3, 16, 20), -1000.0, np.float32)
    hu[:, 3:13, 4:16] = 40.0
    hu[1, 6:9, 8:11] = 700.0
    frame = CTVolume(
        hu=hu,
        pixel_spacing_mm=(3.0, 3.0),
        slice_spacing_mm=4.0,
        positions=np.array([[-30.0, 12.0, 55.0] + 4.0 * k * normal for k in range(3)]),
        orientation=(*row, *col),
    )
    return read_nifti_volume(write_nifti_volume(path, hu, (3.0, 3.0), 4.0, frame))


def test_nifti_simulated_and_reconstructed_to_nifti_needs_no_extra_flag(tmp_path):
    """The issue's chain: `tomo simulate vol.nii.gz --config parallel-30 --out scan.npz`, then
    `tomo reconstruct scan.npz --method tv --out rec.nii.gz`: the input's orientation and
    field-of-view centre, the reconstruction grid's voxel size."""
    from tomo.cli.main import main

    src = _oblique_input(tmp_path / "vol.nii.gz")
    scan, rec = tmp_path / "scan.npz", tmp_path / "rec.nii.gz"
    assert (
        main(["simulate", str(tmp_path / "vol.nii.gz"), "--config", "parallel-30", "--out", str(scan), "--quiet"]) == 0
    )
    assert main(["reconstruct", str(scan), "--method", "tv", "--out", str(rec), "--quiet"]) == 0
    out = read_nifti_volume(rec)
    # grid: the 20-pixel side (padded square, 60 mm) on the default 10 x 10 grid -> 6 mm pixels
    assert out.hu.shape == (3, 10, 10)
    np.testing.assert_allclose(out.pixel_spacing_mm, (6.0, 6.0), rtol=1e-6)
    assert out.slice_spacing_mm == pytest.approx(4.0, rel=1e-5)
    np.testing.assert_allclose(out.orientation, src.orientation, atol=1e-6)
    np.testing.assert_allclose(_fov_centre(out), _fov_centre(src), atol=1e-3)
    # slice k of the output lies on slice k's plane of the input
    np.testing.assert_allclose((out.positions - src.positions) @ src.normal, 0, atol=1e-3)
    assert out.hu[1].max() > 300  # the dense insert of the middle slice is reconstructed there


def test_selected_slices_record_their_own_spacing(tmp_path):
    from tomo.cli.main import main
    from tomo.io.sinogram import load_sinogram

    _oblique_input(tmp_path / "vol.nii.gz")
    scan = tmp_path / "scan.npz"
    args = ["simulate", str(tmp_path / "vol.nii.gz"), "--config", "parallel-8", "--slices", "0,2", "--out", str(scan)]
    assert main([*args, "--quiet"]) == 0
    sf = load_sinogram(scan)
    assert sf.slice_spacing_mm == pytest.approx(8.0)
    assert sf.positions_mm.shape == (2, 3)


def test_a_file_without_placement_still_needs_and_takes_the_flags(tmp_path, capsys):
    """Files written before the placement keys (or by other tools) keep working with the flags."""
    from tomo.cli.main import main

    src = _oblique_input(tmp_path / "vol.nii.gz")
    scan, old = tmp_path / "scan.npz", tmp_path / "old.npz"
    assert (
        main(["simulate", str(tmp_path / "vol.nii.gz"), "--config", "parallel-8", "--out", str(scan), "--quiet"]) == 0
    )
    with np.load(scan) as z:
        np.savez(old, **{k: z[k] for k in z.files if k not in ("slice_spacing_mm", "orientation", "positions_mm")})
    assert main(["reconstruct", str(old), "--method", "fbp", "--out", str(tmp_path / "a.nii.gz"), "--quiet"]) == 2
    assert "--slice-spacing" in capsys.readouterr().err
    assert main(["reconstruct", str(old), "--method", "fbp", "--out", str(tmp_path / "dicom"), "--quiet"]) == 2
    assert "--reference" in capsys.readouterr().err  # DICOM without placement needs the reference
    args = ["reconstruct", str(old), "--method", "fbp", "--out", str(tmp_path / "b.nii.gz"), "--slice-spacing", "4"]
    assert main([*args, "--quiet"]) == 0
    out = read_nifti_volume(tmp_path / "b.nii.gz")
    assert out.orientation == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0) and out.slice_spacing_mm == pytest.approx(4.0)
    args = ["reconstruct", str(old), "--method", "fbp", "--out", str(tmp_path / "c.nii.gz"), "--reference"]
    assert main([*args, str(tmp_path / "vol.nii.gz"), "--quiet"]) == 0
    np.testing.assert_allclose(read_nifti_volume(tmp_path / "c.nii.gz").orientation, src.orientation, atol=1e-6)


def test_nifti_simulated_and_reconstructed_to_dicom_needs_no_reference(tmp_path):
    """`tomo reconstruct scan.npz --out DIR` writes a DICOM series placed as the input volume."""
    from tomo.cli.main import main
    from tomo.io.dicom_read import read_series

    src = _oblique_input(tmp_path / "vol.nii.gz")
    scan, out = tmp_path / "scan.npz", tmp_path / "series"
    assert (
        main(["simulate", str(tmp_path / "vol.nii.gz"), "--config", "parallel-8", "--out", str(scan), "--quiet"]) == 0
    )
    assert main(["reconstruct", str(scan), "--method", "fbp", "--out", str(out), "--quiet"]) == 0
    dcm = read_series(out)
    assert dcm.hu.shape == (3, 10, 10)
    np.testing.assert_allclose(dcm.pixel_spacing_mm, (6.0, 6.0), rtol=1e-6)
    assert dcm.slice_spacing_mm == pytest.approx(4.0, rel=1e-4)
    np.testing.assert_allclose(dcm.orientation, src.orientation, atol=1e-5)
    np.testing.assert_allclose(_fov_centre(dcm), _fov_centre(src), atol=1e-2)
