"""Pieces shared by the sampling loops: result type, input checks, seeded noise."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch

from tomo.priors.noising import add_noise

__all__ = ["SolverResult", "check_prior", "check_number", "make_generator", "standard_normal"]


@dataclass
class SolverResult:
    """What a diffusion solver returns.

    Attributes
    ----------
    x : torch.Tensor [B, 1, H, W]
        Reconstruction in the prior's model range (detached).
    network_evaluations : int
        Calls of ``prior.eps`` (each on the whole batch).
    gradient_evaluations : int
        Backward passes through the network (DPS: one per step; DDS: 0).
    operator_calls : int
        Applications of ``A`` or ``A^T`` (batched call counts once), norm estimate included.
    residual_norms : list of list of float
        Normalised data residual ``||s W^{1/2}(y - A x0_hat)||`` per step (rows) and item.
    timesteps : list of int
        Training timesteps visited.
    std : torch.Tensor or None
        [B, 1, H, W] pixel-wise standard deviation of several samples
        (:func:`~tomo.solvers.posterior_mean`), else None.
    """

    x: torch.Tensor
    network_evaluations: int
    gradient_evaluations: int
    operator_calls: int
    residual_norms: list = field(default_factory=list)
    timesteps: list = field(default_factory=list)
    std: torch.Tensor | None = None


def check_prior(prior) -> None:
    """Refuse objects lacking the prior interface the solvers use."""
    missing = [name for name in ("eps", "alphas_cumprod") if not hasattr(prior, name)]
    if missing:
        raise TypeError(
            f"prior must provide eps(x_t, t, generator=None) and alphas_cumprod "
            f"(like tomo.priors.DiffusionPrior); {type(prior).__name__} lacks {', '.join(missing)}"
        )


def check_number(name: str, value, low: float = 0.0, high: float = float("inf"), *, integer: bool = False) -> None:
    """Refuse ``value`` unless it is a finite number (an int with ``integer``) in ``[low, high]``."""
    kind = (int,) if integer else (int, float)
    ok = isinstance(value, kind) and not isinstance(value, bool) and value == value and low <= value <= high
    if not ok or (not integer and abs(value) == float("inf")):
        what = "an int" if integer else "a finite number"
        raise ValueError(f"{name} must be {what} in [{low:g}, {high:g}], got {value!r}")


def make_generator(seed: int | torch.Generator | None) -> torch.Generator:
    """A CPU ``torch.Generator`` from a seed, or the given CPU generator unchanged.

    All randomness (initial noise, re-noising, the prior's patch shifts) is drawn on the CPU
    and moved to the compute device, so a seed gives the same noise on CPU and CUDA runs.
    ``None`` draws a seed from torch's global generator (``torch.manual_seed`` still makes runs
    reproducible).
    """
    if isinstance(seed, torch.Generator):
        if seed.device.type != "cpu":
            raise ValueError(
                f"the generator must live on the CPU (the prior draws its patch shifts there), got one on {seed.device}"
            )
        return seed
    if seed is None:
        seed = int(torch.randint(0, 2**62, (1,)).item())
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, a torch.Generator or None, got {type(seed).__name__}")
    return torch.Generator(device="cpu").manual_seed(seed)


def standard_normal(shape, generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    """Standard normal noise drawn with ``generator`` (on its own device), on ``like``'s device."""
    z = torch.randn(shape, generator=generator, dtype=like.dtype, device=generator.device)
    return z.to(like.device)


def prior_device(prior, default: torch.device) -> torch.device:
    """The device the prior computes on (``prior.device`` if it says), else ``default``."""
    dev = getattr(prior, "device", None)
    return torch.device(dev) if dev is not None else default


def check_same_device(prior, operator) -> None:
    dev = getattr(prior, "device", None)
    if dev is None:
        return
    pd, od = torch.device(dev), operator.device
    if pd.type != od.type or (pd.index is not None and od.index is not None and pd.index != od.index):
        raise ValueError(f"prior is on {pd} but the operator is on {od}; build both on the same device")


def initial_state(
    shape, abar_first: float, generator: torch.Generator, like: torch.Tensor, x_init: torch.Tensor | None, start: float
) -> torch.Tensor:
    """``x_T``: pure noise, or ``x_init`` noised to the first timestep when ``start < 1``.

    ``x_init`` (model range) must broadcast to ``shape`` = [B, 1, H, W].
    """
    z = standard_normal(shape, generator, like)
    if x_init is None:
        if start < 1.0:
            raise ValueError("start < 1 (a warm start) needs x_init, the image to start from")
        return z
    if not isinstance(x_init, torch.Tensor) or not x_init.is_floating_point():
        raise TypeError("x_init must be a floating-point torch.Tensor in the prior's model range")
    if not bool(torch.isfinite(x_init).all()):
        raise ValueError("x_init contains NaN or Inf values")
    try:
        x0 = torch.broadcast_to(x_init.to(device=like.device, dtype=like.dtype), shape)
    except RuntimeError:
        raise ValueError(
            f"x_init of shape {tuple(x_init.shape)} does not broadcast to the images {tuple(shape)}"
        ) from None
    return add_noise(x0, z, abar_first)


def network_precision(device: torch.device, autocast_dtype: torch.dtype | None):
    """Context for the prior's network calls: ``torch.autocast`` to ``autocast_dtype`` or nothing.

    bfloat16 autocast is faster on CPUs with native bf16 (AVX512-BF16 / AMX) and much slower on
    those without (timings: docs/prior.md); it costs about 0.4 % relative error in ``eps``. The
    solvers' own arithmetic (Tweedie, CG, steps) stays in the input's dtype.
    """
    if autocast_dtype is None:
        return contextlib.nullcontext()
    if autocast_dtype not in (torch.bfloat16, torch.float16):
        raise ValueError(f"autocast_dtype must be torch.bfloat16, torch.float16 or None, got {autocast_dtype}")
    return torch.autocast(device_type=device.type, dtype=autocast_dtype)


def start_sampling(
    prior, operator, y, weights, *, steps: int, spacing: str, start: float, normalize: bool, seed, x_init
):
    """Set-up shared by the samplers: checks, respaced schedule, data term, generator and ``x_T``.

    Returns ``(schedule, data, generator, x)``.
    """
    from .data_terms import DataFidelity
    from .schedule import make_schedule

    check_prior(prior)
    schedule = make_schedule(prior.alphas_cumprod, steps, spacing, start)
    data = DataFidelity(operator, y, weights, normalize=normalize)
    check_same_device(prior, operator)
    generator = make_generator(seed)
    x = initial_state(data.image_shape, schedule.abar[0], generator, data.y, x_init, start)
    return schedule, data, generator, x
