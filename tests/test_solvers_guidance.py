"""The Jacobian-free successors of DPS (MPGD, DSG, DAPS) on tiny problems with an exact answer.

The Gaussian prior of ``tomo.solvers.GaussianPrior`` gives the exact ``eps`` and the exact posterior
mean of a linear Gaussian problem, so each solver's posterior mean can be compared with the truth.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from tests.test_solvers import N_PIX, NOISE_STD, PRIOR_MEAN, PRIOR_STD, SHAPE, MatrixOperator
from tomo.solvers import DataFidelity, GaussianPrior, daps, dsg, mpgd, pigdm, posterior_mean
from tomo.solvers.daps import langevin_x0
from tomo.solvers.dsg import spherical_step
from tomo.solvers.mpgd import residual_descent, smooth_tv
from tomo.solvers.pigdm import pseudo_inverse_step


@pytest.fixture
def gaussian_problem():
    """12 noisy measurements of 30 pixels under a Gaussian prior; the exact posterior mean."""
    g = torch.Generator().manual_seed(0)
    matrix = torch.randn(12, N_PIX, generator=g) / N_PIX**0.5
    x_true = PRIOR_MEAN + PRIOR_STD * torch.randn(N_PIX, generator=g)
    y = matrix @ x_true + NOISE_STD * torch.randn(12, generator=g)
    prior = GaussianPrior(mean=PRIOR_MEAN, std=PRIOR_STD)
    exact = prior.posterior_mean(matrix, y, NOISE_STD).float()
    weights = torch.full((12,), NOISE_STD**-2)
    return prior, MatrixOperator(matrix, SHAPE), y, weights, exact


def _mean_error(solver, problem, **kw) -> float:
    prior, op, y, weights, exact = problem
    out = posterior_mean(solver, prior, op, y, samples=24, weights=weights, seed=0, progress=False, clip_x0=False, **kw)
    return float((out.x.flatten() - exact).norm())


def test_residual_gradient_matches_autograd(gaussian_problem):
    _, op, y, weights, _ = gaussian_problem
    data = DataFidelity(op, y, weights)
    x = torch.randn(1, 1, *SHAPE, generator=torch.Generator().manual_seed(1), requires_grad=True)
    norm = data.residual_norm(x)
    (auto,) = torch.autograd.grad(0.5 * norm.pow(2).sum(), x)
    grad, norm2 = data.residual_gradient(x.detach())
    torch.testing.assert_close(grad, auto, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(norm2, norm.detach())


@pytest.mark.parametrize(
    "solver,kw,bound",
    [
        # measured: 0.30 (PiGDM), 0.32 (MPGD), 0.57 (DSG), 0.43 (DAPS); the prior mean is 1.89 away
        (pigdm, {"steps": 20}, 0.6),
        (mpgd, {"steps": 20, "grad_steps": 5}, 0.6),
        (dsg, {"steps": 20, "weight": 0.3}, 0.8),
        (daps, {"steps": 20, "langevin_steps": 5}, 0.6),
    ],
)
def test_posterior_mean_of_the_samples_is_near_the_exact_one(gaussian_problem, solver, kw, bound):
    prior_error = float((PRIOR_MEAN - gaussian_problem[4]).norm())
    assert prior_error > 1.8
    assert _mean_error(solver, gaussian_problem, **kw) < bound


def test_daps_approaches_the_exact_posterior_with_more_langevin_steps(gaussian_problem):
    # measured 0.43 with 5 Langevin steps per level, 0.34 with 30 (0.18 with 50 levels of 50)
    few = _mean_error(daps, gaussian_problem, steps=20, langevin_steps=5)
    many = _mean_error(daps, gaussian_problem, steps=20, langevin_steps=30)
    assert many < few - 0.05


def test_mpgd_without_gradient_steps_ignores_the_data(gaussian_problem):
    prior, op, y, weights, _ = gaussian_problem
    kw = dict(weights=weights, steps=20, seed=0, progress=False, clip_x0=False)
    free = mpgd(prior, op, y, grad_steps=0, **kw)
    guided = mpgd(prior, op, y, grad_steps=5, **kw)
    assert guided.residual_norms[-1][0] < 0.5 * free.residual_norms[-1][0]
    assert free.network_evaluations == guided.network_evaluations == 20 and guided.gradient_evaluations == 0


@pytest.mark.parametrize("rule,zeta", [("lipschitz", 1.0), ("normalized", 0.2), ("steepest", 1.0)])
def test_residual_descent_lowers_the_residual(gaussian_problem, rule, zeta):
    _, op, y, weights, _ = gaussian_problem
    data = DataFidelity(op, y, weights)
    x0 = torch.zeros(1, 1, *SHAPE)
    norms = [float(data.residual_norm(residual_descent(data, x0, k, zeta, rule))[0]) for k in (0, 1, 3, 10)]
    assert all(b < a for a, b in itertools.pairwise(norms)), norms


def test_smooth_tv_gradient_matches_autograd():
    from operators.linalg import gradient

    x = torch.randn(2, 1, 5, 7, generator=torch.Generator().manual_seed(6), dtype=torch.float64, requires_grad=True)
    tv = (gradient(x[:, 0]).pow(2).sum(1) + 0.1**2).sqrt().sum()
    (auto,) = torch.autograd.grad(tv, x)
    grad, inv = smooth_tv(x.detach(), 0.1)
    torch.testing.assert_close(grad, auto)
    assert inv.shape == (2, 1, 5, 7) and float(inv.max()) <= 10.0 + 1e-9


def test_tv_guidance_lowers_the_objective(gaussian_problem):
    """Steepest descent on 1/2 ||r||^2 + mu TV lowers that objective (the line search is safe)."""
    _, op, y, weights, _ = gaussian_problem
    data = DataFidelity(op, y, weights)
    mu = 0.05

    def objective(x):
        from operators.linalg import gradient

        tv = (gradient(x[:, 0]).pow(2).sum(1) + 0.01**2).sqrt().sum()
        return float(0.5 * data.residual_norm(x).pow(2).sum() + mu * tv)

    x0 = torch.randn(1, 1, *SHAPE, generator=torch.Generator().manual_seed(7)) * 0.3
    values = [objective(residual_descent(data, x0, k, 1.0, "steepest", mu)) for k in (0, 1, 4, 16)]
    assert all(b < a for a, b in itertools.pairwise(values)), values


def test_residual_descent_normalized_step_is_dps_step(gaussian_problem):
    """One "normalized" step is DPS's ``zeta / ||r|| grad ||r||^2`` with the gradient on x0."""
    _, op, y, weights, _ = gaussian_problem
    data = DataFidelity(op, y, weights)
    x0 = torch.randn(1, 1, *SHAPE, generator=torch.Generator().manual_seed(2), requires_grad=True)
    norm = data.residual_norm(x0)
    (grad_sq,) = torch.autograd.grad(norm.pow(2).sum(), x0)
    expected = x0.detach() - 0.3 / norm.detach() * grad_sq
    torch.testing.assert_close(residual_descent(data, x0.detach(), 1, 0.3, "normalized"), expected)


def test_pseudo_inverse_step_is_the_regularised_least_squares_solution(gaussian_problem):
    """Enough CG iterations give ``x0_hat + (A^T A + lam)^{-1} A^T (y - A x0_hat)`` (normalised units)."""
    _, op, y, weights, _ = gaussian_problem
    data = DataFidelity(op, y, weights)
    x0_hat = torch.randn(1, 1, *SHAPE, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    m = (data.scale * NOISE_STD**-1 * op.matrix).double()  # s W^{1/2} A
    yn = (data.scale * NOISE_STD**-1 * y).double()
    lam = 0.3
    exact = torch.linalg.solve(m.T @ m + lam * torch.eye(N_PIX, dtype=torch.float64), m.T @ yn + lam * x0_hat.flatten())
    out = pseudo_inverse_step(data, x0_hat.float(), torch.tensor([lam]), N_PIX)
    torch.testing.assert_close(out.flatten().double(), exact, rtol=1e-3, atol=1e-4)


def test_spherical_step_lands_on_the_noise_sphere():
    g = torch.Generator().manual_seed(3)
    mean, grad, noise = (torch.randn(2, 1, 4, 5, generator=g) for _ in range(3))
    sigma = 0.3
    for weight in (0.0, 0.4, 1.0):
        x = spherical_step(mean, sigma, grad, noise, weight)
        radius = (x - mean).flatten(1).norm(dim=1)
        torch.testing.assert_close(radius, torch.full((2,), sigma * 20**0.5))
    # weight 1: straight down the gradient
    step = spherical_step(mean, sigma, grad, noise, 1.0) - mean
    cosine = torch.nn.functional.cosine_similarity(step.flatten(1), -grad.flatten(1))
    torch.testing.assert_close(cosine, torch.ones(2))


def test_langevin_without_data_samples_the_gaussian_around_x0_hat():
    """With ``beta`` huge the target is N(x0_hat, r^2): check the mean and the variance."""

    class Nothing(MatrixOperator):
        pass

    op = Nothing(torch.ones(1, 400) * 1e-3, (20, 20))
    data = DataFidelity(op, torch.zeros(1), normalize=False)
    x0_hat = torch.full((1, 1, 20, 20), 0.3)
    g = torch.Generator().manual_seed(4)
    out = langevin_x0(data, x0_hat, 0.04, torch.tensor([1e6]), steps=200, lr=0.1, generator=g)
    # Euler-Maruyama with step lr / L inflates the variance by 1 / (1 - lr / 2) = 1.05
    assert abs(float(out.mean()) - 0.3) < 0.03
    assert 0.04 * 0.85 < float(out.var()) < 0.04 * 1.25


@pytest.mark.parametrize("solver", [pigdm, mpgd, dsg, daps])
def test_seeds_reproduce_and_denoising_counts_a_network_call(gaussian_problem, solver):
    prior, op, y, weights, _ = gaussian_problem
    kw = dict(weights=weights, steps=5, seed=7, progress=False)
    a, b = solver(prior, op, y, **kw), solver(prior, op, y, **kw)
    torch.testing.assert_close(a.x, b.x, rtol=0, atol=0)
    c = solver(prior, op, y, denoise_sigma=0.02, **kw)
    assert a.network_evaluations == 5 and c.network_evaluations == 6


@pytest.mark.parametrize(
    "solver,kw,match",
    [
        (mpgd, {"zeta": -1.0}, "zeta"),
        (mpgd, {"step_rule": "newton"}, "step_rule"),
        (mpgd, {"grad_steps": 1.5}, "grad_steps"),
        (mpgd, {"tv_weight": 1e-3}, "steepest"),
        (dsg, {"weight": 1.5}, "weight"),
        (dsg, {"eta": float("nan")}, "eta"),
        (daps, {"lr": 2.0}, "lr"),
        (daps, {"beta": 0.0}, "beta"),
        (pigdm, {"cg_iterations": -1}, "cg_iterations"),
    ],
)
def test_bad_options_are_refused(gaussian_problem, solver, kw, match):
    prior, op, y, _, _ = gaussian_problem
    with pytest.raises(ValueError, match=match):
        solver(prior, op, y, steps=2, progress=False, **kw)
