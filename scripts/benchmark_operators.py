#!/usr/bin/env python
"""Throughput of CPU forward + back-projection: batched matrix path vs ASTRA per-slice vs scikit-image.

For each image size, number of views and batch size, times one forward projection plus one
back-projection of a batch of Shepp-Logan slices (parallel beam, angles in [0, pi), detector bins
of one pixel, 1.5 x image width bins) with

* ``matrix``: ``operators.CTProjector`` (ASTRA's CPU 'linear' system matrix as a torch sparse CSR,
  whole batch in one sparse-dense product); the one-off build time and the cache memory are
  reported separately;
* ``astra``: one ``astra.create_sino`` + ``astra.create_backprojection`` per slice (CPU 'linear'
  projector), freeing ASTRA's data objects each time;
* ``skimage``: ``skimage.transform.radon`` + unfiltered ``iradon`` (``filter_name=None``: the
  back-projection, up to a constant) per slice; different discretisation, so no accuracy column.

Reports slices per second (forward + back), the speed-up over ``astra``, and the largest
difference of the matrix path from ASTRA's own results, relative to ASTRA's largest value.

Usage::

    python scripts/benchmark_operators.py                 # the full table (several minutes)
    python scripts/benchmark_operators.py --quick         # smoke test, seconds
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import torch

from tomo.evaluation.machine import describe_machine, load_average


def _timeit(fn, reps: int) -> float:
    """Best of ``reps`` wall-clock times of ``fn()`` in seconds (after one warm-up call)."""
    fn()
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def _astra_fwd_bwd(images: np.ndarray, sinos: np.ndarray, pid) -> tuple:
    import astra

    fwd, bwd = [], []
    for img, sino in zip(images, sinos):
        sid, s = astra.create_sino(img, pid)
        astra.data2d.delete(sid)
        bid, b = astra.create_backprojection(sino, pid)
        astra.data2d.delete(bid)
        fwd.append(s)
        bwd.append(b)
    return np.stack(fwd), np.stack(bwd)


def _skimage_fwd_bwd(images: np.ndarray, theta_deg: np.ndarray) -> None:
    from skimage.transform import iradon, radon

    for img in images:
        s = radon(img, theta=theta_deg, circle=False)
        iradon(s, theta=theta_deg, filter_name=None, circle=False, output_size=img.shape[0])


def run(sizes, views_list, batches, reps: int, skimage_slices: int, skip_skimage: bool) -> list:

    from operators import CTProjector, ParallelBeam2D, clear_matrix_cache, shepp_logan
    from operators.ct import astra_projector

    rows = []
    for n in sizes:
        phantom = shepp_logan((n, n), 1.0).numpy()
        for views in views_list:
            angles = np.linspace(0, np.pi, views, endpoint=False)
            g = ParallelBeam2D((n, n), 1.0, angles, int(1.5 * n), 1.0)
            clear_matrix_cache()
            op = CTProjector(g, backend="matrix")
            t0 = time.perf_counter()
            op(torch.zeros(n, n))  # builds and caches the matrices
            build_s = time.perf_counter() - t0
            cache_mb = op.matrix_bytes / 2**20
            with astra_projector(g) as pid:
                for batch in batches:
                    rng = np.random.default_rng(0)
                    # phantom with a random intensity per slice (keeps the slices different)
                    imgs = (phantom[None] * rng.uniform(0.5, 1.5, (batch, 1, 1))).astype(np.float32)
                    sinos = np.stack([np.asarray(op(torch.from_numpy(i))) for i in imgs]).astype(np.float32)
                    x, y = torch.from_numpy(imgs), torch.from_numpy(sinos)

                    def ours(op=op, x=x, y=y):
                        return op(x), op.T(y)

                    t_ours = _timeit(ours, reps)
                    t_astra = _timeit(
                        lambda imgs=imgs, sinos=sinos: _astra_fwd_bwd(imgs, sinos, pid), max(1, reps // 2)
                    )
                    fx, bty = ours()
                    ref_f, ref_b = _astra_fwd_bwd(imgs, sinos, pid)
                    diff_f = float(np.abs(fx.numpy() - ref_f).max() / np.abs(ref_f).max())
                    diff_b = float(np.abs(bty.numpy() - ref_b).max() / np.abs(ref_b).max())
                    row = dict(
                        size=n,
                        views=views,
                        batch=batch,
                        cache_mb=cache_mb,
                        build_s=build_s,
                        matrix=batch / t_ours,
                        astra=batch / t_astra,
                        diff_fwd=diff_f,
                        diff_bwd=diff_b,
                    )
                    if not skip_skimage:
                        k = min(batch, skimage_slices)
                        theta = np.degrees(angles)
                        _skimage_fwd_bwd(imgs[:1, :8, :8], theta[:2])  # import + warm-up
                        t = time.perf_counter()
                        _skimage_fwd_bwd(imgs[:k], theta)
                        t_sk = time.perf_counter() - t
                        row["skimage"] = k / t_sk
                        row["skimage_slices"] = k
                    rows.append(row)
                    print(_format_row(row), flush=True)
    clear_matrix_cache()
    return rows


HEADER = (
    "| image | views | batch | matrix (ours) slices/s | ASTRA per-slice slices/s | speed-up | "
    "scikit-image slices/s | max rel. diff. vs ASTRA fwd / back | matrix cache MB | build s |\n"
    "|---|---|---|---|---|---|---|---|---|---|"
)


def _format_row(r: dict) -> str:
    sk = f"{r['skimage']:.2f} ({r['skimage_slices']} sl.)" if "skimage" in r else "-"
    return (
        f"| {r['size']}x{r['size']} | {r['views']} | {r['batch']} | {r['matrix']:.1f} | {r['astra']:.2f} | "
        f"{r['matrix'] / r['astra']:.1f}x | {sk} | {r['diff_fwd']:.1e} / {r['diff_bwd']:.1e} | "
        f"{r['cache_mb']:.0f} | {r['build_s']:.1f} |"
    )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    p.add_argument("--views", type=int, nargs="+", default=[30, 180])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    p.add_argument("--reps", type=int, default=3, help="timed repetitions (best is reported)")
    p.add_argument(
        "--skimage-slices",
        type=int,
        default=2,
        help="scikit-image is a per-slice loop and slow: time it on at most this many slices",
    )
    p.add_argument("--no-skimage", action="store_true")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPU threads of the matrix path (operators.set_matrix_threads; 0 = torch default)",
    )
    p.add_argument("--quick", action="store_true", help="tiny smoke run (64x64, 10 views, batch 1 and 4)")
    args = p.parse_args(argv)
    if args.quick:
        args.sizes, args.views, args.batches, args.reps = [64], [10], [1, 4], 1
    warnings.filterwarnings("ignore", category=UserWarning)
    from operators import set_matrix_threads

    set_matrix_threads(args.threads)
    print(
        f"{describe_machine()}, load average at start {load_average()}; "
        f"matrix path threads: {args.threads or torch.get_num_threads()}"
    )
    print(HEADER)
    run(args.sizes, args.views, args.batches, args.reps, args.skimage_slices, args.no_skimage)
    print(f"load average at end: {load_average()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
