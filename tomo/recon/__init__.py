"""Classical CT reconstruction: FBP, SIRT, CGLS and isotropic TV (Chambolle-Pock), in torch.

- :func:`reconstruct` -- common entry: ``reconstruct(sinogram, geometry, method="fbp"|"sirt"|"cgls"|"tv",
  **options) -> mu`` [1/mm], batched over slices, CPU or CUDA, with tuned defaults.
- :data:`METHODS`, :func:`register_method` -- the method registry that ``tomo reconstruct`` reads;
  other packages (the diffusion solvers) add methods there (see :mod:`tomo.recon.methods`).
- :func:`sirt`, :func:`cgls`, :func:`tv_pdhg` -- the solvers on any :class:`operators.LinearOperator`
  (batched ``[B, *out_shape]``, device of the operator, stopping rules, tqdm, callbacks).
- :func:`fbp_reconstruct` -- FBP (wraps :func:`operators.fbp`).

See ``docs/reconstruction.md`` for the maths, the defaults and how they were tuned.
"""
from .fbp import fbp_reconstruct
from .iterative import cgls, sirt
from .methods import (METHODS, MethodOption, ReconMethod, ReconProblem, available_methods, get_method,
                      poisson_weights, reconstruct, register_method, tv_default_weight)
from .tv import gradient, gradient_adjoint, total_variation, tv_pdhg

__all__ = ["reconstruct", "METHODS", "MethodOption", "ReconMethod", "ReconProblem", "available_methods",
           "get_method", "register_method", "tv_default_weight", "poisson_weights",
           "sirt", "cgls", "tv_pdhg", "fbp_reconstruct", "gradient", "gradient_adjoint", "total_variation"]
