"""Unconditional sampling (DDIM, diffusers ``DDIMScheduler``) and the sample-grid PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def ddim_sample(
    prior,
    n: int = 1,
    size: tuple[int, int] | None = None,
    steps: int = 50,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    progress: bool = True,
) -> torch.Tensor:
    """Draw unconditional samples with DDIM.

    A patch prior assembles the whole-image prediction from a freshly shifted patch
    partition at every step (PaDIS), so the patch seams move and average out.

    Parameters
    ----------
    prior : DiffusionPrior
    n : int
        Number of images.
    size : (int, int), optional
        (H, W) pixels; default ``(image_size, image_size)`` of the config (256).
    steps : int
        DDIM steps (network evaluations).
    eta : float
        DDIM stochasticity (0: deterministic ODE).
    generator : torch.Generator, optional
        CPU generator for the initial noise, the patch shifts and the DDIM noise.

    Returns
    -------
    Tensor [n, 1, H, W]
        Samples in model range, on the prior's device.
    """
    from diffusers import DDIMScheduler
    from tqdm import tqdm

    if size is None:
        size = (prior.config["image_size"],) * 2
    ddim = DDIMScheduler.from_config(prior.scheduler.config)
    ddim.set_timesteps(steps)
    x = torch.randn((n, 1, *size), generator=generator).to(prior.device)
    it = tqdm(ddim.timesteps, desc="DDIM sampling", leave=False, disable=None if progress else True)
    with torch.no_grad():
        for t in it:
            eps = prior.eps(x, int(t), generator=generator)
            noise = torch.randn(x.shape, generator=generator).to(x.device) if eta > 0 else None
            x = ddim.step(eps, t, x, eta=eta, variance_noise=noise).prev_sample
    return x


def save_grid(
    images_hu: np.ndarray,
    path,
    window=(-1000.0, 1000.0),
    ncols: int = 4,
    title: str | None = None,
    pixel_size_mm: float | None = None,
) -> Path:
    """Save HU images [n, H, W] as a grid PNG, displayed in a fixed HU window (default [-1000, 1000])."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    images_hu = np.asarray(images_hu)
    n = images_hu.shape[0]
    ncols = min(ncols, n)
    nrows = -(-n // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.6 * ncols, 2.6 * nrows + (0.4 if title else 0)), squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k < n:
            ax.imshow(images_hu[k], cmap="gray", vmin=window[0], vmax=window[1], interpolation="nearest")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def sample_grid(prior, path, n: int = 8, steps: int = 50, seed: int = 0, size=None, progress: bool = True) -> Path:
    """Draw ``n`` DDIM samples and save them as a grid PNG in the [-1000, 1000] HU window."""
    g = torch.Generator().manual_seed(seed)
    x = ddim_sample(prior, n=n, size=size, steps=steps, generator=g, progress=progress)
    hu = prior.model_to_hu(x[:, 0].float().cpu().numpy())
    h, w = hu.shape[-2:]
    title = (
        f"unconditional DDIM samples ({steps} steps), {h}x{w} px at {prior.pixel_size_mm:g} mm, window [-1000, 1000] HU"
    )
    return save_grid(hu, path, title=title)
