"""ASTRA CUDA projectors on torch CUDA tensors, without host copies (ASTRA >= 2.5, DLPack).

Run on an NVIDIA H200 on 2026-11-26 (``tests/test_operators_cuda.py``, docs/benchmarks_operators.md):
2D parallel, 3D parallel and cone beam pass (adjoint errors 1e-4 - 7e-3). The 2D fan-beam mapping
below is *not* adjoint (55 %: ASTRA's cone back-projector weights voxels for a 2D detector), so
:class:`operators.ct.CTProjector` never uses it (fan beam on CUDA goes through the matrix).

How the geometries map onto ASTRA's 3D CUDA kernels (``astra.experimental.direct_FP3D`` /
``direct_BP3D``, which read and write torch tensors in place through DLPack):

* **2D parallel beam, batch of B slices**: the ``[B, H, W]`` stack is one ASTRA 3D volume of B
  slices (z) of ``H x W``; a ``parallel3d_vec`` geometry with B detector rows of height one pixel
  projects every slice onto its own detector row, so the ASTRA projection array
  ``(rows=B, views, detectors)`` *is* the ``[B, views, detectors]`` sinogram batch. One call.
* **2D fan beam, batch of B slices**: a ``cone_vec`` geometry with one detector row and
  ``B * V`` "views": view ``(b, v)`` has its source and its detector row in the plane of slice
  ``b`` (``z_b``), so every ray stays in its slice; the projection array ``(1, B * V, D)`` is the
  ``[B, V, D]`` batch. One call for the whole batch.
* **3D parallel / cone beam**: ASTRA's ``parallel3d`` / ``cone`` geometries as they are; one call
  per volume.

ASTRA's 2D CPU projectors put image row 0 at the *largest* y, while its 3D CUDA kernels index y
upwards from the smallest y. To keep the 2D CUDA path identical in orientation to the CPU path, the
2D-as-3D vectors are built in a y-mirrored frame; because that reading of ASTRA's source could not
be checked on hardware here, :func:`calibrate_orientation` projects a single off-centre pixel once
per process and picks the orientation (and batch order) the kernels actually use.

ASTRA's CUDA forward (ray-driven) and back-projection (voxel-driven) are only approximately
adjoint; compute is float32 (float64 inputs are cast and the result cast back).
"""

from __future__ import annotations

import numpy as np
import torch

from .geometry import ConeBeam3D, FanBeam2D, ParallelBeam2D, ParallelBeam3D

__all__ = ["AstraCudaProjector", "require_astra_cuda", "calibrate_orientation", "cuda_available"]

_ORIENTATION: dict | None = None


def cuda_available() -> bool:
    """True when torch sees a CUDA device and ASTRA was built with CUDA and finds a GPU."""
    if not torch.cuda.is_available():
        return False
    try:
        import astra

        return bool(astra.use_cuda())
    except Exception:  # noqa: BLE001 - any ASTRA import/probe failure means "no CUDA"
        return False


def require_astra_cuda() -> None:
    """Raise a clear ``ValueError`` unless ASTRA's CUDA kernels are usable.

    This check matters: ASTRA's 3D ``direct_*`` calls abort the whole process on a machine
    without a GPU instead of raising.
    """
    if not torch.cuda.is_available():
        raise ValueError("device='cuda' requested but torch sees no CUDA device; use device='cpu'")
    import astra

    if not astra.use_cuda():
        raise ValueError(
            "device='cuda' requested but ASTRA has no usable CUDA support "
            "(astra.use_cuda() is False: ASTRA built without CUDA, or no GPU/driver); "
            "use device='cpu'"
        )


# ----- vector geometries ----------------------------------------------------------------------------
def _parallel_vectors(angles: np.ndarray, det_spacing: float, row_spacing: float, mirror_y: bool) -> np.ndarray:
    """``parallel3d_vec`` rows ``(ray, d, u, v)`` matching ASTRA's 2D ``parallel`` convention."""
    s, c = np.sin(angles), np.cos(angles)
    sign = -1.0 if mirror_y else 1.0
    vec = np.zeros((angles.size, 12))
    vec[:, 0], vec[:, 1] = s, -c * sign  # ray direction
    vec[:, 6], vec[:, 7] = c * det_spacing, s * det_spacing * sign  # u: one detector bin
    vec[:, 11] = row_spacing  # v: one detector row along z
    return vec


def _fan_vectors(
    angles: np.ndarray, det_spacing: float, so: float, od: float, z: np.ndarray, row_spacing: float, mirror_y: bool
) -> np.ndarray:
    """``cone_vec`` rows ``(src, d, u, v)``: every (slice, angle) pair, slice-major."""
    zz, th = np.meshgrid(z, angles, indexing="ij")
    zz, th = zz.reshape(-1), th.reshape(-1)
    s, c = np.sin(th), np.cos(th)
    sign = -1.0 if mirror_y else 1.0
    vec = np.zeros((th.size, 12))
    vec[:, 0], vec[:, 1], vec[:, 2] = so * s, -so * c * sign, zz  # source
    vec[:, 3], vec[:, 4], vec[:, 5] = -od * s, od * c * sign, zz  # detector centre
    vec[:, 6], vec[:, 7] = c * det_spacing, s * det_spacing * sign  # u
    vec[:, 11] = row_spacing  # v (one row)
    return vec


class _Astra3D:
    """An ASTRA ``cuda3d`` projector for one (volume, projection) geometry; ids freed on close."""

    def __init__(self, vol_geom: dict, proj_geom: dict):
        import astra

        self.pid = astra.create_projector("cuda3d", proj_geom, vol_geom)

    def fp(self, vol: torch.Tensor, proj: torch.Tensor) -> None:
        import astra.experimental as ax

        torch.cuda.synchronize(vol.device)  # ASTRA runs on its own stream: inputs must be ready
        ax.direct_FP3D(self.pid, vol, proj)
        torch.cuda.synchronize(vol.device)

    def bp(self, vol: torch.Tensor, proj: torch.Tensor) -> None:
        import astra.experimental as ax

        torch.cuda.synchronize(vol.device)
        ax.direct_BP3D(self.pid, vol, proj)
        torch.cuda.synchronize(vol.device)

    def close(self) -> None:
        if self.pid is not None:
            import astra

            astra.projector3d.delete(self.pid)
            self.pid = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):  # pragma: no cover - best effort at interpreter exit
        try:
            self.close()
        except Exception:  # noqa: BLE001
            pass


def calibrate_orientation(device: torch.device) -> dict:
    """Find how ASTRA's 3D CUDA kernels index y and z (once per process; tiny problem).

    Returns ``{"mirror_y": bool, "rows_follow_slices": bool}`` such that the 2D-as-3D mapping
    reproduces ASTRA's 2D CPU convention (image row 0 at the largest y). Raises ``RuntimeError``
    if the kernels agree with neither reading.
    """
    global _ORIENTATION
    if _ORIENTATION is not None:
        return _ORIENTATION
    import astra

    n, nd = 8, 17
    vol_geom = astra.create_vol_geom(n, n, 2, -n / 2, n / 2, -n / 2, n / 2, -1.0, 1.0)
    # angle pi/2: a point (x, y) lands at detector coordinate t = y (ASTRA 2D convention)
    vec = _parallel_vectors(np.array([np.pi / 2]), 1.0, 1.0, mirror_y=False)
    proj_geom = astra.create_proj_geom("parallel3d_vec", 2, nd, vec)
    vol = torch.zeros(2, n, n, dtype=torch.float32, device=device)
    vol[0, 1, n // 2] = 1.0  # slice 0, array row 1 (2D convention: y = +2.5), column 4
    proj = torch.zeros(2, 1, nd, dtype=torch.float32, device=device)
    with _Astra3D(vol_geom, proj_geom) as op:
        op.fp(vol, proj)
    p = proj.cpu().numpy()
    if p.sum() <= 0:
        raise RuntimeError("ASTRA CUDA calibration projected nothing; the CUDA path cannot be trusted")
    row = int(np.argmax(p.sum(axis=(1, 2))))
    peak = float((p[row, 0] * np.arange(nd)).sum() / p[row, 0].sum()) - (nd - 1) / 2  # t in mm
    if abs(abs(peak) - 2.5) > 0.75:
        raise RuntimeError(f"ASTRA CUDA calibration: unexpected detector position {peak:+.2f} mm (want +-2.5)")
    # 2D convention wants t = +2.5; a negative peak means the 3D kernels index y upwards.
    _ORIENTATION = {"mirror_y": peak < 0, "rows_follow_slices": row == 0}
    return _ORIENTATION


def astra_geometries_2d(g, batch: int, orient: dict) -> tuple:
    """ASTRA 3D ``(vol_geom, proj_geom)`` for a batch of ``batch`` 2D slices of geometry ``g``.

    Volume ``(batch, H, W)`` in mm (slices one pixel thick); projections ``(batch, V, D)``
    (parallel beam) or ``(1, batch * V, D)`` (fan beam, slice-major views). ``orient`` is
    :func:`calibrate_orientation`'s result.
    """
    import astra

    if getattr(g, "detector_offset_mm", 0.0) != 0.0:  # the vectors below assume a centred detector
        raise ValueError("the CUDA backend does not support detector_offset_mm; use backend='matrix'")

    h, w = g.image_shape
    p = g.pixel_spacing_mm
    vol_geom = astra.create_vol_geom(
        h, w, batch, -w * p / 2, w * p / 2, -h * p / 2, h * p / 2, -batch * p / 2, batch * p / 2
    )
    if isinstance(g, FanBeam2D):
        z = (np.arange(batch) + 0.5 - batch / 2) * p
        if not orient["rows_follow_slices"]:
            z = z[::-1]
        vec = _fan_vectors(
            g.angles_array, g.detector_spacing_mm, g.source_origin_mm, g.origin_detector_mm, z, p, orient["mirror_y"]
        )
        proj_geom = astra.create_proj_geom("cone_vec", 1, g.detector_count, vec)
    else:
        vec = _parallel_vectors(
            g.angles_array, g.detector_spacing_mm, p if orient["rows_follow_slices"] else -p, orient["mirror_y"]
        )
        proj_geom = astra.create_proj_geom("parallel3d_vec", batch, g.detector_count, vec)
    return vol_geom, proj_geom


# ----- operator backend ----------------------------------------------------------------------------
class AstraCudaProjector:
    """Forward/back-projection kernels of :class:`operators.ct.CTProjector` on CUDA (see module doc)."""

    def __init__(self, geometry, device: torch.device):
        require_astra_cuda()
        import astra

        self.geometry = geometry
        self.device = torch.device(device)
        if self.device.index is not None:
            astra.set_gpu_index(self.device.index)
        self._batch_ops: dict = {}  # batch size -> _Astra3D (2D geometries)
        self._op3d = None

    # 2D ----------------------------------------------------------------------------------------
    def _op_2d(self, batch: int) -> _Astra3D:
        op = self._batch_ops.get(batch)
        if op is not None:
            return op
        op = _Astra3D(*astra_geometries_2d(self.geometry, batch, calibrate_orientation(self.device)))
        if len(self._batch_ops) >= 4:  # keep a few batch sizes
            self._batch_ops.pop(next(iter(self._batch_ops))).close()
        self._batch_ops[batch] = op
        return op

    def _proj_buffer_shape_2d(self, batch: int) -> tuple:
        g = self.geometry
        if isinstance(g, FanBeam2D):
            return (1, batch * g.num_views, g.detector_count)
        return (batch, g.num_views, g.detector_count)

    # 3D ----------------------------------------------------------------------------------------
    def _op_3d(self) -> _Astra3D:
        if self._op3d is None:
            vol_geom, proj_geom = self.geometry.to_astra()
            self._op3d = _Astra3D(vol_geom, proj_geom)
        return self._op3d

    # kernels -----------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = self.geometry
        xf = x.to(torch.float32).contiguous()
        n = xf.shape[0]
        if isinstance(g, (ParallelBeam2D, FanBeam2D)):
            out = torch.empty(self._proj_buffer_shape_2d(n), dtype=torch.float32, device=x.device)
            self._op_2d(n).fp(xf, out)
            out = out.reshape(n, g.num_views, g.detector_count)
        else:
            out = torch.empty((n,) + g.projection_shape, dtype=torch.float32, device=x.device)
            op = self._op_3d()
            for i in range(n):
                op.fp(xf[i], out[i])
        return out.to(x.dtype)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        g = self.geometry
        yf = y.to(torch.float32).contiguous()
        n = yf.shape[0]
        if isinstance(g, (ParallelBeam2D, FanBeam2D)):
            out = torch.empty((n,) + tuple(g.image_shape), dtype=torch.float32, device=y.device)
            self._op_2d(n).bp(out, yf.reshape(self._proj_buffer_shape_2d(n)))
        else:
            out = torch.empty((n,) + tuple(g.volume_shape), dtype=torch.float32, device=y.device)
            op = self._op_3d()
            for i in range(n):
                op.bp(out[i], yf[i])
        return out.to(y.dtype)

    def close(self) -> None:
        for op in self._batch_ops.values():
            op.close()
        self._batch_ops.clear()
        if self._op3d is not None:
            self._op3d.close()
            self._op3d = None

    def __del__(self):  # pragma: no cover
        try:
            self.close()
        except Exception:  # noqa: BLE001
            pass


# exported for tests that check the vector construction on CPU
_ = (ConeBeam3D, ParallelBeam3D)
