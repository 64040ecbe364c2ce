"""The common interface of every forward model: a linear operator on torch tensors.

A :class:`LinearOperator` maps images of shape ``in_shape`` (for example ``(H, W)``) to
measurements of shape ``out_shape`` (for example ``(views, detectors)``). It accepts

* a single unbatched tensor of shape ``in_shape``;
* a batch ``[B, C, *in_shape]`` (the usual ``[B, C, H, W]`` image layout);
* in general any ``[*batch, *in_shape]``: leading dimensions are flattened into one batch
  dimension, the operator is applied, and the leading dimensions are restored.

The backward pass of ``A(x)`` is exactly ``A.T(grad)``: subclasses implement the two
un-batched-by-contract kernels :meth:`_forward` and :meth:`_adjoint` on ``[N, *shape]`` tensors,
and autograd is wired through :class:`_Apply`, so every operator is differentiable with its own
adjoint (and not with whatever autograd would derive from the kernel).

Subclasses must keep the pair exactly adjoint: ``<A x, y> == <x, A.T y>``.
:meth:`LinearOperator.adjoint_error` measures it and :meth:`LinearOperator.gradcheck` checks the
autograd wiring; ``tests/test_adjoints.py`` runs both on every operator class of the package.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from .linalg import batch_dot, power_iteration, random_start

__all__ = ["LinearOperator", "AdjointOperator", "ScaledOperator", "ComposedOperator", "check_tensor"]


def check_tensor(x: torch.Tensor, name: str = "x", *, allow_complex: bool = False) -> None:
    """Raise a clear error if ``x`` is not a finite floating-point torch tensor.

    Raises
    ------
    TypeError
        If ``x`` is not a ``torch.Tensor`` or not floating point.
    ValueError
        If ``x`` is empty or contains NaN or Inf.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(
            f"{name} must be a torch.Tensor, got {type(x).__name__}; "
            f"convert with torch.as_tensor({name}, dtype=torch.float32)"
        )
    if not (x.is_floating_point() or (allow_complex and x.is_complex())):
        raise TypeError(
            f"{name} must be a floating-point tensor (float32 or float64), got {x.dtype}; use {name}.float()"
        )
    if x.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(x.shape)})")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or Inf values")


class _Apply(torch.autograd.Function):
    """``y = op._forward(x)`` whose gradient is ``op._adjoint(grad_y)`` (and vice versa)."""

    @staticmethod
    def forward(ctx, x, op, adjoint: bool):
        ctx.op = op
        ctx.adjoint = adjoint
        with torch.no_grad():
            return op._adjoint(x) if adjoint else op._forward(x)

    @staticmethod
    def backward(ctx, grad):
        op, adjoint = ctx.op, ctx.adjoint
        # The derivative of a linear map is the map itself; its vector-Jacobian product is the
        # adjoint.  Applying through _Apply again keeps double backward (e.g. gradcheck of
        # gradients) correct.
        return _Apply.apply(grad.contiguous(), op, not adjoint), None, None


class LinearOperator:
    """Base class of linear forward models ``A: R^{in_shape} -> R^{out_shape}``.

    Parameters
    ----------
    in_shape : sequence of int
        Shape of one input item (e.g. ``(H, W)`` in pixels).
    out_shape : sequence of int
        Shape of one output item (e.g. ``(views, detectors)``).
    device : str or torch.device, optional
        Device the operator computes on. Inputs on another device are refused with a
        ``ValueError`` rather than copied silently.

    Notes
    -----
    Subclasses implement :meth:`_forward` and :meth:`_adjoint` on tensors of shape
    ``[N, *in_shape]`` and ``[N, *out_shape]`` respectively, already validated, contiguous and
    on the right device. Everything else (batching, validation, autograd, norm estimate) lives
    here.
    """

    #: dtypes the kernels accept; subclasses backed by float32-only libraries narrow this.
    supported_dtypes: tuple = (torch.float32, torch.float64)
    #: what the input and output items are called in error messages
    space_names: tuple = ("image", "measurement")

    def __init__(self, in_shape: Sequence[int], out_shape: Sequence[int], device: str | torch.device = "cpu"):
        self.in_shape = tuple(int(s) for s in in_shape)
        self.out_shape = tuple(int(s) for s in out_shape)
        if any(s <= 0 for s in self.in_shape + self.out_shape):
            raise ValueError(f"shapes must be positive, got in_shape={self.in_shape}, out_shape={self.out_shape}")
        self.device = torch.device(device)
        self._norm_cache: float | None = None

    # ----- kernels for subclasses -------------------------------------------------------------
    def _forward(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _adjoint(self, y: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    # ----- public API ---------------------------------------------------------------------------
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply ``A`` to ``x`` of shape ``[*batch, *in_shape]``; returns ``[*batch, *out_shape]``."""
        return self._batched(x, self.in_shape, self.out_shape, adjoint=False, name="x")

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """Apply ``A^T`` to ``y`` of shape ``[*batch, *out_shape]``; returns ``[*batch, *in_shape]``."""
        return self._batched(y, self.out_shape, self.in_shape, adjoint=True, name="y")

    @property
    def T(self) -> AdjointOperator:
        """The adjoint as an operator object: ``A.T(y) == A.adjoint(y)``."""
        return AdjointOperator(self)

    def normal(self, x: torch.Tensor) -> torch.Tensor:
        """``A^T A x``."""
        return self.adjoint(self.forward(x))

    def norm(self, iterations: int = 30, seed: int = 0, dtype=torch.float32) -> float:
        """Estimate the operator norm ``||A||_2`` by power iteration on ``A^T A`` (cached).

        The estimate is from below (:func:`operators.linalg.power_iteration`); the first call's
        value is kept and returned by later calls whatever their arguments.
        """
        if self._norm_cache is None:
            x0 = random_start((1,) + self.in_shape, dtype, self.device, seed)
            self._norm_cache = math.sqrt(float(power_iteration(self.normal, x0, iterations)[0]))
        return self._norm_cache

    # ----- checks -------------------------------------------------------------------------------
    def _check_dtype(self, dtype: torch.dtype) -> None:
        if dtype not in self.supported_dtypes:
            raise TypeError(f"{type(self).__name__} supports dtypes {self.supported_dtypes}, got {dtype}")

    def adjoint_error(self, n_trials: int = 3, dtype: torch.dtype = torch.float64, seed: int = 0) -> float:
        """Measured dot-product error of the adjoint pair, the largest over ``n_trials`` draws.

        For standard-normal ``x`` [in_shape] and ``y`` [out_shape] (drawn on the CPU with
        ``seed``), the relative error is ``|<A x, y> - <x, A^T y>| / (||A x|| ||y||)``. The
        denominator is the Cauchy-Schwarz bound of both sides (the inner product itself can be
        small by cancellation). An exactly adjoint pair gives rounding error only: about
        ``1e-16`` in float64, ``1e-8`` in float32 (or for kernels computing in float32).

        Returns
        -------
        float
            The largest relative error over the trials (dimensionless).
        """
        if int(n_trials) < 1:
            raise ValueError(f"n_trials must be >= 1, got {n_trials}")
        self._check_dtype(dtype)
        g = torch.Generator(device="cpu").manual_seed(int(seed))
        worst = 0.0
        with torch.no_grad():
            for _ in range(int(n_trials)):
                x = torch.randn((1,) + self.in_shape, generator=g, dtype=dtype).to(self.device)
                y = torch.randn((1,) + self.out_shape, generator=g, dtype=dtype).to(self.device)
                ax, aty = self.forward(x), self.adjoint(y)
                bound = float(ax.norm() * y.norm())
                diff = abs(float(batch_dot(ax, y)[0]) - float(batch_dot(x, aty)[0]))
                worst = max(worst, diff / bound if bound > 0 else diff)
        return worst

    def gradcheck(
        self,
        dtype: torch.dtype = torch.float64,
        seed: int = 0,
        *,
        eps: float = 1e-6,
        atol: float = 1e-8,
        rtol: float = 1e-3,
        second_order: bool = False,
    ) -> bool:
        """Check the autograd wiring with :func:`torch.autograd.gradcheck` on ``A`` and ``A^T``.

        Compares the backward pass (the adjoint) with finite differences of the forward pass on
        a random input ``[1, *in_shape]`` (and ``[1, *out_shape]`` for the adjoint); with
        ``second_order`` also :func:`torch.autograd.gradgradcheck` (double backward). Kernels that
        compute in float32 need a larger ``eps`` (e.g. ``1e-2``; the maps are linear, so a large
        step costs no accuracy) and looser tolerances.

        Returns
        -------
        bool
            True; a failing check raises ``GradcheckError`` (from the module
            ``torch.autograd.gradcheck``) showing the Jacobians that differ.
        """
        self._check_dtype(dtype)
        g = torch.Generator(device="cpu").manual_seed(int(seed))
        checks = [torch.autograd.gradcheck] + ([torch.autograd.gradgradcheck] if second_order else [])
        for fn, shape in ((self.forward, self.in_shape), (self.adjoint, self.out_shape)):
            t = torch.randn((1,) + shape, generator=g, dtype=dtype).to(self.device).requires_grad_(True)
            for check in checks:
                check(fn, (t,), eps=eps, atol=atol, rtol=rtol, fast_mode=True)
        return True

    # ----- helpers ------------------------------------------------------------------------------
    def _batched(self, t: torch.Tensor, shape_in: tuple, shape_out: tuple, *, adjoint: bool, name: str) -> torch.Tensor:
        check_tensor(t, name)
        nd = len(shape_in)
        if t.dim() < nd or tuple(t.shape[t.dim() - nd :]) != shape_in:
            what = self.space_names[1] if adjoint else self.space_names[0]
            raise ValueError(
                f"{type(self).__name__}: {name} must end in the {what} shape {shape_in}, "
                f"got shape {tuple(t.shape)} (expected [*batch, {', '.join(map(str, shape_in))}])"
            )
        if t.dtype not in self.supported_dtypes:
            raise TypeError(f"{type(self).__name__} supports dtypes {self.supported_dtypes}, got {t.dtype}")
        if t.device != self.device and not (t.device.type == self.device.type and self.device.index is None):
            raise ValueError(
                f"{type(self).__name__} lives on {self.device} but {name} is on {t.device}; "
                f"move it with {name}.to('{self.device}') or build the operator there"
            )
        lead = tuple(t.shape[: t.dim() - nd])
        flat = t.reshape((-1,) + shape_in).contiguous()
        out = _Apply.apply(flat, self, adjoint)
        return out.reshape(lead + shape_out)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(in_shape={self.in_shape}, out_shape={self.out_shape}, device={self.device})"


class AdjointOperator(LinearOperator):
    """The adjoint ``A^T`` of a :class:`LinearOperator` viewed as an operator itself."""

    def __init__(self, op: LinearOperator):
        super().__init__(op.out_shape, op.in_shape, op.device)
        self.op = op
        self.supported_dtypes = op.supported_dtypes
        self.space_names = op.space_names[::-1]

    def _forward(self, x):
        return self.op._adjoint(x)

    def _adjoint(self, y):
        return self.op._forward(y)

    @property
    def T(self) -> LinearOperator:
        return self.op

    def norm(self, *args, **kwargs) -> float:
        return self.op.norm(*args, **kwargs)


class ScaledOperator(LinearOperator):
    """``c * A`` for a scalar ``c`` (used e.g. to fold an affine intensity map into ``A``)."""

    def __init__(self, op: LinearOperator, factor: float):
        super().__init__(op.in_shape, op.out_shape, op.device)
        self.op = op
        self.factor = float(factor)
        self.supported_dtypes = op.supported_dtypes

    def _forward(self, x):
        return self.op._forward(x) * self.factor

    def _adjoint(self, y):
        return self.op._adjoint(y) * self.factor


class ComposedOperator(LinearOperator):
    """``A2 @ A1``: apply ``first`` then ``second`` (shapes must chain)."""

    def __init__(self, second: LinearOperator, first: LinearOperator):
        if first.out_shape != second.in_shape:
            raise ValueError(f"cannot compose: first maps to {first.out_shape} but second expects {second.in_shape}")
        if first.device != second.device:
            raise ValueError(f"cannot compose operators on {first.device} and {second.device}")
        super().__init__(first.in_shape, second.out_shape, first.device)
        self.first, self.second = first, second
        self.supported_dtypes = tuple(d for d in first.supported_dtypes if d in second.supported_dtypes)

    def _forward(self, x):
        return self.second._forward(self.first._forward(x))

    def _adjoint(self, y):
        return self.first._adjoint(self.second._adjoint(y))
