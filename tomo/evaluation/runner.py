"""Run methods on evaluation cases and score them (:class:`~tomo.evaluation.report.Record` per case).

* :func:`evaluate` -- any callable ``method(sinogram [views, detectors], case) -> mu [H, W]``
  (1/mm) on the CT cases of :func:`tomo.evaluation.cases.build_cases`.
* :func:`evaluate_registry` -- a method of the registry (:func:`tomo.methods.default_registry`:
  fbp, sirt, cgls, tv, dds, dps and user-registered ones) with given settings.
* :func:`task_cases` / :func:`evaluate_task` -- the image-restoration tasks: baselines of
  :mod:`tomo.evaluation.baselines` and the diffusion solvers of :mod:`tomo.methods.image_tasks`.

Scores: :func:`~tomo.evaluation.scores.psnr` and :func:`~tomo.evaluation.scores.ssim` of the HU
image against the case's reference. Time: wall time of the method call (CUDA synchronised).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from operators.units import MU_WATER_PER_MM, mu_to_hu
from tomo.methods.diffusion import DDS_DEFAULTS, DPS_DEFAULTS, dps_solver
from tomo.methods.registry import MethodOutput, MethodRegistry, default_registry

from .baselines import run_baseline
from .cases import Case, task_reference
from .report import Record
from .scores import QUANTILE_LEVELS, error_to_std_quantiles, interval_coverage, psnr, ssim

__all__ = ["MethodFn", "evaluate", "evaluate_registry", "registry_options", "TaskCase", "task_cases", "evaluate_task"]

#: ``method(sinogram [views, detectors] float32 tensor on the case's device, case) -> mu [H, W] (1/mm)``
#: or ``(mu, std)`` with a posterior standard deviation [H, W] (1/mm; None when there is none)
MethodFn = Callable[[torch.Tensor, Case], torch.Tensor]

_SOLVER_DEFAULTS: dict[str, dict] = {"dds": DDS_DEFAULTS, "dps": DPS_DEFAULTS}


def _timed(fn, *args, **kwargs):
    """``(fn(*args, **kwargs), wall seconds)``, waiting for CUDA work to finish."""
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    if isinstance(out, torch.Tensor) and out.device.type == "cuda":
        torch.cuda.synchronize()
    return out, time.perf_counter() - t0


def _record(
    hu, ref, case: str, config: str, method: str, seconds: float, nfe: int, settings: dict, verbose: bool
) -> Record:
    rec = Record(case, config, method, float(psnr(hu, ref)), float(ssim(hu, ref)), seconds, nfe, dict(settings))
    if verbose:
        print(
            f"  {config:12s} {method:6s} {case:55s} PSNR {rec.psnr:6.2f}  SSIM {rec.ssim:.4f}  {seconds:7.2f} s",
            flush=True,
        )
    return rec


def evaluate(
    method: MethodFn,
    cases: list[Case],
    *,
    name: str,
    settings: dict | None = None,
    network_evaluations: int = 0,
    verbose: bool = True,
) -> list[Record]:
    """Run ``method`` on every case and score it; one :class:`Record` per case.

    ``settings`` and ``network_evaluations`` (per case) are stored in the records as given. A method
    that returns ``(mu, std)`` with a std also gets the coverage scores of its interval.
    """
    records = []
    for case in cases:
        sino = torch.from_numpy(case.data.sinogram).to(case.problem.device)
        out, seconds = _timed(method, sino, case)
        mu, std = out if isinstance(out, tuple) else (out, None)
        hu = mu_to_hu(_numpy(mu))
        ref = case.data.hu_reference
        rec = _record(hu, ref, case.name, case.config, name, seconds, network_evaluations, settings or {}, verbose)
        if std is not None:
            std_hu = _numpy(std) * (1000.0 / MU_WATER_PER_MM)
            rec.coverage = interval_coverage(hu, std_hu, ref)
            quantiles = error_to_std_quantiles(hu, std_hu, ref)  # the 0.9 quantile is one of them
            rec.error_std_q90 = float(quantiles[np.searchsorted(QUANTILE_LEVELS, 0.9)])
            rec.error_std_quantiles = [round(float(v), 4) for v in quantiles]
            if verbose:
                print(f"  {'':12s} coverage of mean +- 1.645 std {rec.coverage:.3f}", flush=True)
        records.append(rec)
    return records


def _numpy(a) -> np.ndarray:
    return (a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)).astype(np.float32)


def registry_options(name: str, settings: dict) -> dict:
    """The registry options of ``settings`` in the benchmarks' vocabulary.

    For ``dds``/``dps``: ``bf16=True`` becomes ``autocast_dtype=torch.bfloat16``; ``init`` None or
    ``"none"`` is a cold start (``start=1``); ``weighted`` and ``model_error`` are accepted only at
    the registry's own data term (Poisson weights with the 0.05 floor of
    :data:`tomo.methods.classical.DEFAULT_MODEL_ERROR`), which they cannot change.
    Other methods take ``settings`` unchanged.
    """
    options = dict(settings)
    if name not in _SOLVER_DEFAULTS:
        return options
    from tomo.methods.classical import DEFAULT_MODEL_ERROR

    if not options.pop("weighted", True) or options.pop("model_error", DEFAULT_MODEL_ERROR) != DEFAULT_MODEL_ERROR:
        raise ValueError(
            f"the registry's {name} weights the data with Poisson variances and the model-error floor "
            f"{DEFAULT_MODEL_ERROR}; other weightings (weighted=false, model_error) need "
            "tomo.methods.diffusion to take them as options"
        )
    if options.pop("bf16", False):
        options["autocast_dtype"] = torch.bfloat16
    if "init" in options and options["init"] in (None, "none"):
        # a cold start runs the whole schedule; the registry drops None options (= its warm default)
        options.update(init="none", start=1.0)
    return options


def _network_evaluations(name: str, options: dict) -> int:
    """Network calls per slice of the registry's dds/dps: the solvers' schedule has exactly ``steps``
    timesteps (:func:`tomo.solvers.schedule.make_schedule`), one call each, and one more for the
    final denoising (``denoise_hu`` > 0), for every sample. ``dps`` counts the defaults of its
    ``guidance`` (the reference ``--guidance dps``: 1000 steps, no final denoising)."""
    if name not in _SOLVER_DEFAULTS:
        return 0
    defaults = dps_solver(options.get("guidance"))[1] if name == "dps" else _SOLVER_DEFAULTS[name]
    denoise = options.get("denoise_hu")
    denoise = defaults.get("denoise_hu", 0.0) if denoise is None else denoise
    steps = int(options.get("steps") or defaults["steps"]) + (1 if denoise else 0)  # + the final denoising
    return steps * int(options.get("samples") or 1)


def evaluate_registry(
    name: str,
    cases: list[Case],
    settings: dict | None = None,
    *,
    prior=None,
    verbose: bool = True,
    registry: MethodRegistry | None = None,
) -> list[Record]:
    """Evaluate the registered method ``name`` with ``settings`` (empty: its defaults) on ``cases``.

    Parameters
    ----------
    name : str
        Method of ``registry`` (default :func:`tomo.methods.default_registry`).
    cases : list of Case
    settings : dict, optional
        Keyword options of the method (see :func:`registry_options` for dds/dps); recorded as given.
    prior : str, optional
        dds/dps: prior checkpoint folder (default: the shipped prior).
    verbose : bool
        Print one line per case.

    Notes
    -----
    Methods with a ``seed`` option (dds, dps) get ``seed = case.index`` unless ``settings`` set one,
    so every slice draws its own, reproducible noise.
    """
    entry = (registry if registry is not None else default_registry()).get_method(name)
    options = registry_options(name, settings or {})
    if prior is not None:
        options["prior"] = prior

    def run(sino, case):
        seeded = {"seed": case.index} if "seed" in entry.option_names and "seed" not in options else {}
        with torch.no_grad():
            out = entry.run(sino[None], case.problem, **options, **seeded)
        if isinstance(out, MethodOutput):
            return out.mu[0], None if out.std is None else out.std[0]
        return out[0]

    return evaluate(
        run,
        cases,
        name=name,
        settings=settings,
        verbose=verbose,
        network_evaluations=_network_evaluations(name, options),
    )


# ----- image-restoration tasks ---------------------------------------------------------------------
@dataclass
class TaskCase:
    """One slice degraded for one task: reference HU [h, w], the task operator and its measurement."""

    name: str
    task: str
    index: int
    reference: np.ndarray
    operator: object
    measurement: torch.Tensor


def task_cases(slices, task: str, noise_hu: float = 10.0, size: int = 256) -> list[TaskCase]:
    """Degrade :func:`~tomo.evaluation.cases.task_reference` (longer side ``size`` px) of each slice with
    white noise of ``noise_hu`` HU; slice ``k``'s noise seed is ``k``."""
    from tomo.methods.image_tasks import degrade, task_operator

    cases = []
    for k, (name, hu, _) in enumerate(slices):
        ref = task_reference(hu, size)
        op = task_operator(task, ref.shape)
        cases.append(TaskCase(name, task, k, ref, op, degrade(op, torch.from_numpy(ref), noise_hu, seed=k)))
    return cases


def evaluate_task(
    method: str, cases: list[TaskCase], settings: dict, *, prior=None, progress: bool = False, verbose: bool = True
) -> list[Record]:
    """A baseline (``wiener``, ``tv``, ``bicubic``) or solver (``dds``, ``dps``, with ``prior``) on ``cases``.

    Solvers run :func:`tomo.methods.image_tasks.restore` with ``settings`` (``bf16=True``: bfloat16
    autocast) and seed ``case.index``.
    """
    from tomo.methods.image_tasks import SOLVERS, restore

    options = dict(settings)
    if options.pop("bf16", False):
        options["autocast_dtype"] = torch.bfloat16
    records = []
    for case in cases:
        if method in SOLVERS:
            out, seconds = _timed(
                restore, prior, case.operator, case.measurement, method, seed=case.index, progress=progress, **options
            )
            hu, nfe = out.hu[0, 0].numpy(), out.network_evaluations
        else:
            hu, seconds = _timed(run_baseline, method, case.operator, case.measurement, case.reference.shape, **options)
            nfe = 0
        records.append(_record(hu, case.reference, case.name, case.task, method, seconds, nfe, settings, verbose))
    return records
