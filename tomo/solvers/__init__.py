"""Diffusion posterior solvers for linear inverse problems ``y = A x + n``.

Solvers see a prior (``eps(x_t, t, generator)``, ``alphas_cumprod``) and an
:class:`operators.LinearOperator`; they know nothing about CT. A CT or HU-image problem is moved
into the prior's model range with :func:`ct_problem` / :func:`hu_problem` (an affine change of
variable), then solved with :func:`dds` (fast, no network gradients) or :func:`dps`.

>>> problem = ct_problem(prior, projector, sinogram, i0=1e6)          # doctest: +SKIP
>>> result = dds(prior, **problem.solver_args(), steps=50, seed=0)     # doctest: +SKIP
>>> hu = prior.model_to_hu(result.x)                                   # doctest: +SKIP
"""
from ._common import SolverResult
from .data import DataFidelity, conjugate_gradient, transmission_poisson_weights
from .dds import dds
from .dps import default_zeta, dps
from .ensemble import posterior_mean, sample_or_mean
from .gaussian_prior import GaussianPrior, linear_beta_alphas_cumprod
from .problem import ModelDomainProblem, affine_problem, ct_problem, hu_problem, model_to_hu_affine
from .schedule import SamplingSchedule, ddim_step, ddpm_posterior_step, make_schedule, tweedie_x0

__all__ = ["dds", "dps", "default_zeta", "posterior_mean", "sample_or_mean", "SolverResult", "DataFidelity", "conjugate_gradient", "transmission_poisson_weights",
           "GaussianPrior", "linear_beta_alphas_cumprod", "ModelDomainProblem", "affine_problem",
           "ct_problem", "hu_problem", "model_to_hu_affine", "SamplingSchedule", "make_schedule",
           "tweedie_x0", "ddpm_posterior_step", "ddim_step"]
