"""GPU throughput of CTProjector on CUDA: ASTRA kernels (backend="cuda") vs the cached matrix (backend="matrix").

Forward + back-projection of a batch of 16 float32 slices, 1 mm pixels, parallel beam over pi and
fan beam over 2 pi (source 2n mm, detector n mm from the centre, 1.2 mm bins); mean of 5 after a
warm-up. Prints one JSON line per case. Needs a CUDA GPU and ASTRA's CUDA build.
Usage: python scripts/benchmark_operators_cuda.py
"""
import time, json
import numpy as np, torch
from operators import CTProjector, ParallelBeam2D, FanBeam2D
res = []
for n in (256, 512):
    for views in (30, 180):
        for kind in ("parallel", "fan"):
            ang = np.linspace(0, np.pi if kind == "parallel" else 2 * np.pi, views, endpoint=False)
            if kind == "parallel":
                g = ParallelBeam2D((n, n), 1.0, ang, int(1.5 * n), 1.0)
            else:
                g = FanBeam2D((n, n), 1.0, ang, 2 * n, 1.2, 2 * n * 1.0, n * 1.0)
            for backend in ("cuda", "matrix"):
                try:
                    A = CTProjector(g, device="cuda", backend=backend)
                    x = torch.rand(16, n, n, device="cuda")
                    y = A(x); A.adjoint(y); torch.cuda.synchronize()
                    t0 = time.perf_counter()
                    for _ in range(5):
                        y = A(x); z = A.adjoint(y)
                    torch.cuda.synchronize()
                    dt = (time.perf_counter() - t0) / 5
                    r = dict(n=n, views=views, kind=kind, backend=backend, ms_fwd_adj_batch16=round(dt * 1e3, 2))
                except Exception as e:
                    r = dict(n=n, views=views, kind=kind, backend=backend, error=str(e)[:200])
                print(json.dumps(r), flush=True); res.append(r)
