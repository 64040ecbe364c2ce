"""Position channels and the PaDIS whole-image assembly of patch predictions.

Coordinates: for an image of ``H x W`` pixels, pixel ``(i, j)`` (row, column) has normalised
position ``x = 2 (j + 0.5) / W - 1`` and ``y = 2 (i + 0.5) / H - 1``, both in (-1, 1); pixels of
the zero padding outside the image continue the same formula (|x| or |y| > 1). The network
input is ``[x_t, x, y]`` (3 channels) in patch mode.
"""

from __future__ import annotations

import torch


def position_grid(top, left, size: int, height, width, dtype=torch.float32, device=None) -> torch.Tensor:
    """x/y position channels of square patches.

    Parameters
    ----------
    top, left : int or LongTensor [N]
        Row / column of each patch's first pixel in its image (may be negative: padding).
    size : int
        Patch side, pixels.
    height, width : int or Tensor [N]
        Size of the whole image each patch lies in, pixels.

    Returns
    -------
    Tensor [N, 2, size, size]
        Channel 0: x (column) position, channel 1: y (row) position.
    """
    top = torch.as_tensor(top, device=device).reshape(-1, 1).to(dtype)
    left = torch.as_tensor(left, device=device).reshape(-1, 1).to(dtype)
    height = torch.as_tensor(height, device=device).reshape(-1, 1).to(dtype)
    width = torch.as_tensor(width, device=device).reshape(-1, 1).to(dtype)
    offs = torch.arange(size, device=device, dtype=dtype).reshape(1, -1) + 0.5
    xs = 2 * (left + offs) / width - 1  # [N, size]
    ys = 2 * (top + offs) / height - 1  # [N, size]
    n = max(xs.shape[0], ys.shape[0])
    gx = xs.reshape(-1, 1, size).expand(n, size, size)
    gy = ys.reshape(-1, size, 1).expand(n, size, size)
    return torch.stack([gx, gy], dim=1)


def random_shift(patch_size: int, generator: torch.Generator | None = None) -> tuple[int, int]:
    """A random (row, column) offset in [0, patch_size) for the patch partition."""
    s = torch.randint(0, patch_size, (2,), generator=generator)
    return int(s[0]), int(s[1])


def assemble_patches(
    net,
    x_t: torch.Tensor,
    t: torch.Tensor,
    patch_size: int,
    shift: tuple[int, int],
    position_channels: bool = True,
    max_patches: int = 256,
) -> torch.Tensor:
    """Whole-image prediction from a shifted, non-overlapping patch partition (PaDIS).

    The image is zero padded so that a grid of ``patch_size`` patches, offset by ``shift``,
    covers it; every patch goes through ``net`` with its position channels and the outputs
    are put back in place and cropped to the image.

    Parameters
    ----------
    net : callable
        ``net(inp [N, C, P, P], t [N]) -> [N, 1, P, P]``.
    x_t : Tensor [B, 1, H, W]
        Image in model range.
    t : LongTensor [B]
        Time step of each image.
    patch_size : int
        P, pixels.
    shift : (int, int)
        Rows / columns of zero padding above / left of the image, each in [0, P).
    position_channels : bool
        Append the x/y position channels.
    max_patches : int
        Largest batch of patches per network call (memory bound); results are identical.

    Returns
    -------
    Tensor [B, 1, H, W]
        Differentiable with respect to ``x_t``.
    """
    b, _, h, w = x_t.shape
    p = patch_size
    sy, sx = shift
    nh, nw = -(-(h + sy) // p), -(-(w + sx) // p)
    pad = (sx, nw * p - w - sx, sy, nh * p - h - sy)  # left, right, top, bottom
    xp = torch.nn.functional.pad(x_t, pad)  # zero padding
    patches = xp.reshape(b, 1, nh, p, nw, p).permute(0, 2, 4, 1, 3, 5).reshape(b * nh * nw, 1, p, p)
    if position_channels:
        tops = (torch.arange(nh, device=x_t.device) * p - sy).repeat_interleave(nw)
        lefts = (torch.arange(nw, device=x_t.device) * p - sx).repeat(nh)
        pos = position_grid(tops, lefts, p, h, w, dtype=x_t.dtype, device=x_t.device)
        pos = pos.repeat(b, 1, 1, 1)
        patches = torch.cat([patches, pos], dim=1)
    tt = t.repeat_interleave(nh * nw)
    outs = [net(patches[i : i + max_patches], tt[i : i + max_patches]) for i in range(0, patches.shape[0], max_patches)]
    out = torch.cat(outs, dim=0)
    out = out.reshape(b, nh, nw, 1, p, p).permute(0, 3, 1, 4, 2, 5).reshape(b, 1, nh * p, nw * p)
    return out[:, :, sy : sy + h, sx : sx + w]
