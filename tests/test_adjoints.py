"""Every linear operator of the package: measured dot-product adjoint error and autograd gradcheck.

One parametrised table (deepinv's pattern): each case builds a tiny operator; the test measures
``|<A x, y> - <x, A^T y>| / (||A x|| ||y||)`` in float64 with :meth:`LinearOperator.adjoint_error`
(recorded as the ``adjoint_error`` property of the test in the JUnit report, printed with ``-s``,
and in the assertion message) and runs :meth:`LinearOperator.gradcheck` (first and second order)
on the operator and on its adjoint. ``test_every_operator_class_is_covered`` fails when a new
operator class is added without a case here.

ASTRA's CUDA kernels are not in this table (no GPU in the default test run): tests/test_operators_cuda.py
measures their adjoint error on a GPU. FBP is a ``torch.nn.Module``, not an adjoint pair.
"""

import inspect
import math

import numpy as np
import pytest
import torch
from torch.autograd.gradcheck import GradcheckError

import operators
from operators import (
    AdjointOperator,
    ComposedOperator,
    Convolution,
    CTProjector,
    Downsample,
    FanBeam2D,
    GaussianBlur,
    Identity,
    Inpaint,
    LinearOperator,
    Mask,
    MotionBlur,
    Outpaint,
    ParallelBeam2D,
    ScaledOperator,
    box_mask,
    random_mask,
)

SHAPE = (8, 8)


def _parallel():
    return ParallelBeam2D(SHAPE, 0.8, np.linspace(0, np.pi, 5, endpoint=False), 12, 0.8)


def _fan():
    return FanBeam2D(SHAPE, 0.8, np.linspace(0, 2 * np.pi, 6, endpoint=False), 16, 1.2, 16.0, 8.0)


#: float64 rounding of an exactly adjoint pair
EXACT = 1e-13
#: ASTRA's per-slice CPU calls compute in float32 whatever the input dtype
FLOAT32_KERNEL = 1e-6
#: gradcheck settings for float32 kernels: the maps are linear, so a large finite-difference step
#: costs no accuracy and keeps the float32 rounding of the outputs small against it
FLOAT32_GRADCHECK = dict(eps=1e-2, atol=1e-4, rtol=1e-3)

#: case name -> (builder, adjoint-error tolerance, gradcheck keyword arguments)
CASES = {
    "ct_parallel_matrix": (lambda: CTProjector(_parallel(), backend="matrix"), EXACT, {}),
    "ct_fan_matrix": (lambda: CTProjector(_fan(), backend="matrix"), EXACT, {}),
    "ct_parallel_astra": (lambda: CTProjector(_parallel(), backend="astra"), FLOAT32_KERNEL, FLOAT32_GRADCHECK),
    "ct_fan_astra": (lambda: CTProjector(_fan(), backend="astra"), FLOAT32_KERNEL, FLOAT32_GRADCHECK),
    "ct_parallel_transpose": (lambda: CTProjector(_parallel()).T, EXACT, {}),
    "identity": (lambda: Identity(SHAPE), EXACT, {}),
    "convolution_asymmetric": (lambda: Convolution(SHAPE, torch.arange(15.0).reshape(3, 5)), EXACT, {}),
    "gaussian_blur": (lambda: GaussianBlur(SHAPE, 1.0), EXACT, {}),
    "motion_blur": (lambda: MotionBlur(SHAPE, 4, math.radians(30)), EXACT, {}),
    "downsample_2": (lambda: Downsample(SHAPE, 2), EXACT, {}),
    "downsample_4": (lambda: Downsample(SHAPE, 4), EXACT, {}),
    "mask_random": (lambda: Mask(random_mask(SHAPE, 0.5, seed=3)), EXACT, {}),
    "inpaint_box": (lambda: Inpaint(box_mask(SHAPE, (2, 2, 3, 4))), EXACT, {}),
    "outpaint": (lambda: Outpaint(SHAPE, 0.5), EXACT, {}),
    "scaled": (lambda: ScaledOperator(GaussianBlur(SHAPE, 1.0), -2.5), EXACT, {}),
    "composed": (lambda: ComposedOperator(Downsample(SHAPE, 2), GaussianBlur(SHAPE, 1.0)), EXACT, {}),
    "adjoint_of_downsample": (lambda: AdjointOperator(Downsample(SHAPE, 2)), EXACT, {}),
    "composed_with_ct": (lambda: ComposedOperator(CTProjector(_fan()), MotionBlur(SHAPE, 3, 0.2)), EXACT, {}),
}


@pytest.mark.parametrize("name", list(CASES))
def test_dot_product_adjoint(name, record_property):
    build, tol, _ = CASES[name]
    op = build()
    err = op.adjoint_error(n_trials=3, dtype=torch.float64, seed=0)
    record_property("adjoint_error", err)
    print(f"adjoint {name} ({type(op).__name__}): relative dot-product error {err:.2e}")
    assert err < tol, f"{name}: measured adjoint error {err:.3e} exceeds {tol:.0e}"


@pytest.mark.parametrize("name", list(CASES))
def test_gradcheck(name):
    build, _, kwargs = CASES[name]
    # first and second order, on A and on A^T: backward must be the exact adjoint
    assert build().gradcheck(dtype=torch.float64, seed=1, second_order=True, **kwargs)


def _package_operator_classes() -> set:
    """Every LinearOperator subclass defined in the operators package (exported or not)."""
    found, todo = set(), [LinearOperator]
    while todo:
        for sub in todo.pop().__subclasses__():
            todo.append(sub)
            if sub.__module__.split(".")[0] == "operators":
                found.add(sub)
    return found


def test_every_operator_class_is_covered():
    tested = {type(build()) for build, _, _ in CASES.values()}
    exported = {
        obj
        for obj in vars(operators).values()
        if inspect.isclass(obj) and issubclass(obj, LinearOperator) and obj is not LinearOperator
    }
    missing = (exported | _package_operator_classes()) - tested
    assert not missing, f"add a case to tests/test_adjoints.py for: {sorted(c.__name__ for c in missing)}"


def test_adjoint_error_detects_a_wrong_adjoint():
    """The measurement is not vacuous: an adjoint that is off by 1 % is reported as such."""

    class Off(Identity):
        def _adjoint(self, y):
            return 1.01 * y

    err = Off(SHAPE).adjoint_error(n_trials=3)
    # 0.01 |<x, y>| / (||x|| ||y||): at most 1 %, for random vectors in 64 dimensions about 0.1 %
    assert 1e-4 < err <= 0.0101, err
    with pytest.raises(GradcheckError):
        Off(SHAPE).gradcheck()
