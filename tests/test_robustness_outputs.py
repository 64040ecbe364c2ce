"""Outputs never touch inputs, and one output has one writer (issue 25; :mod:`tomo.io.outputs`).

- two runs writing one output: the second is refused while the first holds it, and the final
  file is one run's, whole (tried many times during the first run's work);
- every file a run writes (outputs, previews, std maps, NIfTI/DICOM companions, ``OUT.partial``) is
  checked against every input before any work, however the input is spelled;
- an input inside ``OUT.partial`` is refused and kept; cleaning ``OUT.partial`` removes only
  what a run wrote there;
- non-UTF-8 file names print safely (``--quiet`` too, and on a strict UTF-8 stdout);
- Ctrl-C while torch imports: one line ``error: interrupted`` and exit code 130;
- a kill between ``OUT.npz`` and its preview resumes with ``--resume``; a too long name or an
  existing folder as ``--out`` is refused before the work; a full disk names the file; a run
  refused for a bad option or a missing ``--prior`` leaves no ``OUT.partial``;
- ``simulate``, ``restore``, ``demo`` and ``train`` take the same locks.
"""

from __future__ import annotations

import errno
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tomo.cli.main import main
from tomo.io.outputs import OutputBusyError, OutputPlan

REPO = Path(__file__).resolve().parents[1]
BUSY = "being written by another tomo run"


def _env(**extra) -> dict:
    return dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), **extra)


@pytest.fixture(scope="module")
def scan(tmp_path_factory) -> Path:
    """A 6-slice parallel-beam sinogram file (12 views) on a 24 x 24 grid, with hu_reference."""
    folder = tmp_path_factory.mktemp("scan")
    hu = np.full((6, 48, 48), -1000.0, np.float32)
    for k in range(6):
        hu[k, 8 + k : 40 - k, 10:38] = 40.0 * k
    np.savez(folder / "vol.npz", hu=hu, spacing_mm=np.array([2.0, 2.0, 3.0]))
    out = folder / "scan.npz"
    argv = ["simulate", str(folder / "vol.npz"), "--geometry", "parallel", "--views", "12", "--grid", "24"]
    assert main([*argv, "--i0", "1e5", "--out", str(out), "--quiet"]) == 0
    return out


def _recon(scan: Path, out: Path, *extra: str) -> list[str]:
    return ["reconstruct", str(scan), "--out", str(out), "--no-preview", "--threads", "1", *extra]


def _one_line_error(capsys, needle: str) -> str:
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1, err
    return err


# ----- 1. one output, one writer ----------------------------------------------------------------------
def test_a_second_writer_of_one_output_is_refused_and_the_file_is_one_runs(scan, tmp_path, capsys):
    """Run A (TV, 60 iterations, one slice per chunk) in a process; while it works, run B (30
    iterations, --overwrite) again and again on the same output. Before the lock B deleted and
    recreated A's OUT.partial on its first try, and the output mixed both runs' slices."""
    out = tmp_path / "o.npz"
    first = _recon(scan, out, "--method", "tv", "--iterations", "60", "--batch-size", "1", "--overwrite")
    second = _recon(scan, out, "--method", "tv", "--iterations", "30", "--batch-size", "1", "--overwrite")
    proc = subprocess.Popen(
        [sys.executable, "-m", "tomo", *first, "--quiet"], env=_env(), cwd=REPO, stderr=subprocess.PIPE, text=True
    )
    manifest = tmp_path / "o.npz.partial" / "manifest.json"
    while proc.poll() is None and not manifest.exists():
        time.sleep(0.01)
    refused, won = 0, 0
    while proc.poll() is None:  # B tries at every moment of A's run: chunks, assembly, clean-up
        code = main([*second, "--quiet"])
        err = capsys.readouterr().err
        if code == 2:
            assert BUSY in err and len(err.strip().splitlines()) == 1, err
            refused += 1
        else:
            assert code == 0, err  # B started after A let go: a whole run of its own
            won += 1
        time.sleep(0.02)
    assert proc.wait() == 0, proc.stderr.read() if proc.stderr else ""
    assert refused >= 1  # A was still working when B first tried
    print(f"B refused {refused} times, ran {won} times after A let go")
    # the file left is exactly one run's: its options, and the image that run makes on its own
    references = {}
    for iterations in ("60", "30"):
        ref = tmp_path / f"ref{iterations}.npz"
        argv = _recon(scan, ref, "--method", "tv", "--iterations", iterations, "--batch-size", "1", "--quiet")
        assert main(argv) == 0
        references[iterations] = np.load(ref)["hu"]
    assert not np.array_equal(references["60"], references["30"])
    with np.load(out) as d:
        iterations = str(__import__("json").loads(str(d["options"]))["iterations"])
        np.testing.assert_array_equal(d["hu"], references[iterations])
    assert not (tmp_path / "o.npz.partial").exists()
    assert not list(tmp_path.glob(".*.lock"))  # released locks leave no file


def _contend(folder: str, rounds: int, start, results, locked: bool) -> None:
    """One of several processes holding one output ``rounds`` times (retrying when refused)."""
    import contextlib

    owner = Path(folder) / "owner"
    overlaps = ok = busy = 0
    start.wait()
    deadline = time.monotonic() + 60
    while ok < rounds and time.monotonic() < deadline:
        plan = OutputPlan([], overwrite=True)
        plan.file(Path(folder) / "x.npz")
        try:
            claim = plan.claim() if locked else contextlib.nullcontext()
        except OutputBusyError:
            busy += 1
            continue
        with claim:
            token = f"{os.getpid()}-{ok}"
            owner.write_text(token)
            time.sleep(0.002)
            overlaps += owner.read_text() != token
            ok += 1
    results.put((overlaps, ok, busy))


def _contenders(folder: Path, locked: bool, processes: int = 4, rounds: int = 15) -> tuple[int, int, int]:
    ctx = multiprocessing.get_context("fork")
    start, results = ctx.Barrier(processes), ctx.Queue()
    procs = [ctx.Process(target=_contend, args=(str(folder), rounds, start, results, locked)) for _ in range(processes)]
    for p in procs:
        p.start()
    counts = [results.get(timeout=90) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    return tuple(int(sum(c[k] for c in counts)) for k in range(3))  # type: ignore[return-value]


def test_output_lock_admits_one_holder_under_contention(tmp_path):
    """4 processes each hold one output 15 times: never two holders at once, over 60 handovers
    (the lock file is removed and recreated between holders: the race the inode check closes).
    Without the lock the same contest shows overlaps, so the check can fail."""
    overlaps, ok, busy = _contenders(tmp_path, locked=True)
    assert overlaps == 0 and ok == 60 and busy >= 1, (overlaps, ok, busy)
    unlocked = tmp_path / "unlocked"
    unlocked.mkdir()
    assert _contenders(unlocked, locked=False)[0] > 0
    assert not list(tmp_path.glob(".*.lock"))


def test_a_killed_holder_does_not_block_the_next_run(scan, tmp_path):
    out = tmp_path / "k.npz"
    code = (
        "import os, sys; from tomo.io.outputs import OutputPlan; p = OutputPlan([]); "
        f"p.file({str(out)!r}); p.claim(); print('held', flush=True); os.kill(os.getpid(), 9)"
    )
    held = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True)
    assert held.stdout.strip() == "held" and held.returncode == -9
    assert (tmp_path / ".k.npz.lock").exists()  # left behind, but no longer locked
    assert main([*_recon(scan, out), "--quiet"]) == 0 and out.is_file()


# ----- 2. every output checked against every input --------------------------------------------------------
def _alias(scan: Path, folder: Path, name: str, how: str) -> Path:
    """``folder/name``, a copy of ``scan`` reached as ``how``: a file, a hard link or a symlink."""
    path = folder / name
    if how == "copy":
        path.write_bytes(scan.read_bytes())
    elif how == "hardlink":
        copy = folder / "original.npz"
        copy.write_bytes(scan.read_bytes())
        os.link(copy, path)
    else:
        copy = folder / "original.npz"
        copy.write_bytes(scan.read_bytes())
        path.symlink_to(copy)
    return path


@pytest.mark.parametrize("how", ["copy", "hardlink", "symlink"])
def test_the_preview_may_not_overwrite_the_input(scan, tmp_path, capsys, how):
    """``tomo reconstruct scan.png --out scan.npz --overwrite`` wrote its preview over its input."""
    source = _alias(scan, tmp_path, "scan.png", how)
    before = source.read_bytes()
    sub = tmp_path / "sub"
    sub.mkdir()
    for out in (tmp_path / "scan.npz", sub / ".." / "scan.npz"):  # however --out is spelled
        assert main(["reconstruct", str(source), "--method", "fbp", "--out", str(out), "--overwrite"]) == 2
        _one_line_error(capsys, "is the input")
    assert source.read_bytes() == before and not (tmp_path / "scan.npz").exists()
    assert not (tmp_path / "scan.npz.partial").exists()


def test_companions_are_checked_against_inputs(scan, tmp_path):
    """The std map, std preview and NIfTI/DICOM companions of a sampling run are planned too."""
    import argparse

    from tomo.cli.recon_outputs import output_plan, plan_outputs
    from tomo.io.outputs import OutputConflictError

    def refused(out: str, input_name: str, reference: Path | None = None) -> bool:
        source = tmp_path / input_name
        if not source.exists():
            source.write_bytes(scan.read_bytes())
        args = argparse.Namespace(out=tmp_path / out, file=source, dicom_reference=reference, slice_spacing=None)
        args.no_preview = False
        outputs = plan_outputs(args)
        try:
            output_plan(outputs, True, [source, reference], overwrite=True).check()
        except OutputConflictError:
            return True
        return False

    pytest.importorskip("nibabel")
    assert refused("r.npz", "r_std.png")  # std preview
    assert refused("r.nii.gz", "r_std.nii.gz")  # std volume beside a NIfTI
    assert refused("r.nii.gz", "r.png")  # NIfTI preview
    assert not refused("r.npz", "other.npz")
    series = tmp_path / "series"
    series.mkdir()
    (series / "in.dcm").write_bytes(b"")
    assert refused("series", "x.npz", reference=series)  # DICOM output folder = the reference folder
    (tmp_path / "out_std").mkdir()
    assert refused("out", "out_std/in.npz", reference=series)  # the std series' folder holds the input


# ----- 3. an input inside the partial folder ------------------------------------------------------------
def test_an_input_inside_the_partial_folder_is_refused_and_kept(scan, tmp_path, capsys):
    partial = tmp_path / "x.npz.partial"
    partial.mkdir()
    source = partial / "in.npz"
    source.write_bytes(scan.read_bytes())
    assert main(["reconstruct", str(source), "--method", "fbp", "--out", str(tmp_path / "x.npz"), "--overwrite"]) == 2
    _one_line_error(capsys, "lies inside")
    assert source.read_bytes() == scan.read_bytes()


def test_cleaning_the_partial_folder_removes_only_what_a_run_wrote(tmp_path):
    from tomo.cli.recon_partial import remove_partial

    folder = tmp_path / "o.npz.partial"
    folder.mkdir()
    own = ["manifest.json", "slices-000000.npz", "finishing", ".slices-000002.npz.tmp-123-0123abcd.npz"]
    for name in [*own, "notes.txt", "slices-1.npz"]:
        (folder / name).write_text("x")
    remove_partial(folder)
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt", "slices-1.npz"]
    for name in ("notes.txt", "slices-1.npz"):
        (folder / name).unlink()
    remove_partial(folder)
    assert not folder.exists()


def test_overwrite_refuses_a_partial_folder_holding_foreign_files(scan, tmp_path, capsys):
    folder = tmp_path / "o.npz.partial"
    folder.mkdir()
    (folder / "manifest.json").write_text("{}")
    (folder / "mine.txt").write_text("keep me")
    assert main([*_recon(scan, tmp_path / "o.npz"), "--overwrite"]) == 2
    _one_line_error(capsys, "did not write")
    assert (folder / "mine.txt").read_text() == "keep me"


# ----- 4. names that are not UTF-8 ------------------------------------------------------------------------
def test_non_utf8_names_with_quiet(scan, tmp_path, capsys):
    source = tmp_path / os.fsdecode(b"sc\xffan.npz")
    source.write_bytes(scan.read_bytes())
    out = tmp_path / os.fsdecode(b"r\xfe.npz")
    assert main(["reconstruct", str(source), "--out", str(out), "--quiet"]) == 0
    assert capsys.readouterr().err == ""
    assert out.is_file() and out.with_suffix(".png").is_file()


def test_non_utf8_names_on_a_strict_utf8_stdout(scan, tmp_path):
    folder = os.fsencode(tmp_path)
    source = os.path.join(folder, b"sc\xffan.npz")
    with open(source, "wb") as fh:
        fh.write(scan.read_bytes())
    out = os.path.join(folder, b"r\xfe.npz")
    for quiet in ([], ["--quiet"]):
        argv = [sys.executable, "-m", "tomo", "reconstruct", source, "--out", out, "--overwrite", *quiet]
        run = subprocess.run(argv, env=_env(PYTHONIOENCODING="utf-8:strict"), cwd=REPO, capture_output=True)
        assert run.returncode == 0, run.stderr
        assert run.stderr == b"" and os.path.isfile(out)
        if not quiet:
            assert b"r\\xfe.npz" in run.stdout  # escaped, not an encoding error
    bad = os.path.join(folder, b"missing\xff.npz")
    run = subprocess.run(
        [sys.executable, "-m", "tomo", "reconstruct", bad, "--out", out],
        env=_env(PYTHONIOENCODING="utf-8:strict"),
        cwd=REPO,
        capture_output=True,
    )
    assert run.returncode == 2 and b"missing\\xff.npz" in run.stderr and len(run.stderr.splitlines()) == 1


# ----- 5. Ctrl-C while torch imports --------------------------------------------------------------------
#: a finder that sends SIGINT to its own process when ``{module}`` starts importing (a Ctrl-C at
#: that moment, every time), then runs ``python -m tomo`` as a user would
_INTERRUPT_AT = """
import importlib.abc, os, runpy, signal, sys
class Interrupt(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == {module!r}:
            sys.meta_path.remove(self)
            os.kill(os.getpid(), signal.SIGINT)
        return None
sys.meta_path.insert(0, Interrupt())
sys.argv = ["tomo", *{argv!r}]
runpy.run_module("tomo", run_name="__main__")
"""


def _default_sigint() -> None:
    """A background job of a non-interactive shell (how CI may start pytest) inherits SIGINT
    ignored, and so would the child: give it the disposition of a terminal's foreground job."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize("module", ["torch", "torch.nn", "tomo.methods.registry"])
def test_ctrl_c_while_torch_imports_is_one_line(scan, tmp_path, module):
    argv = ["reconstruct", str(scan), "--out", str(tmp_path / "c.npz")]
    code = _INTERRUPT_AT.format(module=module, argv=argv)
    run = subprocess.run(
        [sys.executable, "-c", code], env=_env(), cwd=REPO, capture_output=True, text=True, preexec_fn=_default_sigint
    )
    assert run.returncode == 130, run.stderr[-3000:]
    assert run.stderr.strip() == "tomo reconstruct: error: interrupted"
    assert not list(tmp_path.iterdir())


# ----- 6. the smaller items ----------------------------------------------------------------------------------
def test_a_kill_between_the_image_and_its_preview_resumes(scan, tmp_path, monkeypatch, capsys):
    import tomo.cli.reconstruct as rec

    out = tmp_path / "p.npz"
    argv = ["reconstruct", str(scan), "--method", "fbp", "--batch-size", "2", "--out", str(out)]

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # stands for a kill once OUT.npz has landed

    monkeypatch.setattr(rec, "write_previews", killed)
    assert main(argv) == 130 and out.is_file() and not out.with_suffix(".png").exists()
    first = out.read_bytes()
    monkeypatch.undo()
    capsys.readouterr()
    assert main(argv) == 2 and "--resume" in capsys.readouterr().err  # never silently replaced
    assert main([*argv, "--resume"]) == 0  # was: refused because OUT.npz exists
    assert out.with_suffix(".png").is_file() and not (tmp_path / "p.npz.partial").exists()
    np.testing.assert_array_equal(np.load(out)["hu"], np.load(__import__("io").BytesIO(first))["hu"])


def test_names_and_folders_refused_before_the_work(scan, tmp_path, capsys, monkeypatch):
    import tomo.cli.reconstruct as rec

    def no_work(*args, **kwargs):
        raise AssertionError("the reconstruction started")

    monkeypatch.setattr(rec, "_reconstruct_chunks", no_work)
    long_name = tmp_path / ("n" * 240 + ".npz")
    assert main([*_recon(scan, long_name), "--overwrite"]) == 2
    _one_line_error(capsys, "too long")
    folder = tmp_path / "existing.npz"
    folder.mkdir()
    assert main([*_recon(scan, folder), "--overwrite"]) == 2
    _one_line_error(capsys, "is an existing folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["existing.npz"]


def test_a_full_disk_names_the_file(scan, tmp_path, capsys, monkeypatch):
    import tomo.cli.recon_partial as partial_module

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(partial_module.np, "savez", full)
    out = tmp_path / "d.npz"
    assert main([*_recon(scan, out, "--batch-size", "2")]) == 2
    err = _one_line_error(capsys, "No space left on device")
    assert "d.npz.partial" in err and "slices-000000.npz" in err
    monkeypatch.undo()
    assert main([*_recon(scan, out, "--batch-size", "2"), "--quiet"]) == 0  # nothing was left to resume


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--method", "tv", "--iterations", "-3"], "iterations"),
        (["--method", "dds", "--prior", "no-such-prior-folder"], "prior"),
    ],
)
def test_a_refused_run_leaves_no_partial_folder(scan, tmp_path, capsys, extra, needle):
    out = tmp_path / "b.npz"
    assert main([*_recon(scan, out), *extra]) == 2
    _one_line_error(capsys, needle)
    assert not list(tmp_path.iterdir())  # no OUT.partial, no lock file
    assert main([*_recon(scan, out), "--quiet"]) == 0  # the next run needs neither --resume nor --overwrite


# ----- every command through the same layer --------------------------------------------------------------
def _held(*paths: Path, workdir: Path | None = None):
    plan = OutputPlan([], overwrite=True)
    for p in paths:
        plan.file(p)
    if workdir is not None:
        plan.workdir(workdir)
    return plan.claim()


def test_simulate_restore_demo_and_train_take_the_same_locks(scan, tmp_path, capsys):
    vol = scan.parent / "vol.npz"
    cases = [
        (
            ["simulate", str(vol), "--config", "parallel-30", "--out", str(tmp_path / "s.npz")],
            dict(paths=[tmp_path / "s.npz"]),
        ),
        (
            ["restore", str(vol), "--task", "deblur", "--output-dir", str(tmp_path / "r")],
            dict(paths=[tmp_path / "r" / "vol_deblur.npz"]),
        ),
        (["demo", "--out", str(tmp_path / "demo")], dict(workdir=tmp_path / "demo")),
        (["train", str(vol), "--out", str(tmp_path / "t")], dict(workdir=tmp_path / "t")),
    ]
    (tmp_path / "r").mkdir()
    for argv, held in cases:
        with _held(*held.get("paths", []), workdir=held.get("workdir")):
            capsys.readouterr()
            assert main([*argv, "--quiet"]) == 2, argv
            _one_line_error(capsys, BUSY)


def test_simulate_and_train_refuse_an_output_that_is_an_input(scan, tmp_path, capsys):
    vol = scan.parent / "vol.npz"
    link = tmp_path / "linked.npz"
    os.link(vol, link)
    assert main(["simulate", str(vol), "--config", "parallel-30", "--out", str(link), "--overwrite"]) == 2
    _one_line_error(capsys, "is the input")
    data = tmp_path / "data"
    data.mkdir()
    assert main(["train", str(data), "--out", str(data)]) == 2
    _one_line_error(capsys, "is the input")
