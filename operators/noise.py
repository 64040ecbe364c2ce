"""Measurement noise models, deterministic given a seed or a ``torch.Generator``."""

from __future__ import annotations

import math

import torch

from .base import check_tensor

__all__ = ["GaussianNoise", "PoissonTransmissionNoise", "transmission_weights"]


def _generator(generator: torch.Generator | None, seed: int | None) -> torch.Generator | None:
    if generator is not None and seed is not None:
        raise ValueError("pass either generator or seed, not both")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    if seed is not None:
        return torch.Generator().manual_seed(int(seed))
    return generator


def _on_generator_device(fn, like: torch.Tensor, generator):
    """Draw with ``fn(device)`` on the generator's device (CPU by default), then move to ``like``'s."""
    dev = generator.device if generator is not None else like.device
    return fn(dev).to(like.device)


class GaussianNoise:
    """Additive white Gaussian noise ``y + sigma * n``, ``n ~ N(0, 1)``.

    Parameters
    ----------
    sigma : float
        Standard deviation, in the units of the data.
    """

    def __init__(self, sigma: float):
        sigma = float(sigma)
        if not math.isfinite(sigma) or sigma < 0:
            raise ValueError(f"sigma must be finite and >= 0, got {sigma}")
        self.sigma = sigma

    def sample(
        self, y: torch.Tensor, generator: torch.Generator | None = None, seed: int | None = None
    ) -> torch.Tensor:
        """Noisy copy of ``y`` (``y`` is not modified)."""
        check_tensor(y, "y")
        g = _generator(generator, seed)
        noise = _on_generator_device(lambda d: torch.randn(y.shape, generator=g, dtype=y.dtype, device=d), y, g)
        return y + self.sigma * noise

    def variance(self, y: torch.Tensor) -> torch.Tensor:
        """Per-element variance (constant ``sigma**2``), shaped like ``y``."""
        check_tensor(y, "y")
        return torch.full_like(y, self.sigma**2)

    def __repr__(self):
        return f"GaussianNoise(sigma={self.sigma})"


class PoissonTransmissionNoise:
    """Transmission CT photon noise with ``i0`` incident photons per detector bin.

    ``sample(p)`` returns ``-log(max(Poisson(i0 * exp(-p)), 1) / i0)`` for line integrals ``p``
    (exactly the protocol of evaluation.md; zero counts are clamped to one photon).
    ``variance(p)`` is the usual first-order approximation ``exp(p) / i0`` of the variance of
    the log-transformed data; :func:`transmission_weights` turns it into the data weights of
    weighted least-squares data terms.
    """

    def __init__(self, i0: float):
        i0 = float(i0)
        if not math.isfinite(i0) or i0 <= 0:
            raise ValueError(f"i0 (photons per bin) must be finite and > 0, got {i0}")
        self.i0 = i0

    def sample(
        self, line_integrals: torch.Tensor, generator: torch.Generator | None = None, seed: int | None = None
    ) -> torch.Tensor:
        """Noisy line integrals, same shape and dtype as ``line_integrals`` (not modified)."""
        check_tensor(line_integrals, "line_integrals")
        g = _generator(generator, seed)
        # float64 rates: i0 up to ~1e9 counts stay exact enough
        rate = self.i0 * torch.exp(-line_integrals.detach().to(torch.float64))
        counts = _on_generator_device(lambda d: torch.poisson(rate.to(d), generator=g), rate, g)
        y = -torch.log(torch.clamp(counts, min=1.0) / self.i0)
        return y.to(line_integrals.dtype)

    def variance(self, line_integrals: torch.Tensor) -> torch.Tensor:
        """Approximate variance ``exp(p) / i0`` of the noisy line integrals."""
        check_tensor(line_integrals, "line_integrals")
        return torch.exp(line_integrals) / self.i0

    def __repr__(self):
        return f"PoissonTransmissionNoise(i0={self.i0:g})"


def transmission_weights(
    line_integrals: torch.Tensor, i0: float | None = None, model_error: float = 0.0
) -> torch.Tensor:
    """Data weights of post-log transmission CT: inverse variances with a model-error floor.

    ``w = 1 / (exp(y) / I0 + model_error^2)``. For counts ``N ~ Poisson(I0 exp(-p))`` and
    ``y = -log(N / I0)`` the delta method gives ``Var y = exp(p) / I0``
    (:meth:`PoissonTransmissionNoise.variance`), with the measured ``y`` standing in for ``p``
    (penalised weighted least-squares practice). ``model_error`` (line-integral units) adds a
    variance floor for what is not photon noise (e.g. fine-grid data reconstructed on a coarse
    grid), which dominates at high dose. Without ``i0`` only the relative Poisson weights
    ``exp(-y)`` exist (a floor needs the absolute scale). Weighted solvers are invariant to a
    common scale of the weights.

    Photon starvation: with ``model_error = 0`` the weight is ``I0 exp(-y)``, the estimated
    mean count, which is the Fisher information of a Poisson count about the line integral.
    It keeps falling below 1 for rays that recorded less than one photon (``y > log I0``, from
    data floored at a fraction of a photon; :class:`PoissonTransmissionNoise` clamps counts
    to 1, so its data stop at ``y = log I0`` with weight 1). The weight is not floored at one
    photon: a floor would give a ray that saw almost nothing the weight of one that saw a
    photon, although its value is set by the flooring rule rather than by the object.

    Parameters
    ----------
    line_integrals : torch.Tensor, any shape
        Measured line integrals ``y`` (dimensionless, mu [1/mm] x length [mm]).
    i0 : float, optional
        Incident photons per detector bin (> 0); ``None``: relative weights ``exp(-y)``.
    model_error : float
        Standard deviation floor (line-integral units), >= 0; needs ``i0``.

    Returns
    -------
    torch.Tensor, shape and dtype of ``line_integrals``
        Weights [1 / variance], > 0.
    """
    check_tensor(line_integrals, "line_integrals")
    model_error = float(model_error)
    if not (math.isfinite(model_error) and model_error >= 0):
        raise ValueError(f"model_error must be a number >= 0 (line-integral std), got {model_error!r}")
    if i0 is None:
        if model_error > 0:
            raise ValueError(
                "a model_error floor needs i0 (photons per bin): the weights exp(-y) "
                "without i0 are relative only; pass i0 or model_error=0"
            )
        return torch.exp(-line_integrals)
    return 1.0 / (PoissonTransmissionNoise(i0).variance(line_integrals) + model_error**2)
