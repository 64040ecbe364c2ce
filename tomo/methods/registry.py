"""The method registry: names -> reconstruction methods, and the common entry :func:`reconstruct`.

Every method is a :class:`ReconMethod` in a :class:`MethodRegistry`. The ``tomo reconstruct``
command builds its ``--method`` choices and its method options from a registry, so a new method
needs no change to the command. :func:`default_registry` holds the built-in methods, registered
explicitly by :func:`tomo.methods.classical.register` (FBP, SIRT, CGLS, TV) and
:func:`tomo.methods.diffusion.register` (DDS, DPS).

Adding a method
---------------
Write a function ``run(sinogram, problem, **options) -> mu`` where

* ``sinogram`` is a float32 torch tensor ``[B, views, detectors]`` of line integrals on
  ``problem.device``;
* ``problem`` is a :class:`ReconProblem`: ``geometry``, ``device``, ``i0`` (photons per bin or
  None), ``progress`` (show progress bars), and ``operator`` (the :class:`operators.CTProjector`
  of the geometry on the device, built on first use and shared);
* it returns attenuation mu [1/mm] as a tensor ``[B, H, W]`` on ``problem.device``, or a
  :class:`MethodOutput` that adds a pixel-wise posterior standard deviation (sampling methods);

then register it with its command-line options, in the default registry or in your own::

    from tomo.methods import MethodOption, default_registry

    default_registry().register(
        "mine", run_mine, help="my method",
        options=(MethodOption("--steps", "steps", int, "iterations"),), batch_size=4)

Options are passed to ``run`` as keywords only when the user gives them (so defaults live in
``run``); an option several methods share (same flag) is declared once in the command, with the
same ``dest`` and type.

Units: ``reconstruct`` returns attenuation [1/mm]; convert with :func:`operators.units.mu_to_hu`.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Literal, overload

import numpy as np
import torch
from tqdm.auto import tqdm

from operators.geometry import FanBeam2D, ParallelBeam2D

from . import classical, diffusion
from .base import MethodOption, MethodOutput, MethodRegistry, ReconMethod, ReconProblem

__all__ = [
    "ReconProblem",
    "ReconMethod",
    "MethodOutput",
    "MethodOption",
    "MethodRegistry",
    "default_registry",
    "get_method",
    "available_methods",
    "reconstruct",
]


@functools.cache
def default_registry() -> MethodRegistry:
    """The registry of the built-in methods (built once; add your own with ``.register``)."""
    registry = MethodRegistry()
    classical.register(registry)
    diffusion.register(registry)
    return registry


def get_method(name: str) -> ReconMethod:
    """The built-in (or user-registered) method ``name`` of :func:`default_registry`."""
    return default_registry().get_method(name)


def available_methods() -> dict[str, ReconMethod]:
    """All methods of :func:`default_registry`."""
    return dict(default_registry())


# ----- entry point --------------------------------------------------------------------------------
def _as_sinogram_tensor(sinogram, geometry) -> tuple[torch.Tensor, bool]:
    if isinstance(sinogram, np.ndarray):
        if sinogram.dtype.kind != "f":
            raise TypeError(f"sinogram must be floating point, got dtype {sinogram.dtype}")
        sinogram = torch.from_numpy(np.ascontiguousarray(sinogram, dtype=np.float32))
    if not isinstance(sinogram, torch.Tensor):
        raise TypeError(f"sinogram must be a NumPy array or torch tensor, got {type(sinogram).__name__}")
    if not sinogram.is_floating_point():
        raise TypeError(f"sinogram must be floating point, got {sinogram.dtype}")
    if sinogram.dim() not in (2, 3) or tuple(sinogram.shape[-2:]) != geometry.sinogram_shape:
        raise ValueError(
            f"sinogram must be [views, detectors] = {geometry.sinogram_shape} or "
            f"[slices, {geometry.sinogram_shape[0]}, {geometry.sinogram_shape[1]}] for this "
            f"geometry, got shape {tuple(sinogram.shape)}"
        )
    if not bool(torch.isfinite(sinogram).all()):
        raise ValueError("sinogram contains NaN or Inf values")
    single = sinogram.dim() == 2
    return (sinogram[None] if single else sinogram), single


def _resolve_device(device) -> torch.device:
    dev = torch.device(device if device is not None else "cpu")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but torch has no CUDA device here")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    return dev


@overload
def reconstruct(
    sinogram, geometry, method: str = ..., *, return_std: Literal[False] = ..., **options: Any
) -> torch.Tensor: ...


@overload
def reconstruct(
    sinogram, geometry, method: str = ..., *, return_std: Literal[True], **options: Any
) -> tuple[torch.Tensor, torch.Tensor | None]: ...


def reconstruct(
    sinogram,
    geometry,
    method: str = "fbp",
    *,
    i0: float | None = None,
    device=None,
    batch_size: int | None = None,
    progress: bool = True,
    out_device=None,
    problem: ReconProblem | None = None,
    registry: MethodRegistry | None = None,
    return_std: bool = False,
    **options,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor | None]:
    """Reconstruct attenuation from line integrals with a registered method.

    Parameters
    ----------
    sinogram : np.ndarray or torch.Tensor, [views, detectors] or [slices, views, detectors]
        Line integrals (dimensionless), float.
    geometry : ParallelBeam2D or FanBeam2D
        Acquisition and reconstruction grid.
    method : str
        A method of the registry: ``fbp``, ``sirt``, ``cgls``, ``tv``, ``dds``, ``dps`` (and yours).
    i0 : float, optional
        Photons per bin of the scan (used by dose-dependent defaults and noise-aware methods).
    device : str or torch.device, optional
        ``"cpu"`` (default) or ``"cuda"``; computation happens there.
    batch_size : int, optional
        Slices per call (bounds memory); default the method's own.
    progress : bool
        tqdm progress bars.
    out_device : str or torch.device, optional
        Where the result is gathered (default: the compute device); ``"cpu"`` keeps GPU memory
        bounded for long series.
    problem : ReconProblem, optional
        Reuse a problem (and its cached projector) across calls; must match geometry and device.
    registry : MethodRegistry, optional
        Where ``method`` is looked up (default :func:`default_registry`).
    return_std : bool
        Also return the method's pixel-wise posterior standard deviation (None for methods
        without one, e.g. the classical ones, or ``dds`` with one sample).
    **options
        Method options (see each method's ``options``), e.g. ``iterations=50``, ``tv_weight=...``.

    Returns
    -------
    torch.Tensor, [H, W] or [slices, H, W]
        Attenuation mu [1/mm] (float32); with ``return_std`` a pair ``(mu, std)``, ``std`` in
        1/mm, same shape, or None.
    """
    entry = (registry if registry is not None else default_registry()).get_method(method)
    if not isinstance(geometry, (ParallelBeam2D, FanBeam2D)):
        raise TypeError(f"geometry must be ParallelBeam2D or FanBeam2D, got {type(geometry).__name__}")
    unknown = sorted(set(options) - set(entry.option_names))
    if unknown:
        raise ValueError(f"method {method!r} has no option(s) {unknown}; it takes {list(entry.option_names)}")
    if i0 is not None and not (math.isfinite(float(i0)) and float(i0) > 0):
        raise ValueError(f"i0 must be a positive number of photons, got {i0!r}")
    dev = _resolve_device(device)
    batch = entry.batch_size if batch_size is None else int(batch_size)
    if batch < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    sino, single = _as_sinogram_tensor(sinogram, geometry)
    if problem is None:
        problem = ReconProblem(geometry, dev, None if i0 is None else float(i0), progress)
    elif problem.geometry != geometry or problem.device != dev:
        raise ValueError("the given problem was built for another geometry or device")
    out_dev = dev if out_device is None else torch.device(out_device)
    chunks, stds = [], []
    starts = range(0, sino.shape[0], batch)
    with torch.no_grad():
        for start in tqdm(
            starts, desc=f"{method} batches", disable=None if progress and len(starts) >= 2 else True, leave=False
        ):
            part = sino[start : start + batch].to(device=dev, dtype=torch.float32)
            result = entry.run(part, problem, **options)
            output = result if isinstance(result, MethodOutput) else MethodOutput(result)
            if tuple(output.mu.shape) != (part.shape[0],) + tuple(geometry.image_shape):
                raise RuntimeError(
                    f"method {method!r} returned shape {tuple(output.mu.shape)}, expected "
                    f"{(part.shape[0],) + tuple(geometry.image_shape)}"
                )
            chunks.append(output.mu.to(device=out_dev, dtype=torch.float32))
            stds.append(None if output.std is None else output.std.to(device=out_dev, dtype=torch.float32))
    out = torch.cat(chunks)
    if not return_std:
        return out[0] if single else out
    given = [s for s in stds if s is not None]
    std = torch.cat(given) if len(given) == len(stds) else None
    if single:
        return out[0], None if std is None else std[0]
    return out, std
