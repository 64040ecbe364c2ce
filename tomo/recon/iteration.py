"""Shared plumbing of the iterative solvers: batching, validation, stopping rule, progress."""

from __future__ import annotations

from collections.abc import Callable

import torch
from tqdm.auto import tqdm

from operators.base import LinearOperator, check_tensor

#: ``callback(iteration, x)`` with ``x`` the current iterate [B, *in_shape]; return True to stop.
Callback = Callable[[int, torch.Tensor], "bool | None"]


def as_batch(op: LinearOperator, y: torch.Tensor, name: str = "y") -> tuple[torch.Tensor, bool]:
    """Validate ``y`` against ``op.out_shape`` and return it as ``[B, *out_shape]`` on op's device.

    Returns the batched tensor and whether the input was unbatched (``y.shape == out_shape``).
    """
    if not isinstance(op, LinearOperator):
        raise TypeError(f"the operator must be an operators.LinearOperator, got {type(op).__name__}")
    check_tensor(y, name)
    nd = len(op.out_shape)
    if y.dim() < nd or tuple(y.shape[y.dim() - nd :]) != op.out_shape:
        raise ValueError(
            f"{name} must have shape {op.out_shape} or [B, {', '.join(map(str, op.out_shape))}] "
            f"to match the operator, got {tuple(y.shape)}"
        )
    if y.dim() > nd + 1:
        raise ValueError(f"{name} must have at most one batch dimension, got shape {tuple(y.shape)}")
    unbatched = y.dim() == nd
    y = y.to(op.device)
    if y.dtype not in op.supported_dtypes:
        y = y.to(torch.float32)
    return (y.unsqueeze(0) if unbatched else y).contiguous(), unbatched


def initial_image(op: LinearOperator, x0: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    """The start image ``[B, *in_shape]``: zeros, or ``x0`` (broadcast over the batch) validated."""
    b = like.shape[0]
    if x0 is None:
        return torch.zeros((b,) + op.in_shape, dtype=like.dtype, device=like.device)
    check_tensor(x0, "x0")
    if tuple(x0.shape) == op.in_shape:
        x0 = x0.expand((b,) + op.in_shape)
    if tuple(x0.shape) != (b,) + op.in_shape:
        raise ValueError(f"x0 must have shape {op.in_shape} or {(b,) + op.in_shape}, got {tuple(x0.shape)}")
    return x0.to(device=like.device, dtype=like.dtype).clone()


def expand_as(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Reshape a per-item ``[B]`` vector to broadcast against ``x`` of shape ``[B, ...]``."""
    return v.reshape((-1,) + (1,) * (x.dim() - 1))


def safe_divide(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """``num / den`` with 0 where ``den == 0`` (e.g. the all-zero sinogram)."""
    return torch.where(den != 0, num / torch.where(den != 0, den, torch.ones_like(den)), torch.zeros_like(num))


def check_iterations(iterations: int, tol: float) -> None:
    if not isinstance(iterations, int) or isinstance(iterations, bool) or iterations < 0:
        raise ValueError(f"iterations must be a non-negative int, got {iterations!r}")
    if not (tol >= 0.0):
        raise ValueError(f"tol must be >= 0, got {tol!r}")


class Stopper:
    """Per-item relative-change stopping rule with a progress bar.

    An item stops (is frozen) once ``||x_new - x|| <= tol * ||x_new||``; the loop ends when all
    items have stopped, after ``iterations`` iterations, or when the callback returns True.
    Freezing items individually makes a batched run give the same result as per-item runs.
    """

    def __init__(self, batch: int, iterations: int, tol: float, progress: bool, desc: str, device: torch.device):
        self.tol = tol
        self.active = torch.ones(batch, dtype=torch.bool, device=device)
        self.iterations_run = torch.zeros(batch, dtype=torch.long, device=device)
        self.bar = tqdm(total=iterations, desc=desc, disable=None if progress else True, leave=False)

    def update(self, change: torch.Tensor, scale: torch.Tensor) -> None:
        """Record one iteration; ``change``/``scale`` are per-item norms [B] of the step and iterate."""
        self.iterations_run += self.active.long()
        if self.tol > 0:
            self.active &= ~(change <= self.tol * scale)
        self.bar.update(1)
        if not self.bar.disable:
            rel = float((change / scale.clamp_min(1e-30)).max())
            self.bar.set_postfix(rel_change=f"{rel:.2e}", active=int(self.active.sum()))

    @property
    def done(self) -> bool:
        return not bool(self.active.any())

    def close(self) -> None:
        self.bar.close()


def where_active(active: torch.Tensor, new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    """Keep ``old`` for frozen items and take ``new`` for active ones (items on dim 0)."""
    return torch.where(expand_as(active, new), new, old)
