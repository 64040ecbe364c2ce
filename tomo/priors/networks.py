"""The prior's own network, built for both machines it runs on: ``ShuffleUNet``.

Why not diffusers' ``UNet2DModel``: its cost on a 256 x 256 CT slice sits in 32-channel 3 x 3
convolutions at full resolution, each followed by a GroupNorm and an activation as separate
kernels; that is memory traffic and kernel launches, not arithmetic, on a GPU (5 % of a bf16
matrix product's rate, issue 22) and slow, poorly vectorised work on one CPU core (1.4 s per
evaluation). ``ShuffleUNet`` follows the designs that avoid it ("simple diffusion", U-ViT,
hourglass transformers; sources in ``../shared/docs/efficient-priors.md``):

- **pixel-unshuffle stem**: the image is folded into ``patch x patch`` blocks first
  (256 x 256 x 1 -> 64 x 64 x 16 for ``patch=4``), so no convolution runs at full resolution
  with few channels; the head unfolds the prediction the same way (pixel shuffle);
- **widths in multiples of 64** at every level (what tensor cores and CPU vector units like);
- **one normalisation per block**: a per-pixel layer norm over channels whose scale and shift
  come from the time step (adaptive layer norm, as in DiT). On a channels-last tensor it is a
  normalisation over the contiguous last axis, cheap on CPUs and fused by ``torch.compile``;
- **attention through** :func:`torch.nn.functional.scaled_dot_product_attention` (flash or
  memory-efficient kernels on GPUs), only at the coarse levels;
- down- and up-sampling by pixel (un)shuffle and 1 x 1 convolutions, one skip per level
  (concatenated, merged by a 1 x 1 convolution), residual branches initialised to zero so the
  network starts as the identity of its input and, with the prior's Gaussian skip, the prior
  starts as the Gaussian-pixel denoiser.

Its configuration is the ``architecture`` of ``prior.json`` with ``"class": "ShuffleUNet"``
(keys: the arguments of :class:`ShuffleUNet`); :func:`tomo.priors.prior.build_unet` builds it.
The forward pass returns a :class:`NetOutput` whose ``sample`` is the prediction, like diffusers'
``UNet2DModel``, so the prior, the training loop and the tools treat both networks alike.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn


class NetOutput(NamedTuple):
    """Output of :class:`ShuffleUNet` (``.sample``, like diffusers' ``UNet2DOutput``)."""

    sample: torch.Tensor


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Sinusoidal embedding of integer time steps, float32 ``[B, dim]`` (cos half, sin half)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.to(torch.float32)[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


def ada_layer_norm(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Per-pixel layer norm over channels, then ``* (1 + scale) + shift`` (per image and channel).

    ``x`` is ``[B, C, H, W]``; the normalisation runs on the ``[B, H, W, C]`` view, which is
    contiguous (free) for a channels-last tensor. The result keeps ``x``'s memory format.
    """
    h = x.permute(0, 2, 3, 1)
    h = F.layer_norm(h, (h.shape[-1],))
    h = h * (1 + scale[:, None, None, :].to(h.dtype)) + shift[:, None, None, :].to(h.dtype)
    return h.permute(0, 3, 1, 2)


def zero_init(*layers: nn.Linear | nn.Conv2d) -> None:
    """Zero weights and biases: a residual branch that starts as nothing (the block is the identity)."""
    for layer in layers:
        nn.init.zeros_(layer.weight)
        if layer.bias is not None:
            nn.init.zeros_(layer.bias)


def scale_init(layer: nn.Linear | nn.Conv2d, scale: float) -> None:
    """Scale torch's default initialisation of a residual branch's last layer (0: zero)."""
    with torch.no_grad():
        layer.weight.mul_(scale)
        if layer.bias is not None:
            layer.bias.mul_(scale)


class ResBlock(nn.Module):
    """``x + conv(silu(conv(silu(adaLN(x, t)))))``, the second convolution zero-initialised."""

    def __init__(
        self,
        channels: int,
        emb_dim: int,
        dropout: float = 0.0,
        residual_init: float = 0.0,
        modulation_init: float = 0.0,
    ):
        super().__init__()
        self.modulation = nn.Linear(emb_dim, 2 * channels)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        scale_init(self.modulation, modulation_init)
        scale_init(self.conv2, residual_init)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        scale, shift = self.modulation(emb).chunk(2, dim=1)
        h = F.silu(ada_layer_norm(x, scale, shift))
        h = self.dropout(F.silu(self.conv1(h)))
        return x + self.conv2(h)


class AttentionBlock(nn.Module):
    """Multi-head self-attention over the pixels of a (coarse) level, zero-initialised output."""

    def __init__(
        self, channels: int, emb_dim: int, head_dim: int = 64, residual_init: float = 0.0, modulation_init: float = 0.0
    ):
        super().__init__()
        if channels % head_dim:
            raise ValueError(f"attention width {channels} is not a multiple of head_dim {head_dim}")
        self.heads = channels // head_dim
        self.modulation = nn.Linear(emb_dim, 2 * channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = nn.Linear(channels, channels)
        scale_init(self.modulation, modulation_init)
        scale_init(self.proj, residual_init)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        b, c, hgt, wid = x.shape
        scale, shift = self.modulation(emb).chunk(2, dim=1)
        tokens = ada_layer_norm(x, scale, shift).permute(0, 2, 3, 1).reshape(b, hgt * wid, c)
        qkv = self.qkv(tokens).reshape(b, hgt * wid, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # [B, heads, HW, head_dim]
        out = self.proj(out.transpose(1, 2).reshape(b, hgt * wid, c))
        return x + out.reshape(b, hgt, wid, c).permute(0, 3, 1, 2)


class Level(nn.Module):
    """The blocks of one resolution level: ResBlocks, each followed by attention if asked."""

    def __init__(
        self,
        channels: int,
        n_blocks: int,
        attention: bool,
        emb_dim: int,
        head_dim: int,
        dropout: float,
        residual_init: float = 0.0,
        modulation_init: float = 0.0,
    ):
        super().__init__()
        self.blocks = nn.ModuleList()
        for _ in range(n_blocks):
            self.blocks.append(ResBlock(channels, emb_dim, dropout, residual_init, modulation_init))
            if attention:
                self.blocks.append(AttentionBlock(channels, emb_dim, head_dim, residual_init, modulation_init))

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x, emb)
        return x


class ShuffleUNet(nn.Module):
    """A U-Net on a pixel-unshuffled image (see the module docstring).

    Parameters
    ----------
    in_channels, out_channels : int
        Image channels in (1, or 3 with position channels) and out (1: the predicted noise).
    patch : int
        Side of the pixel blocks folded into channels by the stem (4: 256 px -> 64 px).
    channels : sequence of int
        Width of each level, finest first; level ``l`` works at ``1 / (patch 2^l)`` of the
        input's resolution. Multiples of ``head_dim`` where attention is used.
    blocks : sequence of int
        ResBlocks per level, in the encoder and again in the decoder.
    attention : sequence of bool
        Self-attention after each ResBlock of a level (use at coarse levels only).
    mid_blocks : int
        ResBlocks (each with attention when the coarsest level has it) between encoder and decoder.
    head_dim : int
        Channels per attention head.
    emb_dim : int
        Width of the time-step embedding.
    dropout : float
        Dropout between the two convolutions of each ResBlock (training only).
    residual_init : float
        Scale of torch's default initialisation of the last layer of each residual branch;
        0 starts every block as the identity (adaLN-zero, as DiT), 1 lets every block learn
        from the first step. The head always starts at zero, so the prior starts as the
        Gaussian-pixel denoiser.
    modulation_init : float
        The same for the layers that map the time embedding to each block's scale and shift
        (0: every block starts blind to the time step).
    full_res : int
        Channels of an optional thin full-resolution refinement (0: none): two 3 x 3
        convolutions on the input and the coarse prediction, modulated by the time step.
    sample_size : int
        Training image side, pixels (recorded only; any multiple of the down-sampling works).
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        patch: int = 4,
        channels: Sequence[int] = (64, 128, 256),
        blocks: Sequence[int] = (2, 2, 2),
        attention: Sequence[bool] = (False, False, True),
        mid_blocks: int = 1,
        head_dim: int = 64,
        emb_dim: int = 256,
        dropout: float = 0.0,
        residual_init: float = 0.0,
        modulation_init: float = 0.0,
        full_res: int = 0,
        sample_size: int = 256,
    ):
        super().__init__()
        if not (len(channels) == len(blocks) == len(attention)) or not channels:
            raise ValueError("channels, blocks and attention need one entry per level")
        self.patch, self.out_channels, self.sample_size = int(patch), int(out_channels), int(sample_size)
        self.emb_dim, self.base = int(emb_dim), int(channels[0])
        self.time_mlp = nn.Sequential(nn.Linear(self.base, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.stem = nn.Conv2d(in_channels * patch * patch, channels[0], 3, padding=1)
        n = len(channels)
        self.down_levels = nn.ModuleList()
        self.downsample = nn.ModuleList()
        for i in range(n):
            self.down_levels.append(
                Level(channels[i], blocks[i], attention[i], emb_dim, head_dim, dropout, residual_init, modulation_init)
            )
            if i < n - 1:  # pixel unshuffle (2) + 1 x 1 convolution to the next width
                self.downsample.append(nn.Conv2d(4 * channels[i], channels[i + 1], 1))
        self.mid = Level(
            channels[-1], mid_blocks, attention[-1], emb_dim, head_dim, dropout, residual_init, modulation_init
        )
        self.upsample = nn.ModuleList()
        self.merge = nn.ModuleList()
        self.up_levels = nn.ModuleList()
        for i in range(n):
            self.merge.append(nn.Conv2d(2 * channels[i], channels[i], 1))
            self.up_levels.append(
                Level(channels[i], blocks[i], attention[i], emb_dim, head_dim, dropout, residual_init, modulation_init)
            )
            if i < n - 1:  # 1 x 1 convolution to 4 x the finer width + pixel shuffle (2)
                self.upsample.append(nn.Conv2d(channels[i + 1], 4 * channels[i], 1))
        self.head_modulation = nn.Linear(emb_dim, 2 * channels[0])
        self.head = nn.Conv2d(channels[0], out_channels * patch * patch, 3, padding=1)
        zero_init(self.head_modulation, self.head)
        self.full_res = int(full_res)
        if self.full_res:  # a thin full-resolution refinement of the prediction (see forward)
            self.fr_in = nn.Conv2d(in_channels, full_res, 3, padding=1)
            self.fr_pred = nn.Conv2d(out_channels, full_res, 1)
            self.fr_modulation = nn.Linear(emb_dim, 2 * full_res)
            self.fr_out = nn.Conv2d(full_res, out_channels, 3, padding=1)
            zero_init(self.fr_modulation, self.fr_out)

    @property
    def downsampling_factor(self) -> int:
        return self.patch * 2 ** (len(self.down_levels) - 1)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> NetOutput:
        """``x`` [B, in_channels, H, W] (H, W multiples of the down-sampling), ``t`` LongTensor [B]."""
        emb = F.silu(self.time_mlp(timestep_embedding(t, self.base).to(x.dtype)))
        h = self.stem(F.pixel_unshuffle(x, self.patch))
        skips = []
        n = len(self.down_levels)
        for i in range(n):
            h = self.down_levels[i](h, emb)
            skips.append(h)
            if i < n - 1:
                h = self.downsample[i](F.pixel_unshuffle(h, 2))
        h = self.mid(h, emb)
        for i in reversed(range(n)):
            if i < n - 1:
                h = F.pixel_shuffle(self.upsample[i](h), 2)
            h = self.merge[i](torch.cat([h, skips[i]], dim=1))
            h = self.up_levels[i](h, emb)
        scale, shift = self.head_modulation(emb).chunk(2, dim=1)
        out = F.pixel_shuffle(self.head(F.silu(ada_layer_norm(h, scale, shift))), self.patch)
        if self.full_res:
            # local features of the noisy input at full resolution, modulated by the time step,
            # plus the coarse prediction: a 3 x 3 correction (two thin convolutions, ~2 x 19 MFLOPs
            # per 256 x 256 image for 16 channels)
            scale, shift = self.fr_modulation(emb).chunk(2, dim=1)
            f = self.fr_in(x) * (1 + scale[:, :, None, None]) + shift[:, :, None, None] + self.fr_pred(out)
            out = out + self.fr_out(F.silu(f))
        return NetOutput(out)


def level_flops(model: nn.Module, size: int = 256, in_channels: int = 1) -> list[tuple[str, float]]:
    """FLOPs of one evaluation by resolution level, counted by :class:`torch.utils.flop_counter.FlopCounterMode`.

    One multiply-add counts as 2 FLOPs (torch's convention, also issue 22's "one FLOP is half a
    multiply-add"). Works for :class:`ShuffleUNet` and diffusers' ``UNet2DModel``.

    Returns
    -------
    list of (str, float)
        ``("total", GFLOPs)`` first, then one entry per level, ``"<px> px"``, in GFLOPs: the
        stem and head count at the finest level they touch, down/up-sampling at the level they
        leave from / arrive at.
    """
    from torch.utils.flop_counter import FlopCounterMode

    x, t = torch.zeros(1, in_channels, size, size), torch.tensor([500])
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x, t)
    counts = {k: sum(v.values()) for k, v in counter.get_flop_counts().items()}
    root = type(model).__name__
    total = counts.get("Global", 0)

    def get(name: str) -> float:
        return counts.get(f"{root}.{name}", 0)

    rows: list[tuple[str, float]] = [("total", total / 1e9)]
    if isinstance(model, ShuffleUNet):
        n = len(model.down_levels)
        for i in range(n):
            f = get(f"down_levels.{i}") + get(f"up_levels.{i}") + get(f"merge.{i}")
            f += get(f"downsample.{i}") if i < n - 1 else get("mid")
            f += get(f"upsample.{i - 1}") if i > 0 else get("stem") + get("head") + get("head_modulation")
            rows.append((f"{size // (model.patch * 2**i)} px", f / 1e9))
        if model.full_res:
            full = sum(get(name) for name in ("fr_in", "fr_pred", "fr_modulation", "fr_out"))
            rows.insert(1, (f"{size} px", full / 1e9))
    else:  # diffusers UNet2DModel: down_blocks[i] / up_blocks[n - 1 - i] work at level i
        n = sum(1 for k in counts if k.startswith(f"{root}.down_blocks.") and k.count(".") == 2)
        for i in range(n):
            f = get(f"down_blocks.{i}") + get(f"up_blocks.{n - 1 - i}")
            f += get("mid_block") if i == n - 1 else 0
            f += get("conv_in") + get("conv_out") if i == 0 else 0
            rows.append((f"{size // 2**i} px", f / 1e9))
    return rows
