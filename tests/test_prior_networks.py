"""tomo's own network (ShuffleUNet), its place in the prior's configuration, the diffusers-free
schedule, float16 weights, and the device-resident training sampler."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.test_prior import save_prior
from tomo.priors import DiffusionPrior, PriorCheckpointError, build_unet, load_prior, make_config
from tomo.priors.checkpoint import WEIGHTS_NAME, save_tensors
from tomo.priors.config import ARCHITECTURES, downsampling_factor, shuffle_architecture
from tomo.priors.networks import ShuffleUNet, level_flops
from tomo.priors.prior import schedule_alphas_cumprod
from tomo.priors.training.device_loop import DeviceData, DeviceSampler, DeviceTrainOptions


def tiny_config(**kw):
    return make_config(architecture=ARCHITECTURES["shuffle-tiny"](), patch_size=None, image_size=32, **kw)


def randomised(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """The zero-initialised branches filled with random weights, so outputs are not trivially 0."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return model


@pytest.mark.parametrize("full_res", [0, 8])
def test_shuffle_unet_starts_at_zero_so_the_prior_starts_as_the_gaussian_denoiser(full_res):
    config = tiny_config(gaussian_skip=(-0.7, 0.1))
    config["architecture"]["full_res"] = full_res
    net = build_unet(config)
    assert isinstance(net, ShuffleUNet) and net.downsampling_factor == downsampling_factor(config["architecture"]) == 4
    x = torch.randn(2, 1, 32, 32)
    assert torch.equal(net(x, torch.tensor([3, 900])).sample, torch.zeros_like(x))
    prior = DiffusionPrior(net, config)
    eps = prior.eps(x, 100)
    abar = float(prior.alphas_cumprod[100])
    gauss = (1 - abar) ** 0.5 * (x - abar**0.5 * -0.7) / (abar * 0.1 + 1 - abar)
    torch.testing.assert_close(eps, gauss, rtol=1e-5, atol=1e-6)


def test_channels_last_gives_the_same_output_and_gradients_reach_the_input():
    net = randomised(build_unet(tiny_config())).eval()
    x = torch.randn(2, 1, 32, 32, requires_grad=True)
    t = torch.tensor([10, 500])
    ref = net(x, t).sample
    fast = net.to(memory_format=torch.channels_last)(x.contiguous(memory_format=torch.channels_last), t).sample
    torch.testing.assert_close(fast, ref, rtol=1e-4, atol=1e-5)
    ref.square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_shuffle_prior_round_trips_any_image_size_and_float16_weights(tmp_path):
    config = tiny_config(gaussian_skip=(-0.7, 0.1))
    prior = DiffusionPrior(randomised(build_unet(config)), config).eval()
    folder = save_prior(prior, tmp_path / "p32")
    loaded = load_prior(folder)
    x = torch.randn(1, 1, 37, 53)  # padded to multiples of 4 inside eps
    torch.testing.assert_close(loaded.eps(x, 50), prior.eps(x, 50), rtol=1e-4, atol=1e-5)
    half = tmp_path / "p16"
    half.mkdir()
    save_tensors(half / WEIGHTS_NAME, {k: v.half() for k, v in prior.unet.state_dict().items()})
    (half / "prior.json").write_bytes((folder / "prior.json").read_bytes())
    loaded16 = load_prior(half)
    assert all(p.dtype == torch.float32 for p in loaded16.unet.parameters())
    # float16 weights: relative rounding 2^-11, so the prediction moves by much less than it is
    diff = (loaded16.eps(x, 50) - prior.eps(x, 50)).abs().max()
    assert 0 < diff < 1e-2 * prior.eps(x, 50).abs().max()


def test_config_rejects_unknown_network_class_and_bad_widths():
    config = tiny_config()
    config["architecture"]["class"] = "Transformer9000"
    with pytest.raises(ValueError, match="unsupported architecture class"):
        from tomo.priors.config import validate_config

        validate_config(config)
    with pytest.raises(ValueError, match="not a multiple of head_dim"):
        ShuffleUNet(channels=(64, 96), blocks=(1, 1), attention=(False, True))
    with pytest.raises(PriorCheckpointError):
        from tomo.priors.checkpoint import check_state_dict

        small = build_unet(tiny_config())
        other = build_unet(
            make_config(
                architecture=shuffle_architecture(
                    channels=(64, 128)[:2], blocks=(1, 1), attention=(False, True), patch=2
                ),
                patch_size=None,
                image_size=32,
            )
        )
        check_state_dict(small.state_dict(), other.state_dict(), "x")


def test_level_flops_add_up_to_the_counted_total():
    arch = shuffle_architecture(full_res=16)
    net = build_unet(make_config(architecture=arch, patch_size=None, image_size=64))
    rows = level_flops(net, size=64)
    total, levels = rows[0][1], [g for _, g in rows[2:]]
    assert [name for name, _ in rows[1:]] == ["64 px", "16 px", "8 px", "4 px"]
    # the full-resolution refinement: two 3 x 3 convolutions 1 <-> 16 channels and a 1 x 1 one
    assert rows[1][1] == pytest.approx(2 * 64 * 64 * (2 * 16 * 9 + 16) / 1e9, rel=0.01)
    levels = [rows[1][1], *levels]
    # everything but the time-step MLP (a few kFLOPs) is attributed to a level
    assert 0.999 * total < sum(levels) <= total
    # a 3 x 3 convolution 64 -> 64 at 16 x 16 px: 2 x 64 x 64 x 9 x 256 FLOPs, at least 8 of them at 16 px
    assert rows[2][1] > 8 * 2 * 64 * 64 * 9 * 256 / 1e9


@pytest.mark.parametrize("kind", ["linear", "squaredcos_cap_v2"])
def test_schedule_without_diffusers_equals_diffusers(kind):
    from diffusers import DDPMScheduler

    config = tiny_config()
    config["schedule"]["beta_schedule"] = kind
    ref = DDPMScheduler(num_train_timesteps=1000, beta_schedule=kind, beta_start=1e-4, beta_end=0.02)
    assert torch.equal(schedule_alphas_cumprod(config), ref.alphas_cumprod.double())


def _device_data(slices: list[np.ndarray]) -> DeviceData:
    hmax, wmax = max(s.shape[0] for s in slices), max(s.shape[1] for s in slices)
    hu = torch.zeros(len(slices), hmax, wmax, dtype=torch.int16)
    for k, s in enumerate(slices):
        hu[k, : s.shape[0], : s.shape[1]] = torch.from_numpy(s)
    cdf = torch.arange(1, len(slices) + 1, dtype=torch.float32) / len(slices)
    return DeviceData(hu, torch.tensor([s.shape for s in slices]), cdf, {})


@pytest.mark.parametrize("hflip", [False, True])
def test_device_sampler_crops_are_windows_of_the_slice_and_masked_outside(hflip):
    """Patch mode with position channels: every crop is the window of its slice that the
    position channels name (mirrored when flipped), zero and masked outside the slice."""
    rng = np.random.default_rng(0)
    slices = [rng.integers(-1000, 2000, size=shape).astype(np.int16) for shape in ((20, 27), (9, 13))]
    config = make_config(architecture=ARCHITECTURES["shuffle-tiny"](in_channels=3), patch_size=8, image_size=32)
    opts = DeviceTrainOptions(data=[], out="", config=config, hflip=hflip)
    sampler = DeviceSampler(_device_data(slices), config, opts)
    x0, mask, pos = sampler.sample(64, torch.Generator().manual_seed(1))
    assert x0.shape == mask.shape == (64, 1, 8, 8) and pos.shape == (64, 2, 8, 8)
    flipped = 0
    for b in range(64):
        # which slice: position channels encode the slice size through their step 2 / size
        w = round(2 / float(pos[b, 0, 0, 1] - pos[b, 0, 0, 0]))
        h = round(2 / float(pos[b, 1, 1, 0] - pos[b, 1, 0, 0]))
        img = 2 * (slices[[s.shape for s in slices].index((h, w))].astype(np.float64) + 1000) / 3000 - 1
        top = round((float(pos[b, 1, 0, 0]) + 1) * h / 2 - 0.5)
        left = round((float(pos[b, 0, 0, 0]) + 1) * w / 2 - 0.5)
        rows, cols = np.arange(top, top + 8), np.arange(left, left + 8)
        inside = ((rows >= 0) & (rows < h))[:, None] & ((cols >= 0) & (cols < w))[None, :]
        for src, name in ((img, "plain"), (img[:, ::-1], "flipped")):
            want = np.zeros((8, 8))
            want[inside] = src[np.clip(rows, 0, h - 1)][:, np.clip(cols, 0, w - 1)][inside]
            if np.array_equal(mask[b, 0].numpy() > 0, inside) and np.allclose(x0[b, 0].numpy(), want, atol=1e-6):
                flipped += name == "flipped" and not np.allclose(img, img[:, ::-1])
                break
        else:
            raise AssertionError(f"crop {b} is no window of its slice")
    assert (flipped > 0) == hflip


def test_device_sampler_rotation_keeps_values_in_range_and_the_mask_on_the_slice():
    slices = [np.full((30, 30), 40, np.int16)]
    config = make_config(architecture=ARCHITECTURES["shuffle-tiny"](), patch_size=None, image_size=32)
    opts = DeviceTrainOptions(data=[], out="", config=config, rotate_deg=45.0, scale_jitter=0.2)
    x0, mask, pos = DeviceSampler(_device_data(slices), config, opts).sample(16, torch.Generator().manual_seed(0))
    water = 2 * 1040 / 3000 - 1
    assert pos is None and float(mask.sum(dim=(1, 2, 3)).min()) == 900  # the 30 x 30 slice in the 32 px canvas
    inside = x0[mask > 0]
    # water where the rotated slice covers the canvas, air where it rotated in from outside, a blend between
    assert torch.all((inside >= -1) & (inside <= water + 1e-5)) and bool(((inside - water).abs() < 1e-5).any())
    assert torch.all(x0[mask == 0] == 0)
    assert bool(((inside + 1).abs() < 1e-4).any())  # 45 degrees bring air into the corners
