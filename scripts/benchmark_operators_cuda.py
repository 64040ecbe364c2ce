#!/usr/bin/env python
"""GPU throughput of CTProjector on CUDA: ASTRA kernels (backend="cuda") vs the cached matrix (backend="matrix").

Forward + back-projection of a batch of 16 float32 slices, 1 mm pixels, parallel beam over pi and
fan beam over 2 pi (source 2n mm, detector n mm from the centre, 1.2 mm bins); mean of 5 after a
warm-up. Prints the machine, then one JSON line per case. Needs a CUDA GPU and ASTRA's CUDA build.

Usage: python scripts/benchmark_operators_cuda.py
"""

import argparse
import json
import time

import numpy as np
import torch

from operators import CTProjector, FanBeam2D, ParallelBeam2D
from tomo.evaluation.machine import machine_info


def geometry(kind: str, n: int, views: int):
    if kind == "parallel":
        return ParallelBeam2D((n, n), 1.0, np.linspace(0, np.pi, views, endpoint=False), int(1.5 * n), 1.0)
    return FanBeam2D((n, n), 1.0, np.linspace(0, 2 * np.pi, views, endpoint=False), 2 * n, 1.2, 2 * n * 1.0, n * 1.0)


def time_case(g, n: int, backend: str, reps: int = 5) -> float:
    """Mean seconds of one forward + adjoint of a batch of 16 (after one warm-up)."""
    A = CTProjector(g, device="cuda", backend=backend)
    x = torch.rand(16, n, n, device="cuda")
    A.adjoint(A(x))
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        A.adjoint(A(x))
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / reps


def main(argv=None) -> None:
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args(argv)
    print(json.dumps({"machine": machine_info().as_dict()}), flush=True)
    for n in (256, 512):
        for views in (30, 180):
            for kind in ("parallel", "fan"):
                for backend in ("cuda", "matrix"):
                    r = dict(n=n, views=views, kind=kind, backend=backend)
                    try:
                        r["ms_fwd_adj_batch16"] = round(time_case(geometry(kind, n, views), n, backend) * 1e3, 2)
                    except Exception as e:  # noqa: BLE001 -- e.g. fan beam refused by backend="cuda": report, go on
                        r["error"] = str(e)[:200]
                    print(json.dumps(r), flush=True)


if __name__ == "__main__":
    main()
