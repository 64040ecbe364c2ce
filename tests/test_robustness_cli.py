"""The ``tomo`` command under bad input, kills and long runs.

- ``tomo --help`` and ``tomo info`` do not import torch (start-up time);
- every sub-command has ``--quiet``; without a terminal no progress bar floods stderr;
- bad input ends with one line and exit code 2 (never a traceback); a sinogram promising a huge
  grid is refused with the memory figure;
- SIGKILL at random moments of ``tomo reconstruct``/``tomo simulate`` leaves no output or a complete
  one, and the inputs untouched;
- ``tomo reconstruct --resume`` continues a stopped run without redoing finished slices.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tomo.cli.main import COMMANDS, build_parser, main
from tomo.io.sinogram import load_sinogram

REPO = Path(__file__).resolve().parents[1]


def _run(*args, timeout=300, **kwargs) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=kwargs.pop("cwd", REPO),
        **kwargs,
    )


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def volume_scan(tmp_path_factory) -> Path:
    """A 6-slice parallel-beam sinogram file on a 24 x 24 grid, with hu_reference."""
    folder = tmp_path_factory.mktemp("scan")
    hu = np.full((6, 48, 48), -1000.0, np.float32)
    for k in range(6):
        hu[k, 8 + k : 40 - k, 10:38] = 40.0 * k
    np.savez(folder / "vol.npz", hu=hu, spacing_mm=np.array([2.0, 2.0, 3.0]))
    out = folder / "scan.npz"
    assert (
        main(
            [
                "simulate",
                str(folder / "vol.npz"),
                "--geometry",
                "parallel",
                "--views",
                "12",
                "--grid",
                "24",
                "--i0",
                "1e5",
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    return out


# ----- start-up ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("argv", [["--help"], ["info", "--no-pixels", "{ct}"], ["info", "{npz}"]])
def test_help_and_info_do_not_import_torch(tmp_path, argv):
    from pydicom.data import get_testdata_file

    np.savez(tmp_path / "v.npz", hu=np.zeros((2, 4, 4), np.int16), spacing_mm=np.ones(3))
    argv = [a.format(ct=get_testdata_file("CT_small.dcm", download=False), npz=tmp_path / "v.npz") for a in argv]
    code = (
        "import sys, runpy; sys.argv = ['tomo', *sys.argv[1:]]\n"
        "try:\n    runpy.run_module('tomo', run_name='__main__')\n"
        "except SystemExit as e:\n    assert not e.code, e.code\n"
        "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH', file=sys.stderr)"
    )
    result = _run("-c", code, *argv)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip().splitlines()[-1] == "NO-TORCH"


def test_every_sub_command_has_quiet():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert set(sub.choices) == set(COMMANDS)
    for name, p in sub.choices.items():
        assert "--quiet" in p._option_string_actions, name


def test_quiet_prints_nothing_but_errors(volume_scan, tmp_path, capsys):
    assert main(["reconstruct", str(volume_scan), "--out", str(tmp_path / "r.npz"), "--quiet"]) == 0
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""
    assert main(["reconstruct", str(volume_scan), "--out", str(tmp_path / "r.npz"), "--quiet"]) == 2
    assert capsys.readouterr().err.count("\n") == 1  # the refusal is still printed


def test_no_progress_flood_without_a_terminal(volume_scan, tmp_path):
    """stderr is a pipe: no carriage-return updates from any bar."""
    result = _run(
        "-m",
        "tomo",
        "reconstruct",
        str(volume_scan),
        "--method",
        "sirt",
        "--iterations",
        "20",
        "--batch-size",
        "2",
        "--out",
        str(tmp_path / "s.npz"),
    )
    assert result.returncode == 0, result.stderr
    assert "\r" not in result.stderr and len(result.stderr.splitlines()) <= 3, result.stderr


# ----- bad input ----------------------------------------------------------------------------------------
def _sinogram_fields(image_shape) -> dict:
    return dict(
        sinogram=np.zeros((30, 40), np.float32),
        angles=np.linspace(0, np.pi, 30, endpoint=False).astype(np.float32),
        geometry=np.str_("parallel"),
        detector_spacing_mm=1.0,
        pixel_spacing_mm=1.0,
        image_shape=np.array(image_shape),
    )


def test_empty_and_huge_inputs_are_one_line_refusals(tmp_path, capsys):
    (tmp_path / "empty.npz").write_bytes(b"")
    np.savez(tmp_path / "huge.npz", **_sinogram_fields([200000, 200000]))
    cases = [
        (["info", str(tmp_path / "empty.npz")], "empty file"),
        (["reconstruct", str(tmp_path / "empty.npz"), "--out", str(tmp_path / "a.npz")], "empty file"),
        (
            ["simulate", str(tmp_path / "empty.npz"), "--config", "parallel-30", "--out", str(tmp_path / "b.npz")],
            "empty file",
        ),
        (["reconstruct", str(tmp_path / "huge.npz"), "--out", str(tmp_path / "c.npz")], "GiB of memory"),
        (
            [
                "simulate",
                "shepp-logan",
                "--phantom-size",
                "100000",
                "--config",
                "parallel-30",
                "--out",
                str(tmp_path / "d.npz"),
            ],
            "GiB of memory",
        ),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1 and "Traceback" not in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.npz", "huge.npz"]


def test_mr_image_is_named_and_refused(tmp_path, capsys):
    import pydicom
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm", download=False))
    ds.Modality, ds.SOPClassUID = "CT", "1.2.840.10008.5.1.4.1.1.2"
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.save_as(tmp_path / "relabelled.dcm")
    assert main(["info", str(tmp_path / "relabelled.dcm")]) == 2
    captured = capsys.readouterr()
    assert "0 CT series" in captured.out and "MR attributes" in captured.out and "HU" not in captured.out
    assert (
        main(
            ["simulate", str(tmp_path / "relabelled.dcm"), "--config", "parallel-30", "--out", str(tmp_path / "s.npz")]
        )
        == 2
    )
    assert "not CT" in capsys.readouterr().err


# ----- kills ----------------------------------------------------------------------------------------------
def _kill_at(argv: list[str], seconds: float, when_exists: Path | None = None) -> None:
    """Run ``tomo argv`` and SIGKILL it after ``seconds`` (counted from when ``when_exists`` appears)."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen(
        [sys.executable, "-m", "tomo", *argv], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=REPO
    )
    while when_exists is not None and proc.poll() is None and not when_exists.exists():
        time.sleep(0.01)
    try:
        proc.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


def _check_complete_or_absent(out: Path, expected_key: str, shape: tuple) -> str:
    if not out.exists():
        return "absent"
    with np.load(out, allow_pickle=False) as d:
        arrays = {k: d[k] for k in d.files}  # reads (and CRC-checks) every member
    assert arrays[expected_key].shape == shape
    return "complete"


@pytest.mark.parametrize("command", ["reconstruct", "simulate"])
def test_sigkill_leaves_no_output_or_a_complete_one(volume_scan, tmp_path, command):
    source = volume_scan.parent / "vol.npz"
    inputs = {p: _digest(p) for p in (volume_scan, source)}
    if command == "reconstruct":
        argv = [
            "reconstruct",
            str(volume_scan),
            "--method",
            "sirt",
            "--iterations",
            "30",
            "--batch-size",
            "1",
            "--no-preview",
        ]
        key, shape = "hu", (6, 24, 24)
    else:
        argv = ["simulate", str(source), "--geometry", "fanbeam", "--views", "40", "--grid", "24"]
        key, shape = "sinogram", (6, 40, 48)
    t0 = time.monotonic()
    full = tmp_path / "full.npz"
    _kill_at(argv + ["--out", str(full)], 600)
    duration = time.monotonic() - t0
    assert _check_complete_or_absent(full, key, shape) == "complete"
    outcomes = []
    rng = np.random.default_rng(13)
    for k in range(2):
        out = tmp_path / f"killed{k}.npz"
        if k == 0 and command == "reconstruct":  # surely mid-run: a random moment after the first chunk
            _kill_at(
                argv + ["--out", str(out)], rng.uniform(0, 0.5), tmp_path / f"{out.name}.partial" / "slices-000000.npz"
            )
        else:
            _kill_at(argv + ["--out", str(out)], rng.uniform(0.2, 0.9) * duration)
        outcomes.append(_check_complete_or_absent(out, key, shape))
    assert {p: _digest(p) for p in inputs} == inputs  # inputs never touched
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    # at most hidden temporaries and (unlocked) lock files of killed runs
    assert all(".tmp-" in name or name.endswith(".lock") for name in leftovers), leftovers
    print(f"{command}: full run {duration:.1f} s, kills -> {outcomes}")


def test_resume_skips_finished_chunks(volume_scan, tmp_path, monkeypatch, capsys):
    import tomo.cli.reconstruct as rec

    out = tmp_path / "r.npz"
    argv = [
        "reconstruct",
        str(volume_scan),
        "--method",
        "cgls",
        "--iterations",
        "8",
        "--batch-size",
        "2",
        "--out",
        str(out),
        "--no-preview",
    ]
    real = rec.PartialRun.save
    calls = []

    def save_then_die(self, start, *a, **k):
        real(self, start, *a, **k)
        calls.append(start)
        if len(calls) == 2:
            raise KeyboardInterrupt  # stands for a kill after two chunks

    monkeypatch.setattr(rec.PartialRun, "save", save_then_die)
    assert main(argv) == 130 and not out.exists()
    partial = tmp_path / "r.npz.partial"
    done = {p.name: p.stat().st_mtime_ns for p in partial.glob("slices-*.npz")}
    assert sorted(done) == ["slices-000000.npz", "slices-000002.npz"]
    monkeypatch.setattr(rec.PartialRun, "save", real)
    capsys.readouterr()
    assert main(argv) == 2 and "--resume" in capsys.readouterr().err  # never silently discarded
    assert main(argv + ["--resume"]) == 0
    assert "resuming: 2 of 3 chunks" in capsys.readouterr().out
    assert not partial.exists()
    resumed = np.load(out)["hu"]
    assert main(argv[:-3] + ["--out", str(tmp_path / "fresh.npz"), "--no-preview"]) == 0
    np.testing.assert_array_equal(resumed, np.load(tmp_path / "fresh.npz")["hu"])
    assert resumed.shape == (6, 24, 24)


def test_resume_refuses_another_input(volume_scan, tmp_path, capsys):
    out = tmp_path / "r.npz"
    partial = tmp_path / "r.npz.partial"
    partial.mkdir()
    (partial / "manifest.json").write_text('{"version": 1, "input_sha256": "other"}')
    assert main(["reconstruct", str(volume_scan), "--out", str(out), "--resume"]) == 2
    assert "another input" in capsys.readouterr().err
    assert main(["reconstruct", str(volume_scan), "--out", str(out), "--overwrite", "--quiet"]) == 0
    assert not partial.exists() and load_sinogram(volume_scan).num_slices == np.load(out)["hu"].shape[0]
