"""The diffusion prior used by the solvers: an epsilon-predicting UNet and its DDPM schedule."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

from .checkpoint import check_state_dict, load_config, load_weights, resolve_checkpoint
from .config import downsampling_factor, scheduler_kwargs, unet_kwargs
from .noising import tweedie_x0
from .patches import assemble_patches, random_shift

#: environment variable that points :func:`load_prior` at another checkpoint
PRIOR_ENV = "TOMO_PRIOR"


#: names of the priors tomo ships (or will ship), and their folder under ``data/``
#: (``share/tomo/`` after a wheel install)
SHIPPED_PRIORS = {"default": "prior", "large": "prior-large"}
#: ``data/`` of a source checkout or editable install
REPO_DATA = Path(__file__).resolve().parents[2] / "data"


def shipped_prior_path(name: str = "default") -> Path:
    """Folder of a shipped prior by name (``$TOMO_PRIOR`` does not apply; it may not exist).

    ``<repository>/data/<folder>`` for a source checkout or editable install; for a wheel
    install, the copy setup.cfg's ``data_files`` puts in ``<sys.prefix>/share/tomo/<folder>``.

    Raises
    ------
    ValueError
        ``name`` is not one of :data:`SHIPPED_PRIORS`.
    """
    if name not in SHIPPED_PRIORS:
        raise ValueError(
            f"unknown prior name {name!r}: the shipped priors are "
            f"{', '.join(SHIPPED_PRIORS)}; or pass a checkpoint folder"
        )
    folder = SHIPPED_PRIORS[name]
    in_repo = REPO_DATA / folder
    installed = Path(sys.prefix) / "share" / "tomo" / folder
    if not in_repo.is_dir() and installed.is_dir():
        return installed
    return in_repo


def available_priors() -> tuple[str, ...]:
    """Names of :data:`SHIPPED_PRIORS` whose folder is present in this copy of tomo (``--prior`` help)."""
    return tuple(name for name in SHIPPED_PRIORS if shipped_prior_path(name).is_dir())


def default_prior_path() -> Path:
    """The prior :func:`load_prior` reads by default: ``$TOMO_PRIOR``, else the shipped ``default``."""
    env = os.environ.get(PRIOR_ENV)
    if env:
        return Path(env)
    return shipped_prior_path("default")


def _resolve_prior(path) -> Path:
    """A checkpoint path from ``None`` (the default), a shipped prior's name, or a path."""
    if path is None:
        path = default_prior_path()
        if not Path(path).exists():
            raise FileNotFoundError(
                f"no diffusion prior at {path}: the shipped prior lives in "
                f"<repository>/data/prior; set ${PRIOR_ENV} or pass a path "
                f"(train one with `tomo train`)"
            )
        return Path(path)
    # a name only when no file or folder of that name is there: a path given is always a path
    name = str(path)
    if name in SHIPPED_PRIORS and not Path(path).exists():
        folder = shipped_prior_path(name)
        if not folder.exists():
            raise FileNotFoundError(
                f"the {name!r} prior is not shipped with this copy of tomo (looked for {folder}); "
                "train it on a GPU with `python scripts/train_prior_gpu.py` (docs/prior.md) and pass "
                "its output folder, or use the 'default' prior"
            )
        return folder
    return Path(path)


def build_unet(config: dict):
    """A freshly initialised network for a configuration: diffusers' ``UNet2DModel`` or
    tomo's ``ShuffleUNet`` (:mod:`tomo.priors.networks`), by the architecture's ``class``."""
    if config["architecture"].get("class") == "ShuffleUNet":
        from .networks import ShuffleUNet

        return ShuffleUNet(**unet_kwargs(config))
    from diffusers import UNet2DModel

    return UNet2DModel(**unet_kwargs(config))


def schedule_alphas_cumprod(config: dict) -> torch.Tensor:
    """``abar_t`` of the configuration's DDPM schedule, float64 [T], computed as diffusers'
    ``DDPMScheduler`` does (float32 betas, cumulative product in float32), without importing
    diffusers, which a GPU machine may lack (the tests check the two agree exactly)."""
    import math

    sched = config["schedule"]
    n = int(sched["num_train_timesteps"])
    kind = sched.get("beta_schedule", "linear")
    if kind == "linear":
        betas = torch.linspace(float(sched["beta_start"]), float(sched["beta_end"]), n, dtype=torch.float32)
    elif kind == "squaredcos_cap_v2":

        def abar(s: float) -> float:
            return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2

        betas = torch.tensor([min(1 - abar((i + 1) / n) / abar(i / n), 0.999) for i in range(n)], dtype=torch.float32)
    else:
        raise ValueError(f"unsupported beta_schedule {kind!r} (linear or squaredcos_cap_v2)")
    return torch.cumprod(1.0 - betas, dim=0).to(torch.float64)


def build_scheduler(config: dict):
    """The diffusers ``DDPMScheduler`` of a configuration."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(**scheduler_kwargs(config))


def skip_coefficients(config: dict, alphas_cumprod: torch.Tensor):
    """Coefficients of the network output: ``eps_hat = c_skip (x_t - sqrt(abar) mu) + c_out F``.

    With ``config["gaussian_skip"] = {"mean": mu, "variance": s2}`` (training-pixel statistics
    in model range), ``c_skip (x_t - sqrt(abar) mu)`` is the exact MMSE noise estimate for
    independent Gaussian pixels, ``c_skip = sqrt(1 - abar) / (abar s2 + 1 - abar)``, and
    ``c_out = sqrt(abar s2 / (abar s2 + 1 - abar))`` is the standard deviation of what it
    leaves unexplained, so the network ``F`` learns a unit-scale residual at every t
    (the preconditioning idea of Karras et al. 2022, EDM, written for epsilon prediction).
    At large t the estimate is right without any learning, which is where a plain epsilon
    network trained briefly is least accurate and where sampling starts.
    Without it: ``c_skip = 0, c_out = 1, mu = 0`` (the network predicts eps).

    Returns
    -------
    c_skip, c_out : Tensor float64 [T]
    mean : float
    """
    abar = alphas_cumprod.to(torch.float64)
    skip = config.get("gaussian_skip")
    if skip is None:
        return torch.zeros_like(abar), torch.ones_like(abar), 0.0
    s2 = float(skip["variance"])
    denom = abar * s2 + 1 - abar
    return (1 - abar).sqrt() / denom, (abar * s2 / denom).sqrt(), float(skip["mean"])


def combine_output(
    net_out: torch.Tensor,
    x_t: torch.Tensor,
    t: torch.Tensor,
    c_skip: torch.Tensor,
    c_out: torch.Tensor,
    sqrt_abar: torch.Tensor,
    mean: float,
) -> torch.Tensor:
    """``c_skip[t] (x_t - sqrt(abar_t) mean) + c_out[t] net_out`` (per-image coefficients)."""
    shape = (-1,) + (1,) * (x_t.ndim - 1)
    cs = c_skip[t].to(x_t.dtype).reshape(shape)
    co = c_out[t].to(x_t.dtype).reshape(shape)
    sa = sqrt_abar[t].to(x_t.dtype).reshape(shape)
    return cs * (x_t - sa * mean) + co * net_out


class DiffusionPrior(torch.nn.Module):
    """A trained denoiser ``eps(x_t, t)`` with its DDPM schedule and HU mapping.

    The UNet's parameters are frozen on construction (``requires_grad_(False)``).

    Images are in *model range*: HU mapped linearly by :meth:`hu_to_model` so that
    ``hu_window[0] -> -1`` and ``hu_window[1] -> +1``; ``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps``.

    Attributes
    ----------
    config : dict
        The JSON configuration (see :mod:`tomo.priors.config`).
    unet : diffusers.UNet2DModel
    alphas_cumprod : Tensor float64 [T]
        ``abar_t`` of the DDPM schedule, from the diffusers scheduler.
    num_train_timesteps : int
        T.
    pixel_size_mm : float
        Pixel size of the training images, mm; use reconstruction grids near it.
    hu_window : (float, float)
        HU mapped to -1 and +1.
    patch_size : int or None
        Patch side in pixels (patch prior) or None (whole-image prior).
    """

    def __init__(self, unet, config: dict):
        super().__init__()
        self.unet = unet
        self.config = config
        self._scheduler = None
        self.register_buffer("alphas_cumprod", schedule_alphas_cumprod(config), persistent=False)
        self.num_train_timesteps = int(config["schedule"]["num_train_timesteps"])
        c_skip, c_out, self._skip_mean = skip_coefficients(config, self.alphas_cumprod)
        self.register_buffer("_c_skip", c_skip, persistent=False)
        self.register_buffer("_c_out", c_out, persistent=False)
        self.register_buffer("_sqrt_abar", self.alphas_cumprod.sqrt(), persistent=False)
        self.pixel_size_mm = float(config["pixel_size_mm"])
        self.hu_window = (float(config["hu_window"][0]), float(config["hu_window"][1]))
        self.patch_size = config["patch_size"]
        self.position_channels = bool(config["position_channels"])
        # inference object: gradients flow to the input only (DPS); call
        # requires_grad_(True) to fine-tune
        self.requires_grad_(False)

    @property
    def scheduler(self):
        """The diffusers ``DDPMScheduler`` of the configuration (built on first use: sampling
        needs it, denoising does not, so a machine without diffusers can still evaluate)."""
        if self._scheduler is None:
            self._scheduler = build_scheduler(self.config)
        return self._scheduler

    # ------------------------------------------------------------------ HU <-> model range
    def hu_to_model(self, hu):
        """HU -> model range: ``2 (hu - lo) / (hi - lo) - 1`` (no clipping). Tensor or array."""
        lo, hi = self.hu_window
        return 2.0 * (hu - lo) / (hi - lo) - 1.0

    def model_to_hu(self, x):
        """Model range -> HU: ``lo + (x + 1) (hi - lo) / 2`` (no clipping). Tensor or array."""
        lo, hi = self.hu_window
        return lo + (x + 1.0) * (0.5 * (hi - lo))

    # ------------------------------------------------------------------ network
    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    def _timesteps(self, t, batch: int, device) -> torch.Tensor:
        if isinstance(t, torch.Tensor):
            if t.is_floating_point() or t.is_complex():
                raise TypeError(f"t must be an integer time step or LongTensor, got dtype {t.dtype}")
            t = t.reshape(-1).to(device=device, dtype=torch.long)
            if t.numel() == 1:
                t = t.expand(batch)
            elif t.numel() != batch:
                raise ValueError(f"t has {t.numel()} entries for a batch of {batch} images")
        elif isinstance(t, (int,)) and not isinstance(t, bool):
            t = torch.full((batch,), int(t), dtype=torch.long, device=device)
        else:
            raise TypeError(f"t must be an int or a LongTensor [B], got {type(t).__name__}")
        if int(t.min()) < 0 or int(t.max()) >= self.num_train_timesteps:
            raise ValueError(
                f"time steps must lie in [0, {self.num_train_timesteps - 1}], got [{int(t.min())}, {int(t.max())}]"
            )
        return t

    def _check_image(self, x_t) -> None:
        if not isinstance(x_t, torch.Tensor):
            raise TypeError(f"x_t must be a torch.Tensor, got {type(x_t).__name__}")
        if x_t.ndim != 4 or x_t.shape[1] != 1:
            raise ValueError(f"x_t must have shape [B, 1, H, W], got {tuple(x_t.shape)}")
        if not x_t.is_floating_point():
            raise TypeError(f"x_t must be floating point, got {x_t.dtype}")
        if x_t.device != self.device:
            raise ValueError(
                f"x_t is on {x_t.device} but the prior is on {self.device}; move one of them (prior.to(device))"
            )
        if not torch.isfinite(x_t).all():
            raise ValueError("x_t contains NaN or Inf")

    def _net(self, inp: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        dtype = next(self.unet.parameters()).dtype
        return self.unet(inp.to(dtype), t).sample.to(inp.dtype)

    def eps(
        self,
        x_t: torch.Tensor,
        t,
        generator: torch.Generator | None = None,
        shift: tuple[int, int] | None = None,
        max_patches: int = 256,
    ) -> torch.Tensor:
        """Predicted noise for a batch of noisy images of any size.

        Parameters
        ----------
        x_t : Tensor [B, 1, H, W]
            Noisy images in model range, on the prior's device; any H, W >= 1.
        t : int or LongTensor [B]
            Diffusion time step(s) in [0, T).
        generator : torch.Generator, optional
            Draws the random offset of the patch partition (patch prior); pass a seeded
            generator for reproducible results. Must live on the CPU.
        shift : (int, int), optional
            Explicit (row, column) offset in [0, patch_size) instead of a random one.
        max_patches : int
            Largest number of patches per network call (memory only).

        Returns
        -------
        Tensor [B, 1, H, W]
            Predicted unit-variance noise; differentiable with respect to ``x_t``.
        """
        self._check_image(x_t)
        t = self._timesteps(t, x_t.shape[0], x_t.device)
        if self.patch_size is not None:
            p = self.patch_size
            if shift is None:
                shift = random_shift(p, generator)
            if not all(0 <= int(s) < p for s in shift):
                raise ValueError(f"shift {shift} must lie in [0, {p})")
            out = assemble_patches(
                self._net, x_t, t, p, (int(shift[0]), int(shift[1])), self.position_channels, max_patches
            )
        else:
            out = self._whole_image_eps(x_t, t)
        if self.config.get("gaussian_skip") is None:
            return out
        return combine_output(out, x_t, t, self._c_skip, self._c_out, self._sqrt_abar, self._skip_mean)

    def _whole_image_eps(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x_t.shape
        f = downsampling_factor(self.config["architecture"])
        ph, pw = -h % f, -w % f
        xp = torch.nn.functional.pad(x_t, (0, pw, 0, ph))  # zero padding right/bottom
        if self.position_channels:
            ys = 2 * (torch.arange(h + ph, device=x_t.device, dtype=x_t.dtype) + 0.5) / h - 1
            xs = 2 * (torch.arange(w + pw, device=x_t.device, dtype=x_t.dtype) + 0.5) / w - 1
            pos = torch.stack(torch.broadcast_tensors(xs[None, :], ys[:, None]))[None].expand(b, -1, -1, -1)
            xp = torch.cat([xp, pos], dim=1)
        return self._net(xp, t)[:, :, :h, :w]

    def x0_hat(self, x_t: torch.Tensor, t, eps: torch.Tensor | None = None, **eps_kwargs) -> torch.Tensor:
        """Tweedie's estimate ``(x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)`` (no clipping).

        ``eps`` may be passed when already computed; otherwise :meth:`eps` is called with
        ``eps_kwargs`` (``generator``, ``shift``).
        """
        if eps is None:
            eps = self.eps(x_t, t, **eps_kwargs)
        t = self._timesteps(t, x_t.shape[0], x_t.device)
        abar = self.alphas_cumprod[t].to(x_t.dtype).reshape(-1, 1, 1, 1)
        return tweedie_x0(x_t, eps, abar)

    def sample(
        self,
        n: int = 1,
        size: tuple[int, int] | None = None,
        steps: int = 50,
        eta: float = 0.0,
        generator: torch.Generator | None = None,
        progress: bool = True,
    ) -> torch.Tensor:
        """Unconditional DDIM samples in model range, [n, 1, H, W] (see :func:`tomo.priors.sampling.ddim_sample`)."""
        from .sampling import ddim_sample

        return ddim_sample(self, n=n, size=size, steps=steps, eta=eta, generator=generator, progress=progress)

    def extra_repr(self) -> str:
        return (
            f"patch_size={self.patch_size}, pixel_size_mm={self.pixel_size_mm}, "
            f"hu_window={self.hu_window}, T={self.num_train_timesteps}"
        )


def load_prior(path=None, device="cpu") -> DiffusionPrior:
    """Load a trained prior (EMA weights) for inference.

    Parameters
    ----------
    path : str or Path, optional
        A checkpoint folder holding ``prior.json`` and ``prior.safetensors`` (or a shard index
        ``prior.safetensors.index.json`` and its shards), or one of those files; or the name of
        a shipped prior, ``"default"`` (``data/prior``) or ``"large"`` (``data/prior-large``).
        Default: ``$TOMO_PRIOR`` if set, else the shipped ``default``.
    device : str or torch.device

    Returns
    -------
    DiffusionPrior
        In eval mode, parameters frozen (gradients flow to the input only).

    Raises
    ------
    FileNotFoundError
        No checkpoint there, or a named prior that is not shipped.
    PriorCheckpointError (a ValueError)
        Corrupt files, an unsupported or invalid config, or weights that do not fit it.
    """
    config_path, weights_path = resolve_checkpoint(_resolve_prior(path))
    config = load_config(config_path)
    tensors, _ = load_weights(weights_path)
    unet = build_unet(config)
    check_state_dict(unet.state_dict(), tensors, str(weights_path))
    unet.load_state_dict(tensors)
    # channels-last weights: oneDNN's convolutions run faster on CPU (docs/solvers.md, "Speed"),
    # same results to float32 rounding; only here, for inference: training keeps the default layout
    unet.to(memory_format=torch.channels_last)
    prior = DiffusionPrior(unet, config)
    return prior.eval().to(device)
