"""Property-based fuzzing of the ``tomo`` command line.

Property: for any command line built from the sub-commands, their options (with wrong, extreme
and malformed values) and a pool of bad input files, ``tomo`` ends with exit code 0, 2 (a refusal)
or 130, never 1 (an internal error) or an escaping exception; a refusal is one line on stderr
and never a traceback. Most examples run in-process under an address-space limit; a few run as
subprocesses under ``RLIMIT_AS`` (those commands do not import torch, so they start quickly).
"""

from __future__ import annotations

import contextlib
import io
import os
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.memory_cap import memory_limit
from tomo.cli.main import main

REPO = Path(__file__).resolve().parents[1]

EXAMPLE_MEMORY = 2 << 30


@pytest.fixture(scope="module")
def pool(tmp_path_factory) -> dict[str, Path]:
    """Input files, good and bad, that the generated command lines point at."""
    d = tmp_path_factory.mktemp("pool")
    files = {"missing": d / "absent.npz", "folder": d}
    (d / "empty.npz").write_bytes(b"")
    (d / "garbage.npz").write_bytes(np.random.default_rng(0).bytes(3000))
    (d / "garbage.dcm").write_bytes(b"DICM" * 100)
    np.savez(
        d / "huge_grid.npz",
        sinogram=np.zeros((8, 12), np.float32),
        angles=np.linspace(0, np.pi, 8, endpoint=False).astype(np.float32),
        geometry=np.str_("parallel"),
        detector_spacing_mm=1.0,
        pixel_spacing_mm=1.0,
        image_shape=np.array([10**6, 10**6]),
    )
    np.savez(
        d / "nan.npz",
        sinogram=np.full((8, 12), np.nan, np.float32),
        angles=np.linspace(0, np.pi, 8, endpoint=False).astype(np.float32),
        geometry=np.str_("parallel"),
        detector_spacing_mm=1.0,
        pixel_spacing_mm=1.0,
        image_shape=np.array([8, 8]),
    )
    np.savez(d / "volume.npz", hu=np.zeros((2, 16, 16), np.int16), spacing_mm=np.array([2.0, 2.0, 3.0]))
    np.savez(d / "bad_volume.npz", hu=np.zeros((2, 16), np.float32), spacing_mm=np.array([0.0, 2.0]))
    assert (
        main(
            [
                "simulate",
                str(d / "volume.npz"),
                "--geometry",
                "parallel",
                "--views",
                "8",
                "--grid",
                "8",
                "--out",
                str(d / "scan.npz"),
                "--quiet",
            ]
        )
        == 0
    )
    for name in (
        "empty.npz",
        "garbage.npz",
        "garbage.dcm",
        "huge_grid.npz",
        "nan.npz",
        "volume.npz",
        "bad_volume.npz",
        "scan.npz",
    ):
        files[name] = d / name
    return files


_VALUES = st.one_of(
    st.integers(-10, 10),
    st.sampled_from(
        ["0", "-1", "1e300", "nan", "inf", "-inf", "", "x", "1:0", "0:0:0", "5,5", "999999999", "hann", "cuda", "all"]
    ),
)
_OPTIONS = {
    "info": ["--no-pixels"],
    "simulate": [
        "--config",
        "--geometry",
        "--views",
        "--i0",
        "--slices",
        "--series",
        "--grid",
        "--phantom-size",
        "--phantom-fov",
        "--seed",
        "--overwrite",
    ],
    "reconstruct": [
        "--method",
        "--batch-size",
        "--device",
        "--threads",
        "--filter",
        "--iterations",
        "--tv-weight",
        "--series",
        "--no-preview",
        "--overwrite",
        "--resume",
        "--dicom-reference",
    ],
}
_FLAGS = {"--no-pixels", "--overwrite", "--no-preview", "--resume"}


@st.composite
def command_lines(draw, pool_names):
    command = draw(st.sampled_from(sorted(_OPTIONS)))
    source = draw(st.sampled_from(pool_names + (["shepp-logan"] if command == "simulate" else [])))
    argv = [command, source]
    for option in draw(st.lists(st.sampled_from(_OPTIONS[command]), max_size=4, unique=True)):
        argv.append(option)
        if option not in _FLAGS:
            value = draw(_VALUES)
            argv.append(str(value) if option != "--dicom-reference" else draw(st.sampled_from(pool_names)))
    if command != "info":
        argv += ["--out", draw(st.sampled_from(["OUT/o.npz", "OUT/o", "OUT/missing/o.npz", "SOURCE"]))]
    return argv + ["--quiet"]


def _resolve(argv: list[str], pool: dict, out_dir: Path) -> list[str]:
    source = argv[1]
    resolved = []
    for word in argv:
        if word in pool:
            word = str(pool[word])
        elif word == "SOURCE":
            word = str(pool.get(source, source))
        elif word.startswith("OUT/"):
            word = str(out_dir / word[4:])
        resolved.append(word)
    return resolved


def _check_outcome(code, err: str) -> None:
    assert code in (0, 2, 130), f"exit {code}: {err}"
    assert "Traceback" not in err and "internal error" not in err, err
    if code == 2:
        lines = [line for line in err.splitlines() if line.strip()]
        # argparse refusals print the usage first; tomo's own refusals are a single line
        assert len(lines) == 1 or lines[0].startswith("usage:"), err


@settings(
    max_examples=40,
    deadline=20000,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=True,
)
@given(data=st.data())
def test_command_lines_in_process(pool, tmp_path, data):
    names = sorted(k for k in pool if k != "folder") + ["folder"]
    argv = data.draw(command_lines(names))
    import tempfile

    out_dir = Path(tempfile.mkdtemp(dir=tmp_path))  # a fresh output folder per example
    before = {p: p.stat().st_mtime_ns for p in pool.values() if p.is_file()}
    err = io.StringIO()
    with memory_limit(EXAMPLE_MEMORY), contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(_resolve(argv, pool, out_dir))
        except SystemExit as exc:  # argparse: usage errors (2) and --help (0)
            code = exc.code
    _check_outcome(code, err.getvalue())
    assert {p: p.stat().st_mtime_ns for p in before} == before, "an input was written"


@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture], derandomize=True)
@given(
    name=st.sampled_from(["empty.npz", "garbage.npz", "garbage.dcm", "huge_grid.npz", "bad_volume.npz", "missing"]),
    no_pixels=st.booleans(),
)
def test_info_in_a_subprocess_under_rlimit(pool, name, no_pixels):
    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
        resource.setrlimit(resource.RLIMIT_CPU, (60, 60))

    env = dict(os.environ, PYTHONPATH=str(REPO))
    argv = [sys.executable, "-m", "tomo", "info", str(pool[name])] + (["--no-pixels"] if no_pixels else [])
    result = subprocess.run(argv, capture_output=True, text=True, preexec_fn=limit, env=env, timeout=120)
    _check_outcome(result.returncode, result.stderr)
    assert result.returncode == 2
