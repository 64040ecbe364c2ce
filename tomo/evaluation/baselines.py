"""Classical baselines of the image-restoration tasks (the bar the diffusion solvers must beat).

All work on HU images ``[H, W]`` measured as ``y = A hu + n`` by an operator of
:func:`tomo.methods.image_tasks.task_operator`:

* ``deblur``: Wiener-Hunt deconvolution (:func:`wiener_deblur`) and TV deconvolution;
* ``superres``: bicubic interpolation (:func:`bicubic`);
* ``inpaint``: TV inpainting (:func:`tv_restore`).

:data:`BASELINE_DEFAULTS` holds their hyper-parameters, tuned on train/ slices
(``scripts/benchmark_tasks.py tune``; docs/benchmarks_diffusion.md).
"""

from __future__ import annotations

import numpy as np
import torch

from tomo.methods.image_tasks import TV_WARM_START, tv_restore

__all__ = ["BASELINES", "BASELINE_DEFAULTS", "wiener_deblur", "tv_restore", "bicubic", "run_baseline"]

#: baselines per task
BASELINES = {"deblur": ("wiener", "tv"), "superres": ("bicubic",), "inpaint": ("tv",)}
#: baseline hyper-parameters, tuned on the 4 train/ slices of DIFFUSION_TUNE_SLICES, noise 10 HU:
#: Wiener balance 0.001-0.1 -> 28.65-29.03 dB, best 0.005; TV deblur weight 3e-4-1e-2 ->
#: 28.73-29.26 dB, 1e-3 best SSIM; TV inpainting 1e-3-1e-2 at 1000 iterations -> 32.3-34.8 dB,
#: 3e-3 best SSIM (fewer iterations leave the hole unfilled)
BASELINE_DEFAULTS = {
    ("deblur", "wiener"): {"balance": 0.005},
    ("deblur", "tv"): {"tv_weight": 0.001},
    ("inpaint", "tv"): dict(TV_WARM_START),
    ("superres", "bicubic"): {},
}


def wiener_deblur(y_hu: torch.Tensor, op, balance: float) -> np.ndarray:
    """Wiener-Hunt deconvolution (scikit-image) with the blur operator's own kernel; HU [H, W].

    Works on ``u = (HU + 1000) / 1000`` (air 0, water 1), with the data shifted exactly as the
    zero-padded operator sees them (``A u = (y + 1000 A 1) / 1000``).
    """
    from skimage.restoration import wiener

    with torch.no_grad():
        y_u = (y_hu + 1000.0 * op(torch.ones(op.in_shape, dtype=y_hu.dtype))) / 1000.0
    u = wiener(y_u.numpy().astype(np.float64), op.kernel.cpu().numpy(), balance, clip=False)
    return u * 1000.0 - 1000.0


def bicubic(y_hu: np.ndarray, shape) -> np.ndarray:
    """Bicubic interpolation of the low-resolution HU image to ``shape``."""
    from skimage.transform import resize

    return resize(y_hu, shape, order=3, anti_aliasing=False, preserve_range=True)


def run_baseline(name: str, op, y_hu: torch.Tensor, shape, **settings) -> np.ndarray:
    """The baseline ``name`` (``wiener``, ``tv``, ``bicubic``) on ``y_hu``; float32 HU of ``shape``."""
    if name == "wiener":
        hu = wiener_deblur(y_hu, op, **settings)
    elif name == "tv":
        hu = tv_restore(y_hu, op, **settings)
    elif name == "bicubic":
        hu = bicubic(y_hu.numpy(), shape)
    else:
        raise ValueError(f"unknown baseline {name!r}; choose wiener, tv or bicubic")
    return np.asarray(hu, dtype=np.float32)
