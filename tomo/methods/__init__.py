"""Reconstruction and restoration methods by name: the application layer above recon and solvers.

- :mod:`tomo.methods.base` -- the shared types: :class:`ReconProblem`, :class:`MethodOption`,
  :class:`MethodOutput`, :class:`ReconMethod`, :class:`MethodRegistry`.
- :mod:`tomo.methods.registry` -- the built-in methods' :func:`default_registry` and the common
  entry :func:`reconstruct` (``reconstruct(sinogram, geometry, method="tv") -> mu`` [1/mm]).
- :mod:`tomo.methods.classical` -- FBP, SIRT, CGLS, TV with the defaults tuned on train/.
- :mod:`tomo.methods.diffusion` -- DDS and DPS on CT sinograms (the CT adapter of the solvers).
- :mod:`tomo.methods.image_tasks` -- deblurring, super-resolution, in/outpainting on HU images.
"""

from .base import MethodOption, MethodOutput, MethodRegistry, ReconMethod, ReconProblem
from .registry import (
    available_methods,
    default_registry,
    get_method,
    reconstruct,
)

__all__ = [
    "reconstruct",
    "default_registry",
    "get_method",
    "available_methods",
    "MethodRegistry",
    "MethodOption",
    "MethodOutput",
    "ReconMethod",
    "ReconProblem",
]
