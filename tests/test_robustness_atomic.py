"""tomo.io.atomic and tomo.io.npzfile: all-or-nothing writes, streamed reads and writes, memory budget."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from tomo.io.atomic import atomic_file, atomic_folder, atomic_path, remove_stale_temporaries
from tomo.io.npzfile import NpzArchive, NpzStreamWriter
from tomo.io.resources import MemoryBudgetError, available_memory_bytes, check_memory, parse_bytes


def test_atomic_file_replaces_only_on_success(tmp_path):
    target = tmp_path / "a.txt"
    with atomic_file(target, "w") as fh:
        fh.write("first")
    assert target.read_text() == "first"
    assert oct(target.stat().st_mode & 0o777) != oct(0o600)  # not the private mode of the temporary
    with pytest.raises(FileExistsError):
        with atomic_file(target, "w") as fh:
            fh.write("second")
    with pytest.raises(RuntimeError):
        with atomic_file(target, "w", overwrite=True) as fh:
            fh.write("half")
            raise RuntimeError("killed")
    assert target.read_text() == "first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]  # no temporary left


def test_atomic_path_keeps_the_suffix(tmp_path):
    with atomic_path(tmp_path / "x.npy") as tmp:
        assert tmp.suffix == ".npy" and tmp.parent == tmp_path
        np.save(tmp, np.arange(3))
    assert np.load(tmp_path / "x.npy").tolist() == [0, 1, 2]


def test_atomic_folder_swaps_whole_folders(tmp_path):
    out = tmp_path / "series"
    with atomic_folder(out) as tmp:
        (tmp / "1.dcm").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_folder(out, overwrite=True) as tmp:
            (tmp / "2.dcm").write_text("new")
            raise RuntimeError("killed")
    assert sorted(p.name for p in out.iterdir()) == ["1.dcm"]
    with atomic_folder(out, overwrite=True) as tmp:
        (tmp / "2.dcm").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == ["2.dcm"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["series"]


def test_temporaries_of_dead_processes_are_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".a.npz.tmp-{dead.stdout.strip()}-deadbeef.npz"
    stale.write_bytes(b"half")
    mine = tmp_path / f".a.npz.tmp-{os.getpid()}-cafe.npz"
    mine.write_bytes(b"in progress")
    assert remove_stale_temporaries(tmp_path / "a.npz") == [stale]
    assert mine.exists() and not stale.exists()


def test_npz_archive_streams_what_numpy_wrote(tmp_path):
    path = tmp_path / "v.npz"
    vol = np.arange(5 * 3 * 4, dtype=np.float32).reshape(5, 3, 4)
    np.savez_compressed(path, vol=vol, f=np.asfortranarray(vol[0]), s=np.str_("text"))
    with NpzArchive(path) as arch:
        assert arch.members["vol"].shape == (5, 3, 4) and arch.members["vol"].nbytes == vol.nbytes
        np.testing.assert_array_equal(arch.read("f"), vol[0])
        assert str(arch.read("s")) == "text"
        blocks = list(arch.iter_rows("vol", start=1, stop=5, rows=2))
    assert [k for k, _ in blocks] == [1, 3]
    np.testing.assert_array_equal(np.concatenate([b for _, b in blocks]), vol[1:5])


def test_stream_writer_output_reads_with_numpy(tmp_path):
    vol = np.random.default_rng(0).normal(size=(7, 5, 6)).astype(np.float32)
    with atomic_file(tmp_path / "o.npz") as fh, NpzStreamWriter(fh) as writer:
        with writer.array("hu", vol.shape, np.float32) as put:
            for k in range(0, 7, 3):
                put(vol[k : k + 3])
        writer.write("method", np.str_("tv"))
    with np.load(tmp_path / "o.npz") as d:
        np.testing.assert_array_equal(d["hu"], vol)
        assert str(d["method"]) == "tv"


def test_stream_writer_refuses_a_short_array(tmp_path):
    with pytest.raises(ValueError, match="wrote 2 of 3 rows"):
        with open(tmp_path / "o.npz", "wb") as fh, NpzStreamWriter(fh) as writer:
            with writer.array("hu", (3, 2), np.float32) as put:
                put(np.zeros((2, 2)))


@pytest.mark.parametrize(
    "blob, reason",
    [(b"", "empty file"), (b"PK\x03\x04 not really", "not a readable"), (b"\x93NUMPY\x01\x00", "not a readable")],
)
def test_npz_archive_damage_is_one_error_class(tmp_path, blob, reason):
    (tmp_path / "x.npz").write_bytes(blob)
    with pytest.raises(KeyError, match=reason):
        NpzArchive(tmp_path / "x.npz", error=KeyError)


def _resident_bytes() -> int:
    for line in open("/proc/self/status").read().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def test_memory_budget(monkeypatch):
    assert available_memory_bytes() > 0
    assert parse_bytes("8G") == 8 * 2**30 and parse_bytes("512MiB") == 512 * 2**20
    # the limit counts this process's resident memory (a long pytest run holds well over 1 GiB)
    rss = _resident_bytes()
    monkeypatch.setenv("TOMO_MEMORY_LIMIT", str(rss + 2**30))
    assert available_memory_bytes() < 2**30 + 2**26  # the room left: ~1 GiB, however large the process
    with pytest.raises(MemoryBudgetError, match=r"needs about 2\.0 GiB .* is available; try less"):
        check_memory(2 * 2**30, "this", "try less")
    check_memory(1024, "a little")
