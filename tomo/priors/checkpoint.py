"""Reading and writing prior checkpoints: ``prior.json`` + ``prior.safetensors`` (EMA weights).

Every file is written atomically: to a temporary file in the same folder, flushed to disk,
then moved over the old one with :func:`os.replace`, so a killed process leaves either the old
or the new file, never half of one.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch

from .config import validate_config

CONFIG_NAME = "prior.json"
WEIGHTS_NAME = "prior.safetensors"
TRAIN_STATE_NAME = "train_state.safetensors"


class PriorCheckpointError(ValueError):
    """A prior checkpoint that is missing, corrupt or does not match its configuration."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary file + ``os.replace``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_umask())   # mkstemp creates 0600; give the usual permissions
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Save tensors as safetensors, atomically. Tensors are made contiguous CPU copies."""
    from safetensors.torch import save
    flat = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    atomic_write_bytes(path, save(flat, metadata=metadata))


def load_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Load a safetensors file and its metadata; a clear error when missing or corrupt."""
    from safetensors import safe_open
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:   # safetensors raises its own error types for truncated/garbled files
        raise PriorCheckpointError(f"{path} is not a readable safetensors file (corrupt or truncated?): "
                                   f"{type(exc).__name__}: {exc}") from exc
    return tensors, metadata


def save_config(path: Path, config: dict) -> None:
    atomic_write_text(path, json.dumps(config, indent=2, sort_keys=False) + "\n")


def load_config(path: Path) -> dict:
    """Read and validate a ``prior.json``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prior config not found: {path}")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PriorCheckpointError(f"{path} is not valid JSON (corrupt?): {exc}") from exc
    try:
        validate_config(config)
    except ValueError as exc:
        raise PriorCheckpointError(f"{path}: {exc}") from exc
    return config


def resolve_checkpoint(path) -> tuple[Path, Path]:
    """(config path, weights path) from a checkpoint folder or either of its two files."""
    path = Path(path)
    if path.is_dir():
        folder = path
    elif path.suffix in (".json", ".safetensors") and path.exists():
        folder = path.parent
        if path.suffix == ".safetensors" and path.name != WEIGHTS_NAME:
            return folder / CONFIG_NAME, path
    else:
        raise FileNotFoundError(f"prior checkpoint not found: {path} (expected a folder holding "
                                f"{CONFIG_NAME} and {WEIGHTS_NAME})")
    return folder / CONFIG_NAME, folder / WEIGHTS_NAME


def check_state_dict(expected: dict[str, torch.Tensor], got: dict[str, torch.Tensor], where: str) -> None:
    """Raise :class:`PriorCheckpointError` when weights do not fit the architecture."""
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    wrong = [f"{k} {tuple(got[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
             if k in got and tuple(got[k].shape) != tuple(v.shape)]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if wrong:
            parts.append(f"{len(wrong)} with the wrong shape (e.g. {wrong[0]})")
        raise PriorCheckpointError(f"{where}: weights do not match the configured architecture: "
                                   + ", ".join(parts) + " -- checkpoint from a different config?")
    bad = [k for k, v in got.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise PriorCheckpointError(f"{where}: {len(bad)} weight tensors contain NaN/Inf (e.g. {bad[0]})")
