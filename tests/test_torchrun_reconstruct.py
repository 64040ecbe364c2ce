"""``torchrun ... -m tomo reconstruct``: two CPU processes (gloo) write what one process writes, bit for bit.

Each case starts ``python -m torch.distributed.run --standalone --nproc_per_node 2`` in a
subprocess (about 20 s on 2 busy cores, most of it two interpreters importing torch).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.volume_scan import write_volume_scan
from tomo.cli.main import main

pytest.importorskip("torch.distributed.run")


@pytest.fixture(scope="module")
def volume_scan(tmp_path_factory):
    """A 5-slice parallel-beam scan (grid 24) with hu_reference: 3 chunks of 2 slices."""
    return write_volume_scan(tmp_path_factory.mktemp("vol"), hu_step=30, extra_args=("--i0", "1e5"))


def _torchrun(module: str, argv: list[str], cwd) -> subprocess.CompletedProcess:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    }
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        module,
        *argv,
    ]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=240)


def _single_process(argv: list[str], monkeypatch) -> None:
    for key in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    assert main(argv) == 0


def test_two_processes_write_the_same_npz(volume_scan, tmp_path, monkeypatch):
    common = ["reconstruct", str(volume_scan), "--method", "sirt", "--iterations", "20", "--batch-size", "2"]
    _single_process([*common, "--out", str(tmp_path / "one.npz"), "--quiet"], monkeypatch)
    t0 = time.monotonic()
    run = _torchrun("tomo.cli.main", [*common, "--out", str(tmp_path / "two.npz")], tmp_path)
    seconds = time.monotonic() - t0
    assert run.returncode == 0, run.stderr[-2000:]
    t1 = time.monotonic()
    one, two = np.load(tmp_path / "one.npz"), np.load(tmp_path / "two.npz")
    assert sorted(one.files) == sorted(two.files)
    for key in one.files:  # the archives' zip timestamps differ; every array is the same bytes
        assert one[key].dtype == two[key].dtype and one[key].tobytes() == two[key].tobytes(), key
    print(f"torchrun 2 processes: {seconds:.1f} s; bit-identity check {time.monotonic() - t1:.3f} s")
    # rank 0 alone speaks: one summary line, and both ranks did chunks (3 chunks: 2 + 1)
    assert run.stdout.count("wrote ") == 1 and run.stdout.count("PSNR") == 1
    assert "chunks per process: rank 0 2 in" in run.stdout and "rank 1 1 in" in run.stdout
    assert not (tmp_path / "two.npz.partial").exists() and (tmp_path / "two.png").is_file()


def test_two_processes_write_the_same_nifti_file(volume_scan, tmp_path, monkeypatch):
    """NIfTI output is compared as whole files, byte for byte (.nii: a .nii.gz's gzip header holds the
    temporary file's name)."""
    pytest.importorskip("nibabel")
    common = [
        "reconstruct",
        str(volume_scan),
        "--method",
        "fbp",
        "--batch-size",
        "1",
        "--slice-spacing",
        "2.5",
        "--no-preview",
    ]
    _single_process([*common, "--out", str(tmp_path / "one.nii"), "--quiet"], monkeypatch)
    run = _torchrun("tomo", [*common, "--out", str(tmp_path / "two.nii")], tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    assert (tmp_path / "one.nii").read_bytes() == (tmp_path / "two.nii").read_bytes()
    assert "rank 0 3 in" in run.stdout and "rank 1 2 in" in run.stdout


def test_a_refused_request_stops_every_rank(volume_scan, tmp_path):
    (tmp_path / "taken.npz").write_bytes(b"")
    run = _torchrun("tomo", ["reconstruct", str(volume_scan), "--out", str(tmp_path / "taken.npz")], tmp_path)
    assert run.returncode != 0
    errors = [line for line in run.stderr.splitlines() if line.startswith("tomo reconstruct: error")]
    assert len(errors) == 1 and "exists" in errors[0]  # said once, by rank 0
    assert (tmp_path / "taken.npz").read_bytes() == b""
