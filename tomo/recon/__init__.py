"""Classical CT reconstruction solvers on any :class:`operators.LinearOperator`, in torch.

- :func:`sirt`, :func:`cgls`, :func:`tv_pdhg` -- batched ``[B, *out_shape]``, on the operator's
  device, with stopping rules, progress bars and callbacks.
- :func:`fbp_reconstruct` -- FBP (wraps :func:`operators.fbp`).

The methods by name with tuned defaults (``reconstruct(sinogram, geometry, method="tv")``) are the
application layer's: :mod:`tomo.methods`. See ``docs/reconstruction.md`` for the maths.
"""

from .analytic import fbp_reconstruct
from .iterative import cgls, sirt
from .tv import gradient, gradient_adjoint, total_variation, tv_pdhg

__all__ = ["sirt", "cgls", "tv_pdhg", "fbp_reconstruct", "gradient", "gradient_adjoint", "total_variation"]
