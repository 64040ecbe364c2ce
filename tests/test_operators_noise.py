"""Noise models: exact formula, statistics, determinism, bad input."""
import math

import pytest
import torch

from operators import GaussianNoise, PoissonTransmissionNoise


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
