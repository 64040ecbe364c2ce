"""Reconstruction methods by name, and the common entry :func:`reconstruct`.

Every method is a :class:`ReconMethod` in the registry :data:`METHODS` (name -> method). The
``tomo reconstruct`` command builds its ``--method`` choices and its method options from this
registry, so a new method needs no change to the command.

Adding a method (e.g. the diffusion solvers' ``dps`` and ``dds``)
----------------------------------------------------------------
Write a function ``run(sinogram, problem, **options) -> mu`` where

* ``sinogram`` is a float32 torch tensor ``[B, views, detectors]`` of line integrals on
  ``problem.device``;
* ``problem`` is a :class:`ReconProblem`: ``geometry``, ``device``, ``i0`` (photons per bin or
  None), ``progress`` (show tqdm bars), and ``operator`` (the :class:`operators.CTProjector` of
  the geometry on the device, built on first use and shared);
* it returns attenuation mu [1/mm] as a tensor ``[B, H, W]`` on ``problem.device``;

then register it, with its command-line options, in a module of your package::

    from tomo.recon.methods import MethodOption, register_method

    register_method("dps", run_dps, help="diffusion posterior sampling (needs a prior)",
                    options=(MethodOption("--steps", "steps", int, "sampler steps"),
                             MethodOption("--prior", "prior", str, "checkpoint file"),
                             MethodOption("--seed", "seed", int, "sampler seed")),
                    batch_size=4)

and make sure that module is imported: the registry imports every module named in
:data:`PLUGIN_MODULES` that exists (``tomo.solvers.methods`` is listed already), so creating
``tomo/solvers/methods.py`` with the call above is enough. Options are passed to ``run`` as
keywords only when the user gives them (so defaults live in ``run``); an option several methods
share (same flag) is declared once in the command, with the same ``dest`` and type.

Units: ``reconstruct`` returns attenuation [1/mm]; convert with :func:`tomo.metrics.mu_to_hu`.
"""
from __future__ import annotations

import importlib
import importlib.util
import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from operators.geometry import FanBeam2D, ParallelBeam2D

from .fbp import FILTERS, fbp_reconstruct
from .iterative import cgls, sirt
from .tv import tv_pdhg

__all__ = ["ReconProblem", "ReconMethod", "MethodOption", "METHODS", "PLUGIN_MODULES",
           "register_method", "get_method", "reconstruct", "poisson_weights", "tv_default_weight",
           "describe_defaults", "available_methods", "TV_DEFAULT_WEIGHT", "effective_views", "SIRT_DEFAULT_ITERATIONS", "CGLS_DEFAULT_ITERATIONS"]

#: modules imported (if they exist) the first time the registry is used; they register methods
PLUGIN_MODULES: tuple[str, ...] = ("tomo.solvers.methods",)


@dataclass
class ReconProblem:
    """What a method needs besides the data: geometry, device, dose, and a shared projector."""

    geometry: ParallelBeam2D | FanBeam2D
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    i0: float | None = None
    progress: bool = True
    _operator: Any = field(default=None, repr=False)

    @property
    def operator(self):
        """:class:`operators.CTProjector` of the geometry on the device (built once)."""
        if self._operator is None:
            from operators import CTProjector
            self._operator = CTProjector(self.geometry, device=self.device)
        return self._operator


@dataclass(frozen=True)
class MethodOption:
    """A method's keyword option and its command-line flag.

    Attributes
    ----------
    flag : str
        Command-line flag, e.g. ``"--iterations"``.
    dest : str
        Keyword passed to the method's function.
    type : callable
        Parser of the flag's text (``int``, ``float``, ``str``...).
    help : str
        Help text (say the unit and the default).
    choices : tuple, optional
        Allowed values.
    """

    flag: str
    dest: str
    type: Callable = str
    help: str = ""
    choices: tuple | None = None


@dataclass(frozen=True)
class ReconMethod:
    """A named reconstruction method: ``run(sinogram [B,V,D], problem, **options) -> mu [B,H,W]``."""

    name: str
    run: Callable
    help: str
    options: tuple[MethodOption, ...] = ()
    #: slices per call when the caller gives no batch size (bounds memory)
    batch_size: int = 16

    @property
    def option_names(self) -> tuple[str, ...]:
        return tuple(o.dest for o in self.options)


METHODS: dict[str, ReconMethod] = {}
_PLUGINS_LOADED = False


def register_method(name: str, run: Callable, *, help: str, options=(), batch_size: int = 16,
                    replace: bool = False) -> ReconMethod:
    """Add a method to :data:`METHODS` (see the module docstring). Returns the entry."""
    if not isinstance(name, str) or not name or not name.replace("-", "").replace("_", "").isalnum():
        raise ValueError(f"method name must be a non-empty word, got {name!r}")
    if name in METHODS and not replace:
        raise ValueError(f"method {name!r} is already registered; pass replace=True to replace it")
    if not callable(run):
        raise TypeError(f"run must be callable, got {type(run).__name__}")
    opts = tuple(options)
    for o in opts:
        if not isinstance(o, MethodOption) or not o.flag.startswith("--"):
            raise TypeError(f"options must be MethodOption with a --flag, got {o!r}")
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    entry = ReconMethod(name, run, help, opts, int(batch_size))
    METHODS[name] = entry
    return entry


def _load_plugins() -> None:
    global _PLUGINS_LOADED
    if _PLUGINS_LOADED:
        return
    _PLUGINS_LOADED = True
    for module in PLUGIN_MODULES:
        try:
            spec = importlib.util.find_spec(module)
        except ModuleNotFoundError:
            spec = None
        if spec is not None:
            importlib.import_module(module)


def get_method(name: str) -> ReconMethod:
    """The registered method ``name`` (plugins loaded first); ``ValueError`` listing the choices."""
    _load_plugins()
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of {', '.join(sorted(METHODS))}")
    return METHODS[name]


def available_methods() -> dict[str, ReconMethod]:
    """All registered methods (plugins loaded)."""
    _load_plugins()
    return dict(METHODS)


# ----- defaults (tuned on train/ slices only: scripts/tune_tv.py, docs/reconstruction.md) ----------
#: TV weight (dimensionless, see tomo.recon.tv) at TV_REFERENCE_VIEWS effective views, with the
#: default "auto" weighting; scaled by TV_REFERENCE_VIEWS / effective views (tv_default_weight).
#: Chosen by scripts/tune_tv.py on 8 train/dicom slices x the 3 standard configurations
#: (docs/reconstruction.md): optimum 5e-4 for parallel-30 and fanbeam-60, 1e-3..2e-3 for parallel-8.
TV_DEFAULT_WEIGHT = 5e-4
TV_REFERENCE_VIEWS = 30
#: iterations of the TV solver (Chambolle-Pock) by default, and its relative-change tolerance
TV_DEFAULT_ITERATIONS = 300
TV_DEFAULT_TOL = 1e-4
TV_DEFAULT_WEIGHTING = "auto"
#: SIRT: 150 iterations is within 0.15 dB of each configuration's best count on train/ (it
#: semi-converges at I0 1e5: best 100-150 for fanbeam-60, still rising slowly at 400 for parallel)
SIRT_DEFAULT_ITERATIONS = 150
#: CGLS: Poisson-weighted ("auto") beat unweighted at every count; 20 iterations is the best
#: single count across the three configurations on train/ (semi-convergence beyond)
CGLS_DEFAULT_ITERATIONS = 20
CGLS_DEFAULT_WEIGHTING = "auto"
#: FBP: Hann was the best filter for all three configurations on train/ (+2 to +4 dB over ram-lak)
FBP_DEFAULT_FILTER = "hann"
#: model-error floor of the data weights (line-integral std), see :func:`poisson_weights`;
#: 0.05 best of {0, 0.02, 0.03, 0.05, 0.08, 0.12} on train/ for TV
DEFAULT_MODEL_ERROR = 0.05
#: FBP filter of the TV start image (smooth start; does not change the TV solution)
TV_START_FILTER = "hann"


def effective_views(geometry) -> float:
    """Views per half turn: the number of views for parallel beam (over [0, pi)), half of them for
    a full-turn fan-beam scan (opposite fan views see nearly the same lines)."""
    if isinstance(geometry, FanBeam2D):
        return geometry.num_views / 2.0
    return float(geometry.num_views)


def tv_default_weight(geometry, i0: float | None = None) -> float:
    """Default TV weight: ``TV_DEFAULT_WEIGHT * TV_REFERENCE_VIEWS / effective_views(geometry)``.

    The data term of :func:`tomo.recon.tv.tv_pdhg` is divided by ``||W^(1/2) A||^2``, which handles
    pixel size, detector and weight scale, but also grows with the number of views; tuning on
    train/ (docs/reconstruction.md) found the best weight inversely proportional to the views
    per half turn (parallel 30 views and fan 60 views over 2 pi: 5e-4; parallel 8 views:
    1e-3 to 2e-3; the rule gives 1.9e-3), i.e. a weight independent of the view count relative
    to the un-normalised data term. The dose enters through the "auto" data weights, not here.
    """
    return TV_DEFAULT_WEIGHT * TV_REFERENCE_VIEWS / effective_views(geometry)


def describe_defaults() -> str:
    """One line naming every classical default (for reports)."""
    return (f"FBP filter {FBP_DEFAULT_FILTER}; SIRT {SIRT_DEFAULT_ITERATIONS} iterations, non-negative; "
            f"CGLS {CGLS_DEFAULT_ITERATIONS} iterations, {CGLS_DEFAULT_WEIGHTING} weighting; TV weight "
            f"{TV_DEFAULT_WEIGHT:g} x {TV_REFERENCE_VIEWS} / views per half turn, "
            f"{TV_DEFAULT_WEIGHTING} weighting (Poisson with model-error floor {DEFAULT_MODEL_ERROR:g} when I0 "
            f"is known), FBP ({TV_START_FILTER}) start, at most {TV_DEFAULT_ITERATIONS} iterations, "
            f"relative-change tolerance {TV_DEFAULT_TOL:g}")


def poisson_weights(sinogram: torch.Tensor, i0: float | None = None,
                    model_error: float = DEFAULT_MODEL_ERROR) -> torch.Tensor:
    """Data weights = inverse variances of transmission line integrals, with a model-error floor.

    ``w = 1 / (exp(y) / I0 + model_error^2)``: the first term is the (delta-method) Poisson
    variance of ``y = -log(counts / I0)``, the second a floor for what is not photon noise
    (discretisation mismatch, e.g. fine-grid data reconstructed on a coarse grid), which
    dominates at high dose; so the weighting is uniform at high dose and Poisson at low dose.
    Without ``i0`` only the relative Poisson weights ``exp(-y)`` can be formed (no floor).
    The solvers are invariant to a common scale of the weights.

    Parameters
    ----------
    sinogram : torch.Tensor
        Noisy line integrals ``y`` (dimensionless), any shape.
    i0 : float, optional
        Photons per detector bin.
    model_error : float
        Standard deviation floor in line-integral units (default tuned on train/, see
        docs/reconstruction.md).
    """
    if i0 is None:
        return torch.exp(-sinogram)
    if not (model_error >= 0):
        raise ValueError(f"model_error must be >= 0, got {model_error!r}")
    return 1.0 / (torch.exp(sinogram) / float(i0) + float(model_error) ** 2)


# ----- built-in methods ---------------------------------------------------------------------------
def _run_fbp(sinogram, problem: ReconProblem, *, filter: str = FBP_DEFAULT_FILTER, cutoff: float = 1.0):
    return fbp_reconstruct(sinogram, problem.geometry, filter=filter, cutoff=cutoff)


WEIGHTINGS = ("auto", "none", "poisson")


def _weights(weighting: str, sinogram, i0, model_error):
    """``auto``: Poisson with the model-error floor when the dose is known, else none."""
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    if weighting == "none" or (weighting == "auto" and i0 is None):
        return None
    return poisson_weights(sinogram, i0, DEFAULT_MODEL_ERROR if model_error is None else model_error)


def _run_sirt(sinogram, problem: ReconProblem, *, iterations: int = SIRT_DEFAULT_ITERATIONS,
              tol: float = 0.0, nonneg: bool = True):
    return sirt(problem.operator, sinogram, iterations=iterations, tol=tol, nonneg=nonneg,
                progress=problem.progress)


def _run_cgls(sinogram, problem: ReconProblem, *, iterations: int = CGLS_DEFAULT_ITERATIONS,
              tol: float = 0.0, weighting: str = CGLS_DEFAULT_WEIGHTING, model_error: float | None = None):
    return cgls(problem.operator, sinogram, iterations=iterations, tol=tol,
                weights=_weights(weighting, sinogram, problem.i0, model_error), progress=problem.progress)


def _run_tv(sinogram, problem: ReconProblem, *, tv_weight: float | None = None,
            iterations: int = TV_DEFAULT_ITERATIONS, tol: float = TV_DEFAULT_TOL,
            weighting: str = TV_DEFAULT_WEIGHTING, model_error: float | None = None):
    weight = tv_default_weight(problem.geometry, problem.i0) if tv_weight is None else tv_weight
    # Start from FBP: the solution is the same (convex problem) but reached in fewer iterations.
    x0 = fbp_reconstruct(sinogram, problem.geometry, filter=TV_START_FILTER).clamp_min(0.0)
    return tv_pdhg(problem.operator, sinogram, weight=weight, iterations=iterations, tol=tol,
                   weights=_weights(weighting, sinogram, problem.i0, model_error), x0=x0,
                   progress=problem.progress)


_ITER = MethodOption("--iterations", "iterations", int,
                     "maximum iterations (defaults: SIRT %d, CGLS %d, TV %d)"
                     % (SIRT_DEFAULT_ITERATIONS, CGLS_DEFAULT_ITERATIONS, TV_DEFAULT_ITERATIONS))
_TOL = MethodOption("--tol", "tol", float,
                    "stop when the relative change (CGLS: relative normal-equation residual) falls "
                    "below this (default: SIRT/CGLS 0 = off, TV %g)" % TV_DEFAULT_TOL)
_WEIGHTING = MethodOption("--weighting", "weighting", str,
                          "data weighting: 'poisson' = inverse variance exp(y)/I0 + model-error^2 (exp(-y) "
                          "when I0 is unknown), 'none', or 'auto' = poisson if the file has I0 (default auto)",
                          choices=WEIGHTINGS)
_MODEL_ERROR = MethodOption("--model-error", "model_error", float,
                            "std floor of the line integrals in the Poisson weights (default %g)"
                            % DEFAULT_MODEL_ERROR)

register_method("fbp", _run_fbp, help="filtered back-projection", batch_size=64, options=(
    MethodOption("--filter", "filter", str, f"FBP filter (default {FBP_DEFAULT_FILTER})", choices=FILTERS),
    MethodOption("--cutoff", "cutoff", float, "FBP filter cut-off, fraction of Nyquist in (0, 1] (default 1)"),
))
register_method("sirt", _run_sirt, help="SIRT, non-negative", options=(_ITER, _TOL))
register_method("cgls", _run_cgls, help="CGLS (least squares; iterations regularise)",
                options=(_ITER, _TOL, _WEIGHTING, _MODEL_ERROR))
register_method("tv", _run_tv, help="isotropic TV, non-negative (Chambolle-Pock); tuned defaults",
                options=(MethodOption("--tv-weight", "tv_weight", float,
                                      "TV weight relative to the normalised data term (default: tuned "
                                      "per geometry, see docs/reconstruction.md)"),
                         _ITER, _TOL, _WEIGHTING, _MODEL_ERROR))


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
        raise ValueError(f"sinogram must be [views, detectors] = {geometry.sinogram_shape} or "
                         f"[slices, {geometry.sinogram_shape[0]}, {geometry.sinogram_shape[1]}] for this "
                         f"geometry, got shape {tuple(sinogram.shape)}")
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


def reconstruct(sinogram, geometry, method: str = "fbp", *, i0: float | None = None,
                device=None, batch_size: int | None = None, progress: bool = True,
                out_device=None, problem: ReconProblem | None = None, **options) -> torch.Tensor:
    """Reconstruct attenuation from line integrals with a registered method.

    Parameters
    ----------
    sinogram : np.ndarray or torch.Tensor, [views, detectors] or [slices, views, detectors]
        Line integrals (dimensionless), float.
    geometry : ParallelBeam2D or FanBeam2D
        Acquisition and reconstruction grid.
    method : str
        A key of :data:`METHODS`: ``fbp``, ``sirt``, ``cgls``, ``tv`` (and plugins).
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
    **options
        Method options (see each method's ``options``), e.g. ``iterations=50``, ``tv_weight=...``.

    Returns
    -------
    torch.Tensor, [H, W] or [slices, H, W]
        Attenuation mu [1/mm] (float32).
    """
    entry = get_method(method)
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
    chunks = []
    starts = range(0, sino.shape[0], batch)
    with torch.no_grad():
        for start in tqdm(starts, desc=f"{method} batches", disable=not progress or len(starts) < 2,
                          leave=False):
            part = sino[start:start + batch].to(device=dev, dtype=torch.float32)
            mu = entry.run(part, problem, **options)
            if tuple(mu.shape) != (part.shape[0],) + tuple(geometry.image_shape):
                raise RuntimeError(f"method {method!r} returned shape {tuple(mu.shape)}, expected "
                                   f"{(part.shape[0],) + tuple(geometry.image_shape)}")
            chunks.append(mu.to(device=out_dev, dtype=torch.float32))
    out = torch.cat(chunks) if len(chunks) > 1 else chunks[0]
    return out[0] if single else out
