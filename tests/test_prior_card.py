"""The model card template (scripts/eval_prior.py --card): data by collection and licence, compute,
the recorded command, sharded weights."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from tests.test_prior import tiny_prior
from tomo.priors.checkpoint import CONFIG_NAME, save_config, save_weights

REPO = Path(__file__).resolve().parents[1]


def _eval_prior():
    spec = importlib.util.spec_from_file_location("eval_prior", REPO / "scripts" / "eval_prior.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _results() -> dict:
    row = {"t": 10, "sqrt_1_minus_abar": 0.05, "n_slices": 2}
    for key in ("eps_mse", "zero_mse", "gauss_mse", "x0_rmse_hu", "x0_rmse_hu_zero", "x0_rmse_hu_gauss"):
        row[key], row[key + "_sem"] = 0.5, 0.01
    row["ratio"] = 1.0
    return {
        "eval": {
            "gauss_baseline": {"mean": -0.7, "variance": 0.1},
            "data": ["dev"],
            "n_slices": 2,
            "n_groups": 1,
            "seed": 0,
            "rows": [row],
            "wall_s": 6.0,
            "command": "python scripts/eval_prior.py",
        }
    }


def test_card_lists_data_by_collection_and_licence(tmp_path):
    ep = _eval_prior()
    prior = tiny_prior(patch_size=None)
    folder = tmp_path / "prior-x"
    folder.mkdir()
    save_weights(folder, prior.unet.state_dict(), shard_mb=0.05)
    record = dict(prior.config)
    record["training"] = {
        "steps": 10,
        "batch_size_per_process": 4,
        "processes": 1,
        "patches_seen": 40,
        "wall_time_s": 60.0,
        "hardware": "1 x NVIDIA H200",
        "mixed_precision": "bfloat16",
        "software": {"torch": "x"},
        "optimizer": {"lr": 2e-4, "lr_schedule": "constant"},
        "command": "python scripts/train_prior_gpu.py --data packed --out run",
    }
    record["data"] = {
        "roots": ["packed"],
        "n_volumes": 3,
        "n_slices": 9,
        "n_skipped": 0,
        "groups": {"p1": 4, "p2": 3, "covid-ny-sbu-A1": 2},
        "sources": {
            "p1": {"collection": "TCIA C4KC-KiTS", "licence": "CC BY 3.0"},
            "p2": {"collection": "TCIA C4KC-KiTS", "licence": "CC BY 3.0"},
        },
    }
    save_config(folder / CONFIG_NAME, record)
    readme = tmp_path / "README.md"
    readme.write_text(
        "| folder | what | source and licence |\n|---|---|---|\n"
        "| `train/dicom/covid-ny-sbu-*/` | chest | TCIA COVID-19-NY-SBU (CC BY) |\n"
    )
    ep.DATA_README = readme
    card_path = tmp_path / "card.md"
    ep.write_card(card_path, folder, _results())
    card = card_path.read_text()
    assert "| TCIA C4KC-KiTS, CC BY 3.0 | 2 | 7 |" in card
    assert "| TCIA COVID-19-NY-SBU (CC BY) | 1 | 2 |" in card
    assert "`python scripts/train_prior_gpu.py --data packed --out run`" in card
    assert "safetensors shards" in card and "GFLOPs per forward pass of one 32 px crop" in card
    assert "{" not in card.split("## Limitations")[1]  # every field filled in
