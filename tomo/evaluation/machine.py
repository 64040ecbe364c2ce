"""The machine a measurement ran on: CPU model, cores, torch threads, GPU, software versions, date.

Wall times mean nothing without it; every benchmark report states :func:`describe_machine`.
"""

from __future__ import annotations

import os
import platform
import subprocess
import time
from dataclasses import asdict, dataclass

import torch

__all__ = ["MachineInfo", "machine_info", "describe_machine", "load_average"]


@dataclass(frozen=True)
class MachineInfo:
    """Hardware and software of a run (``date``: local time, ``%Y-%m-%d %H:%M``)."""

    cpu: str
    cores: int
    threads: int
    gpu: str
    torch: str
    astra: str
    date: str

    def describe(self) -> str:
        """One line for reports, e.g. ``2 CPU cores (AMD EPYC), no GPU, torch 2.13.0+cpu, 1 thread(s), ASTRA 2.2.0``."""
        return (
            f"{self.cores} CPU cores ({self.cpu}), {self.gpu}, torch {self.torch}, {self.threads} thread(s), "
            f"ASTRA {self.astra}"
        )

    def as_dict(self) -> dict:
        return asdict(self)


def _cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (StopIteration, OSError):
        return platform.processor() or "unknown CPU"


def _astra_version() -> str:
    try:
        import astra

        return str(astra.__version__)
    except Exception:  # noqa: BLE001 -- not installed, or a build that fails to load: a report says so, not fails
        return "unavailable"


def machine_info() -> MachineInfo:
    """The current machine (torch threads as set now: call after ``torch.set_num_threads``)."""
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return MachineInfo(
        cpu=_cpu_model(),
        cores=os.cpu_count() or 0,
        threads=torch.get_num_threads(),
        gpu=gpu,
        torch=torch.__version__,
        astra=_astra_version(),
        date=time.strftime("%Y-%m-%d %H:%M"),
    )


def describe_machine() -> str:
    """:meth:`MachineInfo.describe` of the current machine."""
    return machine_info().describe()


def load_average() -> str:
    """The 1, 5 and 15 minute load averages, e.g. ``"1.9 1.7 1.2"`` (``"?"`` where unavailable)."""
    if not hasattr(os, "getloadavg"):
        return "?"
    return " ".join(f"{v:.1f}" for v in os.getloadavg())
