"""Diffusion prior for CT slices: a diffusers UNet (epsilon prediction) with its DDPM schedule.

>>> from tomo.priors import load_prior
>>> prior = load_prior()                      # shipped checkpoint in <repo>/data/prior
>>> prior = load_prior("default")             # a shipped prior by name (available_priors()), or a folder
>>> x = prior.hu_to_model(hu_tensor)          # [B, 1, H, W] HU -> model range
>>> eps = prior.eps(x_t, t)                   # any H, W; differentiable w.r.t. x_t
>>> x0 = prior.x0_hat(x_t, t)                 # Tweedie estimate

Training: :mod:`tomo.priors.training` (``tomo train``). See ``docs/prior.md``.
"""

from .checkpoint import PriorCheckpointError
from .config import make_config
from .prior import (
    SHIPPED_PRIORS,
    DiffusionPrior,
    available_priors,
    build_scheduler,
    build_unet,
    default_prior_path,
    load_prior,
    shipped_prior_path,
)

__all__ = [
    "DiffusionPrior",
    "load_prior",
    "default_prior_path",
    "shipped_prior_path",
    "SHIPPED_PRIORS",
    "available_priors",
    "PriorCheckpointError",
    "make_config",
    "build_unet",
    "build_scheduler",
]
