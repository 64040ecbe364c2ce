"""Diffusion posterior solvers for linear inverse problems ``y = A x + n``.

Solvers see a prior (``eps(x_t, t, generator)``, ``alphas_cumprod``) and an
:class:`operators.LinearOperator`; they know nothing about CT. A physical problem is moved into
the prior's model range with :func:`affine_problem` (an affine change of variable; the CT and
HU-image versions are :func:`tomo.methods.diffusion.ct_problem` and
:func:`tomo.methods.image_tasks.hu_problem`), then solved with :func:`dds` (fast, no network
gradients), :func:`dps` (the reference: gradients through the network) or its Jacobian-free
successors :func:`pigdm`, :func:`mpgd`, :func:`dsg` and :func:`daps` (docs/solvers.md).

>>> from tomo.methods.diffusion import ct_problem                      # doctest: +SKIP
>>> problem = ct_problem(prior, projector, sinogram, i0=1e6)          # doctest: +SKIP
>>> result = dds(prior, **problem.solver_args(), steps=50, seed=0)     # doctest: +SKIP
>>> hu = prior.model_to_hu(result.x)                                   # doctest: +SKIP
"""

from .daps import daps
from .data_terms import DataFidelity, conjugate_gradient, transmission_poisson_weights
from .dds import dds
from .dps import default_zeta, dps
from .dsg import dsg
from .ensemble import posterior_mean, sample_or_mean
from .gaussian_prior import GaussianPrior, linear_beta_alphas_cumprod
from .mpgd import mpgd
from .pigdm import pigdm
from .problem import ModelDomainProblem, affine_problem, model_to_hu_affine
from .sampler_setup import SolverResult
from .schedule import (
    SamplingSchedule,
    ddim_step,
    ddpm_posterior_step,
    make_schedule,
    timestep_for_noise,
    tweedie_x0,
)

__all__ = [
    "dds",
    "dps",
    "mpgd",
    "dsg",
    "daps",
    "pigdm",
    "default_zeta",
    "posterior_mean",
    "sample_or_mean",
    "SolverResult",
    "DataFidelity",
    "conjugate_gradient",
    "transmission_poisson_weights",
    "GaussianPrior",
    "linear_beta_alphas_cumprod",
    "ModelDomainProblem",
    "affine_problem",
    "model_to_hu_affine",
    "SamplingSchedule",
    "make_schedule",
    "tweedie_x0",
    "ddpm_posterior_step",
    "ddim_step",
    "timestep_for_noise",
]
