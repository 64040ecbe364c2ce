"""The prior's JSON configuration: architecture, noise schedule, HU window, pixel size, patching.

One dictionary describes a prior completely; it is written next to the weights as ``prior.json``
and read back by :func:`tomo.priors.load_prior`. The keys below are a public contract (solvers
and the model card read them); ``format_version`` changes whenever their meaning does.
"""

from __future__ import annotations

import copy
from typing import Any

FORMAT = "tomo-diffusion-prior"
FORMAT_VERSION = 1

#: HU window mapped linearly onto the network range [-1, 1]: -1000 HU (air) -> -1,
#: 2000 HU (dense cortical bone) -> +1. Wider than the [-1000, 1000] evaluation window so that
#: bone is not clipped and the prior agrees with sinograms of real anatomy.
DEFAULT_HU_WINDOW = (-1000.0, 2000.0)
#: Target pixel size (mm). The evaluation reconstructs 512 x 512 DICOM of about 0.6-0.8 mm
#: onto a 256 grid, i.e. 1.2-1.6 mm pixels.
DEFAULT_PIXEL_SIZE_MM = 1.5


def default_architecture(in_channels: int = 3, sample_size: int = 64) -> dict[str, Any]:
    """diffusers ``UNet2DModel`` arguments of the shipped prior (4.3 M parameters, 17 MB fp32).

    Four resolution levels (64 -> 8 px for a 64 px patch), one ResNet block per level, self
    attention only at the lowest level, where it is cheap (costs per evaluation and training
    step of this and other candidates: docs/prior.md).
    """
    return {
        "class": "UNet2DModel",
        "sample_size": sample_size,
        "in_channels": in_channels,
        "out_channels": 1,
        "block_out_channels": [32, 64, 128, 128],
        "layers_per_block": 1,
        "down_block_types": ["DownBlock2D", "DownBlock2D", "DownBlock2D", "AttnDownBlock2D"],
        "up_block_types": ["AttnUpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D"],
        "norm_num_groups": 32,
        "attention_head_dim": 32,
    }


def tiny_architecture(in_channels: int = 3, sample_size: int = 16) -> dict[str, Any]:
    """A very small ``UNet2DModel`` (about 50 k parameters) for tests and smoke runs."""
    return {
        "class": "UNet2DModel",
        "sample_size": sample_size,
        "in_channels": in_channels,
        "out_channels": 1,
        "block_out_channels": [8, 16],
        "layers_per_block": 1,
        "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
        "up_block_types": ["AttnUpBlock2D", "UpBlock2D"],
        "norm_num_groups": 8,
        "attention_head_dim": 8,
    }


def large_architecture(in_channels: int = 1, sample_size: int = 256) -> dict[str, Any]:
    """A larger ``UNet2DModel`` for GPU training in whole-image mode (14.9 M parameters).

    Five resolution levels (256 -> 16 px for a 256 px image), one ResNet block per level, self
    attention at 32 and 16 px; the extra capacity sits at the low resolutions, where it costs
    few FLOPs (57 GFLOPs per 256 x 256 evaluation against 47 for "small"). Its fp32 weights
    (57 MiB) fit four 16 MiB safetensors shards.
    """
    return {
        "class": "UNet2DModel",
        "sample_size": sample_size,
        "in_channels": in_channels,
        "out_channels": 1,
        "block_out_channels": [32, 64, 128, 192, 256],
        "layers_per_block": 1,
        "down_block_types": ["DownBlock2D", "DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"],
        "up_block_types": ["AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D"],
        "norm_num_groups": 32,
        "attention_head_dim": 32,
    }


def shuffle_architecture(
    channels=(64, 128, 256),
    blocks=(2, 2, 2),
    attention=(False, False, True),
    patch: int = 4,
    mid_blocks: int = 1,
    in_channels: int = 1,
    sample_size: int = 256,
    dropout: float = 0.0,
    residual_init: float = 0.0,
    modulation_init: float = 0.0,
    full_res: int = 0,
) -> dict[str, Any]:
    """Arguments of :class:`tomo.priors.networks.ShuffleUNet` (pixel-unshuffle stem, widths in
    multiples of 64, attention at coarse levels only); the candidates measured in docs/prior.md."""
    return {
        "class": "ShuffleUNet",
        "sample_size": sample_size,
        "in_channels": in_channels,
        "out_channels": 1,
        "patch": patch,
        "channels": list(channels),
        "blocks": list(blocks),
        "attention": list(attention),
        "mid_blocks": mid_blocks,
        "head_dim": 64,
        "emb_dim": 256,
        "dropout": dropout,
        "residual_init": residual_init,
        "modulation_init": modulation_init,
        "full_res": full_res,
    }


def tiny_shuffle_architecture(in_channels: int = 1, sample_size: int = 32) -> dict[str, Any]:
    """A very small ``ShuffleUNet`` for tests and smoke runs (patch 2, widths 64 and 64)."""
    arch = shuffle_architecture(
        channels=(64, 64), blocks=(1, 1), attention=(False, True), patch=2, in_channels=in_channels
    )
    arch.update(sample_size=sample_size, emb_dim=64)
    return arch


def shuffle_large_architecture(in_channels: int = 1, sample_size: int = 256) -> dict[str, Any]:
    """The ``large`` prior's ``ShuffleUNet`` for GPU training (6.6 M parameters, 14.4 GFLOPs per
    256 x 256 evaluation): most of its FLOPs at 64 px with 128 channels, where tensor cores are
    busy. Its float16 weights (12.6 MiB) must travel to the GPU machine beside the working tree
    and the packed data within 64 MiB (docs/prior.md), which bounds the parameters of the coarse
    levels, where they are cheapest in FLOPs."""
    return shuffle_architecture(
        channels=(128, 128, 192),
        blocks=(2, 2, 1),
        mid_blocks=1,
        full_res=16,
        in_channels=in_channels,
        sample_size=sample_size,
    )


def shuffle_default_architecture(in_channels: int = 1, sample_size: int = 256) -> dict[str, Any]:
    """The candidate for the ``default`` prior (7.4 M parameters, 28 MiB in float32, 7.5 GFLOPs
    and about 0.18 s per 256 x 256 evaluation on one CPU core): widths 64 / 128 / 192 at 64 / 32 /
    16 px, two blocks per level, attention at 16 px, a 16-channel full-resolution refinement; the
    best of the candidates per training FLOP that meet the CPU bar (docs/prior.md)."""
    return shuffle_architecture(channels=(64, 128, 192), full_res=16, in_channels=in_channels, sample_size=sample_size)


ARCHITECTURES = {
    "small": default_architecture,
    "shuffle-large": shuffle_large_architecture,
    "shuffle-default": shuffle_default_architecture,
    "tiny": tiny_architecture,
    "large": large_architecture,
    "shuffle-tiny": tiny_shuffle_architecture,
}

#: network classes a configuration may name: diffusers' UNet and tomo's own (tomo.priors.networks)
NETWORK_CLASSES = ("UNet2DModel", "ShuffleUNet")


def default_schedule(beta_schedule: str = "linear", num_train_timesteps: int = 1000) -> dict[str, Any]:
    """diffusers ``DDPMScheduler`` arguments: epsilon prediction, T = 1000 (Ho et al. 2020 betas)."""
    return {
        "class": "DDPMScheduler",
        "num_train_timesteps": num_train_timesteps,
        "beta_schedule": beta_schedule,  # "linear" or "squaredcos_cap_v2" (cosine)
        "beta_start": 1e-4,
        "beta_end": 0.02,
        "prediction_type": "epsilon",
        "clip_sample": True,  # sampling only: training data lie in [-1, 1]
        "clip_sample_range": 1.0,
    }


def make_config(
    *,
    architecture: dict | None = None,
    schedule: dict | None = None,
    hu_window=DEFAULT_HU_WINDOW,
    pixel_size_mm: float = DEFAULT_PIXEL_SIZE_MM,
    patch_size: int | None = 64,
    image_size: int = 256,
    position_channels: bool | None = None,
    gaussian_skip: tuple[float, float] | None = None,
) -> dict[str, Any]:
    """Assemble and validate a prior configuration.

    Parameters
    ----------
    architecture : dict, optional
        ``UNet2DModel`` keyword arguments plus ``"class"``; ``in_channels`` is set from
        ``position_channels`` and ``sample_size`` from the patch/image size.
    schedule : dict, optional
        ``DDPMScheduler`` keyword arguments plus ``"class"``.
    hu_window : (float, float)
        HU mapped linearly to [-1, 1].
    pixel_size_mm : float
        Pixel size the training slices are resampled to, mm.
    patch_size : int or None
        Patch side in pixels (patch mode), or None for whole-image mode.
    image_size : int
        Side of the whole images, in pixels: the training canvas in whole-image mode and the
        size of the sample grid in both modes.
    position_channels : bool, optional
        Append normalised x/y coordinate channels (default: on in patch mode, off otherwise).
    gaussian_skip : (float, float), optional
        (mean, variance) of the training pixels in model range: the network then predicts
        only the residual of the Gaussian-pixel MMSE noise estimate (see
        :func:`tomo.priors.prior.skip_coefficients`). None: the network predicts eps directly.

    Returns
    -------
    dict
        The configuration, validated by :func:`validate_config`.
    """
    if position_channels is None:
        position_channels = patch_size is not None
    arch = copy.deepcopy(architecture) if architecture else default_architecture()
    arch["in_channels"] = 3 if position_channels else 1
    arch["out_channels"] = 1
    arch["sample_size"] = int(patch_size or image_size)
    config = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "architecture": arch,
        "schedule": copy.deepcopy(schedule) if schedule else default_schedule(),
        "hu_window": [float(hu_window[0]), float(hu_window[1])],
        "pixel_size_mm": float(pixel_size_mm),
        "patch_size": None if patch_size is None else int(patch_size),
        "image_size": int(image_size),
        "position_channels": bool(position_channels),
        "gaussian_skip": None
        if gaussian_skip is None
        else {"mean": float(gaussian_skip[0]), "variance": float(gaussian_skip[1])},
    }
    validate_config(config)
    return config


def downsampling_factor(arch: dict) -> int:
    """Total down-sampling of the network: spatial sizes must be multiples of this."""
    if arch.get("class") == "ShuffleUNet":
        return int(arch["patch"]) * 2 ** (len(arch["channels"]) - 1)
    return 2 ** (len(arch["block_out_channels"]) - 1)


def validate_config(config: dict) -> None:
    """Raise ``ValueError`` naming the first problem with a prior configuration."""
    if not isinstance(config, dict):
        raise ValueError(f"prior config must be a JSON object, got {type(config).__name__}")
    if config.get("format") != FORMAT:
        raise ValueError(f"not a tomo prior config (format {config.get('format')!r}, expected {FORMAT!r})")
    if config.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"prior config format_version {config.get('format_version')!r} is not supported "
            f"(this tomo reads version {FORMAT_VERSION})"
        )
    for key in (
        "architecture",
        "schedule",
        "hu_window",
        "pixel_size_mm",
        "patch_size",
        "image_size",
        "position_channels",
    ):
        if key not in config:
            raise ValueError(f"prior config lacks {key!r}")
    arch, sched = config["architecture"], config["schedule"]
    if arch.get("class") not in NETWORK_CLASSES:
        raise ValueError(
            f"unsupported architecture class {arch.get('class')!r} (expected one of {', '.join(NETWORK_CLASSES)})"
        )
    if sched.get("class") != "DDPMScheduler" or sched.get("prediction_type") != "epsilon":
        raise ValueError("unsupported schedule: expected DDPMScheduler with prediction_type 'epsilon'")
    lo, hi = config["hu_window"]
    if not lo < hi:
        raise ValueError(f"hu_window must be (lo, hi) with lo < hi, got {config['hu_window']}")
    if not config["pixel_size_mm"] > 0:
        raise ValueError(f"pixel_size_mm must be > 0, got {config['pixel_size_mm']}")
    expected_in = 3 if config["position_channels"] else 1
    if arch.get("in_channels") != expected_in or arch.get("out_channels") != 1:
        raise ValueError(
            f"architecture in/out channels {arch.get('in_channels')}/{arch.get('out_channels')} "
            f"do not match position_channels={config['position_channels']} (expected "
            f"{expected_in}/1)"
        )
    factor = downsampling_factor(arch)
    p = config["patch_size"]
    if p is not None and (p <= 0 or p % factor):
        raise ValueError(f"patch_size {p} must be a positive multiple of the UNet down-sampling {factor}")
    if config["image_size"] <= 0:
        raise ValueError(f"image_size must be > 0, got {config['image_size']}")
    skip = config.get("gaussian_skip")
    if skip is not None and not (isinstance(skip, dict) and float(skip.get("variance", 0)) > 0 and "mean" in skip):
        raise ValueError(f"gaussian_skip must be null or {{'mean': m, 'variance': v > 0}}, got {skip!r}")


def unet_kwargs(config: dict) -> dict[str, Any]:
    """Network keyword arguments from a configuration (``"class"`` removed, lists as tuples)."""
    return {k: (tuple(v) if isinstance(v, list) else v) for k, v in config["architecture"].items() if k != "class"}


def scheduler_kwargs(config: dict) -> dict[str, Any]:
    """``DDPMScheduler`` keyword arguments from a configuration (``"class"`` removed)."""
    return {k: v for k, v in config["schedule"].items() if k != "class"}
