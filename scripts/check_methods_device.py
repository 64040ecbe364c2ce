"""Smoke check and timing of every reconstruction method on a device (CUDA by default).

Usage: python scripts/check_methods_device.py [cuda|cpu] [SLICE.npz]
SLICE.npz: an HU volume at 1.5 mm as written by scripts/pack_training_slices.py (first slice used).
Simulates parallel-30 (evaluation protocol) and prints one JSON line per method: PSNR/SSIM against
the slice and the wall time of the second call (the first builds the matrix and loads the prior).
This is a functional/timing check, not an evaluation: use a held-out slice for quality numbers.
"""
import sys, time, json
import numpy as np, torch
from tomo.evaluation.simulation import simulate_volume
from tomo.methods.registry import reconstruct
from operators.units import mu_to_hu
from tomo.evaluation.scores import psnr, ssim
dev = sys.argv[1] if len(sys.argv) > 1 else "cuda"
d = np.load(sys.argv[2] if len(sys.argv) > 2 else "runs/train_packed_1.5mm/thorax-philips-01/0070.npz")
hu, sp = d["hu"][0].astype(np.float32), (1.5, 1.5)
sf = simulate_volume(hu, sp, "parallel-30", seed=0, progress=False)
sino = torch.from_numpy(sf.sinogram)
runs = [("fbp", {}), ("tv", {}), ("dds", {}), ("dds", {"samples": 4}), ("dps", {"steps": 1000})]
if dev == "cpu":
    runs = [("fbp", {}), ("dds", {"steps": 2})]
for m, o in runs:
    for rep in range(2 if m != "dps" else 1):   # first call includes set-up (matrix, prior load)
        if dev == "cuda": torch.cuda.synchronize()
        t0 = time.perf_counter()
        mu = reconstruct(sino, sf.geometry, m, i0=sf.i0, device=dev, progress=False, **o)
        if dev == "cuda": torch.cuda.synchronize()
        dt = time.perf_counter() - t0
    h = mu_to_hu(mu.cpu().numpy().astype(np.float32)).reshape(sf.hu_reference.shape)
    print(json.dumps(dict(method=m, options=o, device=str(mu.device), psnr=round(float(psnr(h, sf.hu_reference)), 2),
                          ssim=round(float(ssim(h, sf.hu_reference)), 4), seconds=round(dt, 2), grid=list(sf.geometry.image_shape))), flush=True)
