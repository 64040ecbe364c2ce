"""``tomo reconstruct`` under ``torchrun``: this process's rank, and the few messages ranks exchange.

Rank 0 checks the request and prepares ``OUT.partial``; every rank reconstructs its share of the
chunks into it; rank 0 writes the output. Only rank 0 prints (:func:`silent_unless`).
"""

from __future__ import annotations

import contextlib
import os

from tomo.cli.main import CommandError

#: seconds a process waits for the others (the slowest share of chunks); TOMO_DIST_TIMEOUT_S overrides
DIST_TIMEOUT_S = 24 * 3600


class Ranks:
    """This process's place among the processes of one run; a plain run is rank 0 of 1.

    Under ``torchrun`` (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT`` set) the
    process group is joined: gloo on CPU, NCCL (with gloo for the small messages) with
    ``--device cuda``, each process on GPU ``LOCAL_RANK``. Only a few small Python objects are
    exchanged (the plan, and each rank's outcome); the images go through ``OUT.partial``.
    """

    def __init__(self, rank: int = 0, world: int = 1, local_rank: int = 0, local_world: int = 1, joined: bool = False):
        self.rank, self.world, self.local_rank, self.local_world, self.joined = (
            rank,
            world,
            local_rank,
            local_world,
            joined,
        )

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_environment(cls, device: str) -> Ranks:
        env = os.environ
        if not all(env.get(k) for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")):
            return cls()
        try:
            rank, world = int(env["RANK"]), int(env["WORLD_SIZE"])
            local_rank, local_world = int(env.get("LOCAL_RANK", "0")), int(env.get("LOCAL_WORLD_SIZE", "1"))
            timeout = float(env.get("TOMO_DIST_TIMEOUT_S", DIST_TIMEOUT_S))
        except ValueError as exc:
            raise CommandError(
                f"RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE and TOMO_DIST_TIMEOUT_S must be "
                f"numbers ({exc}); torchrun sets the first four"
            ) from None
        import datetime

        import torch
        import torch.distributed as dist

        cuda = str(device).startswith("cuda")
        if cuda:
            count = torch.cuda.device_count()
            if local_rank >= count:
                raise CommandError(
                    f"--device cuda: process LOCAL_RANK={local_rank} but this node has {count} GPU(s); "
                    f"start at most {count} processes per node (--nproc_per_node)"
                )
            torch.cuda.set_device(local_rank)
        try:
            dist.init_process_group(
                "cpu:gloo,cuda:nccl" if cuda else "gloo", timeout=datetime.timedelta(seconds=timeout)
            )
        except Exception as exc:  # noqa: BLE001  (torch raises several types; each becomes one line)
            raise CommandError(
                f"rank {rank} could not join the other processes ({type(exc).__name__}: {exc}); "
                "check MASTER_ADDR/MASTER_PORT (torchrun --rdzv-endpoint)"
            ) from None
        return cls(rank, world, local_rank, local_world, joined=True)

    def device(self, device: str) -> str:
        """``--device`` for this process: plain ``cuda`` becomes this process's GPU."""
        return f"cuda:{self.local_rank}" if self.joined and device == "cuda" else device

    def share(self, obj):
        """Rank 0's ``obj``, on every rank (a small picklable object)."""
        if not self.joined:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj) -> list:
        """Every rank's ``obj``, in rank order, on every rank (waits for the slowest)."""
        if not self.joined:
            return [obj]
        import torch.distributed as dist

        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def close(self) -> None:
        if self.joined:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


@contextlib.contextmanager
def silent_unless(speak: bool):
    """Information lines (stdout) of ranks other than 0 go nowhere; errors (stderr) stay."""
    if speak:
        yield
        return
    with open(os.devnull, "w", errors="backslashreplace") as sink, contextlib.redirect_stdout(sink):
        yield
