"""Differentiable forward models for CT and image restoration, as torch linear operators.

Importable on its own (no knowledge of priors or solvers). See :mod:`operators.base` for the
common interface every operator follows.
"""
from .base import AdjointOperator, ComposedOperator, LinearOperator, ScaledOperator, check_tensor

__all__ = ["LinearOperator", "AdjointOperator", "ScaledOperator", "ComposedOperator", "check_tensor"]
