"""Reading and writing prior checkpoints: ``prior.json`` + ``prior.safetensors`` (EMA weights).

The weights may instead be split into shards (for file-size limits when moving a large prior):
``prior.safetensors.index.json`` lists the shard files ``prior-NNN-<sha256 prefix>.safetensors``
and which tensor lives in which (the layout of Hugging Face's sharded checkpoints). Shard names
hold a hash of their content, so a new save never overwrites a shard the current index points
to: the index is replaced last and only then are the old shards deleted, and a save killed half
way leaves the previous checkpoint intact.

Every file is written atomically: to a temporary file in the same folder, flushed to disk,
then moved over the old one with :func:`os.replace`, so a killed process leaves either the old
or the new file, never half of one.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .config import validate_config

CONFIG_NAME = "prior.json"
WEIGHTS_NAME = "prior.safetensors"
TRAIN_STATE_NAME = "train_state.safetensors"
WEIGHTS_INDEX_NAME = "prior.safetensors.index.json"
SHARD_GLOB = "prior-*.safetensors"
WEIGHTS_FORMAT = "tomo-diffusion-prior-weights"


class PriorCheckpointError(ValueError):
    """A prior checkpoint that is missing, corrupt or does not match its configuration."""


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (:func:`tomo.io.atomic.atomic_file`: temporary file,
    fsync, rename), creating the folder; a kill leaves the old file or the new one."""
    from tomo.io.atomic import atomic_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path, overwrite=True) as fh:
        fh.write(data)


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
    except Exception as exc:  # safetensors raises its own error types for truncated/garbled files
        raise PriorCheckpointError(
            f"{path} is not a readable safetensors file (corrupt or truncated?): {type(exc).__name__}: {exc}"
        ) from exc
    return tensors, metadata


def _shard_groups(tensors: dict[str, torch.Tensor], limit: int) -> list[list[str]]:
    """Tensor names split greedily, in order, into groups whose safetensors files fit ``limit`` bytes."""
    groups: list[list[str]] = [[]]
    size = 0
    for name, t in tensors.items():
        # data plus a generous allowance for the tensor's entry in the JSON header
        need = t.numel() * t.element_size() + 256 + len(name)
        if need + 1024 > limit:
            raise ValueError(
                f"tensor {name} alone needs {need / 2**20:.1f} MiB, more than the shard "
                f"limit of {limit / 2**20:.1f} MiB; raise the limit (--shard-mb)"
            )
        if groups[-1] and size + need + 1024 > limit:
            groups.append([])
            size = 0
        groups[-1].append(name)
        size += need
    return groups


def save_weights(folder: Path, tensors: dict[str, torch.Tensor], shard_mb: float | None = None) -> list[Path]:
    """Write a prior's weights: one ``prior.safetensors`` or, with ``shard_mb``, shards + index.

    Parameters
    ----------
    folder : Path
        The checkpoint folder; weights of the other layout found there are removed.
    tensors : dict of str to Tensor
        The UNet state dict.
    shard_mb : float, optional
        Largest shard file size in MiB (2^20 bytes); None writes a single file.

    Returns
    -------
    list of Path
        The weight files written (the index first when sharded).
    """
    import hashlib

    from safetensors.torch import save

    folder = Path(folder)
    meta = {"format": WEIGHTS_FORMAT}
    if shard_mb is None:
        save_tensors(folder / WEIGHTS_NAME, tensors, meta)
        for old in [folder / WEIGHTS_INDEX_NAME, *folder.glob(SHARD_GLOB)]:
            old.unlink(missing_ok=True)
        return [folder / WEIGHTS_NAME]
    flat = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    limit = int(shard_mb * 2**20)
    weight_map, written = {}, []
    for i, names in enumerate(_shard_groups(flat, limit), start=1):
        data = save({k: flat[k] for k in names}, metadata=meta)
        if len(data) > limit:  # the header allowance above was not enough: say so, never exceed
            raise ValueError(f"shard {i} would be {len(data)} bytes, over the {limit}-byte limit")
        path = folder / f"prior-{i:03d}-{hashlib.sha256(data).hexdigest()[:12]}.safetensors"
        atomic_write_bytes(path, data)
        written.append(path)
        weight_map.update({k: path.name for k in names})
    index = {
        "metadata": {
            **meta,
            "total_size": sum(t.numel() * t.element_size() for t in flat.values()),
            "shard_limit_bytes": limit,
        },
        "weight_map": weight_map,
    }
    atomic_write_text(folder / WEIGHTS_INDEX_NAME, json.dumps(index, indent=1) + "\n")
    keep = {p.name for p in written}
    for old in folder.glob(SHARD_GLOB):
        if old.name not in keep:
            old.unlink(missing_ok=True)
    (folder / WEIGHTS_NAME).unlink(missing_ok=True)
    return [folder / WEIGHTS_INDEX_NAME, *written]


def _load_sharded(index_path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
        weight_map = dict(index["weight_map"])
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise PriorCheckpointError(f"{index_path} is not a valid shard index (corrupt?): {exc}") from exc
    tensors: dict[str, torch.Tensor] = {}
    for shard in sorted(set(weight_map.values())):
        path = index_path.parent / shard
        if not path.is_file():
            raise PriorCheckpointError(
                f"{index_path} lists {shard}, which is missing: copy every prior-*.safetensors file of the checkpoint"
            )
        part, _ = load_tensors(path)
        listed = {k for k, v in weight_map.items() if v == shard}
        if set(part) != listed:
            raise PriorCheckpointError(
                f"{path} does not hold the tensors {index_path.name} lists for it (shard from another save?)"
            )
        tensors.update(part)
    return tensors, {k: str(v) for k, v in index.get("metadata", {}).items()}


def load_weights(path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """A prior's weights from ``prior.safetensors``, a shard index, or a folder holding either."""
    path = Path(path)
    if path.is_dir():
        path = weights_path(path)
    if path.name.endswith(".index.json"):
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint file not found: {path}")
        return _load_sharded(path)
    return load_tensors(path)


def weights_path(folder: Path) -> Path:
    """The shard index of ``folder`` if there is one, else its ``prior.safetensors``."""
    folder = Path(folder)
    index = folder / WEIGHTS_INDEX_NAME
    return index if index.is_file() else folder / WEIGHTS_NAME


def has_weights(folder: Path) -> bool:
    """True when ``folder`` holds prior weights (single file or shard index)."""
    return weights_path(folder).is_file()


def weight_files(folder: Path) -> list[Path]:
    """Every file of the weights of ``folder``: ``prior.safetensors``, or the index and its shards."""
    path = weights_path(folder)
    if not path.is_file():
        return []
    if path.name != WEIGHTS_INDEX_NAME:
        return [path]
    shards = sorted(set(json.loads(path.read_text(encoding="utf-8"))["weight_map"].values()))
    return [path, *(path.parent / s for s in shards)]


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
        if path.suffix == ".safetensors" and path.name != WEIGHTS_NAME and not (folder / WEIGHTS_INDEX_NAME).is_file():
            return folder / CONFIG_NAME, path
    else:
        raise FileNotFoundError(
            f"prior checkpoint not found: {path} (expected a folder holding "
            f"{CONFIG_NAME} and {WEIGHTS_NAME} or {WEIGHTS_INDEX_NAME})"
        )
    return folder / CONFIG_NAME, weights_path(folder)


def check_state_dict(expected: dict[str, torch.Tensor], got: dict[str, torch.Tensor], where: str) -> None:
    """Raise :class:`PriorCheckpointError` when weights do not fit the architecture."""
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    wrong = [
        f"{k} {tuple(got[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in got and tuple(got[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if wrong:
            parts.append(f"{len(wrong)} with the wrong shape (e.g. {wrong[0]})")
        raise PriorCheckpointError(
            f"{where}: weights do not match the configured architecture: "
            + ", ".join(parts)
            + " -- checkpoint from a different config?"
        )
    bad = [k for k, v in got.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise PriorCheckpointError(f"{where}: {len(bad)} weight tensors contain NaN/Inf (e.g. {bad[0]})")
