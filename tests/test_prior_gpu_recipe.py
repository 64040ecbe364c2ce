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


def _run_recipe(args: list[str]) -> int:
    recipe = _script("train_prior_gpu")
    threads = torch.get_num_threads()
    try:
        return recipe.main(args)
    finally:
        torch.set_num_threads(threads)


def test_shipped_preset_trains_with_tomo_train_and_exports_its_ema(tmp_path, capsys):
    data = _volumes(tmp_path / "src")
    run, dest = tmp_path / "run", tmp_path / "export"
    limit = 0.05  # MiB; the tiny UNet (~0.2 MiB) needs several shards
    rc = _run_recipe(
        ["--preset", "shipped", "--data", str(data), "--out", str(run), "--export", str(dest), "--device", "cpu"]
        + ["--arch", "tiny", "--image-size", "32", "--batch-size", "2", "--steps", "4", "--warmup-steps", "1"]
        + ["--log-every", "1", "--samples", "0", "--threads", "1", "--shard-mb", str(limit), "--channels-last"]
    )
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
    assert record["command"].startswith("python scripts/train_prior_gpu.py --preset shipped --data ")
    assert json.loads((run / "prior.json").read_text())["data"]["sources"] == {
        "p1": {"collection": "TCIA test-p1", "licence": "CC BY 4.0"},
        "p2": {"collection": "TCIA test-p2", "licence": "CC BY 4.0"},
    }


def test_large_preset_device_loop_continues_and_logs_each_burst(tmp_path, capsys):
    """The device-resident loop on the CPU: a new tiny ShuffleUNet, then a second burst that
    continues its float16 EMA weights; throughput line, held-out test, card rows, shards."""
    data = _volumes(tmp_path / "src")
    common = ["--data", str(data), "--device", "cpu", "--image-size", "32", "--batch-size", "2", "--steps", "3"]
    common += ["--warmup-steps", "1", "--log-every", "1", "--samples", "0", "--threads", "1"]
    common += ["--val", str(data / "b.npz"), "--weights-dtype", "float16", "--shard-mb", "0.2"]
    first, second = tmp_path / "first", tmp_path / "second"
    rc = _run_recipe(
        common
        + ["--arch", "shuffle-tiny", "--out", str(tmp_path / "r1"), "--export", str(first)]
        + ["--card", str(tmp_path / "no_card_yet.md")]
    )
    assert rc == 0
    out = capsys.readouterr().out
    m = re.search(r"throughput: ([\d.]+) training images/s, ([\d.]+) TFLOP/s achieved \(3 x ([\d.]+) GFLOPs", out)
    assert m and float(m.group(1)) > 0 and float(m.group(3)) > 0, out
    assert re.search(r"held-out train/ denoising: x0 RMSE [\d.]+ / [\d.]+ / [\d.]+ HU", out), out
    files = weight_files(first)
    assert len(files) >= 3 and all(f.stat().st_size <= 0.2 * 2**20 for f in files[1:])
    assert all(t.dtype == torch.float16 for f in files[1:] for t in load_tensors(f)[0].values())
    rc = _run_recipe(
        common
        + ["--init-from", str(first), "--out", str(tmp_path / "r2"), "--export", str(second)]
        + ["--card", str(first / "MODEL_CARD.md")]
    )
    assert rc == 0
    prior = load_prior(second)  # float16 on disk, float32 in memory
    assert all(p.dtype == torch.float32 for p in prior.unet.parameters())
    record = json.loads((second / "prior.json").read_text())["training"]
    assert record["steps"] == 6 and record["patches_seen"] == 12 and record["loop"] == "device"
    assert [b["steps"] for b in record["bursts"]] == [3, 3] and len(record["bursts"][-1]["heldout_x0_rmse_hu"]) == 3
    assert record["initialised_from"] == str(first) and record["channels_last"] is True
    card = (second / "MODEL_CARD.md").read_text()
    rows = [line for line in card.splitlines() if re.match(r"\| \d{4}-\d\d-\d\d", line)]
    assert len(rows) == 2 and "3 (total 6)" in rows[1], card
    steps = [int(line.split(",")[0]) for line in (second / "log.csv").read_text().splitlines()[1:]]
    assert steps == [1, 2, 3, 4, 5, 6]  # one log across bursts


def test_gpu_train_sh_starts_then_continues_within_the_return_limits(tmp_path):
    """scripts/gpu_train.sh as the lead runs it on a GPU machine, here on the CPU with a tiny
    network and a tiny budget: a fresh start when the prior folder is empty, then a continuation
    of the weights it exported; at most 8 files of at most 16 MiB come back."""
    import os
    import subprocess
    import sys

    packed = tmp_path / "packed"
    packed.mkdir()
    _volumes(packed / "train")
    (packed / "val").mkdir()
    (packed / "train" / "b.npz").rename(packed / "val" / "b.npz")
    prior, out = tmp_path / "prior-large", tmp_path / "out"
    prior.mkdir()
    env = dict(os.environ, PYTHON=sys.executable, PACKED=str(packed), PRIOR=str(prior), DEVICE="cpu")
    env.update(MINUTES="2", ARCH="shuffle-tiny", BATCH="2", OUT=str(out))
    extra = ["--", "--image-size", "32", "--steps", "2", "--log-every", "1", "--samples", "0", "--threads", "1"]
    for burst in (1, 2):
        proc = subprocess.run(
            ["bash", str(REPO / "scripts" / "gpu_train.sh"), *extra], env=env, capture_output=True, text=True
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert ("continuing" if burst == 2 else "a new shuffle-tiny network") in proc.stdout
        files = [f for f in out.iterdir() if f.is_file()]
        assert len(files) <= 8 and all(f.stat().st_size <= 16 * 2**20 for f in files)
        assert {"prior.json", "log.csv", "MODEL_CARD.md", "train.log", WEIGHTS_INDEX_NAME} <= {f.name for f in files}
        load_prior(out)
        record = json.loads((out / "prior.json").read_text())["training"]
        assert record["steps"] == 2 * burst
        # the lead's step afterwards: the returned files become the prior that the next burst continues
        for f in prior.iterdir():
            f.unlink()
        for f in files:
            (prior / f.name).write_bytes(f.read_bytes())
        for f in files:
            f.unlink()
    card = (prior / "MODEL_CARD.md").read_text()
    rows = [line for line in card.splitlines() if re.match(r"\| \d{4}-\d\d-\d\d", line)]
    assert len(rows) == 2 and "| 2 (total 2) |" in rows[0] and "| 2 (total 4) |" in rows[1], card


def test_training_log_row_goes_into_the_log_table_not_a_later_one(tmp_path):
    recipe = _script("train_prior_gpu")
    card = tmp_path / "card.md"
    card.write_text(
        "# Card\n\n## Training log\nOne row per burst.\n\n"
        + recipe.LOG_HEADER
        + "\n| old row |\n\n## Evaluation\n\n| t | x |\n|---|---|\n| 6 | 1 |\n"
    )
    burst = {"date": "D", "steps": 5, "images": 40, "minutes": 8.0, "images_per_s": 1000.0, "tflops": 43.0}
    record = {"bursts": [dict(burst, hardware="1 x GPU")], "steps": 15, "patches_seen": 120}
    rows = [{"x0_rmse_hu": v} for v in (20.0, 40.0, 70.0)]
    out = recipe.append_training_log(card, tmp_path / "new.md", record, rows)
    lines = out.read_text().splitlines()
    i = lines.index("| old row |")
    assert lines[i + 1].startswith("| D | 5 (total 15) | 40 (total 120) | 8.0 | 1000 | 43.0 | 20.0 / 40.0 / 70.0 |")
    assert lines[-1] == "| 6 | 1 |"  # the evaluation table is untouched
