"""Noise models: exact formula, statistics, determinism, bad input."""

import math

import pytest
import torch

from operators import GaussianNoise, PoissonTransmissionNoise, transmission_weights


def test_gaussian_noise_statistics_and_determinism():
    y = torch.full((200, 200), 3.0, dtype=torch.float64)
    n = GaussianNoise(0.5)
    s = n.sample(y, seed=1)
    assert float(s.mean()) == pytest.approx(3.0, abs=0.01)
    assert float(s.std()) == pytest.approx(0.5, rel=0.02)
    assert torch.equal(s, n.sample(y, seed=1))
    assert torch.equal(s, n.sample(y, generator=torch.Generator().manual_seed(1)))
    assert not torch.equal(s, n.sample(y, seed=2))
    assert torch.all(y == 3.0)  # input untouched
    assert torch.all(n.variance(y) == 0.25)


@pytest.mark.parametrize("i0", [1e3, 1e5])
def test_poisson_transmission_statistics(i0):
    p = torch.full((400, 400), 2.0, dtype=torch.float64)
    noise = PoissonTransmissionNoise(i0)
    y = noise.sample(p, seed=0)
    # delta method: mean ~ p + exp(p)/(2 i0), variance ~ exp(p)/i0
    var = math.exp(2.0) / i0
    assert float(y.mean()) == pytest.approx(2.0 + var / 2, abs=4 * math.sqrt(var / p.numel()) + 1e-4)
    assert float(y.var()) == pytest.approx(var, rel=0.05)
    assert float(noise.variance(p)[0, 0]) == pytest.approx(var)


def test_poisson_exact_formula_and_zero_count_clamp():
    p = torch.tensor([0.0, 1.0, 40.0], dtype=torch.float64)
    noise = PoissonTransmissionNoise(100.0)
    g = torch.Generator().manual_seed(5)
    y = noise.sample(p, generator=g)
    counts = torch.poisson(100.0 * torch.exp(-p), generator=torch.Generator().manual_seed(5))
    assert torch.allclose(y, -torch.log(torch.clamp(counts, min=1) / 100.0))
    assert float(y[2]) == pytest.approx(math.log(100.0))  # zero photons -> one photon
    assert y.dtype == torch.float64
    assert noise.sample(p.float(), seed=1).dtype == torch.float32


def test_noise_bad_input():
    with pytest.raises(ValueError, match="i0"):
        PoissonTransmissionNoise(0)
    with pytest.raises(ValueError, match="sigma"):
        GaussianNoise(-1)
    with pytest.raises(ValueError, match="NaN or Inf"):
        PoissonTransmissionNoise(1e4).sample(torch.tensor([float("nan")]))
    with pytest.raises(ValueError, match="either generator or seed"):
        GaussianNoise(1).sample(torch.zeros(3), generator=torch.Generator(), seed=1)
    with pytest.raises(TypeError, match="torch.Tensor"):
        GaussianNoise(1).sample([1.0, 2.0])


def test_transmission_weights_are_inverse_variances_with_a_floor():
    y = torch.tensor([0.0, 1.0, 5.0])
    torch.testing.assert_close(transmission_weights(y, 1e4), 1e4 * torch.exp(-y))
    floored = transmission_weights(y, 1e4, model_error=0.03)
    torch.testing.assert_close(floored, 1 / (torch.exp(y) / 1e4 + 0.03**2))
    torch.testing.assert_close(transmission_weights(y), torch.exp(-y))  # relative, without I0
    with pytest.raises(ValueError, match="i0"):
        transmission_weights(y, 0.0)
    with pytest.raises(ValueError, match="model_error"):
        transmission_weights(y, 1e4, model_error=-1.0)
    with pytest.raises(ValueError, match="needs i0"):
        transmission_weights(y, None, model_error=0.05)


def test_transmission_weights_match_the_simulator_variance():
    """1 / weight is the variance of the simulated line integrals (here 50 photons a ray)."""
    i0, p = 1e3, math.log(1e3 / 50.0)
    y = PoissonTransmissionNoise(i0).sample(torch.full((200_000,), p, dtype=torch.float64), seed=2)
    w = transmission_weights(torch.tensor([p], dtype=torch.float64), i0)
    assert float(y.var()) == pytest.approx(1 / float(w), rel=0.05)


def _poisson_fisher_information(rate: float) -> float:
    """Fisher information of N ~ Poisson(I0 exp(-p)) about p, summed from the likelihood:
    E[(d/dp log P(N))^2] with d/dp log P(N) = rate - N."""
    n = torch.arange(0, 200, dtype=torch.float64)
    pmf = torch.exp(n * math.log(rate) - rate - torch.lgamma(n + 1))
    return float((pmf * (rate - n) ** 2).sum())


@pytest.mark.parametrize("photons", [3.0, 1.0, 0.3, 0.05])
def test_transmission_weights_under_photon_starvation(photons):
    """Rays with less than one expected photon (y > log I0, from data floored below one photon)
    carry less information about the line integral than a one-photon ray: the weight is the
    Poisson Fisher information I0 exp(-y), not floored at one photon."""
    i0 = 1e4
    y = torch.tensor([math.log(i0 / photons)], dtype=torch.float64)
    w = float(transmission_weights(y, i0))
    assert w == pytest.approx(_poisson_fisher_information(photons), rel=1e-9)
    assert w == pytest.approx(photons, rel=1e-12)
    # fewer photons never weigh more
    y_less = torch.tensor([math.log(i0 / (0.5 * photons))], dtype=torch.float64)
    assert float(transmission_weights(y_less, i0)) < w
