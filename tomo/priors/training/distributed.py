"""Process group helpers: one code path for 1 CPU, 1 GPU or many processes (torchrun, DDP)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class Dist:
    """Where this process runs: its rank among ``world`` processes and its device."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup(device: str, threads: int | None = None) -> Dist:
    """Join the process group started by torchrun (if any) and pick this process's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device == "auto" else device.startswith("cuda")
    if use_cuda and not torch.cuda.is_available():
        raise ValueError(f"--device {device} asked for CUDA, which is not available")
    if world > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        if not use_cuda and not threads:  # share the CPU cores between the local processes
            local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
    if use_cuda:
        dev = torch.device(f"cuda:{local_rank}") if device in ("auto", "cuda") else torch.device(device)
        torch.cuda.set_device(dev)
    else:
        dev = torch.device("cpu")
    rank = int(os.environ.get("RANK", "0"))
    return Dist(rank=rank, world=world, local_rank=local_rank, device=dev)


def all_mean(value: float, d: Dist) -> float:
    """Mean of ``value`` over all processes (the value itself for one process)."""
    if d.world == 1:
        return value
    import torch.distributed as dist

    t = torch.tensor([value], dtype=torch.float64, device=d.device)
    dist.all_reduce(t)
    return float(t) / d.world


def barrier(d: Dist) -> None:
    if d.world > 1:
        import torch.distributed as dist

        dist.barrier()


def shutdown(d: Dist) -> None:
    if d.world > 1:
        import torch.distributed as dist

        dist.destroy_process_group()


def step_generator(seed: int, rank: int, step: int) -> torch.Generator:
    """The generator of every random draw at ``step`` on ``rank``: the run's random state is its step."""
    state = np.random.SeedSequence([seed, rank, step]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def check_replicas_agree(model: torch.nn.Module, d: Dist) -> None:
    """DDP sanity check: every process ends with the same weights."""
    if d.world == 1:
        return
    import torch.distributed as dist

    local = torch.stack([p.detach().double().sum() for p in model.parameters()]).sum().reshape(1)
    gathered = [torch.zeros_like(local) for _ in range(d.world)]
    dist.all_gather(gathered, local)
    if any(not torch.equal(g, gathered[0]) for g in gathered):
        raise RuntimeError(f"DDP replicas disagree after training: {[float(g) for g in gathered]}")
