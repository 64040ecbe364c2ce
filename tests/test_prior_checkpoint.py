"""Prior checkpoints: shipped priors by name (source tree and wheel layout), sharded weights."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from tests.test_prior import tiny_prior
from tomo.priors import PriorCheckpointError, load_prior, shipped_prior_path
from tomo.priors import prior as prior_module
from tomo.priors.checkpoint import (
    CONFIG_NAME,
    WEIGHTS_INDEX_NAME,
    WEIGHTS_NAME,
    has_weights,
    load_weights,
    save_config,
    save_weights,
    weight_files,
)
from tomo.priors.export import export_prior


def _save(prior, folder, shard_mb=None):
    folder.mkdir(parents=True, exist_ok=True)
    save_weights(folder, prior.unet.state_dict(), shard_mb)
    save_config(folder / CONFIG_NAME, prior.config)
    return folder


def _same_output(a, b) -> None:
    """Bit-identical weights; the same output up to float32 rounding (a loaded prior's weights are
    channels-last, whose convolutions sum in another order)."""
    wa, wb = a.unet.state_dict(), b.unet.state_dict()
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    x = torch.randn(1, 1, 24, 24, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(a.eps(x, 40, shift=(1, 2)), b.eps(x, 40, shift=(1, 2)), rtol=0, atol=1e-5)


# ----------------------------------------------------------------------------- names


def test_default_name_is_the_shipped_prior(monkeypatch):
    monkeypatch.delenv("TOMO_PRIOR", raising=False)
    by_name, by_default = load_prior("default"), load_prior()
    assert by_name.config == by_default.config
    assert shipped_prior_path("default") == prior_module.REPO_DATA / "prior"


def test_default_name_ignores_the_environment(tmp_path, monkeypatch):
    """$TOMO_PRIOR changes what load_prior() reads, not what the name 'default' means."""
    _save(tiny_prior(), tmp_path / "mine")
    monkeypatch.setenv("TOMO_PRIOR", str(tmp_path / "mine"))
    assert load_prior().config["patch_size"] == 16
    assert load_prior("default").config != load_prior().config


def test_large_prior_not_shipped_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(prior_module, "REPO_DATA", tmp_path / "repo-data")
    monkeypatch.setattr(sys, "prefix", str(tmp_path / "venv"))
    with pytest.raises(FileNotFoundError, match="'large' prior is not shipped.*train_prior_gpu.py"):
        load_prior("large")
    with pytest.raises(ValueError, match="unknown prior name 'huge'"):
        shipped_prior_path("huge")


def test_names_resolve_in_a_wheel_install(tmp_path, monkeypatch):
    """Without the repository's data/, names find <sys.prefix>/share/tomo/<folder> (setup.cfg data_files)."""
    monkeypatch.setattr(prior_module, "REPO_DATA", tmp_path / "repo-data")  # no source tree
    monkeypatch.setattr(sys, "prefix", str(tmp_path / "venv"))
    monkeypatch.delenv("TOMO_PRIOR", raising=False)
    share = tmp_path / "venv" / "share" / "tomo"
    small, large = tiny_prior(seed=1), tiny_prior(patch_size=8, seed=2)
    _save(small, share / "prior")
    _save(large, share / "prior-large", shard_mb=0.05)
    _same_output(load_prior("default"), small)
    _same_output(load_prior(), small)
    loaded = load_prior("large")
    assert loaded.patch_size == 8
    _same_output(loaded, large)


def test_an_existing_folder_wins_over_a_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _save(tiny_prior(patch_size=8), tmp_path / "large")
    assert load_prior("large").patch_size == 8


# ----------------------------------------------------------------------------- shards


def test_sharded_weights_round_trip_and_respect_the_limit(tmp_path):
    prior = tiny_prior(seed=3)
    limit_mb = 0.04  # the tiny UNet is ~0.2 MB: several shards
    files = save_weights(tmp_path, prior.unet.state_dict(), shard_mb=limit_mb)
    save_config(tmp_path / CONFIG_NAME, prior.config)
    shards = files[1:]
    assert files[0].name == WEIGHTS_INDEX_NAME and len(shards) >= 3
    assert all(f.stat().st_size <= limit_mb * 2**20 for f in shards)
    assert not (tmp_path / WEIGHTS_NAME).exists() and has_weights(tmp_path)
    assert weight_files(tmp_path) == files
    _same_output(load_prior(tmp_path), prior)
    _same_output(load_prior(tmp_path / WEIGHTS_INDEX_NAME), prior)
    _same_output(load_prior(shards[0]), prior)  # a shard file means its checkpoint too
    tensors, meta = load_weights(tmp_path)
    assert tensors.keys() == prior.unet.state_dict().keys() and meta["format"] == "tomo-diffusion-prior-weights"


def test_resaving_replaces_old_shards_and_layouts(tmp_path):
    a, b = tiny_prior(seed=4), tiny_prior(seed=5)
    first = save_weights(tmp_path, a.unet.state_dict(), shard_mb=0.04)
    second = save_weights(tmp_path, b.unet.state_dict(), shard_mb=0.08)
    assert not set(first[1:]) & set(second[1:])  # content-named: never written over
    assert sorted(tmp_path.glob("prior-*.safetensors")) == sorted(second[1:])  # old ones removed
    save_config(tmp_path / CONFIG_NAME, b.config)
    _same_output(load_prior(tmp_path), b)
    save_weights(tmp_path, a.unet.state_dict())  # back to one file: the shards go
    assert not list(tmp_path.glob("prior-*.safetensors")) and not (tmp_path / WEIGHTS_INDEX_NAME).exists()
    _same_output(load_prior(tmp_path), a)


def test_missing_or_foreign_shard_is_a_clear_error(tmp_path):
    prior = tiny_prior(seed=6)
    files = save_weights(tmp_path, prior.unet.state_dict(), shard_mb=0.04)
    save_config(tmp_path / CONFIG_NAME, prior.config)
    files[2].rename(tmp_path / "elsewhere.bin")
    with pytest.raises(PriorCheckpointError, match="missing: copy every"):
        load_prior(tmp_path)
    (tmp_path / "elsewhere.bin").rename(files[2])
    index = json.loads(files[0].read_text())
    index["weight_map"] = {k: files[1].name for k in index["weight_map"]}  # everything in shard 1
    files[0].write_text(json.dumps(index))
    with pytest.raises(PriorCheckpointError, match="does not hold the tensors"):
        load_prior(tmp_path)
    files[0].write_text("{not json")
    with pytest.raises(PriorCheckpointError, match="not a valid shard index"):
        load_prior(tmp_path)


def test_a_tensor_larger_than_the_shard_limit_is_refused(tmp_path):
    with pytest.raises(ValueError, match="alone needs .* raise the limit"):
        save_weights(tmp_path, {"w": torch.zeros(100_000)}, shard_mb=0.1)


def test_export_copies_a_sharded_prior(tmp_path):
    prior = tiny_prior(seed=7)
    run = _save(prior, tmp_path / "run", shard_mb=0.04)
    written = export_prior(run, tmp_path / "dest")
    names = {p.name for p in written}
    assert {f.name for f in weight_files(run)} <= names and CONFIG_NAME in names
    _same_output(load_prior(tmp_path / "dest"), prior)
