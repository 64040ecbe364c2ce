"""``tomo restore`` end to end on tiny images with a tiny (random) prior checkpoint."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from tomo.cli.main import main
from tomo.priors import build_unet, make_config
from tomo.priors.checkpoint import save_config, save_tensors


@pytest.fixture(scope="module")
def tiny_prior_dir(tmp_path_factory):
    """A randomly initialised 2-level UNet patch prior saved like a real checkpoint."""
    torch.manual_seed(0)
    arch = {
        "class": "UNet2DModel",
        "block_out_channels": [8, 16],
        "layers_per_block": 1,
        "down_block_types": ["DownBlock2D", "DownBlock2D"],
        "up_block_types": ["UpBlock2D", "UpBlock2D"],
        "norm_num_groups": 4,
    }
    config = make_config(architecture=arch, patch_size=16, image_size=32)
    folder = tmp_path_factory.mktemp("prior")
    save_config(folder / "prior.json", config)
    save_tensors(folder / "prior.safetensors", build_unet(config).state_dict())
    return folder


@pytest.fixture(scope="module")
def disk_png(tmp_path_factory):
    """A 40 x 40 grey disk on black, as an 8-bit PNG."""
    yy, xx = np.mgrid[:40, :40]
    img = np.where((yy - 20) ** 2 + (xx - 20) ** 2 < 15**2, 140, 0).astype(np.uint8)
    path = tmp_path_factory.mktemp("img") / "disk.png"
    Image.fromarray(img).save(path)
    return path


@pytest.mark.parametrize(
    "task,method", [("deblur", "dds"), ("superres", "dds"), ("inpaint", "dps"), ("outpaint", "dds")]
)
def test_restore_writes_three_pngs_and_scores(tiny_prior_dir, disk_png, tmp_path, capsys, task, method):
    out = tmp_path / "out"
    code = main(
        [
            "restore",
            str(disk_png),
            "--task",
            task,
            "--method",
            method,
            "--steps",
            "2",
            "--size",
            "32",
            "--prior",
            str(tiny_prior_dir),
            "-o",
            str(out),
        ]
    )  # no --quiet: it silences the scores
    assert code == 0
    text = capsys.readouterr().out
    assert "PSNR" in text and "SSIM" in text
    for kind in ("degraded", "restored", "reference"):
        png = np.asarray(Image.open(out / f"disk_{task}_{kind}.png"))
        expected = (8, 8) if (task == "superres" and kind == "degraded") else (32, 32)
        assert png.shape == expected and png.dtype == np.uint8
    saved = np.load(out / f"disk_{task}.npz")
    assert saved["restored_hu"].shape == (32, 32) and np.isfinite(saved["restored_hu"]).all()
    # the PNG grey level 140 is read in the [-1000, 1000] HU window: 140/255*2000-1000 HU
    assert saved["reference_hu"].max() == pytest.approx(140 / 255 * 2000 - 1000, abs=30)


def test_restore_reads_a_slice_of_an_npz_volume(tiny_prior_dir, tmp_path, capsys):
    hu = np.full((3, 24, 24), -1000.0, dtype=np.float32)
    hu[:, 6:18, 6:18] = 40.0
    vol = tmp_path / "vol.npz"
    np.savez(vol, hu=hu, spacing_mm=np.array([1.5, 1.5, 3.0], dtype=np.float32))
    assert (
        main(
            [
                "restore",
                str(vol),
                "--task",
                "deblur",
                "--slice",
                "2",
                "--size",
                "0",
                "--steps",
                "2",
                "--prior",
                str(tiny_prior_dir),
                "-o",
                str(tmp_path / "o"),
            ]
        )
        == 0
    )
    assert "slice 2 of 3" in capsys.readouterr().out


def test_restore_refuses_to_overwrite_and_bad_input(tiny_prior_dir, disk_png, tmp_path, capsys):
    args = [
        "restore",
        str(disk_png),
        "--task",
        "deblur",
        "--steps",
        "1",
        "--size",
        "16",
        "--prior",
        str(tiny_prior_dir),
        "-o",
        str(tmp_path),
        "--quiet",
    ]
    assert main(args) == 0
    capsys.readouterr()
    assert main(args) == 2
    assert "exists" in capsys.readouterr().err
    assert main(["restore", str(tmp_path / "missing.dcm"), "--task", "deblur"]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(args[:-3] + ["-o", str(tmp_path / "x"), "--noise-hu", "-1"]) == 2
    assert "--noise-hu" in capsys.readouterr().err
    assert main(args[:-3] + ["-o", str(tmp_path / "y"), "--zeta", "1"]) == 2  # zeta is a DPS option
    assert "--zeta does not apply" in capsys.readouterr().err


def test_restore_with_several_samples_writes_a_spread_map(tiny_prior_dir, disk_png, tmp_path):
    out = tmp_path / "s"
    assert (
        main(
            [
                "restore",
                str(disk_png),
                "--task",
                "inpaint",
                "--steps",
                "2",
                "--size",
                "32",
                "--samples",
                "3",
                "--bf16",
                "--prior",
                str(tiny_prior_dir),
                "-o",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    saved = np.load(out / "disk_inpaint.npz")
    assert saved["spread_hu"].shape == (32, 32) and (saved["spread_hu"] >= 0).all()
    assert (out / "disk_inpaint_spread.png").exists()


def test_restore_warm_start_options(tiny_prior_dir, disk_png, tmp_path, capsys):
    base = ["restore", str(disk_png), "--steps", "2", "--size", "32", "--prior", str(tiny_prior_dir)]
    # inpainting starts from the TV fill by default; another task takes --init tv by request
    assert main(base + ["--task", "inpaint", "-o", str(tmp_path / "a")]) == 0
    assert "'init': 'tv', 'start': 0.1" in capsys.readouterr().out
    assert main(base + ["--task", "deblur", "--init", "tv", "--start", "0.3", "-o", str(tmp_path / "b")]) == 0
    assert "'init': 'tv', 'start': 0.3" in capsys.readouterr().out
    assert main(base + ["--task", "inpaint", "--init", "none", "-o", str(tmp_path / "c")]) == 0
    assert "'init': None, 'start': 1.0" in capsys.readouterr().out
    assert main(base + ["--task", "deblur", "--start", "0.3", "-o", str(tmp_path / "d")]) == 2
    assert "--start needs a warm start" in capsys.readouterr().err
    assert main(base + ["--task", "inpaint", "--start", "1.5", "-o", str(tmp_path / "e")]) == 2
    assert "--start must lie in (0, 1)" in capsys.readouterr().err


def test_restore_final_denoising_option(tiny_prior_dir, disk_png, tmp_path, capsys):
    base = ["restore", str(disk_png), "--steps", "2", "--size", "32", "--prior", str(tiny_prior_dir)]
    assert main(base + ["--task", "deblur", "-o", str(tmp_path / "a")]) == 0
    out = capsys.readouterr().out
    assert "'denoise_hu': 30.0" in out and "3 network evaluations" in out  # 2 steps + the denoising
    assert main(base + ["--task", "deblur", "--denoise-hu", "0", "-o", str(tmp_path / "b")]) == 0
    out = capsys.readouterr().out
    assert "'denoise_hu': 0.0" in out and "2 network evaluations" in out
    assert main(base + ["--task", "deblur", "--denoise-hu", "-1", "-o", str(tmp_path / "c")]) == 2
    assert "--denoise-hu must be >= 0" in capsys.readouterr().err
    assert main(base + ["--task", "deblur", "--method", "dps", "--denoise-hu", "5", "-o", str(tmp_path / "d")]) == 2
    assert "does not apply to --method dps" in capsys.readouterr().err


def test_prior_help_lists_only_the_shipped_priors_present(monkeypatch, capsys):
    """``--prior`` help names the shipped priors whose folder exists (``large`` is not shipped)."""
    from tomo.priors import prior as prior_module
    from tomo.priors.prior import available_priors, shipped_prior_path

    present = available_priors()
    assert "default" in present and all(shipped_prior_path(n).is_dir() for n in present)
    with monkeypatch.context() as m:  # the list follows the folders, not the table of names
        m.setitem(prior_module.SHIPPED_PRIORS, "not-shipped", "no-such-folder")
        m.setitem(prior_module.SHIPPED_PRIORS, "same-folder", prior_module.SHIPPED_PRIORS["default"])
        assert "not-shipped" not in available_priors() and "same-folder" in available_priors()
    for command in (["restore", "--help"], ["demo", "--help"], ["reconstruct", "--method", "dds", "--help"]):
        with pytest.raises(SystemExit):
            main(command)
        text = " ".join(capsys.readouterr().out.split())
        assert f"({', '.join(present)}) or a checkpoint folder" in text
        assert "large" not in text.replace("larger", "")


# ----- --measured: the input is already degraded ------------------------------------------------


def _restore(tiny_prior_dir, image, out, *extra):
    return main(["restore", str(image), *extra, "--steps", "2", "--prior", str(tiny_prior_dir), "-o", str(out)])


def test_measured_deblur_restores_the_input_as_it_is(tiny_prior_dir, tmp_path, capsys):
    """The blurred image is the measurement itself: no second blur, no noise, no reference."""
    from operators import GaussianBlur

    hu = np.full((24, 24), -1000.0, np.float32)
    hu[6:18, 6:18] = 40.0
    blurred = GaussianBlur((24, 24), 1.5)(torch.from_numpy(hu)).numpy()
    vol = tmp_path / "blurred.npz"
    np.savez(vol, hu=blurred[None], spacing_mm=np.array([1.5, 1.5, 3.0], np.float32))
    out = tmp_path / "m"
    assert _restore(tiny_prior_dir, vol, out, "--task", "deblur", "--measured", "--sigma-px", "1.5") == 0
    text = capsys.readouterr().out
    assert "measured, restored as it is" in text and "PSNR" not in text and "no reference" in text
    saved = np.load(out / "blurred_deblur.npz")
    np.testing.assert_array_equal(saved["measured"], blurred)  # taken as measured, not blurred again
    assert "reference_hu" not in saved.files and "degraded" not in saved.files
    assert saved["restored_hu"].shape == (24, 24) and np.isfinite(saved["restored_hu"]).all()
    assert not (out / "blurred_deblur_reference.png").exists()
    figure = np.asarray(Image.open(out / "blurred_deblur_figure.png"))
    assert figure.shape[1] > 1.5 * figure.shape[0]  # two panels side by side


def test_measured_superres_restores_on_factor_times_the_grid(tiny_prior_dir, tmp_path):
    low = tmp_path / "low.png"
    Image.fromarray(np.pad(np.full((4, 4), 140, np.uint8), 2)).save(low)  # 8 x 8 low-resolution image
    out = tmp_path / "s"
    assert _restore(tiny_prior_dir, low, out, "--task", "superres", "--measured", "--factor", "4", "--quiet") == 0
    saved = np.load(out / "low_superres.npz")
    assert saved["measured"].shape == (8, 8) and saved["restored_hu"].shape == (32, 32)
    assert np.asarray(Image.open(out / "low_superres_restored.png")).shape == (32, 32)


def test_measured_inpaint_takes_the_missing_pixels_from_a_mask_file(tiny_prior_dir, disk_png, tmp_path):
    missing = np.zeros((40, 40), np.uint8)
    missing[14:26, 10:30] = 255
    mask = tmp_path / "hole.png"
    Image.fromarray(missing).save(mask)
    out = tmp_path / "i"
    args = ["--task", "inpaint", "--measured", "--mask", str(mask), "--quiet"]
    assert _restore(tiny_prior_dir, disk_png, out, *args) == 0
    saved = np.load(out / "disk_inpaint.npz")
    assert (saved["measured"][14:26, 10:30] == -1000.0).all()  # the missing pixels, shown as air
    assert saved["measured"][20, 8] == pytest.approx(140 / 255 * 2000 - 1000, abs=10)  # observed: kept
    assert saved["restored_hu"].shape == (40, 40)


def test_measured_mode_refuses_what_does_not_apply(tiny_prior_dir, disk_png, tmp_path, capsys):
    assert _restore(tiny_prior_dir, disk_png, tmp_path / "a", "--task", "deblur", "--measured", "--noise-hu", "5") == 2
    assert "--noise-hu" in capsys.readouterr().err
    assert _restore(tiny_prior_dir, disk_png, tmp_path / "b", "--task", "inpaint", "--mask", str(disk_png)) == 2
    assert "--mask" in capsys.readouterr().err
    empty = tmp_path / "empty.npy"
    np.save(empty, np.zeros((40, 40)))
    args = ["--task", "inpaint", "--measured", "--mask", str(empty)]
    assert _restore(tiny_prior_dir, disk_png, tmp_path / "c", *args) == 2
    assert "marks no pixel as missing" in capsys.readouterr().err


def test_simulated_mode_writes_a_figure_with_the_reference(tiny_prior_dir, disk_png, tmp_path, capsys):
    out = tmp_path / "f"
    assert _restore(tiny_prior_dir, disk_png, out, "--task", "deblur", "--size", "32") == 0
    assert "PSNR" in capsys.readouterr().out
    figure = np.asarray(Image.open(out / "disk_deblur_figure.png"))
    assert figure.shape[1] > 2.5 * figure.shape[0]  # degraded, restored and reference side by side
