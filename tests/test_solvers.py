"""Diffusion solvers against an analytic Gaussian prior, whose posterior is known in closed form.

For ``x0 ~ N(m, s^2 I)`` and ``y = M x0 + n`` the exact ``eps`` of the prior and the exact
posterior mean are available (``tomo.solvers.GaussianPrior``), so the solvers can be checked
against the truth on tiny problems in well under a second each.
"""

from __future__ import annotations

import math

import pytest
import torch

import operators
from operators.base import LinearOperator
from operators.units import MU_WATER_PER_MM
from tomo.methods.diffusion import ct_problem
from tomo.methods.image_tasks import hu_problem
from tomo.solvers import (
    DataFidelity,
    GaussianPrior,
    conjugate_gradient,
    ddim_step,
    ddpm_posterior_step,
    dds,
    dps,
    make_schedule,
    posterior_mean,
    timestep_for_noise,
    transmission_poisson_weights,
    tweedie_x0,
)


class MatrixOperator(LinearOperator):
    """A dense matrix acting on flattened (H, W) images: the simplest exact adjoint pair."""

    def __init__(self, matrix: torch.Tensor, shape):
        super().__init__(shape, (matrix.shape[0],))
        self.matrix = matrix

    def _forward(self, x):
        return x.reshape(x.shape[0], -1) @ self.matrix.T.to(x.dtype)

    def _adjoint(self, y):
        return (y @ self.matrix.to(y.dtype)).reshape((y.shape[0],) + self.in_shape)


SHAPE = (5, 6)  # non-square on purpose
N_PIX = SHAPE[0] * SHAPE[1]
PRIOR_MEAN, PRIOR_STD, NOISE_STD = 0.1, 0.5, 0.05


@pytest.fixture
def problem():
    """A random under-determined Gaussian problem (12 measurements of 30 pixels)."""
    g = torch.Generator().manual_seed(0)
    matrix = torch.randn(12, N_PIX, generator=g) / N_PIX**0.5
    x_true = PRIOR_MEAN + PRIOR_STD * torch.randn(N_PIX, generator=g)
    y = matrix @ x_true + NOISE_STD * torch.randn(12, generator=g)
    prior = GaussianPrior(mean=PRIOR_MEAN, std=PRIOR_STD)
    exact = prior.posterior_mean(matrix, y, NOISE_STD).float()
    return prior, MatrixOperator(matrix, SHAPE), matrix, y, exact


def test_matrix_operator_is_adjoint():
    g = torch.Generator().manual_seed(1)
    op = MatrixOperator(torch.randn(7, N_PIX, generator=g, dtype=torch.float64), SHAPE)
    x = torch.randn(SHAPE, generator=g, dtype=torch.float64)
    y = torch.randn(7, generator=g, dtype=torch.float64)
    lhs, rhs = float((op(x) * y).sum()), float((x * op.adjoint(y)).sum())
    # measured relative error ~1e-16 (float64 round-off)
    assert abs(lhs - rhs) <= 1e-12 * abs(lhs)


# ----- schedule and single steps -----------------------------------------------------------------
def test_schedule_trailing_starts_at_pure_noise_and_ends_clean():
    prior = GaussianPrior()
    s = make_schedule(prior.alphas_cumprod, 10)
    assert s.timesteps[0] == 999 and len(s) == 10
    assert all(a > b for a, b in zip(s.timesteps, s.timesteps[1:]))
    assert s.abar_prev[-1] == 1.0 and s.abar_prev[:-1] == s.abar[1:]
    assert make_schedule(prior.alphas_cumprod, 1000).timesteps == list(range(999, -1, -1))


@pytest.mark.parametrize("steps", [0, 1001])
def test_schedule_rejects_bad_step_count(steps):
    with pytest.raises(ValueError, match="steps"):
        make_schedule(GaussianPrior().alphas_cumprod, steps)


def test_single_steps_match_diffusers_ddim_scheduler():
    """DDPM posterior step == DDIM with eta=1; DDS step with eta=0 == DDIM with eta=0."""
    from diffusers import DDIMScheduler

    abar_all = GaussianPrior().alphas_cumprod
    s = make_schedule(abar_all, 10)
    ref = DDIMScheduler(num_train_timesteps=1000, timestep_spacing="trailing", clip_sample=False, set_alpha_to_one=True)
    ref.set_timesteps(10)
    g = torch.Generator().manual_seed(3)
    x_t, eps, z = (torch.randn(2, 1, 4, 4, generator=g, dtype=torch.float64) for _ in range(3))
    for i in (0, 4):
        t, abar, abar_prev = s.timesteps[i], s.abar[i], s.abar_prev[i]
        x0 = tweedie_x0(x_t, eps, abar)
        stochastic = ref.step(eps, t, x_t, eta=1.0, variance_noise=z).prev_sample
        deterministic = ref.step(eps, t, x_t, eta=0.0).prev_sample
        # diffusers keeps alphas_cumprod in float32: agreement to ~1e-7 relative (measured 1.3e-7)
        torch.testing.assert_close(ddpm_posterior_step(x_t, x0, abar, abar_prev, z), stochastic, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(ddim_step(x0, eps, abar_prev, 0.0, None), deterministic, rtol=1e-6, atol=1e-6)


# ----- conjugate gradients and the data term -------------------------------------------------------
def test_conjugate_gradient_solves_each_item_of_a_batch_independently():
    g = torch.Generator().manual_seed(4)
    mats = [torch.randn(8, 8, generator=g, dtype=torch.float64) for _ in range(2)]
    spd = [m @ m.T + 0.5 * torch.eye(8, dtype=torch.float64) for m in mats]
    b = torch.randn(2, 8, generator=g, dtype=torch.float64)
    apply = lambda v: torch.stack([spd[i] @ v[i] for i in range(2)])  # noqa: E731
    x = conjugate_gradient(apply, b, torch.zeros_like(b), iterations=8)
    for i in range(2):
        torch.testing.assert_close(x[i], torch.linalg.solve(spd[i], b[i]), rtol=1e-8, atol=1e-8)
    alone = conjugate_gradient(lambda v: (spd[1] @ v[0])[None], b[1:], torch.zeros_like(b[1:]), 3)
    torch.testing.assert_close(conjugate_gradient(apply, b, torch.zeros_like(b), 3)[1:], alone)


def test_power_iteration_gives_each_item_its_own_norm():
    from operators.linalg import power_iteration, random_start

    g = torch.Generator().manual_seed(6)
    mats = torch.randn(3, 9, 7, generator=g, dtype=torch.float64) * torch.tensor([1.0, 30.0, 0.0])[:, None, None]
    normal = lambda v: torch.einsum("bji,bjk,bk->bi", mats, mats, v)  # noqa: E731 - M^T M v per item
    est = power_iteration(normal, random_start((3, 7), torch.float64), 300).sqrt()
    exact = torch.linalg.matrix_norm(mats, ord=2)
    torch.testing.assert_close(est, exact, rtol=1e-6, atol=0.0)  # item 2 is the zero map: 0


def test_noising_and_tweedie_invert_each_other():
    from tomo.priors.noising import add_noise

    g = torch.Generator().manual_seed(7)
    x0, eps = torch.randn(2, 1, 4, 4, generator=g), torch.randn(2, 1, 4, 4, generator=g)
    for abar in (0.9, 0.05, torch.tensor([0.9, 0.05]).reshape(2, 1, 1, 1)):
        torch.testing.assert_close(tweedie_x0(add_noise(x0, eps, abar), eps, abar), x0, rtol=1e-5, atol=1e-5)


def test_data_fidelity_normalises_the_weighted_operator(problem):
    _, op, matrix, y, _ = problem
    w = torch.linspace(0.5, 4.0, 12)
    data = DataFidelity(op, y, w, power_iterations=200)
    exact = torch.linalg.matrix_norm(w.sqrt()[:, None] * matrix, ord=2)
    assert float(data.scale[0]) == pytest.approx(1.0 / float(exact), rel=1e-4)
    x = torch.randn(1, 1, *SHAPE, generator=torch.Generator().manual_seed(5))
    manual = data.scale[0] * w.sqrt() * (y - matrix @ x.reshape(-1))
    torch.testing.assert_close(data.residual(x).reshape(-1), manual)


def test_data_fidelity_rejects_bad_inputs(problem):
    _, op, _, y, _ = problem
    with pytest.raises(ValueError, match="measurement shape"):
        DataFidelity(op, torch.zeros(11))
    with pytest.raises(ValueError, match="NaN"):
        DataFidelity(op, torch.full((12,), float("nan")))
    with pytest.raises(ValueError, match=">= 0"):
        DataFidelity(op, y, -torch.ones(12))
    with pytest.raises(ValueError, match="broadcast"):
        DataFidelity(op, y, torch.ones(5))
    with pytest.raises(TypeError, match="LinearOperator"):
        DataFidelity(torch.eye(3), y)


def test_transmission_poisson_weights_is_the_operators_formula():
    # one formula (tested in test_operators_noise.py); the solvers' name is kept for callers
    assert transmission_poisson_weights is operators.transmission_weights


# ----- model-domain change of variable ------------------------------------------------------------
def test_ct_problem_is_exact_for_the_affine_hu_mu_map(problem):
    prior, op, _matrix, _, _ = problem
    x = 0.3 * torch.randn(1, 1, *SHAPE, generator=torch.Generator().manual_seed(6))
    mu = MU_WATER_PER_MM * (1 + prior.model_to_hu(x) / 1000)
    p = ct_problem(prior, op, op(mu)[0, 0])
    torch.testing.assert_close(p.operator(x), p.y, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(p.to_physical(x), mu)
    weighted = ct_problem(prior, op, op(mu)[0, 0].abs(), i0=1e5)
    assert weighted.weights.shape == (1, 1, 12)
    with pytest.raises(ValueError, match="not both"):
        ct_problem(prior, op, op(mu)[0, 0], i0=1e5, weights=torch.ones(12))


def test_hu_problem_maps_hu_measurements_to_model_range(problem):
    prior, op, _, _, _ = problem
    x = torch.rand(2, 1, *SHAPE, generator=torch.Generator().manual_seed(7)) - 0.5
    p = hu_problem(prior, op, op(prior.model_to_hu(x))[:, 0])
    torch.testing.assert_close(p.operator(x), p.y, rtol=1e-5, atol=1e-3)


# ----- solvers versus the exact posterior ---------------------------------------------------------
def _sample_mean_error(solver, prior, op, y, exact, n=24, **kw):
    """Error of the mean of ``n`` posterior samples (one batch of identical measurements)."""
    result = solver(prior, op, y.expand(n, -1), seed=0, progress=False, **kw)
    assert result.x.shape == (n, 1, *SHAPE)
    return float((result.x.mean(0).reshape(-1) - exact).norm()), result


def test_dds_sample_mean_approaches_the_exact_posterior_mean(problem):
    prior, op, _matrix, y, exact = problem
    start = float((torch.full_like(exact, PRIOR_MEAN) - exact).norm())
    err, result = _sample_mean_error(dds, prior, op, y, exact, steps=20, cg_iterations=5)
    unconditional, _ = _sample_mean_error(dds, prior, op, y, exact, steps=20, cg_iterations=0)
    # measured: err 0.33 (Monte-Carlo error of 24 samples is about 0.3), prior mean 1.88,
    # unconditional sampling 1.9
    assert err < 0.3 * start and err < 0.3 * unconditional
    assert result.network_evaluations == 20 and result.gradient_evaluations == 0
    # data consistency improves from the first (pure-noise) step to the last
    first, last = torch.tensor(result.residual_norms[0]), torch.tensor(result.residual_norms[-1])
    assert float(last.mean()) < 0.5 * float(first.mean())


def test_dps_sample_mean_approaches_the_exact_posterior_mean(problem):
    prior, op, _matrix, y, exact = problem
    start = float((torch.full_like(exact, PRIOR_MEAN) - exact).norm())
    err, result = _sample_mean_error(dps, prior, op, y, exact, steps=100, zeta=0.3)
    unconditional, free = _sample_mean_error(dps, prior, op, y, exact, steps=100, zeta=0.0)
    assert err < 0.5 * start and err < 0.5 * unconditional
    assert result.network_evaluations == result.gradient_evaluations == 100
    data = DataFidelity(op, y.expand(24, -1))
    assert float(data.residual_norm(result.x).mean()) < 0.5 * float(data.residual_norm(free.x).mean())


def test_dds_uses_the_noise_weights(problem):
    """With very unequal noise, the weighted solver tracks the weighted posterior, not the plain one."""
    prior, op, matrix, _, _ = problem
    g = torch.Generator().manual_seed(8)
    noise_std = torch.where(torch.arange(12) < 6, torch.tensor(0.02), torch.tensor(1.0))
    y = matrix @ (PRIOR_MEAN + PRIOR_STD * torch.randn(N_PIX, generator=g)) + noise_std * torch.randn(12, generator=g)
    exact = prior.posterior_mean(matrix, y, noise_std).float()
    weighted, _ = _sample_mean_error(dds, prior, op, y, exact, steps=20, weights=noise_std**-2, lam=0.0)
    plain, _ = _sample_mean_error(dds, prior, op, y, exact, steps=20)
    assert weighted < plain


@pytest.mark.parametrize("solver,kw", [(dds, {"steps": 5}), (dps, {"steps": 5})])
def test_same_seed_same_result_and_other_seed_differs(problem, solver, kw):
    prior, op, _, y, _ = problem
    a = solver(prior, op, y, seed=11, progress=False, **kw).x
    b = solver(prior, op, y, seed=torch.Generator().manual_seed(11), progress=False, **kw).x
    c = solver(prior, op, y, seed=12, progress=False, **kw).x
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.allclose(a, c)


@pytest.mark.parametrize("layout", ["single", "batch", "batch_channel"])
def test_measurement_layouts_give_image_batches(problem, layout):
    prior, op, _, y, _ = problem
    y_in = {"single": y, "batch": y.expand(3, -1), "batch_channel": y.expand(3, 1, -1)}[layout]
    out = dds(prior, op, y_in, steps=3, seed=0, progress=False).x
    assert out.shape == ((1 if layout == "single" else 3), 1, *SHAPE)
    assert out.dtype == torch.float32


def test_solvers_reject_bad_arguments(problem):
    prior, op, _, y, _ = problem
    with pytest.raises(ValueError, match="eta"):
        dds(prior, op, y, eta=1.5)
    with pytest.raises(ValueError, match="cg_iterations"):
        dds(prior, op, y, cg_iterations=-1)
    with pytest.raises(ValueError, match="zeta"):
        dps(prior, op, y, zeta=-1.0)
    with pytest.raises(ValueError, match="steps"):
        dps(prior, op, y, steps=5000)
    with pytest.raises(TypeError, match="prior"):
        dds(object(), op, y)
    with pytest.raises(ValueError, match="measurement shape"):
        dds(prior, op, y[:5])
    with pytest.raises(TypeError, match="seed"):
        dds(prior, op, y, seed="zero")


def test_warm_start_runs_the_last_part_of_the_schedule(problem):
    prior, op, _matrix, y, exact = problem
    start_image = torch.full((1, 1, *SHAPE), PRIOR_MEAN)
    err, result = _sample_mean_error(dds, prior, op, y, exact, steps=5, x_init=start_image, start=0.2)
    assert result.timesteps[0] == 199 and result.network_evaluations == 5
    assert err < 0.3 * float((torch.full_like(exact, PRIOR_MEAN) - exact).norm())
    with pytest.raises(ValueError, match="x_init"):
        dds(prior, op, y, steps=5, start=0.5)
    with pytest.raises(ValueError, match="broadcast"):
        dps(prior, op, y, steps=5, start=0.5, x_init=torch.zeros(3, 3))
    with pytest.raises(ValueError, match="start"):
        dds(prior, op, y, steps=5, start=1.5, x_init=start_image)


def test_posterior_mean_of_samples_per_item_with_its_spread(problem):
    """Two different measurements in one batch: each item's sample mean approaches its own posterior."""
    prior, op, matrix, y, exact = problem
    y2 = matrix @ torch.full((N_PIX,), PRIOR_MEAN)  # a second, different measurement
    exact2 = prior.posterior_mean(matrix, y2, NOISE_STD).float()
    out = posterior_mean(dds, prior, op, torch.stack([y, y2]), samples=24, steps=20, seed=0, progress=False)
    assert out.x.shape == out.std.shape == (2, 1, *SHAPE)
    errors = [float((out.x[i].reshape(-1) - e).norm()) for i, e in enumerate((exact, exact2))]
    # measured 0.26 and 0.34 (Monte-Carlo error of 24 samples ~0.3); the two posteriors differ by 1.9
    assert max(errors) < 0.6 < float((exact - exact2).norm())
    # the spread lies between "no uncertainty" and the prior's 0.5; the exact posterior standard
    # deviation averages 0.41 per pixel, DDS samples measured 0.27 (DDS is not an exact sampler: its
    # early-stopped CG and DDIM re-noising under-disperse)
    assert 0.1 < float(out.std.mean()) < PRIOR_STD
    with pytest.raises(ValueError, match="samples"):
        posterior_mean(dds, prior, op, y, samples=0)


# ----- the hybrid data step: data term + TV by ADMM -----------------------------------------------
def _tv_problem(views: int = 8, n: int = 32, noise: float = 0.02):
    from operators import CTProjector, ParallelBeam2D

    geometry = ParallelBeam2D(
        image_shape=(n, n),
        pixel_spacing_mm=1.0,
        angles=torch.arange(views) * math.pi / views,
        detector_count=48,
        detector_spacing_mm=1.0,
    )
    op = CTProjector(geometry)
    truth = torch.zeros(1, 1, n, n, dtype=torch.float64)
    q = n // 4
    truth[..., q : 3 * q, q : 3 * q] = 0.5
    truth[..., 3 * q // 2 : 9 * q // 4, 7 * q // 4 : 5 * q // 2] = 1.0
    y = op(truth[:, 0]) + noise * torch.randn(
        (1,) + op.out_shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64
    )
    return op, truth, y


def test_admm_tv_step_lowers_its_objective_and_beats_plain_cg_on_piecewise_constant_images():
    """8 views of a piecewise-constant image: the TV step (same operator budget) is closer to the truth."""
    from operators.linalg import gradient

    op, truth, y = _tv_problem()
    data = DataFidelity(op, y)
    x0 = torch.zeros_like(truth)
    weight = 3e-3

    def objective(x):
        tv = float(gradient(x[:, 0]).pow(2).sum(1).sqrt().sum())
        return 0.5 * float(data.residual(x).pow(2).sum()) + weight * tv

    x_tv = data.solve_tv(x0, weight, admm_iterations=10, cg_iterations=5)
    x_cg = data.solve(x0, 50)
    assert objective(x_tv) < 0.5 * objective(x0)
    err_tv, err_cg = float((x_tv - truth).norm()), float((x_cg - truth).norm())
    assert err_tv < 0.8 * err_cg, (err_tv, err_cg)
    with pytest.raises(ValueError, match="tv_weight"):
        data.solve_tv(x0, 0.0)


def test_dds_with_the_tv_data_step_runs_and_reports_its_budget():
    op, _truth, y = _tv_problem(n=16)
    prior = GaussianPrior(mean=0.3, std=0.4)
    plain = dds(prior, op, y, steps=5, cg_iterations=2, seed=0, progress=False)
    hybrid = dds(prior, op, y, steps=5, cg_iterations=2, tv_weight=1e-3, admm_iterations=3, seed=0, progress=False)
    assert hybrid.network_evaluations == plain.network_evaluations == 5
    assert hybrid.operator_calls > plain.operator_calls  # 3 ADMM x 2 CG per step instead of 2 CG
    assert not torch.equal(hybrid.x, plain.x) and bool(torch.isfinite(hybrid.x).all())
    with pytest.raises(ValueError, match="tv_weight"):
        dds(prior, op, y, steps=2, tv_weight=-1.0, progress=False)


# ----- the final denoising -----------------------------------------------------------------------
def test_timestep_for_noise_finds_the_matching_level():
    abar = GaussianPrior().alphas_cumprod
    for t in (0, 1, 7, 120, 999):
        sigma = float(((1 - abar[t]) / abar[t]).sqrt())
        assert timestep_for_noise(abar, sigma) == t
        assert timestep_for_noise(abar, sigma * 1.001) == t  # nearest, not the next one up
    assert timestep_for_noise(abar, 1e-9) == 0 and timestep_for_noise(abar, 1e9) == 999
    for bad in (0.0, -0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="sigma"):
            timestep_for_noise(abar, bad)


def test_denoise_is_the_exact_posterior_mean_under_a_gaussian_prior():
    """For x0 ~ N(m, s^2), x = x0 + sigma n: E[x0 | x] = m + s^2 / (s^2 + sigma^2) (x - m), with sigma
    the schedule's level nearest to the one asked for (measured error ~1e-7, float32)."""
    from tomo.solvers.dds import denoise

    prior = GaussianPrior(mean=0.3, std=0.4)
    x = torch.randn(2, 1, 5, 6, generator=torch.Generator().manual_seed(0))
    t = timestep_for_noise(prior.alphas_cumprod, 0.05)
    abar = float(prior.alphas_cumprod[t])
    sigma2 = (1 - abar) / abar
    expected = 0.3 + 0.16 / (0.16 + sigma2) * (x - 0.3)
    out = denoise(prior, x, 0.05, clip=False)
    assert abs(sigma2**0.5 - 0.05) < 0.002  # the nearest level of the DDPM schedule
    assert torch.allclose(out, expected, atol=1e-5), float((out - expected).abs().max())
    assert float((out - 0.3).abs().max()) < float((x - 0.3).abs().max())  # shrunk towards the mean
    assert float(denoise(prior, 10 * x, 0.05).abs().max()) <= 1.0  # clipped like x0_hat


def test_dds_final_denoising_costs_one_network_evaluation(problem):
    from tomo.solvers.dds import denoise

    prior, op, _, y, _ = problem
    plain = dds(prior, op, y, steps=6, seed=0, progress=False)
    prior.calls = 0
    denoised = dds(prior, op, y, steps=6, seed=0, denoise_sigma=0.05, progress=False)
    assert denoised.network_evaluations == prior.calls == 7
    assert torch.allclose(denoised.x, denoise(prior, plain.x, 0.05), atol=1e-6)
    assert not torch.allclose(denoised.x, plain.x, atol=1e-3)
    with pytest.raises(ValueError, match="denoise_sigma"):
        dds(prior, op, y, steps=2, denoise_sigma=-1.0, progress=False)


def test_z_difference_adjoint_dot_product():
    """<Dz v, g> = <v, Dz^T g> for the slice-coupling difference (measured error ~1e-16 in float64)."""
    from tomo.solvers.data_terms import z_difference, z_difference_adjoint

    gen = torch.Generator().manual_seed(0)
    v = torch.randn(5, 1, 7, 6, generator=gen, dtype=torch.float64)
    g = torch.randn(5, 1, 7, 6, generator=gen, dtype=torch.float64)
    lhs, rhs = float((z_difference(v) * g).sum()), float((v * z_difference_adjoint(g)).sum())
    assert abs(lhs - rhs) <= 1e-12 * abs(lhs), (lhs, rhs)
    assert torch.equal(z_difference(v)[-1], torch.zeros_like(v[-1]))  # Neumann: no slice after the last


def test_tv_along_z_couples_noisy_slices_of_one_volume():
    """Four slices of one constant-in-z object, each with its own noise: TV along z pulls them
    together, closer to the truth than slice-by-slice; weight 0 is exactly slice-by-slice."""
    op, truth, _ = _tv_problem(n=24)
    gen = torch.Generator().manual_seed(3)
    vol = truth.repeat(4, 1, 1, 1)
    y = op(vol[:, 0]) + 2.0 * torch.randn((4,) + op.out_shape, generator=gen, dtype=torch.float64)
    data = DataFidelity(op, y)
    x0 = torch.zeros_like(vol)
    apart = data.solve_tv(x0, 3e-3, admm_iterations=8, cg_iterations=4)
    zero = data.solve_tv(x0, 3e-3, admm_iterations=8, cg_iterations=4, tv_z_weight=0.0)
    coupled = data.solve_tv(x0, 3e-3, admm_iterations=8, cg_iterations=4, tv_z_weight=3e-2)
    assert torch.equal(apart, zero)
    err_apart, err_coupled = float((apart - vol).norm()), float((coupled - vol).norm())
    spread_apart, spread_coupled = float(apart.std(dim=0).mean()), float(coupled.std(dim=0).mean())
    assert err_coupled < 0.9 * err_apart, (err_coupled, err_apart)
    assert spread_coupled < 0.5 * spread_apart, (spread_coupled, spread_apart)
    with pytest.raises(ValueError, match="tv_z_weight"):
        data.solve_tv(x0, 3e-3, tv_z_weight=-1.0)
    with pytest.raises(ValueError, match="tv_z_weight"):
        dds(GaussianPrior(mean=0.3, std=0.4), op, y, steps=2, tv_z_weight=1e-3, progress=False)
