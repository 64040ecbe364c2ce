"""The GPU training recipe (scripts/train_prior_gpu.py) and the data packer, run on the CPU with a
tiny network: shards within the limit, load_prior reads them back, the throughput line."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import torch

from tests.test_prior import phantom_volume
from tomo.priors import load_prior
from tomo.priors.checkpoint import WEIGHTS_INDEX_NAME, WEIGHTS_NAME, load_tensors, weight_files

REPO = Path(__file__).resolve().parents[1]


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _volumes(root: Path) -> Path:
    """Two patients' HU volumes carrying the shared data's metadata keys."""
    root.mkdir()
    for name, pid, seed in (("a.npz", "p1", 0), ("b.npz", "p2", 1)):
        np.savez(
            root / name,
            hu=phantom_volume(2, size=40, seed=seed),
            spacing_mm=np.array([1.0, 1.0, 3.0], np.float32),
            patient_id=np.array(pid),
            collection=np.array(f"TCIA test-{pid}"),
            licence=np.array("CC BY 4.0"),
            origin=np.array("synthetic"),
        )
    return root


def test_pack_keeps_metadata_and_quantises_within_half_a_step(tmp_path):
    pack = _script("pack_training_slices")
    src = _volumes(tmp_path / "src")
    out = tmp_path / "packed"
    assert (
        pack.main([str(src), "--out", str(out), "--compression", "lzma", "--quantize-hu", "4", "--pixel-size", "1.0"])
        == 0
    )
    files = sorted(out.rglob("*.npz"))
    assert [f.parent.name for f in files] == ["p1", "p1", "p2", "p2"]  # grouped by patient
    with np.load(files[0]) as packed, np.load(src / "a.npz") as orig:
        assert str(packed["collection"]) == "TCIA test-p1" and str(packed["licence"]) == "CC BY 4.0"
        hu, ref = packed["hu"][0].astype(float), np.clip(orig["hu"][0].astype(float), -1000, 2000)
        assert np.all((hu + 1000) % 4 == 0) and np.abs(hu - ref).max() <= 2.0
    assert pack.main([str(src), "--out", str(tmp_path / "small"), "--max-mb", "0.001"]) == 1


def test_recipe_trains_shards_and_reports_throughput(tmp_path, capsys):
    data = _volumes(tmp_path / "src")
    run, dest = tmp_path / "run", tmp_path / "export"
    limit = 0.05  # MiB; the tiny UNet (~0.2 MiB) needs several shards
    recipe = _script("train_prior_gpu")
    threads = torch.get_num_threads()
    try:
        rc = recipe.main(
            [
                "--data",
                str(data),
                "--out",
                str(run),
                "--export",
                str(dest),
                "--device",
                "cpu",
                "--arch",
                "tiny",
                "--image-size",
                "32",
                "--batch-size",
                "2",
                "--steps",
                "4",
                "--warmup-steps",
                "1",
                "--log-every",
                "1",
                "--samples",
                "0",
                "--threads",
                "1",
                "--shard-mb",
                str(limit),
                "--channels-last",
            ]
        )
    finally:
        torch.set_num_threads(threads)
    assert rc == 0
    out = capsys.readouterr().out
    m = re.search(r"throughput: ([\d.]+) training images/s, ([\d.]+) TFLOP/s achieved \(3 x ([\d.]+) GFLOPs", out)
    assert m and float(m.group(1)) > 0 and float(m.group(3)) > 0, out
    for folder in (run, dest):
        files = weight_files(folder)
        assert files[0].name == WEIGHTS_INDEX_NAME and len(files) >= 3 and not (folder / WEIGHTS_NAME).exists()
        assert all(f.stat().st_size <= limit * 2**20 for f in files[1:])
    # the shards hold the EMA weights of the training state
    state, _ = load_tensors(run / "train_state.safetensors")
    prior = load_prior(dest)
    for name, p in prior.unet.named_parameters():
        assert torch.equal(p, state[f"ema.{name}"]), name
    record = json.loads((dest / "prior.json").read_text())["training"]
    assert record["steps"] == 4 and record["channels_last"] is True
    assert record["command"].startswith("python scripts/train_prior_gpu.py --data ")
    assert json.loads((run / "prior.json").read_text())["data"]["sources"] == {
        "p1": {"collection": "TCIA test-p1", "licence": "CC BY 4.0"},
        "p2": {"collection": "TCIA test-p2", "licence": "CC BY 4.0"},
    }
