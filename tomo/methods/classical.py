"""The classical methods (FBP, SIRT, CGLS, TV) as registry entries, with their tuned defaults.

Defaults were tuned on train/ slices only (``scripts/tune_tv.py``, docs/reconstruction.md).
"""

from __future__ import annotations

import dataclasses
import warnings

import torch

from operators.geometry import FanBeam2D
from operators.noise import transmission_weights
from tomo.recon.analytic import FILTERS, fbp_reconstruct
from tomo.recon.iterative import cgls, sirt
from tomo.recon.tv import tv_pdhg
from tomo.recon.tv_subsets import tv_spdhg

from .base import MethodOption, MethodRegistry, ReconProblem

__all__ = [
    "register",
    "classical_method",
    "poisson_weights",
    "tv_default_weight",
    "effective_views",
    "describe_defaults",
    "TV_DEFAULT_WEIGHT",
    "SIRT_DEFAULT_ITERATIONS",
    "CGLS_DEFAULT_ITERATIONS",
    "DEFAULT_MODEL_ERROR",
]


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
#: above this many views TV runs SPDHG over interleaved view subsets of about TV_SUBSET_VIEWS views
#: each (tomo.recon.tv_subsets): an iteration then costs what a TV_SUBSET_VIEWS-view PDHG
#: iteration costs (HTC2022 tb, 181 views: docs/benchmarks.md)
TV_SUBSET_THRESHOLD = 60
TV_SUBSET_VIEWS = 30


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
    return (
        f"FBP filter {FBP_DEFAULT_FILTER}; SIRT {SIRT_DEFAULT_ITERATIONS} iterations, non-negative; "
        f"CGLS {CGLS_DEFAULT_ITERATIONS} iterations, {CGLS_DEFAULT_WEIGHTING} weighting; TV weight "
        f"{TV_DEFAULT_WEIGHT:g} x {TV_REFERENCE_VIEWS} / views per half turn, "
        f"{TV_DEFAULT_WEIGHTING} weighting (Poisson with model-error floor {DEFAULT_MODEL_ERROR:g} when I0 "
        f"is known), FBP ({TV_START_FILTER}) start, at most {TV_DEFAULT_ITERATIONS} iterations, "
        f"relative-change tolerance {TV_DEFAULT_TOL:g}"
    )


def poisson_weights(
    sinogram: torch.Tensor, i0: float | None = None, model_error: float = DEFAULT_MODEL_ERROR
) -> torch.Tensor:
    """Data weights of the classical methods: :func:`operators.transmission_weights` with the
    tuned model-error floor.

    ``w = 1 / (exp(y) / I0 + model_error^2)``: the first term is the (delta-method) Poisson
    variance of ``y = -log(counts / I0)``, the second a floor for what is not photon noise
    (discretisation mismatch, e.g. fine-grid data reconstructed on a coarse grid), which
    dominates at high dose; so the weighting is uniform at high dose and Poisson at low dose.
    Without ``i0`` only the relative Poisson weights ``exp(-y)`` can be formed (the floor is
    dropped). The solvers are invariant to a common scale of the weights.

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
    if not (model_error >= 0):
        raise ValueError(f"model_error must be >= 0, got {model_error!r}")
    return transmission_weights(sinogram, i0, model_error if i0 is not None else 0.0)


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


def _run_sirt(
    sinogram,
    problem: ReconProblem,
    *,
    iterations: int = SIRT_DEFAULT_ITERATIONS,
    tol: float = 0.0,
    nonneg: bool = True,
    upper: float | None = None,
):
    if upper is not None and not upper > 0:
        raise ValueError(f"--upper must be a positive attenuation in 1/mm, got {upper}")
    return sirt(
        problem.operator,
        sinogram,
        iterations=iterations,
        tol=tol,
        nonneg=nonneg,
        upper=upper,
        progress=problem.progress,
    )


def _run_cgls(
    sinogram,
    problem: ReconProblem,
    *,
    iterations: int = CGLS_DEFAULT_ITERATIONS,
    tol: float = 0.0,
    weighting: str = CGLS_DEFAULT_WEIGHTING,
    model_error: float | None = None,
):
    return cgls(
        problem.operator,
        sinogram,
        iterations=iterations,
        tol=tol,
        weights=_weights(weighting, sinogram, problem.i0, model_error),
        progress=problem.progress,
    )


def _run_tv(
    sinogram,
    problem: ReconProblem,
    *,
    tv_weight: float | None = None,
    iterations: int = TV_DEFAULT_ITERATIONS,
    tol: float = TV_DEFAULT_TOL,
    weighting: str = TV_DEFAULT_WEIGHTING,
    model_error: float | None = None,
    upper: float | None = None,
    subsets: int | None = None,
    support: str = "none",
):
    weight = tv_default_weight(problem.geometry, problem.i0) if tv_weight is None else tv_weight
    # Start from FBP: the solution is the same (convex problem) but reached in fewer iterations.
    with warnings.catch_warnings():  # a limited-angle warning belongs to FBP as a method, not to the start
        warnings.simplefilter("ignore", UserWarning)
        x0 = fbp_reconstruct(sinogram, problem.geometry, filter=TV_START_FILTER).clamp_min(0.0)
    if upper is not None:
        x0 = x0.clamp_max(upper)
    mask = _support_mask(support, sinogram, problem.geometry)
    if mask is not None:
        x0 = x0 * mask.to(x0.device)
    views = problem.geometry.num_views
    m = (round(views / TV_SUBSET_VIEWS) if views > TV_SUBSET_THRESHOLD else 1) if subsets is None else int(subsets)
    if m < 1 or m > views:
        raise ValueError(f"--subsets must be between 1 and the number of views ({views}), got {m}")
    if m > 1:
        from operators import CTProjector

        geoms = [
            dataclasses.replace(problem.geometry, angles=tuple(problem.geometry.angles_array[i::m])) for i in range(m)
        ]
        w = _weights(weighting, sinogram, problem.i0, model_error)
        return tv_spdhg(
            [CTProjector(g, device=problem.device) for g in geoms],
            [sinogram[..., i::m, :] for i in range(m)],
            weight=weight,
            iterations=iterations,
            tol=tol,
            weights=None if w is None else [w[..., i::m, :] for i in range(m)],
            upper=upper,
            support=mask,
            x0=x0,
            progress=problem.progress,
        )
    return tv_pdhg(
        problem.operator,
        sinogram,
        weight=weight,
        iterations=iterations,
        tol=tol,
        weights=_weights(weighting, sinogram, problem.i0, model_error),
        upper=upper,
        support=mask,
        x0=x0,
        progress=problem.progress,
    )


SUPPORTS = ("none", "disc")


def _support_mask(support: str, sinogram, geometry):
    """``none``, or ``disc``: the disc fitted to the shadow edges of each slice (tomo.recon.support)."""
    if support not in SUPPORTS:
        raise ValueError(f"support must be one of {SUPPORTS}, got {support!r}")
    if support == "none":
        return None
    from tomo.recon.support import disc_mask, fit_disc

    y = sinogram.detach().cpu().numpy()
    if y.ndim == 3 and y.shape[0] > 1:
        raise ValueError("--support disc fits one disc per call: reconstruct slices one at a time (--batch-size 1)")
    x, yc, r, _rms = fit_disc(y.reshape(geometry.sinogram_shape), geometry)
    return torch.from_numpy(disc_mask(geometry, x, yc, r))


_ITER = MethodOption(
    "--iterations",
    "iterations",
    int,
    f"maximum iterations (defaults: SIRT {SIRT_DEFAULT_ITERATIONS}, CGLS "
    f"{CGLS_DEFAULT_ITERATIONS}, TV {TV_DEFAULT_ITERATIONS})",
)
_TOL = MethodOption(
    "--tol",
    "tol",
    float,
    "stop when the relative change (CGLS: relative normal-equation residual) falls "
    f"below this (default: SIRT/CGLS 0 = off, TV {TV_DEFAULT_TOL:g})",
)
_WEIGHTING = MethodOption(
    "--weighting",
    "weighting",
    str,
    "data weighting: 'poisson' = inverse variance exp(y)/I0 + model-error^2 (exp(-y) "
    "when I0 is unknown), 'none', or 'auto' = poisson if the file has I0 (default auto)",
    choices=WEIGHTINGS,
)
_MODEL_ERROR = MethodOption(
    "--model-error",
    "model_error",
    float,
    f"std floor of the line integrals in the Poisson weights (default {DEFAULT_MODEL_ERROR:g})",
)


def classical_method(name: str):
    """The run function ``(sinogram, problem, **options) -> mu`` of the classical method ``name``
    (used as a warm start by the diffusion methods); ``ValueError`` naming the choices."""
    runs = {"fbp": _run_fbp, "sirt": _run_sirt, "cgls": _run_cgls, "tv": _run_tv}
    if name not in runs:
        raise ValueError(f"--init must be a classical method ({', '.join(runs)}), got {name!r}")
    return runs[name]


_UPPER = MethodOption(
    "--upper",
    "upper",
    float,
    "upper bound of the attenuation in 1/mm (e.g. the object's densest material; helps limited-angle data); default none",
)


def register(registry: MethodRegistry) -> None:
    """Register ``fbp``, ``sirt``, ``cgls`` and ``tv`` in ``registry``."""
    registry.register(
        "fbp",
        _run_fbp,
        help="filtered back-projection",
        batch_size=64,
        options=(
            MethodOption("--filter", "filter", str, f"FBP filter (default {FBP_DEFAULT_FILTER})", choices=FILTERS),
            MethodOption("--cutoff", "cutoff", float, "FBP filter cut-off, fraction of Nyquist in (0, 1] (default 1)"),
        ),
    )
    registry.register("sirt", _run_sirt, help="SIRT, non-negative", options=(_ITER, _TOL, _UPPER))
    registry.register(
        "cgls",
        _run_cgls,
        help="CGLS (least squares; iterations regularise)",
        options=(_ITER, _TOL, _WEIGHTING, _MODEL_ERROR),
    )
    registry.register(
        "tv",
        _run_tv,
        help="isotropic TV, non-negative (Chambolle-Pock); tuned defaults",
        options=(
            MethodOption(
                "--tv-weight",
                "tv_weight",
                float,
                "TV weight relative to the normalised data term (default: tuned "
                "per geometry, see docs/reconstruction.md)",
            ),
            _ITER,
            _TOL,
            _WEIGHTING,
            _MODEL_ERROR,
            _UPPER,
            MethodOption(
                "--support",
                "support",
                str,
                "support constraint: 'disc' = mu is 0 outside the disc fitted to the shadow edges "
                "(disc-shaped objects, e.g. phantoms, with limited-angle data); default none",
                choices=SUPPORTS,
            ),
            MethodOption(
                "--subsets",
                "subsets",
                int,
                f"view subsets of the stochastic primal-dual solver (default: 1 up to {TV_SUBSET_THRESHOLD} "
                f"views, else about {TV_SUBSET_VIEWS} views per subset; 1 = plain PDHG)",
            ),
        ),
    )
