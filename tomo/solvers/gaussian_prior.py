"""An analytic Gaussian "diffusion prior" with the interface of :class:`tomo.priors.DiffusionPrior`.

For ``x0 ~ N(m, s^2 I)`` the noisy marginal is ``x_t ~ N(sqrt(abar) m, (abar s^2 + 1 - abar) I)``,
so the exact noise prediction (minus ``sqrt(1 - abar)`` times the score) is

    eps(x_t, t) = sqrt(1 - abar) (x_t - sqrt(abar) m) / (abar s^2 + 1 - abar).

With a linear Gaussian measurement ``y = A x + n`` the posterior is Gaussian with a closed-form
mean, which makes this the reference for testing posterior solvers (no network, any size,
differentiable).
"""

from __future__ import annotations

import torch

from tomo.priors.noising import tweedie_x0

__all__ = ["GaussianPrior", "linear_beta_alphas_cumprod"]


def linear_beta_alphas_cumprod(
    num_train_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02
) -> torch.Tensor:
    """``alphas_cumprod`` [T] (float64) of the DDPM linear beta schedule."""
    betas = torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float64)
    return torch.cumprod(1.0 - betas, dim=0)


class GaussianPrior:
    """Exact diffusion prior of ``x0 ~ N(mean, std^2 I)`` in model range.

    Parameters
    ----------
    mean : float or torch.Tensor broadcastable to the images [B, 1, H, W]
        Prior mean in model range.
    std : float
        Prior standard deviation in model range (> 0).
    alphas_cumprod : torch.Tensor [T], optional
        Training schedule; default the DDPM linear one with ``T = 1000``.
    hu_window : (float, float)
        HU interval mapped affinely to [-1, 1] by :meth:`hu_to_model`.
    pixel_size_mm : float
        Nominal pixel size (kept for interface compatibility).
    """

    def __init__(
        self, mean=0.0, std: float = 0.5, alphas_cumprod=None, hu_window=(-1000.0, 1000.0), pixel_size_mm: float = 1.0
    ):
        if not std > 0:
            raise ValueError(f"std must be > 0, got {std}")
        self.mean = torch.as_tensor(mean, dtype=torch.float32)
        self.std = float(std)
        self.alphas_cumprod = (
            linear_beta_alphas_cumprod()
            if alphas_cumprod is None
            else torch.as_tensor(alphas_cumprod, dtype=torch.float64)
        )
        self.num_train_timesteps = int(self.alphas_cumprod.numel())
        self.hu_window = (float(hu_window[0]), float(hu_window[1]))
        self.pixel_size_mm = float(pixel_size_mm)
        self.calls = 0

    def hu_to_model(self, hu):
        lo, hi = self.hu_window
        return (hu - 0.5 * (lo + hi)) / (0.5 * (hi - lo))

    def model_to_hu(self, x):
        lo, hi = self.hu_window
        return x * (0.5 * (hi - lo)) + 0.5 * (lo + hi)

    def _abar(self, t) -> float:
        return float(self.alphas_cumprod[int(t)])

    def eps(self, x_t: torch.Tensor, t, generator=None) -> torch.Tensor:
        """Exact ``eps(x_t, t)``; ``generator`` is accepted and unused (nothing is random)."""
        self.calls += 1
        abar = self._abar(t)
        m = self.mean.to(device=x_t.device, dtype=x_t.dtype)
        return (1.0 - abar) ** 0.5 * (x_t - abar**0.5 * m) / (abar * self.std**2 + 1.0 - abar)

    def x0_hat(self, x_t: torch.Tensor, t, generator=None) -> torch.Tensor:
        """Tweedie's estimate ``E[x0 | x_t]``."""
        return tweedie_x0(x_t, self.eps(x_t, t), self._abar(t))

    def posterior_mean(self, matrix: torch.Tensor, y: torch.Tensor, noise_std) -> torch.Tensor:
        """``E[x0 | y]`` for ``y = M x0 + n``, ``n ~ N(0, diag(noise_std^2))``, ``M`` dense [m, n].

        ``x0`` is flattened to [n]; ``noise_std`` is a float or a tensor [m]. Returns [n]
        (float64): ``m + s^2 M^T (s^2 M M^T + Sigma)^{-1} (y - M m)``.
        """
        M = matrix.to(torch.float64)
        n = M.shape[1]
        m = torch.broadcast_to(self.mean.to(torch.float64).reshape(-1), (n,))
        noise_var = torch.broadcast_to(torch.as_tensor(noise_std, dtype=torch.float64) ** 2, (M.shape[0],))
        gram = self.std**2 * M @ M.T + torch.diag(noise_var)
        return m + self.std**2 * M.T @ torch.linalg.solve(gram, y.to(torch.float64).reshape(-1) - M @ m)
