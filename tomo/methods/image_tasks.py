"""Image-restoration tasks on HU images (deblurring, super-resolution, in/outpainting).

Shared by ``tomo restore`` and ``scripts/benchmark_tasks.py``: the task's forward operator with
the project's defaults, the simulated degradation (operator + white Gaussian noise in HU), and
the diffusion restoration in the prior's model range (:func:`hu_problem`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from operators import Downsample, GaussianBlur, GaussianNoise, Inpaint, LinearOperator, Outpaint, box_mask
from operators.units import MU_WATER_PER_MM
from tomo.recon import tv_pdhg
from tomo.solvers import dds, default_zeta, dps, sample_or_mean
from tomo.solvers.problem import ModelDomainProblem, affine_problem, model_to_hu_affine

from .diffusion import denoise_sigma

__all__ = [
    "hu_problem",
    "TASKS",
    "SOLVERS",
    "task_operator",
    "default_box",
    "degrade",
    "restore",
    "Restoration",
    "SOLVER_DEFAULTS",
    "tv_restore",
    "TV_WARM_START",
]

TASKS = ("deblur", "superres", "inpaint", "outpaint")
SOLVERS = ("dds", "dps")

#: solver settings per task, chosen on train/ slices with the shipped prior
#: (docs/benchmarks_diffusion.md; noise 10 HU): deblurring wants about 5 CG iterations per step
#: (1: 29.0 dB, 2: 30.3, 5: 31.7, 20: 29.9 on 2 slices); for super-resolution and masks the
#: normal matrix is a scaled projection, so one CG iteration is the exact data-consistent step.
#: Box inpainting adds the TV data step (tv_weight 1e-3; 2 train slices: 33.65 -> 35.22 dB, TV
#: 33.43): inside the box nothing is measured, a single sample invents anatomy there, and TV
#: pulls the invention towards the smooth fill that costs less squared error. It also starts from
#: the TV fill at 10 % of the schedule with 25 steps (4 train slices: 36.05 dB against 35.18 from
#: noise with 50 steps and TV's 34.51; start 0.05 / 0.2 / 0.3 / 0.5: 35.79 / 35.57 / 35.27 /
#: 34.96): the sample keeps TV's fill where the prior is unsure, e.g. in a coronal slice.
#: Each ends with the final denoising of :func:`tomo.solvers.dds` (``denoise_hu``, HU), chosen on
#: the 4 train/ct-1.5mm slices unseen by the prior (off / 10 / 20 / 30 HU: deblur 33.19 / 33.57 / 33.68 / 33.74 dB, superres 30.65 / 30.86 / 30.92 /
#: 30.96, inpaint 31.60 / 31.62 / 31.54 / 31.42). Outpainting was not tuned: 0, off.
SOLVER_DEFAULTS = {
    ("dds", "deblur"): {"steps": 50, "cg_iterations": 5, "eta": 0.85, "spacing": "leading", "denoise_hu": 30.0},
    ("dds", "superres"): {
        "steps": 50,
        "cg_iterations": 1,
        "eta": 0.85,
        "spacing": "leading",
        "denoise_hu": 30.0,
    },
    ("dds", "inpaint"): {
        "steps": 25,
        "cg_iterations": 1,
        "eta": 0.85,
        "spacing": "leading",
        "tv_weight": 1e-3,
        "init": "tv",
        "start": 0.1,
        "denoise_hu": 10.0,
    },
    ("dds", "outpaint"): {"steps": 50, "cg_iterations": 1, "eta": 0.85, "spacing": "leading", "denoise_hu": 0.0},
}
SOLVER_DEFAULTS.update({("dps", task): {"steps": 1000, "zeta": None} for task in TASKS})  # None: 1000 / steps


#: TV restoration that starts the diffusion solvers with ``init="tv"`` (:func:`restore`): the
#: TV-inpainting baseline's settings (weight 3e-3 relative to the normalised data term, 1000
#: iterations so that the hole is filled in, docs/benchmarks_diffusion.md)
TV_WARM_START: dict[str, Any] = {"tv_weight": 0.003, "iterations": 1000, "tol": 0.0}


def tv_restore(y_hu: torch.Tensor, op, tv_weight: float, iterations: int = 300, tol: float = 1e-5) -> np.ndarray:
    """TV-regularised least squares in attenuation (mu >= 0, :func:`tomo.recon.tv_pdhg`); HU.

    ``y_hu`` are the measurements of ``op`` (``[*out_shape]`` or a batch), ``tv_weight`` is relative
    to the normalised data term, as in tv_pdhg; the data are converted with
    ``mu = MU_WATER (A 1 + y / 1000)`` (A is linear, so HU -> mu is affine through it).
    Returns HU images ``[*in_shape]`` (or ``[B, *in_shape]``), float32.
    """
    with torch.no_grad():
        ones = torch.ones(op.in_shape, dtype=y_hu.dtype, device=y_hu.device)
        y_mu = MU_WATER_PER_MM * (op(ones) + y_hu / 1000.0)
    mu = tv_pdhg(op, y_mu, weight=tv_weight, iterations=iterations, tol=tol, progress=False)
    return (1000.0 * (mu / MU_WATER_PER_MM - 1.0)).cpu().numpy().astype(np.float32)


def hu_problem(
    prior, operator: LinearOperator, y_hu: torch.Tensor, *, weights: torch.Tensor | None = None
) -> ModelDomainProblem:
    """An image-restoration problem whose image and measurements are in HU (blur, masks, ...)."""
    h1, h0 = model_to_hu_affine(prior)
    return affine_problem(operator, y_hu, h1, h0, weights, unit="HU")


def resize_to_task_grid(hu: np.ndarray, size: int, multiple: int) -> np.ndarray:
    """Resize (anti-aliased) so the longer side is ``size`` pixels (0: keep it) and both sides divide
    by ``multiple`` (the super-resolution factor); float32 [h, w] in HU, unchanged if already so."""
    from skimage.transform import resize

    scale = 1.0 if size == 0 else size / max(hu.shape)
    shape = tuple(max(multiple, int(round(s * scale / multiple)) * multiple) for s in hu.shape)
    if shape == hu.shape:
        return hu
    return resize(hu, shape, order=1, anti_aliasing=scale < 1, preserve_range=True).astype(np.float32)


def default_box(shape) -> tuple[int, int, int, int]:
    """Centred missing box of a quarter of each side: ``(top, left, height, width)`` in pixels."""
    h, w = int(shape[0]), int(shape[1])
    bh, bw = max(1, h // 4), max(1, w // 4)
    return (h - bh) // 2, (w - bw) // 2, bh, bw


def task_operator(
    task: str,
    shape,
    *,
    sigma_px: float = 2.0,
    factor: int = 4,
    box=None,
    keep: float = 0.5,
    mask: np.ndarray | None = None,
    device="cpu",
) -> LinearOperator:
    """The forward model of a restoration task on ``(H, W)`` images.

    Parameters
    ----------
    task : {"deblur", "superres", "inpaint", "outpaint"}
    shape : (int, int)
        Image size, pixels.
    sigma_px : float
        Gaussian blur standard deviation, pixels (deblur).
    factor : int
        Block-averaging factor, 2 or 4 (superres; the image sides must be divisible by it).
    box : (top, left, height, width), optional
        Missing box, pixels (inpaint; default :func:`default_box`).
    keep : float
        Kept fraction of each side around the centre (outpaint).
    mask : np.ndarray, optional
        bool [H, W], True = observed: the measured pixels of a real masked image (inpaint or
        outpaint; instead of ``box`` / ``keep``).
    """
    if mask is not None:
        if task not in ("inpaint", "outpaint"):
            raise ValueError(f"a mask of observed pixels applies to inpaint and outpaint, not {task!r}")
        if np.shape(mask) != tuple(shape):
            raise ValueError(f"mask has shape {np.shape(mask)} but the image {tuple(shape)}")
        return Inpaint(torch.as_tensor(np.asarray(mask, dtype=bool)), device=device)
    if task == "deblur":
        return GaussianBlur(shape, sigma_px, device=device)
    if task == "superres":
        return Downsample(shape, factor, device=device)
    if task == "inpaint":
        return Inpaint(box_mask(shape, default_box(shape) if box is None else box), device=device)
    if task == "outpaint":
        return Outpaint(shape, float(keep), device=device)
    raise ValueError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")


def degrade(operator: LinearOperator, hu: torch.Tensor, noise_hu: float, seed: int = 0) -> torch.Tensor:
    """Simulated measurement ``A hu + n``, ``n ~ N(0, noise_hu^2)`` [HU], seeded (CPU generator)."""
    with torch.no_grad():
        clean = operator(hu)
    return GaussianNoise(noise_hu).sample(clean, generator=torch.Generator().manual_seed(int(seed)))


@dataclass
class Restoration:
    """Result of :func:`restore`.

    Attributes
    ----------
    hu : torch.Tensor [B, 1, H, W]
        Restored images [HU] (the sample mean when ``samples > 1``).
    network_evaluations, gradient_evaluations : int
        Per image: network calls (and backward passes) times the number of samples.
    std_hu : torch.Tensor [B, 1, H, W] or None
        Pixel-wise standard deviation of the samples [HU] (``samples > 1``).
    """

    hu: torch.Tensor
    network_evaluations: int
    gradient_evaluations: int
    std_hu: torch.Tensor | None = None


def restore(
    prior,
    operator: LinearOperator,
    y_hu: torch.Tensor,
    method: str = "dds",
    *,
    seed=0,
    samples: int = 1,
    progress: bool = True,
    init: str | None = None,
    **solver_kwargs,
) -> Restoration:
    """Restore HU images from HU measurements ``y_hu = A hu + n`` with a diffusion solver.

    ``solver_kwargs`` go to :func:`~tomo.solvers.dds` or :func:`~tomo.solvers.dps`
    (``steps``, ``eta``, ``cg_iterations``, ``lam``, ``zeta``, ``start``, ...; ``denoise_hu``, the
    level of DDS's final denoising in HU, becomes its ``denoise_sigma``). White noise is
    assumed (``weights=None``): with it, the data term is normalised and its scale does not
    matter. ``samples > 1`` returns the mean of that many posterior samples
    (:func:`~tomo.solvers.posterior_mean`) and their spread. ``init="tv"`` warm-starts the solver
    from the TV restoration (:data:`TV_WARM_START`) noised to the level ``start`` (< 1) of the
    schedule; ``None``: from noise.
    """
    if method not in SOLVERS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(SOLVERS)}")
    if init not in (None, "none", "tv"):
        raise ValueError(f"init must be 'tv' (warm start from the TV restoration) or None, got {init!r}")
    if init == "tv":
        if not solver_kwargs.get("start", 1.0) < 1.0:
            raise ValueError("a warm start (init='tv') needs start < 1, the noise level to start from")
        tv_hu = torch.from_numpy(tv_restore(y_hu, operator, **TV_WARM_START)).to(y_hu.device)
        solver_kwargs["x_init"] = prior.hu_to_model(tv_hu.reshape((-1, 1) + tuple(operator.in_shape)))
    if "denoise_hu" in solver_kwargs:
        if method != "dds":
            raise ValueError("denoise_hu (the final denoising) is a DDS option")
        solver_kwargs["denoise_sigma"] = denoise_sigma(prior, solver_kwargs.pop("denoise_hu"))
    problem = hu_problem(prior, operator, y_hu)
    solver = dds if method == "dds" else dps
    if method == "dps" and solver_kwargs.get("zeta") is None:
        solver_kwargs["zeta"] = default_zeta(solver_kwargs.get("steps", 1000))
    result = sample_or_mean(
        solver, prior, **problem.solver_args(), samples=samples, seed=seed, progress=progress, **solver_kwargs
    )
    std = None if result.std is None else result.std * abs(problem.scale)
    return Restoration(
        hu=prior.model_to_hu(result.x),
        network_evaluations=result.network_evaluations * samples,
        gradient_evaluations=result.gradient_evaluations * samples,
        std_hu=std,
    )
