"""The diffusion prior: interface, patch assembly, checkpoints and bad input, data pipeline."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from tomo.priors import DiffusionPrior, PriorCheckpointError, build_unet, default_prior_path, load_prior, make_config
from tomo.priors.checkpoint import CONFIG_NAME, WEIGHTS_NAME, save_config, save_tensors
from tomo.priors.config import tiny_architecture
from tomo.priors.patches import position_grid
from tomo.priors.training_data import SliceSampler, collect_slices, resample


def tiny_prior(patch_size=16, seed=0) -> DiffusionPrior:
    torch.manual_seed(seed)
    config = make_config(architecture=tiny_architecture(), patch_size=patch_size, image_size=32)
    return DiffusionPrior(build_unet(config), config).eval()


def save_prior(prior: DiffusionPrior, folder: Path) -> Path:
    save_tensors(folder / WEIGHTS_NAME, prior.unet.state_dict())
    save_config(folder / CONFIG_NAME, prior.config)
    return folder


def phantom_volume(n=3, size=40, seed=0) -> np.ndarray:
    """int16 HU [n, size, size]: air, a water ellipse, two 'lungs' and a 'bone' disc."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / size - 0.5
    body = (xx / 0.45) ** 2 + (yy / 0.35) ** 2 < 1
    lungs = ((np.abs(xx) - 0.18) / 0.12) ** 2 + (yy / 0.2) ** 2 < 1
    bone = xx**2 + (yy - 0.25) ** 2 < 0.05**2
    img = np.where(body, 40.0, -1000.0)
    img[lungs & body] = -800
    img[bone] = 1200
    vol = img[None] + rng.normal(0, 10, (n, size, size))
    return vol.astype(np.int16)


# ----------------------------------------------------------------------------- interface


def test_schedule_and_hu_map_follow_the_config():
    prior = tiny_prior()
    from diffusers import DDPMScheduler

    ref = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02)
    assert prior.alphas_cumprod.dtype == torch.float64 and prior.alphas_cumprod.shape == (1000,)
    assert prior.num_train_timesteps == 1000
    assert torch.equal(prior.alphas_cumprod, ref.alphas_cumprod.double())
    assert prior.hu_window == (-1000.0, 2000.0) and prior.pixel_size_mm == 1.5
    hu = torch.tensor([-1000.0, 500.0, 2000.0, -3000.0, 3000.0])
    x = prior.hu_to_model(hu)
    assert torch.allclose(x, torch.tensor([-1.0, 0.0, 1.0, -7 / 3, 5 / 3]))  # no clipping
    assert torch.allclose(prior.model_to_hu(x), hu)


@pytest.mark.parametrize("shape", [(2, 1, 37, 53), (1, 1, 16, 16), (1, 1, 5, 70)])
def test_eps_any_size_and_differentiable(shape):
    prior = tiny_prior()
    x = torch.randn(shape, requires_grad=True)
    eps = prior.eps(x, 500, generator=torch.Generator().manual_seed(0))
    assert eps.shape == shape and torch.isfinite(eps).all()
    eps.square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    # the network's parameters are frozen: gradients reach the input only
    assert all(p.grad is None for p in prior.parameters())


def test_eps_seeded_shift_is_reproducible_and_t_forms_agree():
    prior = tiny_prior()
    x = torch.randn(2, 1, 30, 30)
    a = prior.eps(x, 100, generator=torch.Generator().manual_seed(3))
    b = prior.eps(x, 100, generator=torch.Generator().manual_seed(3))
    c = prior.eps(x, torch.tensor([100, 100]), generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and torch.equal(a, c)
    # a different partition gives a (slightly) different assembled prediction
    d = prior.eps(x, 100, shift=(7, 2))
    e = prior.eps(x, 100, shift=(0, 0))
    assert not torch.equal(d, e)


def test_patch_assembly_equals_per_patch_network_calls():
    """Each output pixel is the network output on the patch that holds it, with its positions."""
    prior = tiny_prior(patch_size=16)
    x = torch.randn(1, 1, 20, 24)
    shift = (5, 3)
    out = prior.eps(x, 250, shift=shift)
    padded = torch.zeros(1, 1, 32, 32)  # ceil((20+5)/16)*16, ceil((24+3)/16)*16
    padded[:, :, 5:25, 3:27] = x
    for top in (0, 16):
        for left in (0, 16):
            patch = padded[:, :, top : top + 16, left : left + 16]
            pos = position_grid(top - 5, left - 3, 16, 20, 24)
            ref = prior.unet(torch.cat([patch, pos], 1), torch.tensor([250])).sample
            ys, ye = max(top, 5), min(top + 16, 25)
            xs, xe = max(left, 3), min(left + 16, 27)
            got = out[:, :, ys - 5 : ye - 5, xs - 3 : xe - 3]
            torch.testing.assert_close(got, ref[:, :, ys - top : ye - top, xs - left : xe - left])


def test_position_grid_convention():
    pos = position_grid(0, 0, 4, 4, 8)
    assert torch.allclose(pos[0, 0, 0], torch.tensor([-7, -5, -3, -1]) / 8)  # x along columns, W = 8
    assert torch.allclose(pos[0, 1, :, 0], torch.tensor([-3, -1, 1, 3]) / 4)  # y along rows, H = 4
    assert torch.allclose(position_grid(-2, 6, 4, 4, 8)[0, 0, 0], torch.tensor([5, 7, 9, 11]) / 8)


def test_x0_hat_is_tweedie():
    prior = tiny_prior()
    x = torch.randn(2, 1, 16, 16)
    t = torch.tensor([10, 900])
    eps = prior.eps(x, t, shift=(0, 0))
    abar = prior.alphas_cumprod[t].float().reshape(-1, 1, 1, 1)
    expected = (x - (1 - abar).sqrt() * eps) / abar.sqrt()
    torch.testing.assert_close(prior.x0_hat(x, t, shift=(0, 0)), expected)
    torch.testing.assert_close(prior.x0_hat(x, t, eps=eps), expected)


def test_whole_image_mode_any_size():
    torch.manual_seed(0)
    config = make_config(architecture=tiny_architecture(), patch_size=None, image_size=16)
    prior = DiffusionPrior(build_unet(config), config).eval()
    assert config["position_channels"] is False and config["architecture"]["in_channels"] == 1
    x = torch.randn(1, 1, 15, 21, requires_grad=True)
    eps = prior.eps(x, 3)
    assert eps.shape == x.shape
    eps.sum().backward()
    assert x.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "x, t, err, match",
    [
        (torch.randn(1, 16, 16), 5, ValueError, r"\[B, 1, H, W\]"),
        (torch.randn(1, 2, 16, 16), 5, ValueError, r"\[B, 1, H, W\]"),
        (torch.zeros(1, 1, 16, 16, dtype=torch.long), 5, TypeError, "floating"),
        (torch.full((1, 1, 16, 16), float("nan")), 5, ValueError, "NaN"),
        (torch.randn(1, 1, 16, 16), 1000, ValueError, r"\[0, 999\]"),
        (torch.randn(1, 1, 16, 16), -1, ValueError, r"\[0, 999\]"),
        (torch.randn(2, 1, 16, 16), torch.tensor([1, 2, 3]), ValueError, "3 entries"),
        (torch.randn(1, 1, 16, 16), 5.0, TypeError, "int"),
        (torch.randn(1, 1, 16, 16), torch.tensor([0.5]), TypeError, "integer"),
    ],
)
def test_eps_rejects_bad_input(x, t, err, match):
    with pytest.raises(err, match=match):
        tiny_prior().eps(x, t)


# ----------------------------------------------------------------------------- checkpoints


def test_save_load_round_trip(tmp_path):
    prior = tiny_prior(seed=1)
    save_prior(prior, tmp_path)
    loaded = load_prior(tmp_path)
    x = torch.randn(1, 1, 24, 24)
    # the loaded weights are channels-last (faster CPU convolutions): equal up to float32 rounding
    torch.testing.assert_close(loaded.eps(x, 40, shift=(1, 2)), prior.eps(x, 40, shift=(1, 2)), rtol=0, atol=1e-5)
    assert loaded.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert not any(p.requires_grad for p in loaded.parameters())
    assert load_prior(tmp_path / WEIGHTS_NAME).config == prior.config  # either file works too
    save_prior(loaded, tmp_path / "again")  # a loaded prior saves again, to the same weights
    again = load_prior(tmp_path / "again")
    assert all(torch.equal(a, b) for a, b in zip(again.unet.state_dict().values(), loaded.unet.state_dict().values()))


def test_env_var_overrides_default_path(tmp_path, monkeypatch):
    save_prior(tiny_prior(), tmp_path)
    monkeypatch.setenv("TOMO_PRIOR", str(tmp_path))
    assert default_prior_path() == tmp_path
    assert load_prior().config["patch_size"] == 16


def test_missing_checkpoint(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="prior"):
        load_prior(tmp_path / "nowhere")
    monkeypatch.setenv("TOMO_PRIOR", str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="TOMO_PRIOR"):
        load_prior()
    with pytest.raises(FileNotFoundError, match="config"):
        load_prior(tmp_path)  # empty folder


def test_corrupt_weights(tmp_path):
    save_prior(tiny_prior(), tmp_path)
    data = (tmp_path / WEIGHTS_NAME).read_bytes()
    (tmp_path / WEIGHTS_NAME).write_bytes(data[: len(data) // 2])  # truncated download
    with pytest.raises(PriorCheckpointError, match="corrupt or truncated"):
        load_prior(tmp_path)
    (tmp_path / WEIGHTS_NAME).write_bytes(b"\x00" * 64)
    with pytest.raises(PriorCheckpointError, match="not a readable safetensors"):
        load_prior(tmp_path)


def test_corrupt_or_foreign_config(tmp_path):
    save_prior(tiny_prior(), tmp_path)
    (tmp_path / CONFIG_NAME).write_text('{"format": "tomo-diffusion-prior", ')
    with pytest.raises(PriorCheckpointError, match="not valid JSON"):
        load_prior(tmp_path)
    (tmp_path / CONFIG_NAME).write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(PriorCheckpointError, match="not a tomo prior config"):
        load_prior(tmp_path)
    config = dict(tiny_prior().config, format_version=99)
    (tmp_path / CONFIG_NAME).write_text(json.dumps(config))
    with pytest.raises(PriorCheckpointError, match="format_version 99"):
        load_prior(tmp_path)


def test_weights_from_an_incompatible_config(tmp_path):
    save_prior(tiny_prior(), tmp_path)
    config = make_config(patch_size=64)  # the 'small' architecture
    save_config(tmp_path / CONFIG_NAME, config)
    with pytest.raises(PriorCheckpointError, match="different config"):
        load_prior(tmp_path)


def test_weights_with_nan_are_refused(tmp_path):
    prior = tiny_prior()
    sd = prior.unet.state_dict()
    key = next(iter(sd))
    sd[key] = torch.full_like(sd[key], float("nan"))
    save_tensors(tmp_path / WEIGHTS_NAME, sd)
    save_config(tmp_path / CONFIG_NAME, prior.config)
    with pytest.raises(PriorCheckpointError, match="NaN"):
        load_prior(tmp_path)


# ----------------------------------------------------------------------------- data


def test_collect_slices_counts_and_skips_bad_files(tmp_path):
    root = tmp_path / "data"
    (root / "p1").mkdir(parents=True)
    (root / "p2").mkdir()
    np.savez(root / "p1" / "vol.npz", hu=phantom_volume(3), spacing_mm=np.array([0.75, 0.75, 2.0], np.float32))
    np.savez(root / "p2" / "vol.npz", hu=phantom_volume(2, seed=1), spacing_mm=np.array([1.5, 1.5, 3.0], np.float32))
    (root / "p2" / "broken.npz").write_bytes(b"PK\x03\x04 not really a zip")
    np.savez(root / "p2" / "wrong_keys.npz", image=np.zeros((2, 8, 8)))
    (root / "p2" / "notes.txt").write_text("not an image")
    (root / "p1" / "fake.dcm").write_bytes(b"\x00" * 200)
    with pytest.warns(UserWarning, match="skipped 4 files"):
        records, report = collect_slices([root], (-1000, 2000))
    assert report.n_slices == len(records) == 5 and report.n_volumes == 2
    assert report.groups == {"p1": 3, "p2": 2}
    assert len(report.skipped) == 4
    assert {r.spacing_mm for r in records} == {(0.75, 0.75), (1.5, 1.5)}
    assert all(r.hu.dtype == np.int16 and r.hu.min() >= -1000 and r.hu.max() <= 2000 for r in records)


def test_empty_or_unreadable_folder_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="no readable CT slices.*empty"):
        collect_slices([tmp_path], (-1000, 2000))
    (tmp_path / "junk.dcm").write_bytes(b"garbage")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match="1 files skipped"):
            collect_slices([tmp_path], (-1000, 2000))
    with pytest.raises(FileNotFoundError):
        collect_slices([tmp_path / "missing"], (-1000, 2000))


def test_resample_to_target_pixel_size():
    img = np.zeros((100, 60), np.float32)
    img[40:60, 20:40] = 1000.0
    out = resample(img, (0.75, 1.5), 1.5)  # rows at 0.75 mm, columns already at 1.5 mm
    assert out.shape == (50, 60)
    assert abs(out.sum() * 1.5 * 1.5 - img.sum() * 0.75 * 1.5) / (img.sum() * 0.75 * 1.5) < 0.02  # HU*area kept


def test_sampler_crops_masks_and_positions():
    hu = phantom_volume(1, size=40)[0]
    from tomo.priors.training_data import SliceRecord

    rec = SliceRecord(np.clip(hu, -1000, 2000).astype(np.int16), (1.5, 1.5), "g", "s")
    config = make_config(architecture=tiny_architecture(), patch_size=16)
    sampler = SliceSampler([rec], config, hflip=False)
    x0, mask, pos = sampler.sample(64, torch.Generator().manual_seed(0))
    assert x0.shape == mask.shape == (64, 1, 16, 16) and pos.shape == (64, 2, 16, 16)
    assert torch.all(x0[mask == 0] == 0) and x0.min() >= -1 and x0.max() <= 1
    assert (mask == 0).any() and (mask == 1).any()  # some patches hang over the border
    # a fully inside pixel's value and position identify where it came from
    img = torch.from_numpy(sampler.image(0))
    b = int(torch.nonzero(mask.flatten(1).all(1))[0])
    col = int(round(((float(pos[b, 0, 0, 0]) + 1) * 40 / 2) - 0.5))
    row = int(round(((float(pos[b, 1, 0, 0]) + 1) * 40 / 2) - 0.5))
    torch.testing.assert_close(x0[b, 0], img[row : row + 16, col : col + 16])


# ----------------------------------------------------------------------------- the shipped prior


def _shipped_config() -> dict:
    path = Path(__file__).resolve().parents[1] / "data" / "prior" / CONFIG_NAME
    if not path.is_file():
        pytest.skip("no shipped prior in data/prior")
    return json.loads(path.read_text())


def test_shipped_prior_loads_by_default(monkeypatch):
    monkeypatch.delenv("TOMO_PRIOR", raising=False)
    config = _shipped_config()
    prior = load_prior()
    assert prior.config == config
    assert (default_prior_path() / WEIGHTS_NAME).stat().st_size <= 30 * 2**20
    assert 1.0 <= prior.pixel_size_mm <= 2.0


def test_shipped_prior_denoises_real_ct_better_than_zero(shared_data, monkeypatch):
    """On a training slice the shipped prior's eps MSE is well below 1 (the zero predictor)."""
    monkeypatch.delenv("TOMO_PRIOR", raising=False)
    config = _shipped_config()
    if config.get("training", {}).get("placeholder"):
        pytest.skip("data/prior holds the untrained placeholder")
    from tomo.io.dicom_read import read_series

    folder = shared_data / "train" / "dicom" / "lung-pet-ct-dx-a0002"
    vol = read_series(folder)
    prior = load_prior()
    img = resample(np.clip(vol.hu[15], -1000, 2000), vol.pixel_spacing_mm, prior.pixel_size_mm)
    x0 = prior.hu_to_model(torch.from_numpy(img))[None, None].float()
    g = torch.Generator().manual_seed(0)
    for t in (50, 300):
        noise = torch.randn(x0.shape, generator=g)
        abar = prior.alphas_cumprod[t].float()
        x_t = abar.sqrt() * x0 + (1 - abar).sqrt() * noise
        with torch.no_grad():
            mse = float((prior.eps(x_t, t, generator=g) - noise).square().mean())
        assert mse < 0.5, f"t={t}: eps MSE {mse:.3f} (zero predictor: 1.0)"


# ----------------------------------------------------------------------------- Gaussian skip


def test_gaussian_skip_is_the_gaussian_mmse_and_c_out_its_residual_std():
    """With a zero network output, eps equals the MMSE estimate for N(mu, s2) pixels, whose
    error variance is c_out^2 (checked by Monte Carlo on 200k pixels)."""
    from tomo.priors.prior import skip_coefficients

    torch.manual_seed(0)
    mu, s2 = -0.7, 0.1
    config = make_config(architecture=tiny_architecture(), patch_size=16, gaussian_skip=(mu, s2))
    prior = DiffusionPrior(build_unet(config), config).eval()
    with torch.no_grad():  # network output F = 0
        prior.unet.conv_out.weight.zero_()
        prior.unet.conv_out.bias.zero_()
    c_skip, c_out, _mean = skip_coefficients(config, prior.alphas_cumprod)
    g = torch.Generator().manual_seed(1)
    x0 = mu + s2**0.5 * torch.randn(1, 1, 400, 500, generator=g, dtype=torch.float64)
    noise = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    for t in (5, 300, 900):
        abar = prior.alphas_cumprod[t]
        x_t = abar.sqrt() * x0 + (1 - abar).sqrt() * noise
        eps = prior.eps(x_t, t, shift=(0, 0))
        torch.testing.assert_close(eps, c_skip[t] * (x_t - abar.sqrt() * mu))
        mse = float((eps - noise).square().mean())
        assert abs(mse - float(c_out[t]) ** 2) < 0.02 * float(c_out[t]) ** 2 + 1e-6, (t, mse, float(c_out[t]) ** 2)
        # and no other linear estimate a * (x_t - sqrt(abar) mu) does better
        for scale in (0.9, 1.1):
            assert float((scale * eps - noise).square().mean()) > mse


def test_no_gaussian_skip_means_plain_epsilon():
    from tomo.priors.prior import skip_coefficients

    prior = tiny_prior()
    assert prior.config["gaussian_skip"] is None
    c_skip, c_out, mean = skip_coefficients(prior.config, prior.alphas_cumprod)
    assert torch.all(c_skip == 0) and torch.all(c_out == 1) and mean == 0.0
    x = torch.randn(1, 1, 16, 16)
    ref = prior.unet(torch.cat([x, position_grid(0, 0, 16, 16, 16)], 1), torch.tensor([7])).sample
    torch.testing.assert_close(prior.eps(x, 7, shift=(0, 0)), ref)


def test_training_data_reads_nifti_volumes(tmp_path):
    """tomo train's data collection takes .nii.gz volumes (HU, spacing through the affine) like .npz."""
    pytest.importorskip("nibabel")
    from tomo.io.nifti import write_nifti_volume
    from tomo.priors.training_data import collect_slices

    hu = phantom_volume(3, size=40)
    write_nifti_volume(tmp_path / "vol.nii.gz", hu.astype(np.float32), (1.25, 1.25), 2.0)
    np.savez(tmp_path / "other.npz", hu=hu[:2], spacing_mm=np.array([1.0, 1.0, 2.0], np.float32))
    records, report = collect_slices([tmp_path], (-1000, 2000), warn=False)
    assert report.n_slices == 5 and report.n_volumes == 2 and not report.skipped
    nifti = [r for r in records if "vol.nii.gz" in r.source]
    assert len(nifti) == 3 and nifti[0].spacing_mm == (1.25, 1.25)
    assert (
        np.abs(np.sort(nifti[0].hu.ravel()) - np.sort(np.clip(hu, -1000, 2000).astype(np.int16)[0].ravel())).max() <= 1
    )
