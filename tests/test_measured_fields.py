"""Measured-data fields of the sinogram file (offset, flat/dark, units) and the limited-angle solvers.

No shared data needed: small simulated cases (the real HTC2022 files: test_measured_htc2022.py).
"""

import numpy as np
import pytest
import torch

from operators import CTProjector, FanBeam2D, ParallelBeam2D, fbp
from tomo.io.sinogram import SinogramFormatError, line_integrals, load_sinogram, open_sinogram, save_sinogram


def _fan(offset=0.0, n=24, det=48, views=40):
    return FanBeam2D(
        (n, n), 1.0, np.linspace(0, 2 * np.pi, views, endpoint=False), det, 1.5, 60.0, 30.0, detector_offset_mm=offset
    )


def _phantom(n=24):
    c = np.arange(n) + 0.5 - n / 2
    x, y = np.meshgrid(c, -c)
    return torch.from_numpy(((x - 2) ** 2 + (y + 1) ** 2 <= 7**2) * 0.03)


# ----- detector offset ---------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["parallel", "fan"])
def test_offset_of_whole_bins_is_a_shift_of_the_sinogram(kind):
    """A detector moved by k bins sees exactly what bins i + k of the unmoved detector see."""
    k, n = 3, 24
    if kind == "fan":
        g0, g1 = _fan(0.0, det=60), _fan(k * 1.5, det=60)
    else:
        a = np.linspace(0, np.pi, 30, endpoint=False)
        g0, g1 = (
            ParallelBeam2D((n, n), 1.0, a, 60, 1.0),
            ParallelBeam2D((n, n), 1.0, a, 60, 1.0, detector_offset_mm=3.0),
        )
    x = _phantom(n).double()
    s0, s1 = CTProjector(g0)(x), CTProjector(g1)(x)
    err = float((s1[:, :-k] - s0[:, k:]).abs().max() / s0.abs().max())
    assert err < 1e-5, err  # float32 weights in ASTRA
    assert float((s1 - s0).abs().max()) > 0.01  # the offset does change the data


def test_offset_geometry_round_trips_and_old_dicts_are_unchanged(tmp_path):
    g = _fan(0.75)
    assert g.to_dict()["detector_offset_mm"] == 0.75
    assert "detector_offset_mm" not in _fan(0.0).to_dict()  # cache keys and JSON as before
    assert type(g).from_dict(g.to_dict()) == g
    sino = CTProjector(g)(_phantom().double()).float().numpy()
    save_sinogram(tmp_path / "s.npz", sino, g)
    back = load_sinogram(tmp_path / "s.npz")
    assert back.geometry == g and back.units == "hu"
    with pytest.raises(ValueError, match="detector_offset_mm"):
        _fan(float("nan"))


def test_fbp_with_offset_matches_the_centred_detector():
    """FBP of data from a shifted detector, told the shift, equals FBP of the centred one (measured 2.3 %: the two detectors sample the rays differently)."""
    x = _phantom().double()
    g0, g1 = _fan(0.0, det=64, views=120), _fan(2.0, det=64, views=120)
    r0 = fbp(CTProjector(g0)(x), g0, filter="hann")
    r1 = fbp(CTProjector(g1)(x), g1, filter="hann")
    err = float((r1 - r0).norm() / r0.norm())
    assert err < 0.035, err
    wrong = fbp(CTProjector(g1)(x), g0, filter="hann")  # offset ignored: visibly wrong
    assert float((wrong - r0).norm() / r0.norm()) > 4 * err


# ----- raw intensities ---------------------------------------------------------------------------
def test_flat_dark_intensities_become_line_integrals(tmp_path):
    g = _fan()
    p = CTProjector(g)(_phantom().double()).numpy()
    flat = np.linspace(900.0, 1100.0, g.detector_count)  # [detectors]
    dark = np.full(g.detector_count, 20.0)
    raw = (flat - dark) * np.exp(-p) + dark
    from tomo.io.sinogram import geometry_to_fields

    fields = geometry_to_fields(g)
    np.savez(tmp_path / "raw.npz", sinogram=raw.astype(np.float32), flat=flat, dark=dark, units="mu_per_mm", **fields)
    back = load_sinogram(tmp_path / "raw.npz")
    assert back.units == "mu_per_mm"
    assert np.allclose(back.sinogram, p, atol=2e-5)
    with open_sinogram(tmp_path / "raw.npz") as src:  # the streaming reader converts too
        ((_, block, _),) = list(src.iter_slices())
    assert np.allclose(block[0], p, atol=2e-5)
    assert np.allclose(line_integrals(raw, flat, dark), p, atol=2e-5)


def test_non_positive_intensities_are_refused_with_the_count(tmp_path):
    raw = np.full((4, 6), 100.0)
    raw[1, 2] = 5.0
    with pytest.raises(SinogramFormatError, match=r"<= 0 in 1 of 24 bins"):
        line_integrals(raw, np.full(6, 1000.0), np.full(6, 10.0))
    with pytest.raises(SinogramFormatError, match=r"flat - dark is <= 0 in 6 bins"):
        line_integrals(raw, np.full(6, 10.0), np.full(6, 10.0))
    with pytest.raises(SinogramFormatError, match="flat must be"):
        line_integrals(raw, np.ones(5))


def test_units_field(tmp_path):
    g = _fan()
    sino = np.zeros(g.sinogram_shape, np.float32)
    save_sinogram(tmp_path / "a.npz", sino, g, units="mu_per_mm")
    assert load_sinogram(tmp_path / "a.npz").units == "mu_per_mm"
    with np.load(tmp_path / "a.npz") as d:
        fields = dict(d)
    fields["units"] = np.str_("furlongs")
    np.savez(tmp_path / "b.npz", **fields)
    with pytest.raises(SinogramFormatError, match="units must be one of"):
        load_sinogram(tmp_path / "b.npz")
    save_sinogram(tmp_path / "c.npz", sino, g)  # the default is not written: old readers see no change
    with np.load(tmp_path / "c.npz") as d:
        assert "units" not in d.files


# ----- limited-angle solvers ---------------------------------------------------------------------
def test_spdhg_matches_pdhg_and_respects_bounds_and_support():
    from tomo.recon.support import disc_mask
    from tomo.recon.tv import tv_pdhg
    from tomo.recon.tv_subsets import tv_spdhg

    n = 24
    g = ParallelBeam2D((n, n), 1.0, np.linspace(0, np.pi, 60, endpoint=False), 36, 1.0)
    x = _phantom(n).double()
    y = CTProjector(g)(x)
    ref = tv_pdhg(CTProjector(g), y, weight=1e-3, iterations=1500, progress=False)
    subs = [ParallelBeam2D((n, n), 1.0, g.angles_array[i::4], 36, 1.0) for i in range(4)]
    out = tv_spdhg(
        [CTProjector(s) for s in subs], [y[i::4] for i in range(4)], weight=1e-3, iterations=1500, progress=False
    )
    err = float((out - ref).norm() / ref.norm())
    assert err < 0.03, err
    support = torch.from_numpy(disc_mask(g, 2.0, -1.0, 8.0))
    b = tv_spdhg(
        [CTProjector(s) for s in subs],
        [y[i::4] for i in range(4)],
        weight=1e-3,
        iterations=200,
        upper=0.025,
        support=support,
        progress=False,
    )
    assert float(b.max()) <= 0.025 + 1e-9 and float(b.min()) >= 0.0
    assert float(b[~support].abs().max()) == 0.0


def test_fit_disc_finds_a_simulated_disc():
    from tomo.recon.support import fit_disc

    g = _fan(0.5, n=32, det=80, views=30)
    c = np.arange(64) + 0.5 - 32
    xx, yy = np.meshgrid(c * 0.5, -c * 0.5)
    fine = FanBeam2D((64, 64), 0.5, g.angles, 80, 1.5, 60.0, 30.0, detector_offset_mm=0.5)
    sino = CTProjector(fine)(torch.from_numpy(((xx - 3) ** 2 + (yy + 2) ** 2 <= 9**2) * 0.03)).numpy()
    x, y, r, rms = fit_disc(sino, g)
    assert abs(x - 3) < 0.2 and abs(y + 2) < 0.2 and abs(r - 9) < 0.2, (x, y, r)
    assert rms < 0.2


def test_sirt_upper_bound_and_tv_method_options():
    """--upper clips SIRT and TV; --support disc zeroes TV outside the fitted disc; --subsets 2 runs SPDHG."""
    from tomo.methods import reconstruct
    from tomo.recon import sirt
    from tomo.recon.support import disc_mask, fit_disc

    g = _fan(0.0, n=24, det=48, views=30)
    y = CTProjector(g)(_phantom().double()).float()
    x = sirt(CTProjector(g), y, iterations=20, upper=0.02, progress=False)
    assert float(x.max()) <= 0.02 + 1e-9
    mu = reconstruct(y, g, method="tv", progress=False, iterations=30, upper=0.025, support="disc", subsets=2)
    cx, cy, r, _ = fit_disc(y.numpy(), g)
    outside = ~torch.from_numpy(disc_mask(g, cx, cy, r))
    assert float(mu.max()) <= 0.025 + 1e-6 and float(mu[outside].abs().max()) == 0.0
    with pytest.raises(ValueError, match="support must be one of"):
        reconstruct(y, g, method="tv", progress=False, iterations=2, support="square")
