"""``tomo train``: exact resume after a kill, two-process DDP (gloo), bad input, outputs."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from tomo.cli.main import main
from tomo.priors import load_prior
from tomo.priors.checkpoint import load_tensors
from tomo.priors.training import TrainOptions, train

TINY = [
    "--arch",
    "tiny",
    "--patch-size",
    "16",
    "--batch-size",
    "4",
    "--warmup-steps",
    "3",
    "--log-every",
    "5",
    "--samples",
    "0",
    "--no-progress",
    "--threads",
    "1",
]


def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    env.pop("TOMO_PRIOR", None)
    return env


@pytest.fixture()
def npz_data(tmp_path) -> Path:
    """Two tiny synthetic HU volumes (body ellipse, lungs, bone) at different pixel sizes."""
    from tests.test_prior import phantom_volume

    root = tmp_path / "data"
    root.mkdir()
    np.savez(root / "a.npz", hu=phantom_volume(3, size=48), spacing_mm=np.array([1.0, 1.0, 2.0], np.float32))
    np.savez(root / "b.npz", hu=phantom_volume(2, size=40, seed=1), spacing_mm=np.array([2.0, 2.0, 2.0], np.float32))
    return root


def _state_step(path: Path) -> int:
    try:
        return int(json.loads(load_tensors(path)[1]["state"])["step"])
    except Exception:  # noqa: BLE001 - not written yet, or being replaced: any failure means step 0
        return 0


def _losses(folder: Path) -> list[tuple[str, str]]:
    with open(folder / "log.csv", newline="") as f:
        return [(r["step"], r["loss"]) for r in csv.DictReader(f)]


@pytest.mark.slow
def test_resume_after_kill_matches_uninterrupted_run(npz_data, tmp_path):
    """SIGKILL a run mid-way, --resume it: weights, optimiser and losses equal an uninterrupted run."""
    steps = 100
    args = [
        sys.executable,
        "-m",
        "tomo.cli.main",
        "train",
        str(npz_data),
        *TINY,
        "--steps",
        str(steps),
        "--checkpoint-every",
        "5",
    ]
    ref_dir, killed_dir = tmp_path / "ref", tmp_path / "killed"
    victim = subprocess.Popen(
        args + ["--out", str(killed_dir)], env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 120
    while _state_step(killed_dir / "train_state.safetensors") < 10:
        assert victim.poll() is None, "the run ended before it could be killed"
        assert time.time() < deadline, "no checkpoint within 120 s"
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    killed_at = _state_step(killed_dir / "train_state.safetensors")
    assert 10 <= killed_at < steps
    resumed = subprocess.Popen(
        args + ["--out", str(killed_dir), "--resume"],
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    # meanwhile, the uninterrupted reference run in this process (same options, one thread)
    threads = torch.get_num_threads()
    try:
        train(
            TrainOptions(
                [str(npz_data)],
                str(ref_dir),
                steps=steps,
                checkpoint_every=5,
                arch="tiny",
                patch_size=16,
                batch_size=4,
                warmup_steps=3,
                log_every=5,
                samples=0,
                progress=False,
                threads=1,
            )
        )
    finally:
        torch.set_num_threads(threads)
    err = resumed.communicate(timeout=300)[1]
    assert resumed.returncode == 0, err[-2000:]
    assert f"resumed {killed_dir} at step {killed_at}" in err

    for name in ("prior.safetensors", "train_state.safetensors"):
        a, _ = load_tensors(ref_dir / name)
        b, _ = load_tensors(killed_dir / name)
        assert a.keys() == b.keys()
        different = [k for k in a if not torch.equal(a[k], b[k])]
        assert not different, f"{name}: {len(different)} tensors differ, e.g. {different[:3]}"
    assert _losses(ref_dir) == _losses(killed_dir)  # same loss at every logged step
    assert len(_losses(ref_dir)) == steps // 5
    for d in (ref_dir, killed_dir):
        assert json.loads((d / "prior.json").read_text())["training"]["steps"] == steps


@pytest.mark.slow
def test_two_process_ddp_gloo(npz_data, tmp_path):
    """torchrun with two CPU processes (gloo): trains, replicas agree, the record says 2 processes."""
    out = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "tomo.cli.main",
        "train",
        str(npz_data),
        *TINY,
        "--steps",
        "12",
        "--checkpoint-every",
        "6",
        "--out",
        str(out),
    ]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((out / "prior.json").read_text())
    assert record["training"]["processes"] == 2
    assert record["training"]["patches_seen"] == 12 * 4 * 2
    rows = _losses(out)
    assert [int(s) for s, _ in rows] == [5, 10, 12]
    assert all(np.isfinite(float(v)) for _, v in rows)
    load_prior(out)  # the exported EMA weights load


def test_training_outputs_and_record(npz_data, tmp_path):
    out = tmp_path / "run"
    summary = train(
        TrainOptions(
            [str(npz_data)],
            str(out),
            steps=8,
            batch_size=4,
            arch="tiny",
            patch_size=16,
            checkpoint_every=4,
            log_every=2,
            warmup_steps=2,
            samples=2,
            sample_steps=3,
            sample_size=32,
            progress=False,
            threads=1,
        )
    )
    assert summary["steps"] == 8
    for name in ("prior.json", "prior.safetensors", "train_state.safetensors", "log.csv", "loss.png", "samples.png"):
        assert (out / name).is_file(), name
    record = json.loads((out / "prior.json").read_text())
    assert record["data"]["n_slices"] == 5 and record["data"]["groups"] == {"a": 3, "b": 2}
    assert record["training"]["steps"] == 8 and record["training"]["wall_time_s"] > 0
    assert record["hu_window"] == [-1000.0, 2000.0] and record["pixel_size_mm"] == 1.5
    skip = record["gaussian_skip"]  # training-pixel statistics in model range
    assert -1 < skip["mean"] < 0 and 0 < skip["variance"] < 1
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*.tmp"))  # atomic writes left nothing


def test_time_budget_stops_with_a_checkpoint(npz_data, tmp_path):
    out = tmp_path / "budget"
    summary = train(
        TrainOptions(
            [str(npz_data)],
            str(out),
            steps=10_000,
            batch_size=2,
            arch="tiny",
            patch_size=16,
            checkpoint_every=1000,
            warmup_steps=2,
            samples=0,
            max_minutes=0.02,
            lr_schedule="constant",
            progress=False,
            threads=1,
        )
    )
    assert summary["stopped_by_time_limit"] and 0 < summary["steps"] < 10_000
    assert json.loads((out / "prior.json").read_text())["training"]["steps"] == summary["steps"]


# ----------------------------------------------------------------------------- bad input


def _run_cli(args, capsys) -> tuple[int, str]:
    rc = main(["train", *args])
    return rc, capsys.readouterr().err


def test_empty_folder(tmp_path, capsys):
    rc, err = _run_cli([str(tmp_path), "--out", str(tmp_path / "o"), *TINY], capsys)
    assert rc == 2 and "no readable CT slices" in err and "empty" in err


def test_bad_files_are_skipped_and_counted(npz_data, tmp_path, capsys):
    (npz_data / "corrupt.dcm").write_bytes(b"DICM" * 10)
    (npz_data / "half.npz").write_bytes(b"PK\x03\x04")
    with pytest.warns(UserWarning, match="skipped 2 files"):
        rc, err = _run_cli([str(npz_data), "--out", str(tmp_path / "o"), *TINY, "--steps", "2"], capsys)
    assert rc == 0
    assert "5 slices from 2 series/volumes" in err and "skipped 2" in err
    assert json.loads((tmp_path / "o" / "prior.json").read_text())["data"]["n_skipped"] == 2


def test_checkpoint_misuse_is_a_clear_error(npz_data, tmp_path, capsys):
    out = tmp_path / "o"
    rc, err = _run_cli([str(npz_data), "--out", str(out), *TINY, "--resume", "--steps", "2"], capsys)
    assert rc == 2 and "--resume: no train_state.safetensors" in err
    assert _run_cli([str(npz_data), "--out", str(out), *TINY, "--steps", "2"], capsys)[0] == 0
    rc, err = _run_cli([str(npz_data), "--out", str(out), *TINY, "--steps", "4"], capsys)
    assert rc == 2 and "already holds a checkpoint" in err  # never overwritten
    rc, err = _run_cli(
        [str(npz_data), "--out", str(out), *TINY[2:], "--patch-size", "32", "--resume", "--steps", "4"], capsys
    )
    assert rc == 2 and "incompatible config" in err and "patch_size=32" in err
    rc, err = _run_cli(
        [str(npz_data), "--out", str(out), *TINY, "--no-gaussian-skip", "--resume", "--steps", "4"], capsys
    )
    assert rc == 2 and "incompatible config" in err and "gaussian_skip=False" in err
    rc, err = _run_cli(
        [str(npz_data), "--out", str(out), *TINY[:2], "--arch", "small", *TINY[4:], "--resume", "--steps", "4"], capsys
    )
    assert rc == 2 and "incompatible config" in err
    state = out / "train_state.safetensors"
    state.write_bytes(state.read_bytes()[:1000])  # corrupt the training state
    rc, err = _run_cli([str(npz_data), "--out", str(out), *TINY, "--resume", "--steps", "4"], capsys)
    assert rc == 2 and "corrupt or truncated" in err


def test_whole_image_mode_trains_and_loads(npz_data, tmp_path):
    out = tmp_path / "whole"
    train(
        TrainOptions(
            [str(npz_data)],
            str(out),
            steps=3,
            batch_size=2,
            arch="tiny",
            patch_size=0,
            image_size=32,
            checkpoint_every=3,
            log_every=1,
            warmup_steps=1,
            samples=1,
            sample_steps=2,
            progress=False,
            threads=1,
        )
    )
    prior = load_prior(out)
    assert prior.patch_size is None and prior.config["image_size"] == 32
    assert prior.eps(torch.zeros(1, 1, 30, 20), 10).shape == (1, 1, 30, 20)
    assert (out / "samples.png").is_file()


def test_init_from_fine_tunes_a_prior_and_groups_by_patient(npz_data, tmp_path):
    """--init-from starts from a prior's weights and config; patient_id groups several files."""
    base = tmp_path / "base"
    assert main(["train", str(npz_data), "--out", str(base), "--steps", "3", *TINY]) == 0
    # a second file of patient "p1" and a file of patient "p2"
    data = tmp_path / "more"
    data.mkdir()
    from tests.test_prior import phantom_volume

    for name, pid in (("x.npz", "p1"), ("y.npz", "p1"), ("z.npz", "p2")):
        np.savez(
            data / name,
            hu=phantom_volume(2, size=40),
            spacing_mm=np.array([1.0, 1.0, 2.0], np.float32),
            patient_id=np.array(pid),
        )
    out = tmp_path / "tuned"
    summary = train(
        TrainOptions(
            data=[str(data)],
            out=str(out),
            steps=2,
            batch_size=2,
            warmup_steps=1,
            log_every=1,
            samples=0,
            progress=False,
            threads=1,
            init_from=str(base),
        )
    )
    assert summary["data"]["groups"] == {"p1": 4, "p2": 2}
    base_cfg, tuned_cfg = (json.loads((f / "prior.json").read_text()) for f in (base, out))
    assert tuned_cfg["architecture"] == base_cfg["architecture"]
    assert tuned_cfg["gaussian_skip"] == base_cfg["gaussian_skip"]  # kept, not re-estimated
    assert tuned_cfg["training"]["initialised_from"] == str(base)
    # two small steps from the base weights stay close to them (a fresh init would not)
    w0, w1 = load_tensors(base / "prior.safetensors")[0], load_tensors(out / "prior.safetensors")[0]
    diff = sum(float((w1[k] - w0[k]).square().sum()) for k in w0) ** 0.5
    norm = sum(float(w0[k].square().sum()) for k in w0) ** 0.5
    assert diff < 0.05 * norm, (diff, norm)


def test_checkpoint_minutes_bounds_lost_work(npz_data, tmp_path):
    """With --checkpoint-minutes ~0 a checkpoint is written at every step, whatever --checkpoint-every says."""
    out = tmp_path / "run"
    train(
        TrainOptions(
            data=[str(npz_data)],
            out=str(out),
            steps=3,
            batch_size=2,
            warmup_steps=1,
            arch="tiny",
            patch_size=16,
            log_every=1,
            samples=0,
            progress=False,
            threads=1,
            checkpoint_every=1000,
            checkpoint_minutes=1e-9,
        )
    )
    assert _state_step(out / "train_state.safetensors") == 3
