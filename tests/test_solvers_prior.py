"""Smoke tests of the solvers with a real (tiny, randomly initialised) diffusers UNet patch prior."""

from __future__ import annotations

import pytest
import torch

from operators.base import LinearOperator
from tomo.methods.diffusion import ct_problem
from tomo.priors import DiffusionPrior, build_unet, make_config
from tomo.solvers import daps, dds, dps, dsg, mpgd


class Subsample(LinearOperator):
    """Keep every other pixel of each row and column (a tiny exact-adjoint stand-in for any A)."""

    def __init__(self, shape):
        super().__init__(shape, (shape[0] // 2, shape[1] // 2))

    def _forward(self, x):
        return x[:, ::2, ::2]

    def _adjoint(self, y):
        out = torch.zeros((y.shape[0],) + self.in_shape, dtype=y.dtype, device=y.device)
        out[:, ::2, ::2] = y
        return out


def test_subsample_is_adjoint():
    op = Subsample((6, 8))
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(6, 8, generator=g, dtype=torch.float64), torch.randn(3, 4, generator=g, dtype=torch.float64)
    # measured error 0 (a selection and its zero-filling are exact transposes)
    assert abs(float((op(x) * y).sum() - (x * op.adjoint(y)).sum())) <= 1e-12


@pytest.fixture(scope="module")
def tiny_prior():
    torch.manual_seed(0)
    arch = {
        "class": "UNet2DModel",
        "block_out_channels": [8, 16],
        "layers_per_block": 1,
        "down_block_types": ["DownBlock2D", "DownBlock2D"],
        "up_block_types": ["UpBlock2D", "UpBlock2D"],
        "norm_num_groups": 4,
    }
    config = make_config(architecture=arch, patch_size=8, image_size=16)
    prior = DiffusionPrior(build_unet(config), config)
    prior.requires_grad_(False)
    return prior.eval()


@pytest.mark.parametrize(
    "solver,kw",
    [
        (dds, {"steps": 3, "cg_iterations": 2}),
        (dps, {"steps": 3, "zeta": 0.5}),
        (mpgd, {"steps": 3, "grad_steps": 2}),
        (dsg, {"steps": 3}),
        (daps, {"steps": 3, "langevin_steps": 2}),
    ],
)
def test_solvers_run_with_a_unet_patch_prior_on_odd_sizes(tiny_prior, solver, kw):
    op = Subsample((14, 10))  # not a multiple of the 8-pixel patch
    y = torch.rand(2, 7, 5) * 2 - 1
    a = solver(tiny_prior, op, y, seed=3, progress=False, **kw)
    b = solver(tiny_prior, op, y, seed=3, progress=False, **kw)
    assert a.x.shape == (2, 1, 14, 10) and bool(torch.isfinite(a.x).all())
    assert a.network_evaluations == 3
    torch.testing.assert_close(a.x, b.x, rtol=0, atol=0)


def test_ct_problem_accepts_the_prior_hu_window(tiny_prior):
    op = Subsample((8, 8))
    hu = torch.full((1, 1, 8, 8), 40.0)
    mu = 0.0192 * (1 + hu / 1000)
    p = ct_problem(tiny_prior, op, op(mu)[0, 0])
    torch.testing.assert_close(p.operator(tiny_prior.hu_to_model(hu)), p.y, rtol=1e-5, atol=1e-7)


@pytest.fixture(scope="module")
def tiny_prior_dir(tmp_path_factory, tiny_prior):
    from tomo.priors.checkpoint import save_config, save_tensors

    folder = tmp_path_factory.mktemp("prior")
    save_config(folder / "prior.json", tiny_prior.config)
    save_tensors(folder / "prior.safetensors", tiny_prior.unet.state_dict())
    return folder


@pytest.mark.parametrize(
    "method,options",
    [
        ("dds", {"steps": 2, "cg_iterations": 3, "eta": 0.5}),
        ("dps", {"steps": 2, "zeta": 0.5}),
        ("dps", {"steps": 2, "guidance": "dps", "zeta": 0.5}),
        ("dps", {"steps": 2, "guidance": "dsg"}),
        ("dps", {"steps": 2, "guidance": "daps"}),
    ],
)
def test_registered_in_the_reconstruct_registry(tiny_prior_dir, method, options):
    """``reconstruct(..., method="dds"|"dps")`` returns attenuation in 1/mm of the grid's shape."""
    from operators import CTProjector, ParallelBeam2D
    from tomo.methods.registry import available_methods, reconstruct

    assert {"dds", "dps"} <= set(available_methods())
    geometry = ParallelBeam2D(
        image_shape=(16, 16),
        pixel_spacing_mm=1.5,
        angles=torch.arange(6) * 3.14159 / 6,
        detector_count=24,
        detector_spacing_mm=1.5,
    )
    mu = torch.full((2, 16, 16), 0.0192)
    sino = CTProjector(geometry)(mu)
    out = reconstruct(sino, geometry, method, i0=1e5, progress=False, prior=str(tiny_prior_dir), seed=1, **options)
    assert out.shape == (2, 16, 16) and bool(torch.isfinite(out).all())
    # a random network's output is not a CT image, but the affine map keeps it in the mu range of
    # the HU window [-1000, 2000] give or take the CG correction
    assert -0.05 < float(out.mean()) < 0.1


def test_registry_dds_warm_start_from_a_classical_method(tiny_prior_dir, monkeypatch):
    """Default dds starts from TV noised to start=0.2; the warm start really is the method's image.

    With start -> 0 the schedule begins at t ~ 0 and the DDS result must stay near the warm-start
    image; a cold start (init none) from the same random network lands elsewhere.
    """
    from operators import CTProjector, ParallelBeam2D
    from tomo.methods import diffusion as solver_methods
    from tomo.methods.registry import reconstruct

    geometry = ParallelBeam2D(
        image_shape=(16, 16),
        pixel_spacing_mm=1.5,
        angles=torch.arange(8) * 3.14159 / 8,
        detector_count=24,
        detector_spacing_mm=1.5,
    )
    assert solver_methods.DDS_DEFAULTS["init"] == "tv" and solver_methods.dds_start_default(geometry) == 0.2
    mu = torch.zeros(1, 16, 16)
    mu[:, 4:12, 4:12] = 0.0192
    sino = CTProjector(geometry)(mu)
    calls = []
    real = solver_methods.warm_start_image
    monkeypatch.setattr(solver_methods, "warm_start_image", lambda *a: calls.append(a[0]) or real(*a))
    fbp = reconstruct(sino, geometry, "fbp", progress=False)
    warm = reconstruct(
        sino, geometry, "dds", progress=False, prior=str(tiny_prior_dir), steps=2, init="fbp", start=0.005
    )
    cold = reconstruct(sino, geometry, "dds", progress=False, prior=str(tiny_prior_dir), steps=2, init="none")
    assert calls == ["fbp"]
    # measured: mean |warm - fbp| 0.0014 /mm, |cold - fbp| 0.0098 /mm
    assert float((warm - fbp).abs().mean()) < 0.5 * float((cold - fbp).abs().mean())
    with pytest.raises(ValueError, match="needs --init"):
        reconstruct(sino, geometry, "dds", progress=False, prior=str(tiny_prior_dir), steps=2, init="none", start=0.5)
    with pytest.raises(ValueError, match="classical"):
        reconstruct(sino, geometry, "dds", progress=False, prior=str(tiny_prior_dir), steps=2, init="dps")


def test_registry_samples_average_posterior_samples(tiny_prior_dir):
    """``samples=N`` returns the mean of N posterior samples: shape kept, differs from one sample."""
    from operators import CTProjector, ParallelBeam2D
    from tomo.methods.registry import reconstruct

    geometry = ParallelBeam2D(
        image_shape=(16, 16),
        pixel_spacing_mm=1.5,
        angles=torch.arange(6) * 3.14159 / 6,
        detector_count=24,
        detector_spacing_mm=1.5,
    )
    sino = CTProjector(geometry)(torch.full((2, 16, 16), 0.0192))
    kw = dict(progress=False, prior=str(tiny_prior_dir), steps=2, init="none", seed=3)
    one = reconstruct(sino, geometry, "dds", **kw)
    mean = reconstruct(sino, geometry, "dds", samples=3, **kw)
    assert mean.shape == one.shape == (2, 16, 16) and bool(torch.isfinite(mean).all())
    assert float((mean - one).abs().max()) > 1e-6
    with pytest.raises(ValueError, match="samples"):
        reconstruct(sino, geometry, "dds", samples=0, **kw)
    # the spread of the samples comes back as a calibrated std in 1/mm, for sampling methods only
    mean2, std = reconstruct(sino, geometry, "dds", samples=3, return_std=True, **kw)
    torch.testing.assert_close(mean2, mean)
    assert std.shape == mean.shape and bool((std >= 0).all()) and float(std.max()) > 0
    _, no_std = reconstruct(sino, geometry, "dds", return_std=True, **kw)
    _, fbp_std = reconstruct(sino, geometry, "fbp", return_std=True, progress=False)
    assert no_std is None and fbp_std is None


def test_bfloat16_autocast_of_the_network_stays_close_to_float32(tiny_prior):
    op = Subsample((16, 16))
    y = torch.rand(1, 8, 8) * 2 - 1
    exact = dds(tiny_prior, op, y, steps=3, seed=0, progress=False).x
    fast = dds(tiny_prior, op, y, steps=3, seed=0, progress=False, autocast_dtype=torch.bfloat16).x
    assert fast.dtype == torch.float32
    # bf16 has an 8-bit mantissa: measured relative difference ~1e-2 after 3 steps of a random net
    assert float((fast - exact).norm() / exact.norm()) < 0.05
    with pytest.raises(ValueError, match="autocast_dtype"):
        dds(tiny_prior, op, y, steps=1, autocast_dtype=torch.int8, progress=False)


def _parallel_16px(views: int):
    """A 16 x 16 parallel-beam geometry (1.5 mm pixels) with ``views`` views over half a turn."""
    from operators import ParallelBeam2D

    return ParallelBeam2D(
        image_shape=(16, 16),
        pixel_spacing_mm=1.5,
        angles=torch.arange(views) * 3.14159 / views,
        detector_count=24,
        detector_spacing_mm=1.5,
    )


def _fan_16px_60_views():
    """A 16 x 16 fan-beam geometry with 60 views over a full turn (30 per half turn)."""
    from operators import FanBeam2D

    return FanBeam2D(
        image_shape=(16, 16),
        pixel_spacing_mm=1.5,
        angles=torch.arange(60) * 2 * 3.14159 / 60,
        detector_count=32,
        detector_spacing_mm=2.0,
        source_origin_mm=48.0,
        origin_detector_mm=24.0,
    )


def test_registry_dds_default_tv_weight_follows_views_and_dose(tiny_prior_dir, monkeypatch):
    """The hybrid data step is on by default with 1.6e-3 / views per half turn, doubled per decade
    of dose below 1e6; --dds-tv 0 is plain CG; --dds-tv-z reaches the solver and refuses samples."""
    from operators import CTProjector
    from tomo.methods import diffusion as solver_methods
    from tomo.methods.registry import reconstruct

    parallel, fan = _parallel_16px(8), _fan_16px_60_views()
    assert solver_methods.dds_tv_default(parallel) == pytest.approx(2e-4)
    assert solver_methods.dds_tv_default(parallel, 1e6) == pytest.approx(2e-4)
    assert solver_methods.dds_tv_default(fan, 1e5) == pytest.approx(1.6e-3 / 30 * 2)  # 30 views per half turn, x2
    assert solver_methods.dds_tv_default(fan, 1e2) == pytest.approx(1.6e-3 / 30 * 4)  # at most x4
    seen = []
    real = solver_methods.sample_or_mean
    monkeypatch.setattr(solver_methods, "sample_or_mean", lambda *a, **k: seen.append(k) or real(*a, **k))
    sino = CTProjector(parallel)(torch.full((3, 16, 16), 0.0192))
    kw = dict(progress=False, prior=str(tiny_prior_dir), steps=2, i0=1e6)
    reconstruct(sino, parallel, "dds", **kw)
    reconstruct(sino, parallel, "dds", dds_tv=0.0, **kw)
    reconstruct(sino, parallel, "dds", dds_tv_z=1e-3, batch_size=3, **kw)
    assert seen[0]["tv_weight"] == pytest.approx(2e-4) and seen[1]["tv_weight"] == 0.0
    assert seen[2]["tv_z_weight"] == 1e-3 and "tv_z_weight" not in seen[0]
    with pytest.raises(ValueError, match="samples"):
        reconstruct(sino, parallel, "dds", dds_tv_z=1e-3, samples=2, **kw)
    with pytest.raises(ValueError, match="dds-tv"):
        reconstruct(sino, parallel, "dds", dds_tv=-1.0, **kw)


def test_registry_dds_final_denoising_in_hu(tiny_prior_dir, monkeypatch):
    """--denoise-hu reaches the solver as a model-range level (HU / the prior's HU per unit),
    default 20 HU, 0 = off; negative values are refused; the benchmark counts its network call."""
    from operators import CTProjector
    from tomo.evaluation.runner import _network_evaluations
    from tomo.methods import diffusion as solver_methods
    from tomo.methods.registry import reconstruct
    from tomo.priors import load_prior

    prior = load_prior(str(tiny_prior_dir))
    lo, hi = prior.hu_window
    parallel = _parallel_16px(8)
    seen = []
    real = solver_methods.sample_or_mean
    monkeypatch.setattr(solver_methods, "sample_or_mean", lambda *a, **k: seen.append(k) or real(*a, **k))
    sino = CTProjector(parallel)(torch.full((1, 16, 16), 0.0192))
    kw = dict(progress=False, prior=str(tiny_prior_dir), steps=2, i0=1e6)
    off = reconstruct(sino, parallel, "dds", denoise_hu=0.0, **kw)
    on = reconstruct(sino, parallel, "dds", **kw)
    assert seen[0]["denoise_sigma"] == 0.0
    assert seen[1]["denoise_sigma"] == pytest.approx(20.0 / (0.5 * (hi - lo)))
    assert not torch.allclose(on, off)
    with pytest.raises(ValueError, match="denoise-hu"):
        reconstruct(sino, parallel, "dds", denoise_hu=-5.0, **kw)
    assert _network_evaluations("dds", {}) == 26 and _network_evaluations("dds", {"denoise_hu": 0.0}) == 25
    assert _network_evaluations("dds", {"steps": 10, "samples": 4}) == 44
    # dps by its guidance: the default (25 steps + the final denoising), the reference (1000, none)
    assert _network_evaluations("dps", {}) == 26 and _network_evaluations("dps", {"guidance": "dps"}) == 1000


def test_std_calibration_per_solver_and_nearest_configuration():
    """The std factor is chosen by solver and by the standard configuration nearest to the scan."""
    from tomo.methods import diffusion as solver_methods

    parallel, fan = _parallel_16px, _fan_16px_60_views()
    table = solver_methods.STD_CALIBRATION["dds"]
    assert solver_methods.nearest_configuration(parallel(8)) == "parallel-8"
    assert solver_methods.nearest_configuration(parallel(30)) == "parallel-30"
    assert solver_methods.nearest_configuration(parallel(180)) == "parallel-30"
    assert solver_methods.nearest_configuration(fan) == "fanbeam-60"
    assert solver_methods.std_calibration("dds", parallel(8)) == table["parallel-8"]
    assert solver_methods.std_calibration("dds", fan) == table["fanbeam-60"]
    assert solver_methods.std_calibration("dps", fan) == 1.0  # no factor measured for the reference DPS
    assert solver_methods.solver_name("dps", {}) == "mpgd" and solver_methods.solver_name("dds", {}) == "dds"
    assert solver_methods.std_calibration("mpgd", fan) == solver_methods.STD_CALIBRATION["mpgd"]["fanbeam-60"] > 1.0
    assert all(v > 1.0 for v in table.values())  # the samples under-disperse


def test_restore_warm_starts_from_the_tv_restoration(tiny_prior):
    """init="tv": the solver starts from the TV fill of the box (here noised to 1 % of the schedule,
    so the result stays near it), where a cold start from noise lands anywhere."""
    from tomo.methods.image_tasks import TV_WARM_START, degrade, restore, task_operator, tv_restore

    yy, xx = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    hu = torch.where((yy - 8) ** 2 + (xx - 8) ** 2 < 36, 300.0, -800.0)
    op = task_operator("inpaint", (16, 16))
    y = degrade(op, hu, 2.0, seed=0)
    tv = torch.from_numpy(tv_restore(y, op, **TV_WARM_START))
    hole = ~op.mask
    kw = {"steps": 2, "cg_iterations": 1, "progress": False, "seed": 0}
    warm = restore(tiny_prior, op, y, "dds", init="tv", start=0.01, **kw).hu[0, 0]
    cold = restore(tiny_prior, op, y, "dds", **kw).hu[0, 0]
    # measured: mean |restored - TV| in the box 53 HU (warm) against 1396 HU (cold, random network)
    assert float((warm - tv)[hole].abs().mean()) < 0.1 * float((cold - tv)[hole].abs().mean())
    with pytest.raises(ValueError, match="start < 1"):
        restore(tiny_prior, op, y, "dds", init="tv", **kw)
    with pytest.raises(ValueError, match="init must be"):
        restore(tiny_prior, op, y, "dds", init="fbp", start=0.2, **kw)


def test_dds_start_default_per_configuration(monkeypatch):
    """One sample: start 0.05 for parallel scans of more than 15 views per half turn, else 0.2;
    several samples keep 0.2 (their std calibration was fitted there); the registry passes it on."""
    import numpy as np

    from operators import FanBeam2D, ParallelBeam2D
    from tomo.methods import diffusion

    def parallel(views):
        return ParallelBeam2D((16, 16), 1.5, np.linspace(0, np.pi, views, endpoint=False), 24, 1.5)

    fan = FanBeam2D((16, 16), 1.5, np.linspace(0, 2 * np.pi, 60, endpoint=False), 24, 1.5, 40.0, 20.0)
    assert diffusion.dds_start_default(parallel(30)) == 0.05
    assert diffusion.dds_start_default(parallel(8)) == diffusion.dds_start_default(fan) == 0.2
    assert diffusion.dds_start_default(parallel(30), samples=4) == 0.2
    seen = []
    monkeypatch.setattr(diffusion, "_solve", lambda solver, defaults, *a: seen.append(defaults["start"]))

    class Problem:
        geometry, i0 = parallel(30), 1e6

    diffusion.run_dds(None, Problem())
    diffusion.run_dds(None, Problem(), samples=3)
    assert seen == [0.05, 0.2]


def test_registry_dps_guidance_defaults_and_refusals(tiny_prior_dir, monkeypatch):
    """--method dps runs the default successor (warm start, final denoising); --guidance dps is the
    reference (cold start, zeta 1000 / steps); options of another guidance are refused."""
    from operators import CTProjector
    from tomo.methods import diffusion as solver_methods
    from tomo.methods.registry import reconstruct

    parallel = _parallel_16px(8)
    seen = []
    real = solver_methods.sample_or_mean
    monkeypatch.setattr(
        solver_methods, "sample_or_mean", lambda solver, *a, **k: seen.append((solver, k)) or real(solver, *a, **k)
    )
    sino = CTProjector(parallel)(torch.full((1, 16, 16), 0.0192))
    kw = dict(progress=False, prior=str(tiny_prior_dir), i0=1e6)
    reconstruct(sino, parallel, "dps", steps=2, **kw)
    reconstruct(sino, parallel, "dps", guidance="dps", steps=4, **kw)
    default = solver_methods.DPS_GUIDANCE[solver_methods.DPS_DEFAULTS["guidance"]]
    (solver, k), (ref, k_ref) = seen
    assert solver is default and "x_init" in k and k["denoise_sigma"] > 0 and k["steps"] == 2
    assert ref is dps and "x_init" not in k_ref and k_ref["zeta"] == 250.0 and "denoise_sigma" not in k_ref
    with pytest.raises(ValueError, match="guidance"):
        reconstruct(sino, parallel, "dps", guidance="magic", steps=2, **kw)
    with pytest.raises(ValueError, match="--grad-steps does not apply to --guidance daps"):
        reconstruct(sino, parallel, "dps", guidance="daps", grad_steps=3, steps=2, **kw)
    with pytest.raises(ValueError, match="--denoise-hu does not apply"):
        reconstruct(sino, parallel, "dps", guidance="dps", denoise_hu=20.0, steps=2, **kw)
