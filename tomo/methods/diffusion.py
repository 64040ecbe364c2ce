"""``dds`` and ``dps`` as methods of ``tomo reconstruct``: the CT adapters of the generic solvers.

:func:`register` adds them to a :class:`~tomo.methods.registry.MethodRegistry`. Each method takes a sinogram ``[B, views, detectors]`` of line integrals and returns attenuation
``[B, H, W]`` in 1/mm. The data term is weighted like the classical methods' default: inverse
transmission-Poisson variances with the model-error floor of :mod:`tomo.methods.classical` when the
dose ``i0`` is known, white otherwise.
"""

from __future__ import annotations

import inspect
import math
from functools import lru_cache
from typing import Any

import torch

from operators.base import LinearOperator
from operators.geometry import FanBeam2D
from operators.noise import transmission_weights
from operators.units import MU_WATER_PER_MM
from tomo.priors.prior import available_priors
from tomo.solvers import daps, dds, default_zeta, dps, dsg, mpgd, pigdm, sample_or_mean
from tomo.solvers.data_terms import batch_measurements
from tomo.solvers.problem import ModelDomainProblem, affine_problem, model_to_hu_affine

from .base import MethodOption, MethodOutput, MethodRegistry, ReconProblem
from .classical import DEFAULT_MODEL_ERROR, classical_method, effective_views

__all__ = [
    "register",
    "run_dds",
    "run_dps",
    "dds_tv_default",
    "DDS_TV_AT_ONE_VIEW",
    "warm_start_image",
    "ct_problem",
    "DDS_DEFAULTS",
    "DPS_DEFAULTS",
    "DPS_REFERENCE_DEFAULTS",
    "DPS_START",
    "dps_tv_default",
    "DPS_GUIDANCE",
    "dps_solver",
    "solver_name",
    "DDS_START",
    "dds_start_default",
    "denoise_sigma",
]

#: defaults of ``tomo reconstruct --method dds``, chosen on train/ slices with the shipped prior
#: (docs/benchmarks_diffusion.md): 3 CG iterations, "leading" spacing (last step at t = 0), and a
#: warm start: the registry's TV reconstruction noised to a level of the schedule chosen per
#: configuration (``start``, not here: :func:`dds_start_default`; 0.2 at first), which
#: beat a cold start by +1.0 dB (30 views) and +1.5 dB (8 views) on the tuning slices; 25 steps
#: (with the TV data step of :func:`dds_tv_default`), which fit 30 s per 256 x 256 slice on a 2-core
#: CPU and lost nothing against 50 at 8 views (docs/solvers.md). The result is denoised once more
#: as if it carried 20 HU of white noise (``denoise_hu``, the prior's timestep 1): the last data
#: step fits the measurement noise too (fourth tuning round, docs/solvers.md).
DDS_DEFAULTS = {
    "steps": 25,
    "cg_iterations": 3,
    "eta": 0.85,
    "spacing": "leading",
    "seed": 0,
    "init": "tv",
    "denoise_hu": 20.0,
}
#: the residual-gradient family behind ``tomo reconstruct --method dps --guidance NAME``: DPS as the
#: lecture note writes it (gradients through the network) and its Jacobian-free successors
#: (docs/method.md, docs/solvers.md)
DPS_GUIDANCE = {"dps": dps, "pigdm": pigdm, "mpgd": mpgd, "dsg": dsg, "daps": daps}
#: defaults of ``tomo reconstruct --method dps``: the successor that won on the train/ tuning
#: slices (docs/solvers.md, "The residual-gradient family"): MPGD, 25 DDIM steps with 20
#: steepest-descent steps on the residual (plus a smoothed TV loss, :func:`dps_tv_default`) on the
#: denoised estimate, warm-started from TV at :data:`DPS_START`, denoised at 20 HU at the end
DPS_DEFAULTS: dict[str, Any] = {
    "guidance": "mpgd",
    "steps": 25,
    "eta": 0.85,
    "grad_steps": 20,
    "step_rule": "steepest",
    "zeta": 1.0,
    "spacing": "leading",
    "seed": 0,
    "init": "tv",
    "denoise_hu": 20.0,
}
#: ``--start`` of the default dps per standard configuration (:func:`nearest_configuration`), chosen
#: on the train/ tuning slices (docs/solvers.md)
DPS_START = {"parallel-30": 0.05, "parallel-8": 0.2, "fanbeam-60": 0.1}
#: the TV loss of the default dps per standard configuration: this times :func:`dds_tv_default`
#: (the DDS data step's weight); chosen on the train/ tuning slices (docs/solvers.md): the smoothed
#: TV of a few gradient steps regularises less than DDS's exact ADMM, so 8 views want more of it
DPS_TV_FACTOR = {"parallel-30": 1.0, "parallel-8": 3.0, "fanbeam-60": 1.0}


def dps_tv_default(geometry, i0: float | None = None) -> float:
    """Default ``--dps-tv``: :data:`DPS_TV_FACTOR` of the nearest standard configuration times
    :func:`dds_tv_default` (the rule of views and dose of the DDS data step's TV weight)."""
    return DPS_TV_FACTOR[nearest_configuration(geometry)] * dds_tv_default(geometry, i0)


#: ``--guidance dps``: the reference, DPS of the lecture note over the full schedule from noise;
#: without --zeta, zeta = default_zeta(steps) = 1000 / steps
DPS_REFERENCE_DEFAULTS = {"steps": 1000, "seed": 0}


@lru_cache(maxsize=2)
def _cached_prior(path: str | None, device: str):
    from tomo.priors import load_prior

    return load_prior(path, device=device)


def _solve(solver, defaults: dict, sinogram: torch.Tensor, problem: ReconProblem, prior, options: dict):
    settings = {**defaults, **{k: v for k, v in options.items() if v is not None}}
    model = _cached_prior(None if prior is None else str(prior), str(problem.device))
    if "denoise_hu" in settings:  # HU -> the solver's model-range noise level
        settings["denoise_sigma"] = denoise_sigma(model, settings.pop("denoise_hu"))
    ct = ct_problem(model, problem.operator, sinogram, i0=problem.i0, model_error=DEFAULT_MODEL_ERROR)
    init = settings.pop("init", None)
    if init in (None, "none"):  # cold start: the whole schedule from noise
        if options.get("start") is not None and options["start"] < 1.0:
            raise ValueError("a warm start (--start < 1) needs --init METHOD (e.g. tv)")
        settings.pop("start", None)
    elif settings.get("start", 1.0) < 1.0:
        settings["x_init"] = warm_start_image(init, sinogram, problem, ct)
    # samples > 1: the posterior mean, the minimum-mean-squared-error estimate, and the spread
    result = sample_or_mean(solver, model, **ct.solver_args(), progress=problem.progress, **settings)
    mu = ct.to_physical(result.x)[:, 0]
    if result.std is None or settings.get("samples", 1) < 2:
        return mu
    scale = std_calibration(solver.__name__, problem.geometry)
    return MethodOutput(mu, scale * abs(ct.scale) * result.std[:, 0])


#: factors that turn the spread of the samples into a calibrated posterior standard deviation, per
#: solver and standard configuration: with them the interval mean +- 1.645 std holds the truth in
#: 90 % of the tissue pixels (HU > -900) of the train/ tuning slices, with the defaults (the final
#: denoising and the TV weight rule of the fourth tuning round included) and ``--samples 4``
#: (``scripts/benchmark_dds.py --calibration``, docs/solvers.md). The samples alone
#: under-disperse: they share the warm start and the data, so their spread misses most of the error.
#: ``mpgd`` (the default of ``--method dps``): fitted the same way with its defaults and
#: ``--samples 4`` on train/ tuning slices it was not tuned on (parallel-8: 2 slices, the others 1;
#: docs/solvers.md). The reference ``--guidance dps`` has no factor (1000 steps per sample are out
#: of reach on a CPU).
STD_CALIBRATION: dict[str, dict[str, float]] = {
    "dds": {"parallel-30": 3.18, "parallel-8": 4.44, "fanbeam-60": 5.55},
    "mpgd": {"parallel-30": 3.36, "parallel-8": 4.10, "fanbeam-60": 4.76},
}


def denoise_sigma(prior, denoise_hu: float) -> float:
    """``--denoise-hu`` (HU, >= 0; 0 = off) as the noise standard deviation in the prior's model
    range that :func:`tomo.solvers.dds` takes (``denoise_sigma``)."""
    if not (isinstance(denoise_hu, (int, float)) and 0.0 <= denoise_hu < float("inf")):
        raise ValueError(f"--denoise-hu must be a finite number of HU >= 0, got {denoise_hu!r}")
    h1, _ = model_to_hu_affine(prior)
    return float(denoise_hu) / abs(h1)


def nearest_configuration(geometry) -> str:
    """The standard configuration (docs/evaluation.md) a scan is closest to: ``fanbeam-60`` for a
    fan beam, else ``parallel-8`` up to 15 views per half turn and ``parallel-30`` above."""
    if isinstance(geometry, FanBeam2D):
        return "fanbeam-60"
    return "parallel-8" if effective_views(geometry) <= 15 else "parallel-30"


def std_calibration(solver: str, geometry) -> float:
    """The factor of :data:`STD_CALIBRATION` for ``solver`` on the standard configuration nearest to
    ``geometry`` (:func:`nearest_configuration`); 1.0 (uncalibrated) for a solver without factors."""
    return STD_CALIBRATION.get(solver, {}).get(nearest_configuration(geometry), 1.0)


def warm_start_image(method: str, sinogram: torch.Tensor, problem: ReconProblem, ct) -> torch.Tensor:
    """The registered ``method``'s reconstruction of ``sinogram`` [B, views, detectors] in the prior's
    model range [B, 1, H, W] (``ct``: the :func:`ct_problem` that maps model range to 1/mm)."""
    mu = classical_method(method)(sinogram, problem)
    return ((mu - ct.offset) / ct.scale)[:, None]


def ct_problem(
    prior,
    projector: LinearOperator,
    sinogram: torch.Tensor,
    *,
    i0: float | None = None,
    model_error: float = 0.0,
    weights: torch.Tensor | None = None,
) -> ModelDomainProblem:
    """The CT problem ``sinogram = P mu + n`` in the prior's model range.

    ``mu = MU_WATER (1 + HU / 1000)`` and ``HU = prior.model_to_hu(x)`` compose into
    ``mu = a x + b``.

    Parameters
    ----------
    prior
        Object with an affine ``model_to_hu`` (e.g. :class:`tomo.priors.DiffusionPrior`).
    projector : LinearOperator
        Maps mu [1/mm] on the reconstruction grid ``(H, W)`` to line integrals (dimensionless).
    sinogram : torch.Tensor
        Line integrals ``[views, detectors]`` or ``[B, views, detectors]``.
    i0 : float, optional
        Incident photons per bin: weight the data by the transmission-Poisson inverse variance
        ``1 / (exp(y) / I0 + model_error^2)`` (see
        :func:`operators.transmission_weights`).
    model_error : float
        Line-integral standard deviation floor of those weights (0: pure Poisson).
    weights : torch.Tensor, optional
        Explicit inverse variances instead (not together with ``i0``).

    Returns
    -------
    ModelDomainProblem with ``unit = "1/mm"`` (``to_physical`` gives mu; use
    ``prior.model_to_hu`` for HU).
    """
    if i0 is not None and weights is not None:
        raise ValueError("give either i0 (transmission-Poisson weights) or explicit weights, not both")
    h1, h0 = model_to_hu_affine(prior)
    a = MU_WATER_PER_MM * h1 / 1000.0
    b = MU_WATER_PER_MM * (1.0 + h0 / 1000.0)
    if i0 is not None:
        weights = transmission_weights(batch_measurements(projector, sinogram, "sinogram"), i0, model_error)
    return affine_problem(projector, sinogram, a, b, weights, unit="1/mm")


#: TV weight of the hybrid data step at one view per half turn; the default weight is this divided
#: by the views per half turn (:func:`dds_tv_default`), tuned on train/ (docs/solvers.md; 2.4e-3
#: until the final denoising, which takes over part of the smoothing)
DDS_TV_AT_ONE_VIEW = 1.6e-3


def dds_tv_default(geometry, i0: float | None = None) -> float:
    """Default ``--dds-tv``: :data:`DDS_TV_AT_ONE_VIEW` / views per half turn
    (:func:`tomo.methods.classical.effective_views`), doubled for every decade of dose below
    1e6 photons per bin (``i0``; halved per decade above, within a factor 0.5-4; unknown dose: 1).

    Fewer views and fewer photons leave more of the image to the prior and the TV term, as for
    the classical TV weight. parallel-8 (I0 1e6): 2e-4; parallel-30: 5.3e-5; fan beam with 60 views
    over a full turn at I0 1e5: 1.07e-4 -- on the train/ tuning slices the best constant for all three
    standard configurations at once (docs/solvers.md, fourth tuning round).
    """
    dose = 1.0 if i0 is None else min(4.0, max(0.5, 2.0 ** math.log10(1e6 / float(i0))))
    return DDS_TV_AT_ONE_VIEW / effective_views(geometry) * dose


#: ``--start`` of one DDS sample per standard configuration (:func:`nearest_configuration`), the best
#: of 0.05-0.2 on the train/ tuning slices (docs/solvers.md): with 30 views at full dose the TV
#: start is good and the prior only polishes it (parallel-30: 35.04 dB at 0.2, 35.62 at 0.05); with
#: 8 views, or at low dose, it needs room (parallel-8: 25.77 at 0.2, 25.56 at 0.1)
DDS_START = {"parallel-30": 0.05, "parallel-8": 0.2, "fanbeam-60": 0.2}
#: ``--start`` with ``--samples N >= 2``: the setting whose spread :data:`STD_CALIBRATION` calibrates
DDS_START_SAMPLES = 0.2


def dds_start_default(geometry, samples: int = 1) -> float:
    """Default ``--start`` of DDS: :data:`DDS_START` of the configuration nearest to ``geometry``
    for one sample; :data:`DDS_START_SAMPLES` for several (their std calibration was fitted there)."""
    if samples > 1:
        return DDS_START_SAMPLES
    return DDS_START[nearest_configuration(geometry)]


def run_dds(
    sinogram: torch.Tensor, problem: ReconProblem, *, prior=None, dds_tv=None, dds_tv_z=None, **options
) -> torch.Tensor:
    """DDS reconstruction: mu [1/mm] ``[B, H, W]`` (options: steps, cg_iterations, eta, seed, init,
    start, denoise_hu: the final denoising's noise level in HU, 0 = off;
    dds_tv: the hybrid data step's TV weight, None = :func:`dds_tv_default`, 0 = plain CG;
    dds_tv_z: TV along z coupling the ``B`` slices, which must be consecutive slices of a volume)."""
    if dds_tv is not None and dds_tv < 0:
        raise ValueError(f"--dds-tv must be >= 0, got {dds_tv}")
    options["tv_weight"] = dds_tv_default(problem.geometry, problem.i0) if dds_tv is None else dds_tv
    if dds_tv_z:
        if (options.get("samples") or 1) > 1:
            raise ValueError("--dds-tv-z couples neighbouring slices and cannot be combined with --samples > 1")
        if not options["tv_weight"] > 0:
            raise ValueError("--dds-tv-z needs the hybrid data step (--dds-tv > 0)")
        options["tv_z_weight"] = dds_tv_z
    defaults = {**DDS_DEFAULTS, "start": dds_start_default(problem.geometry, options.get("samples") or 1)}
    return _solve(dds, defaults, sinogram, problem, prior, options)


def dps_solver(guidance: str | None):
    """The solver of ``--guidance`` (None: the default, :data:`DPS_DEFAULTS`) and its defaults."""
    guidance = str(DPS_DEFAULTS["guidance"]) if guidance is None else guidance
    if guidance not in DPS_GUIDANCE:
        raise ValueError(f"--guidance must be one of {', '.join(DPS_GUIDANCE)}, got {guidance!r}")
    if guidance == "dps":
        return dps, dict(DPS_REFERENCE_DEFAULTS)
    defaults = {k: v for k, v in DPS_DEFAULTS.items() if k != "guidance"}
    if guidance != DPS_DEFAULTS["guidance"]:  # the tuned step options belong to the default's solver
        defaults = {k: v for k, v in defaults.items() if k in _SHARED_OPTIONS}
    return DPS_GUIDANCE[guidance], defaults


def solver_name(method: str, options: dict) -> str:
    """The solver behind registry ``method`` with ``options``: the key of :data:`STD_CALIBRATION`
    (``"dds"``, or the ``--guidance`` of ``dps``: ``"mpgd"``, ``"dps"``, ...)."""
    if method != "dps":
        return method
    return dps_solver(options.get("guidance"))[0].__name__


#: options every guidance of ``--method dps`` takes (the others are per solver)
_SHARED_OPTIONS = ("steps", "seed", "init", "start", "denoise_hu", "spacing", "samples")


def run_dps(
    sinogram: torch.Tensor, problem: ReconProblem, *, prior=None, guidance: str | None = None, **options
) -> torch.Tensor:
    """DPS-family reconstruction: mu [1/mm] ``[B, H, W]``.

    ``guidance`` picks the solver (:data:`DPS_GUIDANCE`; None = :data:`DPS_DEFAULTS`'s);
    ``"dps"`` is the reference (options steps, zeta, seed, samples). Options the solver does not
    take are refused with a one-line error.
    """
    solver, defaults = dps_solver(guidance)
    if solver is not dps:
        defaults["start"] = DPS_START[nearest_configuration(problem.geometry)]
    dps_tv = options.pop("dps_tv", None)
    if solver is mpgd and "step_rule" in defaults:  # the default's loss: residual + smoothed TV
        if dps_tv is not None and dps_tv < 0:
            raise ValueError(f"--dps-tv must be >= 0, got {dps_tv}")
        if dps_tv is not None or options.get("tv_weight") is None:  # the solver's own name wins
            options["tv_weight"] = dps_tv_default(problem.geometry, problem.i0) if dps_tv is None else dps_tv
    elif dps_tv is not None:
        if solver is not mpgd:
            raise ValueError(f"--dps-tv does not apply to --guidance {guidance}")
        options["tv_weight"] = dps_tv
    if solver is dps and options.get("zeta") is None:
        options["zeta"] = default_zeta(options.get("steps") or defaults["steps"])
    parameters = set(inspect.signature(solver).parameters)
    accepted = parameters | {"init", "samples"} | ({"denoise_hu"} if "denoise_sigma" in parameters else set())
    given = [k for k, v in options.items() if v is not None and k not in accepted]
    if given:
        flags = ", ".join("--" + k.replace("_", "-") for k in given)
        raise ValueError(f"{flags} does not apply to --guidance {guidance or DPS_DEFAULTS['guidance']}")
    return _solve(solver, defaults, sinogram, problem, prior, options)


_COMMON = (
    MethodOption("--steps", "steps", int, "diffusion sampling steps = network evaluations (default: dds 25, dps 1000)"),
    MethodOption(
        "--prior",
        "prior",
        str,
        f"diffusion prior: a shipped name ({', '.join(available_priors())}) or a checkpoint folder (default: default)",
    ),
    MethodOption("--seed", "seed", int, "sampling seed (default 0)"),
    MethodOption(
        "--samples",
        "samples",
        int,
        "average this many posterior samples per slice (their mean is "
        "the MMSE estimate; costs N times the time; default 1)",
    ),
)


# options dds and dps share (one flag, one dest and type in the command)
_ETA = MethodOption(
    "--eta",
    "eta",
    float,
    f"dds, dps: fraction of fresh noise when re-noising, 0-1 (default dds {DDS_DEFAULTS['eta']}, "
    f"dps {DPS_DEFAULTS['eta']})",
)
_DENOISE_HU = MethodOption(
    "--denoise-hu",
    "denoise_hu",
    float,
    "dds, dps: end with one more network evaluation that denoises the result as if it "
    "carried white noise of this many HU (at the prior's nearest noise level; "
    "default 20; 0 = off: the last data-consistent estimate)",
)
_INIT = MethodOption(
    "--init",
    "init",
    str,
    "dds, dps: warm start from this classical method's image, or 'none' for "
    "a cold start from noise (default tv; dps --guidance dps: none)",
)
_START = MethodOption(
    "--start",
    "start",
    float,
    "dds, dps: with --init, run the last START fraction of the schedule "
    "from the warm start, 0-1 (default dds: 0.05 for parallel scans of more than 15 "
    "views per half turn, else 0.2, and 0.2 with --samples; dps: "
    f"{DPS_START['parallel-30']} for those parallel scans, {DPS_START['fanbeam-60']} for fan beams, "
    f"else {DPS_START['parallel-8']}; 1 = the whole schedule)",
)


def register(registry: MethodRegistry) -> None:
    """Register ``dds`` and ``dps`` in ``registry``."""
    registry.register(
        "dds",
        run_dds,
        batch_size=4,
        help="Decomposed Diffusion Sampler: diffusion prior + data consistency with TV (ADMM), 25 network evaluations",
        options=_COMMON
        + (
            MethodOption("--cg-iterations", "cg_iterations", int, "dds: CG iterations per step (default 3)"),
            _ETA,
            MethodOption(
                "--dds-tv",
                "dds_tv",
                float,
                "dds: TV weight of the hybrid data step (ADMM on data + TV each step, "
                "model range units; default 1.6e-3 / views per half turn, doubled per decade "
                "of dose below I0 1e6, e.g. 2e-4 at 8 parallel views; 0 = plain CG data step)",
            ),
            MethodOption(
                "--dds-tv-z",
                "dds_tv_z",
                float,
                "dds: TV weight along z, coupling the slices reconstructed together into one "
                "consistent volume (the slices of each --batch-size chunk, in series order; "
                "e.g. the --dds-tv value; default 0 = slice by slice)",
            ),
            MethodOption(
                "--admm-iterations",
                "admm_iterations",
                int,
                "dds: ADMM iterations per step of the hybrid data step (default 4)",
            ),
            _DENOISE_HU,
            _INIT,
            _START,
        ),
    )

    registry.register(
        "dps",
        run_dps,
        batch_size=2,
        help="Diffusion Posterior Sampling, the residual-gradient family: by default MPGD (residual "
        "gradients on the denoised estimate, no backpropagation), 26 network evaluations; "
        "--guidance dps --steps 1000 is the lecture note's DPS (slow)",
        options=_COMMON
        + (
            MethodOption(
                "--guidance",
                "guidance",
                str,
                "dps: mpgd (default: residual-gradient steps on the denoised estimate), dsg (steps on the "
                "noise sphere), daps (decoupled annealing, Langevin on the estimate) or dps (the "
                "reference: gradient through the network, use with --steps 1000)",
            ),
            MethodOption(
                "--zeta",
                "zeta",
                float,
                "dps: step size of the residual gradient (default: mpgd 1.0 in units of the inverse "
                "Lipschitz constant; guidance dps 1000 / steps)",
            ),
            MethodOption(
                "--dps-tv",
                "dps_tv",
                float,
                "dps: weight of the smoothed TV loss next to the residual (mpgd's steepest-descent steps; "
                "default: the --dds-tv rule, times 3 for parallel scans of up to 15 views per half turn, "
                "e.g. 6e-4 at 8 parallel views; 0 = the residual alone)",
            ),
            MethodOption(
                "--grad-steps",
                "grad_steps",
                int,
                f"dps: residual-gradient steps per network evaluation (mpgd; default {DPS_DEFAULTS['grad_steps']})",
            ),
            _ETA,
            _DENOISE_HU,
            _INIT,
            _START,
        ),
    )
