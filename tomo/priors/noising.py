"""The forward noising of a diffusion model and its Tweedie inverse, in one place.

Notation (DDPM, Ho et al. 2020): ``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps`` with
``abar_t = alphas_cumprod[t]`` of the prior's training schedule and ``eps ~ N(0, I)``; images in
the prior's model range (HU window mapped to [-1, 1]). The prior (:mod:`tomo.priors.prior`) and
the posterior solvers (:mod:`tomo.solvers`) both use these two functions.

``abar`` may be a Python float (one timestep for the whole batch, as in the samplers) or a
tensor broadcastable to the images (one per image, e.g. ``[B, 1, 1, 1]``, as in training and
:meth:`~tomo.priors.DiffusionPrior.x0_hat`); a float is computed in double precision before it
scales the image, a tensor in its own dtype.
"""

from __future__ import annotations

import torch

__all__ = ["add_noise", "tweedie_x0"]


def _roots(abar: float | torch.Tensor) -> tuple:
    """``(sqrt(abar), sqrt(1 - abar))`` for a float or a tensor ``abar`` in (0, 1]."""
    if isinstance(abar, torch.Tensor):
        return abar.sqrt(), (1 - abar).sqrt()
    abar = float(abar)
    return abar**0.5, (1.0 - abar) ** 0.5


def add_noise(x0: torch.Tensor, eps: torch.Tensor, abar: float | torch.Tensor) -> torch.Tensor:
    """The noisy image ``x_t = sqrt(abar) x0 + sqrt(1 - abar) eps``.

    Parameters
    ----------
    x0 : torch.Tensor, [B, 1, H, W]
        Clean images in model range.
    eps : torch.Tensor, shape of ``x0``
        Standard normal noise.
    abar : float or torch.Tensor
        Cumulative alpha of the timestep, in (0, 1].
    """
    root, root_c = _roots(abar)
    return root * x0 + root_c * eps


def tweedie_x0(x_t: torch.Tensor, eps: torch.Tensor, abar: float | torch.Tensor) -> torch.Tensor:
    """Tweedie's denoised estimate ``x0_hat = (x_t - sqrt(1 - abar) eps) / sqrt(abar)``.

    With ``eps`` the network's (MMSE) noise prediction this is ``E[x_0 | x_t]``; it inverts
    :func:`add_noise` exactly when ``eps`` is the noise that was added.

    Parameters
    ----------
    x_t : torch.Tensor, [B, 1, H, W]
        Noisy images in model range.
    eps : torch.Tensor, shape of ``x_t``
        Predicted noise.
    abar : float or torch.Tensor
        Cumulative alpha of the timestep, in (0, 1].
    """
    root, root_c = _roots(abar)
    return (x_t - root_c * eps) / root
