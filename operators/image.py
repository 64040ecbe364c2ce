"""Image-domain forward models (restoration tasks) as exactly adjoint linear operators.

All operators act on images of shape ``(H, W)`` with any leading batch dimensions (e.g. the usual
``[B, C, H, W]``). Boundary handling is **zero padding** throughout, which keeps every adjoint
exact: blurs are ``conv2d`` with zero padding and their adjoint is ``conv_transpose2d`` with the
same kernel; masks are diagonal (self-adjoint); block averaging's adjoint spreads each value
over its block divided by the block area.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .base import LinearOperator, check_tensor
from .validation import positive_float, positive_int, positive_shape

__all__ = [
    "Identity",
    "Convolution",
    "GaussianBlur",
    "MotionBlur",
    "Downsample",
    "Mask",
    "Inpaint",
    "Outpaint",
    "box_mask",
    "random_mask",
    "gaussian_kernel",
    "motion_kernel",
]


class Identity(LinearOperator):
    """``A x = x`` on images of shape ``shape`` (denoising)."""

    def __init__(self, shape: Sequence[int], device="cpu"):
        shape = tuple(int(s) for s in shape)
        super().__init__(shape, shape, device)

    def _forward(self, x):
        return x.clone()

    def _adjoint(self, y):
        return y.clone()


# ----- convolutions ---------------------------------------------------------------------------------
def gaussian_kernel(sigma_px: float, kernel_size: int | None = None, dtype=torch.float64) -> torch.Tensor:
    """Normalised 2D Gaussian kernel ``[K, K]`` (``K`` odd, default ``2 * ceil(3 sigma) + 1``)."""
    sigma = positive_float(sigma_px, "sigma_px")
    k = 2 * math.ceil(3 * sigma) + 1 if kernel_size is None else positive_int(kernel_size, "kernel_size")
    if k % 2 == 0:
        raise ValueError(f"kernel_size must be odd, got {k}")
    r = torch.arange(k, dtype=dtype) - (k - 1) / 2
    g = torch.exp(-0.5 * (r / sigma) ** 2)
    g2 = g[:, None] * g[None, :]
    return g2 / g2.sum()


def motion_kernel(length_px: float, angle_rad: float, dtype=torch.float64) -> torch.Tensor:
    """Normalised linear motion-blur kernel: a centred segment of ``length_px`` pixels at
    ``angle_rad`` (counter-clockwise from the +x axis, image rows pointing down), rasterised
    with bilinear weights from 16 samples per pixel of length."""
    length = positive_float(length_px, "length_px")
    angle = float(angle_rad)
    if not math.isfinite(angle):
        raise ValueError(f"angle_rad must be finite, got {angle_rad}")
    r = math.ceil(length / 2) + 1
    k = 2 * r + 1
    n = max(2, int(16 * length) + 1)
    t = torch.linspace(-length / 2, length / 2, n, dtype=dtype)
    cols = r + t * math.cos(angle)
    rows = r - t * math.sin(angle)  # y up = row index down
    kern = torch.zeros(k, k, dtype=dtype)
    r0, c0 = torch.floor(rows).long(), torch.floor(cols).long()
    fr, fc = rows - r0, cols - c0
    for dr, wr in ((0, 1 - fr), (1, fr)):
        for dc, wc in ((0, 1 - fc), (1, fc)):
            kern.index_put_((r0 + dr, c0 + dc), wr * wc, accumulate=True)
    return kern / kern.sum()


class Convolution(LinearOperator):
    """2D convolution (cross-correlation, as ``torch.nn.functional.conv2d``) with zero padding.

    Parameters
    ----------
    shape : (H, W)
    kernel : tensor ``[K1, K2]`` with odd sizes
        Output has the input's size; the adjoint is ``conv_transpose2d`` with the same kernel.
    """

    def __init__(self, shape: Sequence[int], kernel: torch.Tensor, device="cpu"):
        shape = positive_shape(shape, "shape", 2)
        check_tensor(kernel, "kernel")
        if kernel.dim() != 2 or kernel.shape[0] % 2 == 0 or kernel.shape[1] % 2 == 0:
            raise ValueError(f"kernel must be 2D with odd sizes, got shape {tuple(kernel.shape)}")
        super().__init__(shape, shape, device)
        self.kernel = kernel.detach().to(self.device)
        self.padding = (kernel.shape[0] // 2, kernel.shape[1] // 2)

    def _weight(self, dtype):
        return self.kernel.to(dtype)[None, None]

    def _forward(self, x):
        return F.conv2d(x[:, None], self._weight(x.dtype), padding=self.padding)[:, 0]

    def _adjoint(self, y):
        return F.conv_transpose2d(y[:, None], self._weight(y.dtype), padding=self.padding)[:, 0]


class GaussianBlur(Convolution):
    """Gaussian blur of standard deviation ``sigma_px`` pixels (zero padding, exact adjoint)."""

    def __init__(self, shape: Sequence[int], sigma_px: float, kernel_size: int | None = None, device="cpu"):
        self.sigma_px = float(sigma_px)
        super().__init__(shape, gaussian_kernel(sigma_px, kernel_size), device)


class MotionBlur(Convolution):
    """Linear motion blur over ``length_px`` pixels at ``angle_rad`` (zero padding, exact adjoint)."""

    def __init__(self, shape: Sequence[int], length_px: float, angle_rad: float, device="cpu"):
        self.length_px, self.angle_rad = float(length_px), float(angle_rad)
        super().__init__(shape, motion_kernel(length_px, angle_rad), device)


# ----- resolution -----------------------------------------------------------------------------------
class Downsample(LinearOperator):
    """Block averaging by ``factor`` (2 or 4): ``(H, W) -> (H / factor, W / factor)``.

    The adjoint copies each low-resolution value into its ``factor x factor`` block divided by
    ``factor**2`` (so ``A A^T = I / factor**2``).
    """

    def __init__(self, shape: Sequence[int], factor: int, device="cpu"):
        shape = positive_shape(shape, "shape", 2)
        factor = positive_int(factor, "factor")
        if factor not in (2, 4):
            raise ValueError(f"factor must be 2 or 4, got {factor}")
        if shape[0] % factor or shape[1] % factor:
            raise ValueError(f"image shape {shape} is not divisible by the factor {factor}")
        super().__init__(shape, (shape[0] // factor, shape[1] // factor), device)
        self.factor = factor

    def _forward(self, x):
        return F.avg_pool2d(x[:, None], self.factor)[:, 0]

    def _adjoint(self, y):
        f = self.factor
        return y.repeat_interleave(f, dim=1).repeat_interleave(f, dim=2) / (f * f)


# ----- masks ----------------------------------------------------------------------------------------
def _as_mask(mask, name="mask") -> torch.Tensor:
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of 0/1 or bool, got {type(mask).__name__}")
    if mask.dim() != 2:
        raise ValueError(f"{name} must be 2D (H, W), got shape {tuple(mask.shape)}")
    if mask.dtype != torch.bool:
        if not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError(f"{name} must contain only 0 and 1 (1 = observed pixel)")
        mask = mask != 0
    return mask


class Mask(LinearOperator):
    """Pixel-wise mask ``A x = m * x`` (``m`` = 1 where observed, 0 where missing); self-adjoint.

    The output keeps the image shape (missing pixels read 0), so solvers can use ``A.mask``.
    """

    def __init__(self, mask: torch.Tensor, device=None):
        mask = _as_mask(mask)
        device = mask.device if device is None else device
        super().__init__(mask.shape, mask.shape, device)
        self.mask = mask.to(self.device)

    @property
    def fraction_observed(self) -> float:
        return float(self.mask.float().mean())

    def _forward(self, x):
        return x * self.mask.to(x.dtype)

    def _adjoint(self, y):
        return y * self.mask.to(y.dtype)


class Inpaint(Mask):
    """Inpainting: observe the pixels where ``mask`` is 1 (see :func:`box_mask`, :func:`random_mask`)."""


class Outpaint(Mask):
    """Outpainting: observe only the centre region ``keep`` of an image of size ``shape``.

    ``keep`` is ``(h, w)`` in pixels, a single int (square), or a float in (0, 1] giving the kept
    fraction of each side.
    """

    def __init__(self, shape: Sequence[int], keep, device="cpu"):
        shape = positive_shape(shape, "shape", 2)
        if isinstance(keep, float):
            if not (0 < keep <= 1):
                raise ValueError(f"keep as a fraction must be in (0, 1], got {keep}")
            kh, kw = max(1, round(shape[0] * keep)), max(1, round(shape[1] * keep))
        elif isinstance(keep, int):
            kh = kw = positive_int(keep, "keep")
        else:
            kh, kw = positive_shape(keep, "keep", 2)
        if kh > shape[0] or kw > shape[1]:
            raise ValueError(f"keep region {(kh, kw)} is larger than the image {shape}")
        mask = torch.zeros(shape, dtype=torch.bool)
        top, left = (shape[0] - kh) // 2, (shape[1] - kw) // 2
        mask[top : top + kh, left : left + kw] = True
        self.keep = (kh, kw)
        super().__init__(mask, device)


def box_mask(shape: Sequence[int], box: Sequence[int]) -> torch.Tensor:
    """Bool mask of ``shape`` that is False (missing) inside ``box = (top, left, height, width)``."""
    h, w = positive_shape(shape, "shape", 2)
    if len(tuple(box)) != 4:
        raise ValueError(f"box must be (top, left, height, width), got {box!r}")
    top, left, bh, bw = (int(v) for v in box)
    if top < 0 or left < 0 or bh <= 0 or bw <= 0 or top + bh > h or left + bw > w:
        raise ValueError(f"box {tuple(box)} does not fit inside an image of shape {(h, w)}")
    mask = torch.ones(h, w, dtype=torch.bool)
    mask[top : top + bh, left : left + bw] = False
    return mask


def random_mask(shape: Sequence[int], fraction_missing: float, seed: int = 0) -> torch.Tensor:
    """Bool mask with exactly ``round(fraction_missing * H * W)`` missing pixels, chosen uniformly
    at random (deterministic for a given ``seed``)."""
    h, w = positive_shape(shape, "shape", 2)
    frac = float(fraction_missing)
    if not (0 <= frac < 1):
        raise ValueError(f"fraction_missing must be in [0, 1), got {fraction_missing}")
    g = torch.Generator().manual_seed(int(seed))
    n_missing = round(frac * h * w)
    mask = torch.ones(h * w, dtype=torch.bool)
    mask[torch.randperm(h * w, generator=g)[:n_missing]] = False
    return mask.reshape(h, w)
