"""Differentiable forward models for CT and image restoration, as torch linear operators.

Importable on its own (no knowledge of priors or solvers). See :mod:`operators.base` for the
common interface every operator follows, :mod:`operators.geometry` for the CT geometries and
their conventions (ASTRA's, lengths in mm), :mod:`operators.linalg` for the batched kernels the
solvers share (power iteration, conjugate gradients), :mod:`operators.settings` for the one
process-wide settings object (threads, matrix-cache bounds), ``docs/operators.md`` for a tour.
"""

from .base import AdjointOperator, ComposedOperator, LinearOperator, ScaledOperator, check_tensor
from .ct import (
    CTProjector,
    clear_matrix_cache,
    estimate_matrix_bytes,
    matrix_cache_info,
    set_matrix_cache_limits,
    set_matrix_threads,
    system_matrix,
)
from .cuda import cuda_available
from .fbp import FBP, FILTERS, fbp
from .geometry import (
    ConeBeam3D,
    FanBeam2D,
    Geometry,
    ParallelBeam2D,
    ParallelBeam3D,
    geometry_from_dict,
    geometry_from_json,
)
from .image import (
    Convolution,
    Downsample,
    GaussianBlur,
    Identity,
    Inpaint,
    Mask,
    MotionBlur,
    Outpaint,
    box_mask,
    random_mask,
)
from .noise import GaussianNoise, PoissonTransmissionNoise, transmission_weights
from .phantom import shepp_logan
from .settings import OperatorSettings, set_threads, settings
from .units import MU_WATER_PER_MM, hu_to_mu, mu_to_hu

__all__ = [
    "LinearOperator",
    "AdjointOperator",
    "ScaledOperator",
    "ComposedOperator",
    "check_tensor",
    "Geometry",
    "ParallelBeam2D",
    "FanBeam2D",
    "ParallelBeam3D",
    "ConeBeam3D",
    "geometry_from_dict",
    "geometry_from_json",
    "CTProjector",
    "estimate_matrix_bytes",
    "system_matrix",
    "set_matrix_cache_limits",
    "set_matrix_threads",
    "matrix_cache_info",
    "clear_matrix_cache",
    "fbp",
    "FBP",
    "FILTERS",
    "shepp_logan",
    "MU_WATER_PER_MM",
    "hu_to_mu",
    "mu_to_hu",
    "Identity",
    "Convolution",
    "GaussianBlur",
    "MotionBlur",
    "Downsample",
    "Mask",
    "Inpaint",
    "Outpaint",
    "box_mask",
    "random_mask",
    "GaussianNoise",
    "PoissonTransmissionNoise",
    "transmission_weights",
    "cuda_available",
    "settings",
    "set_threads",
    "OperatorSettings",
]
