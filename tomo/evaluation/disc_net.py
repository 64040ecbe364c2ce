"""A learned limited-angle segmenter for acrylic discs with holes (the HTC2022 object class).

Limited-angle data do not measure the edges that run along the missing directions; TV, bounds
and a disc support (``tv-la``) cannot put them back (docs/benchmarks.md, section 8). What can is
knowledge of the object class. As several challenge entries did, this trains a network on
simulated discs with holes (:mod:`tomo.evaluation.disc_phantoms`) to map an FBP of the limited-
angle data to the acrylic segmentation. Nothing measured is used for training.

Canonical frame: a scan of arc ``a`` starting at source angle ``theta_0`` is reconstructed with the
angles shifted to start at 0, so the missing wedge always lies in the same direction and one
network serves every start angle; its output is rotated back by ``theta_0``
(:func:`to_scan_frame`). Input channels (:func:`input_features`): the Hann FBP divided by
``MU_SCALE`` (acrylic reads about 1) and the disc support fitted to the shadow edges
(:mod:`tomo.recon.support`). Output: the probability of acrylic per pixel.

The network (:class:`DiscNet`) is a diffusers ``UNet2DModel`` used at a fixed timestep of 0 (a
plain UNet), on 2 x 2 pixel blocks: ``NET_CONFIG``. Weights: ``data/disc-net/`` (safetensors), made by
``scripts/train_disc_net.py``.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import torch

from operators.geometry import FanBeam2D

__all__ = [
    "NET_CONFIG",
    "MU_SCALE",
    "DEFAULT_WEIGHTS",
    "TRAINING_ARCS_DEG",
    "scanner_geometry",
    "canonical_geometry",
    "input_features",
    "to_scan_frame",
    "DiscNet",
    "load_net",
    "mirrored",
    "unmirror",
    "segment_probability",
]

#: attenuation that maps to 1 in the input (about acrylic's, 1/mm)
MU_SCALE = 0.031
#: the shipped weights (folder with ``model.safetensors`` and ``config.json``)
DEFAULT_WEIGHTS = Path(__file__).resolve().parents[2] / "data" / "disc-net"
#: ``UNet2DModel`` arguments of the core, which runs at half resolution on the 2 x 2 pixel blocks
#: of the input (pixel unshuffle: 2 channels -> 8, out 4 -> 1 at full resolution): 5 levels give a
#: receptive field of most of the image, so a wall can be continued across the missing wedge
NET_CONFIG = {
    "sample_size": 128,
    "in_channels": 8,
    "out_channels": 4,
    "block_out_channels": [24, 48, 96, 128, 128],
    "layers_per_block": 1,
    "down_block_types": ["DownBlock2D"] * 5,
    "up_block_types": ["UpBlock2D"] * 5,
    "norm_num_groups": 8,
    "add_attention": False,
}


class DiscNet(torch.nn.Module):
    """Features ``[B, 2, H, W]`` -> acrylic logits ``[B, H, W]`` (H, W even)."""

    def __init__(self, config: dict | None = None):
        from diffusers import UNet2DModel

        super().__init__()
        self.config = dict(config or NET_CONFIG)
        self.core = UNet2DModel(**self.config)
        self.unshuffle, self.shuffle = torch.nn.PixelUnshuffle(2), torch.nn.PixelShuffle(2)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        t = torch.zeros(features.shape[0], dtype=features.dtype, device=features.device)
        return self.shuffle(self.core(self.unshuffle(features), t).sample)[:, 0]


#: the HTC2022 scanner as its files describe it (mm; 560 detectors binned to 0.2 mm)
SOURCE_ORIGIN_MM, SOURCE_DETECTOR_MM, DETECTORS, DETECTOR_MM = 410.66, 553.74, 560, 0.2
#: the arcs the network was trained on (degrees; views every 0.5 degree)
TRAINING_ARCS_DEG = (30, 40, 50, 60, 70, 80, 90)


def scanner_geometry(arc_deg: float, start_deg: float = 0.0, grid: int = 256, fov_mm: float = 80.0) -> FanBeam2D:
    """The HTC2022 scanner over ``arc_deg`` degrees from ``start_deg`` in 0.5-degree views."""
    return FanBeam2D(
        image_shape=(grid, grid),
        pixel_spacing_mm=fov_mm / grid,
        angles=tuple(np.deg2rad(start_deg + np.arange(0.0, arc_deg + 0.25, 0.5))),
        detector_count=DETECTORS,
        detector_spacing_mm=DETECTOR_MM,
        source_origin_mm=SOURCE_ORIGIN_MM,
        origin_detector_mm=SOURCE_DETECTOR_MM - SOURCE_ORIGIN_MM,
    )


def canonical_geometry(geometry: FanBeam2D) -> tuple[FanBeam2D, float]:
    """``geometry`` with its angles shifted to start at 0; returns (geometry, start angle in radians)."""
    from dataclasses import replace

    angles = np.asarray(geometry.angles, dtype=np.float64)
    start = float(angles[0])
    return replace(geometry, angles=tuple(angles - start)), start


def input_features(sinogram: np.ndarray, geometry: FanBeam2D) -> torch.Tensor:
    """Network input ``float32 [2, H, W]``: Hann FBP / ``MU_SCALE`` and the fitted disc support.

    ``sinogram`` ``[views, detectors]`` holds line integrals; ``geometry`` is the frame the output
    is wanted in (the canonical one for the network).
    """
    from operators.fbp import FBP
    from tomo.recon.support import disc_mask, fit_disc

    y = np.asarray(sinogram, dtype=np.float32)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the limited-angle warning: the network is the answer
        mu = FBP(geometry, filter="hann")(torch.from_numpy(y))
    support = disc_mask(geometry, *fit_disc(y, geometry)[:3])
    return torch.stack([mu / MU_SCALE, torch.from_numpy(support.astype(np.float32))])


def to_scan_frame(image: np.ndarray, start_rad: float) -> np.ndarray:
    """Rotate an image of the canonical frame back to the scan's (bilinear, zero outside)."""
    from scipy import ndimage

    return ndimage.rotate(image, np.rad2deg(start_rad), reshape=False, order=1, mode="constant")


def load_net(folder: str | Path = DEFAULT_WEIGHTS) -> DiscNet:
    """The trained network of ``folder`` (``config.json`` + ``model.safetensors``), in eval mode."""
    from tomo.priors.checkpoint import load_tensors

    folder = Path(folder)
    if not (folder / "model.safetensors").is_file():
        raise FileNotFoundError(
            f"no disc-net weights in {folder}: train them with scripts/train_disc_net.py (see docs/benchmarks.md)"
        )
    net = DiscNet(json.loads((folder / "config.json").read_text()))
    net.load_state_dict(load_tensors(folder / "model.safetensors")[0])
    return net.eval()


def mirrored(sinogram: np.ndarray, canonical: FanBeam2D) -> tuple[np.ndarray, FanBeam2D]:
    """The scan seen in a mirror: views and detector reversed, angles ``arc - theta`` reversed.

    In the canonical frame its image is the original's reflected about the arc's bisector:
    ``image' = rotate(fliplr(image), arc)`` (:func:`unmirror` undoes it).
    """
    from dataclasses import replace

    angles = np.asarray(canonical.angles, dtype=np.float64)
    geometry = replace(
        canonical,
        angles=tuple(angles[-1] - angles[::-1]),
        detector_offset_mm=-canonical.detector_offset_mm,
    )
    return np.ascontiguousarray(sinogram[::-1, ::-1]), geometry


def unmirror(image: np.ndarray, arc_rad: float) -> np.ndarray:
    """Map an image of :func:`mirrored`'s scan back to the original canonical frame."""
    from scipy import ndimage

    return ndimage.rotate(image[:, ::-1], np.rad2deg(arc_rad), reshape=False, order=1, mode="constant")


@torch.no_grad()
def segment_probability(sinogram: np.ndarray, geometry: FanBeam2D, net: DiscNet, mirror: bool = True) -> np.ndarray:
    """Probability of acrylic ``float32 [H, W]`` in the frame of ``geometry`` (any start angle).

    ``mirror``: average with the prediction for the mirrored scan (:func:`mirrored`), a second
    look at the same data that halves the network's left-right bias.
    """
    canonical, start = canonical_geometry(geometry)
    prob = torch.sigmoid(net(input_features(sinogram, canonical)[None]))[0].numpy()
    if mirror:
        y2, g2 = mirrored(sinogram, canonical)
        other = torch.sigmoid(net(input_features(y2, g2)[None]))[0].numpy()
        prob = 0.5 * (prob + unmirror(other, float(canonical.angles[-1])))
    return to_scan_frame(prob, start).astype(np.float32)
