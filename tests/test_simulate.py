"""The evaluation simulation (evaluation.md) and the HU/attenuation conversions and scores."""

import numpy as np
import pytest
import torch

from operators import FanBeam2D, ParallelBeam2D
from operators.units import MU_WATER_PER_MM, hu_to_mu, mu_to_hu
from tomo.evaluation.scores import psnr, ssim, window
from tomo.evaluation.simulation import CONFIGS, SimulationConfig, default_grid, protocol_geometry, simulate_volume


def _water_disk(n=64, spacing=1.0, radius_mm=20.0):
    """HU image: water disk (0 HU) in air (-1000 HU), area-weighted edge (8 x 8 sub-samples)."""
    sub = (np.arange(n * 8) + 0.5) / 8 - n / 2
    xx, yy = np.meshgrid(sub * spacing, sub * spacing)
    inside = (xx**2 + yy**2 <= radius_mm**2).reshape(n, 8, n, 8).mean(axis=(1, 3))
    return (-1000.0 + 1000.0 * inside).astype(np.float32)


# ----- metrics ---------------------------------------------------------------------------------------
def test_hu_mu_conversion_values_and_clipping():
    assert hu_to_mu(np.array([0.0]))[0] == pytest.approx(MU_WATER_PER_MM)
    assert hu_to_mu(np.array([-1000.0]))[0] == pytest.approx(0.0)
    clipped = hu_to_mu(np.array([-3024.0, 5000.0]))
    np.testing.assert_allclose(clipped, MU_WATER_PER_MM * (1 + np.array([-1024.0, 3071.0]) / 1000), rtol=1e-6)
    hu = torch.linspace(-1000, 3000, 9)
    assert torch.allclose(mu_to_hu(hu_to_mu(hu)), hu, atol=1e-3)
    assert hu_to_mu(np.array([1], dtype=np.int16)).dtype == np.float32
    with pytest.raises(ValueError, match="NaN"):
        hu_to_mu(np.array([np.nan]))


def test_scores_use_the_fixed_window():
    ref = np.full((16, 16), -1000.0)
    ref[4:12, 4:12] = 1000.0
    assert psnr(ref, ref) == np.inf and ssim(ref, ref) == pytest.approx(1.0)
    # values outside the window do not count: clipping to [-1000, 1000] makes these identical
    shifted = ref.copy()
    shifted[ref > 0] = 2500.0
    assert psnr(shifted, ref) == np.inf
    # a uniform bias of 100 HU = 0.05 of the window -> PSNR = -20 log10(0.05) = 26.02 dB on
    # pixels where the bias stays inside the window (here: all, as the image is mid-grey)
    grey = np.zeros((16, 16))
    assert psnr(grey + 100.0, grey) == pytest.approx(26.0206, abs=1e-3)
    assert window(np.array([-2000.0, 0.0, 2000.0])).tolist() == [0.0, 0.5, 1.0]
    many = psnr(np.stack([grey + 100, grey + 200]), np.stack([grey, grey]))
    assert many.shape == (2,) and many[0] > many[1]
    assert ssim(np.stack([ref, ref]), np.stack([ref, ref])).shape == (2,)
    with pytest.raises(ValueError, match="same shape"):
        psnr(grey, ref[:8])


# ----- protocol --------------------------------------------------------------------------------------
def test_standard_configurations_match_evaluation_md():
    assert {k: (c.geometry, c.views, c.i0) for k, c in CONFIGS.items()} == {
        "parallel-30": ("parallel", 30, 1e6),
        "parallel-8": ("parallel", 8, 1e6),
        "fanbeam-60": ("fanbeam", 60, 1e5),
    }


def test_protocol_geometry():
    fov = 360.0
    par = protocol_geometry("parallel", 30, fov)
    assert isinstance(par, ParallelBeam2D) and par.image_shape == (256, 256)
    assert par.detector_count == 384 and par.detector_spacing_mm == pytest.approx(fov / 256)
    np.testing.assert_allclose(par.angles_array, np.linspace(0, np.pi, 30, endpoint=False), atol=1e-6)
    fan = protocol_geometry("fanbeam", 60, fov)
    assert isinstance(fan, FanBeam2D) and fan.detector_count == 512
    assert (fan.source_origin_mm, fan.origin_detector_mm) == (2 * fov, fov)
    assert fan.detector_spacing_mm == pytest.approx(fov / 256 * 1.5)
    assert fan.angles_array.max() < 2 * np.pi - 0.1
    assert default_grid(512) == 256 and default_grid(616) == 256 and default_grid(128) == 64
    with pytest.raises(ValueError, match="geometry"):
        protocol_geometry("cone", 10, fov)


@pytest.mark.parametrize("kind", ["parallel", "fanbeam"])
def test_noiseless_water_disk_line_integrals(kind):
    """Through the centre of a water disk of radius R the line integral is 2 R mu_water."""
    radius = 20.0
    hu = _water_disk(radius_mm=radius)
    sf = simulate_volume(hu, 1.0, SimulationConfig(kind, 12, None), grid=32, progress=False)
    assert sf.sinogram.shape == (12, 48 if kind == "parallel" else 64)
    assert sf.hu_reference.shape == (32, 32) and sf.i0 is None
    assert sf.geometry.pixel_spacing_mm == pytest.approx(2.0)
    # bins are centred at +-half a bin around the axis: chord there is 2 sqrt(R^2 - h^2)
    half_bin = sf.geometry.detector_spacing_mm / 2 / (sf.geometry.magnification if kind == "fanbeam" else 1)
    expected = 2 * np.sqrt(radius**2 - half_bin**2) * MU_WATER_PER_MM
    np.testing.assert_allclose(sf.sinogram.max(axis=1), expected, rtol=0.02)
    # every view sees the same disk: rotation invariance within discretisation error
    assert sf.sinogram.sum(axis=1).std() < 0.01 * sf.sinogram.sum(axis=1).mean()
    # ground truth keeps HU: water inside, air outside
    assert abs(sf.hu_reference[16, 16]) < 1.0 and sf.hu_reference[0, 0] == pytest.approx(-1000.0)


def test_reference_is_antialiased_resize():
    from skimage.transform import resize

    hu = np.random.default_rng(0).uniform(-1000, 3000, (64, 64)).astype(np.float32)  # inside the clip range
    sf = simulate_volume(hu, 0.7, SimulationConfig("parallel", 4, None), grid=32, progress=False)
    np.testing.assert_allclose(
        sf.hu_reference, resize(hu, (32, 32), anti_aliasing=True, preserve_range=True), atol=1e-3
    )


def test_noise_is_seeded_and_follows_poisson_variance():
    hu = _water_disk()
    cfg = SimulationConfig("parallel", 40, 1e4)
    a = simulate_volume(hu, 1.0, cfg, grid=32, seed=3, progress=False)
    b = simulate_volume(hu, 1.0, cfg, grid=32, seed=3, progress=False)
    c = simulate_volume(hu, 1.0, cfg, grid=32, seed=4, progress=False)
    clean = simulate_volume(hu, 1.0, SimulationConfig("parallel", 40, None), grid=32, progress=False).sinogram
    np.testing.assert_array_equal(a.sinogram, b.sinogram)
    assert not np.array_equal(a.sinogram, c.sinogram)
    z = (a.sinogram - clean) / np.sqrt(np.exp(clean) / 1e4)  # standardised noise
    assert abs(z.mean()) < 0.1 and 0.85 < z.std() < 1.15
    # slice k of a stack draws from its own seeded stream: the first slice equals the single run
    stack = simulate_volume(np.stack([hu, hu[::-1]]), 1.0, cfg, grid=32, seed=3, progress=False)
    np.testing.assert_array_equal(stack.sinogram[0], a.sinogram)
    assert stack.sinogram.shape == (2, 40, 48) and stack.hu_reference.shape == (2, 32, 32)


def test_non_square_slice_is_padded_with_air():
    hu = _water_disk()[8:56]  # 48 x 64
    sf = simulate_volume(hu, 1.0, SimulationConfig("parallel", 6, None), grid=32, progress=False)
    assert sf.geometry.pixel_spacing_mm == pytest.approx(2.0)  # FOV from the larger side (64 mm)
    assert sf.hu_reference.shape == (32, 32)
    np.testing.assert_allclose(sf.hu_reference[:3], -1000.0, atol=1e-3)  # padded rows are air


def test_simulation_rejects_bad_input():
    hu = _water_disk()
    with pytest.raises(ValueError, match="square"):
        simulate_volume(hu, (1.0, 1.5), "parallel-8", progress=False)
    with pytest.raises(ValueError, match="unknown configuration"):
        simulate_volume(hu, 1.0, "parallel-9", progress=False)
    with pytest.raises(ValueError, match="NaN"):
        simulate_volume(np.full((8, 8), np.nan), 1.0, "parallel-8", progress=False)
    with pytest.raises(ValueError, match="shape"):
        simulate_volume(np.zeros(8), 1.0, "parallel-8", progress=False)
    with pytest.raises(ValueError, match="i0"):
        SimulationConfig("parallel", 8, -1.0)
