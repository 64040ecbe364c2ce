"""CT projectors: attenuation mu [1/mm] -> line integrals [dimensionless], as torch linear operators.

Backends
--------
``"matrix"`` (CPU default for 2D)
    ASTRA's CPU system matrix ``W`` (``astra.projector.matrix``) converted once per geometry to a
    torch sparse CSR matrix and cached (LRU). Forward is ``W @ X`` and back-projection
    ``W^T @ Y`` for the batch stacked as columns (in cache-sized blocks); a CSR copy of ``W^T``
    is kept because a CSR product is much faster than a CSC one. The matrix *is* ASTRA's CPU
    projector, so results equal ``astra.create_sino``/``create_backprojection`` to float32
    rounding, and forward/back-projection are exactly adjoint. Works for float32 and float64
    (the float64 copy holds the same float32 weights, exactly). A torch sparse matrix can be
    moved to a CUDA device too (``CTProjector(g, device="cuda")``).
``"astra"`` (CPU fallback)
    One ASTRA call per slice (``astra.experimental.direct_FP2D``/``direct_BP2D``, the same CPU
    algorithm as ``create_sino``/``create_backprojection`` without the data-object copies), in
    float32. Chosen automatically when the cached matrices would exceed the memory bound.
    On a CUDA device the same matrices live on the GPU: the default there for 2D geometries
    (exactly adjoint, and on an H200 as fast as or faster than ASTRA's kernels except parallel
    beam at 512 px / 180 views, docs/benchmarks_operators.md).
``"cuda"`` (default for 3D on a CUDA device; 2D parallel beam when asked, or too big for a matrix)
    ASTRA's 3D CUDA kernels on torch CUDA tensors without copies (see :mod:`operators.cuda`).
    Not for 2D fan beam: ASTRA's cone-beam back-projector weights voxels for a 2D detector, so
    a fan beam run as a one-row cone beam is not adjoint (55 % error measured on an H200).

Projector kernels (2D CPU)
--------------------------
* parallel beam: ASTRA ``"linear"`` (Joseph's method: linear interpolation between the two pixels
  a ray crosses in each row/column). It is the same model as ASTRA's CUDA projector, smooth in the
  angle, and has about 2 weights per crossed row, ~3x fewer than the area-weighted ``"strip"``.
* fan beam: ASTRA ``"line_fanflat"`` (exact intersection length of the ray with each pixel); ASTRA
  has no Joseph fan-beam CPU kernel, only ``line_fanflat`` and the ~3x denser ``strip_fanflat``.

Memory
------
A cached matrix pair takes about ``2 * nnz * (4 + 4)`` bytes in float32 (values + int32 column
indices, for ``W`` and ``W^T``) plus the row pointers; e.g. 256 x 256 image, 180 views, 384 bins:
21.2 M non-zeros, ~0.34 GB. :func:`estimate_matrix_bytes` predicts it from the geometry before
building; above ``operators.settings.max_matrix_bytes`` (default 2 GiB,
:func:`set_matrix_cache_limits`) the projector falls back to the ``"astra"`` backend. The
process-wide cache holds at most ``settings.max_total_bytes`` (default 4 GiB) and evicts the
least recently used geometry (:func:`matrix_cache_info`, :func:`clear_matrix_cache`).

Threads
-------
CPU calls run under ``operators.settings.threads`` (default 1, see :mod:`operators.settings`)
or the operator's own ``num_threads``.
"""

from __future__ import annotations

import threading
import warnings
from collections import OrderedDict
from contextlib import contextmanager

import numpy as np
import torch

from .base import AdjointOperator, LinearOperator
from .geometry import FanBeam2D, Geometry, ParallelBeam2D, _Beam2D, _Beam3D
from .settings import set_threads, settings, torch_threads

__all__ = [
    "CTProjector",
    "estimate_matrix_bytes",
    "system_matrix",
    "set_matrix_cache_limits",
    "set_matrix_threads",
    "matrix_cache_info",
    "clear_matrix_cache",
    "default_projector_type",
]


def set_matrix_threads(n: int) -> int:
    """Older spelling of :func:`operators.set_threads` (``0`` meaning ``None``: torch's own
    setting); returns the previous value the same way (``None`` as 0)."""
    n = int(n)
    if n < 0:
        raise ValueError(f"threads must be >= 0, got {n}")
    old = set_threads(n or None)
    return old or 0


def default_projector_type(geometry: Geometry) -> str:
    """ASTRA CPU projector used for a 2D geometry: ``"linear"`` (parallel) or ``"line_fanflat"`` (fan)."""
    if isinstance(geometry, FanBeam2D):
        return "line_fanflat"
    if isinstance(geometry, ParallelBeam2D):
        return "linear"
    raise TypeError(f"no ASTRA CPU projector for {type(geometry).__name__}")


@contextmanager
def astra_projector(geometry: _Beam2D, projector_type: str | None = None):
    """Context manager yielding an ASTRA 2D CPU projector id for ``geometry``; always deleted."""
    import astra

    vol_geom, proj_geom = geometry.to_astra()
    pid = astra.create_projector(projector_type or default_projector_type(geometry), proj_geom, vol_geom)
    try:
        yield pid
    finally:
        astra.projector.delete(pid)


# ----- memory estimate ----------------------------------------------------------------------------
def _ray_chords(geometry: _Beam2D):
    """Per ray: chord length through the image box (mm) and the ray direction (unit vector)."""
    th = geometry.angles_array[:, None]
    n = geometry.detector_count
    u = (np.arange(n) - (n - 1) / 2) * geometry.detector_spacing_mm  # detector coordinate, mm
    if isinstance(geometry, FanBeam2D):
        so, od = geometry.source_origin_mm, geometry.origin_detector_mm
        src = np.stack([np.sin(th) * so, -np.cos(th) * so], -1) * np.ones((1, n, 1))
        det = np.stack([-np.sin(th) * od + np.cos(th) * u, np.cos(th) * od + np.sin(th) * u], -1)
    else:
        big = 1e3 * max(geometry.extent_mm)  # parallel ray = segment far longer than the image
        centre = np.stack([np.cos(th) * u, np.sin(th) * u], -1)
        d = np.stack([np.sin(th), -np.cos(th)], -1) * np.ones((1, n, 1))
        src, det = centre - big * d, centre + big * d
    direction = det - src
    length = np.linalg.norm(direction, axis=-1)
    direction = direction / length[..., None]
    hy, hx = geometry.extent_mm[0] / 2, geometry.extent_mm[1] / 2
    # slab method: entry/exit parameters along each axis
    with np.errstate(divide="ignore", invalid="ignore"):
        t0 = np.full(length.shape, -np.inf)
        t1 = np.full(length.shape, np.inf)
        for k, h in ((0, hx), (1, hy)):
            dk, sk = direction[..., k], src[..., k]
            a, b = (-h - sk) / dk, (h - sk) / dk
            lo, hi = np.minimum(a, b), np.maximum(a, b)
            parallel_to_axis = np.abs(dk) < 1e-12
            inside = np.abs(sk) <= h
            lo = np.where(parallel_to_axis, np.where(inside, -np.inf, np.inf), lo)
            hi = np.where(parallel_to_axis, np.where(inside, np.inf, -np.inf), hi)
            t0, t1 = np.maximum(t0, lo), np.minimum(t1, hi)
    chord = np.clip(t1 - t0, 0, None)
    return chord, direction


def estimate_nnz(geometry: _Beam2D, projector_type: str | None = None) -> int:
    """Predicted number of non-zeros of ASTRA's system matrix (within ~10 %), without building it."""
    ptype = projector_type or default_projector_type(geometry)
    chord, d = _ray_chords(geometry)
    px = geometry.pixel_spacing_mm
    hit = chord > 0
    ax, ay = np.abs(d[..., 0]), np.abs(d[..., 1])
    if ptype == "linear":  # Joseph: 2 weights per row (or column) stepped along the main axis
        per_ray = 2 * chord * np.maximum(ax, ay) / px + 2
    elif ptype in ("line", "line_fanflat"):  # pixels crossed by a line
        per_ray = chord * (ax + ay) / px + 1
    else:  # strip kernels: a band one detector bin wide
        per_ray = chord * (ax + ay) / px + 1 + 2 * chord * np.maximum(ax, ay) / px
    return int(np.sum(np.where(hit, per_ray, 0.0)))


def _bytes_for(nnz: int, rows: int, cols: int, dtype: torch.dtype, transpose: bool) -> int:
    value = torch.empty((), dtype=dtype).element_size()
    index = 4 if max(nnz, rows, cols) < 2**31 - 1 else 8
    one = nnz * (value + index) + (rows + 1) * index
    return one + (nnz * (value + index) + (cols + 1) * index if transpose else 0)


def estimate_matrix_bytes(
    geometry: _Beam2D, dtype: torch.dtype = torch.float32, projector_type: str | None = None
) -> int:
    """Predicted memory (bytes) of the cached ``W`` and ``W^T`` CSR pair for ``geometry``."""
    if not isinstance(geometry, _Beam2D):
        raise TypeError(f"system matrices exist for 2D geometries only, got {type(geometry).__name__}")
    h, w = geometry.image_shape
    return _bytes_for(
        estimate_nnz(geometry, projector_type),
        geometry.num_views * geometry.detector_count,
        h * w,
        dtype,
        transpose=True,
    )


# ----- cache ----------------------------------------------------------------------------------------
class _MatrixCache:
    """LRU cache of system matrices, keyed by geometry, projector type and dtype; its bound is
    ``settings.max_total_bytes`` at the time of each insertion."""

    def __init__(self):
        self.entries: OrderedDict[tuple, tuple] = OrderedDict()
        self.lock = threading.Lock()

    @property
    def total_bytes(self) -> int:
        return sum(e[2] for e in self.entries.values())

    def get(self, key):
        with self.lock:
            if key in self.entries:
                self.entries.move_to_end(key)
                return self.entries[key]
        return None

    def put(self, key, entry):
        with self.lock:
            self.entries[key] = entry
            self.entries.move_to_end(key)
            while len(self.entries) > 1 and self.total_bytes > settings.max_total_bytes:
                self.entries.popitem(last=False)


#: the process-wide matrix cache (matrices are shared by every projector of the same geometry)
_CACHE = _MatrixCache()


def set_matrix_cache_limits(max_matrix_bytes: int | None = None, max_total_bytes: int | None = None) -> dict:
    """Set ``settings.max_matrix_bytes`` (one cached matrix pair) and ``settings.max_total_bytes``
    (the whole cache), in bytes; ``None`` keeps a bound. Returns both bounds."""
    if max_matrix_bytes is not None:
        settings.max_matrix_bytes = max_matrix_bytes
    if max_total_bytes is not None:
        settings.max_total_bytes = max_total_bytes
    return _limits()


def _limits() -> dict:
    return {"max_matrix_bytes": settings.max_matrix_bytes, "max_total_bytes": settings.max_total_bytes}


def matrix_cache_info() -> dict:
    """``{"entries": [(geometry type, views, dtype, bytes), ...], "total_bytes": ..., limits}``."""
    with _CACHE.lock:
        entries = [(k[3], k[4], str(k[2]), v[2]) for k, v in _CACHE.entries.items()]
        total = _CACHE.total_bytes
    return {"entries": entries, "total_bytes": total, **_limits()}


def clear_matrix_cache() -> None:
    """Drop every cached system matrix."""
    with _CACHE.lock:
        _CACHE.entries.clear()


def _to_torch_csr(m, dtype: torch.dtype) -> torch.Tensor:
    idx = np.int32 if max(m.nnz, *m.shape) < 2**31 - 1 else np.int64
    with warnings.catch_warnings():  # "sparse CSR support is in beta": we rely only on CSR @ dense
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(
            torch.from_numpy(np.ascontiguousarray(m.indptr, dtype=idx)),
            torch.from_numpy(np.ascontiguousarray(m.indices, dtype=idx)),
            torch.from_numpy(np.ascontiguousarray(m.data)).to(dtype),
            size=m.shape,
            check_invariants=False,
        )


def system_matrix(geometry: _Beam2D, dtype: torch.dtype = torch.float32, projector_type: str | None = None) -> tuple:
    """ASTRA's CPU system matrix of ``geometry`` as torch CSR tensors ``(W, W^T, nbytes)`` (cached).

    ``W`` has shape ``(views * detectors, H * W)``: row ``v * detectors + d`` holds the weights
    (mm, intersection lengths) of ray ``(v, d)``; image pixels are in row-major order.
    """
    import astra

    ptype = projector_type or default_projector_type(geometry)
    key = (geometry.to_json(), ptype, dtype, type(geometry).__name__, geometry.num_views)
    hit = _CACHE.get(key)
    if hit is not None:
        return hit
    with astra_projector(geometry, ptype) as pid:
        mid = astra.projector.matrix(pid)
        try:
            m = astra.matrix.get(mid)
        finally:
            astra.matrix.delete(mid)
    m = m.tocsr()
    m.sum_duplicates()
    m.data = m.data.astype(np.float32)  # ASTRA's weights are float32; keep them bit-identical
    w = _to_torch_csr(m, dtype)
    wt = _to_torch_csr(m.T.tocsr(), dtype)
    nbytes = sum(
        t.values().element_size() * t.values().numel()
        + t.col_indices().element_size() * t.col_indices().numel()
        + t.crow_indices().element_size() * t.crow_indices().numel()
        for t in (w, wt)
    )
    entry = (w, wt, nbytes)
    _CACHE.put(key, entry)
    return entry


#: bytes of the dense right-hand side per sparse product, forward and adjoint (see _blocked_product)
_BLOCK_BYTES = {"forward": 4 * 2**20, "adjoint": 8 * 2**20}


def _blocked_product(m: torch.Tensor, rows: torch.Tensor, budget: int) -> torch.Tensor:
    """``m @ rows.T`` for a CSR ``m`` and a batch ``rows`` ``[N, K]``; returns ``[M, N]``.

    The batch goes through in blocks of a power-of-two number of columns whose dense operand
    fits ``budget`` bytes: the product reads that operand at scattered rows, and once it falls
    out of cache the cost jumps. Measured (1 thread, batch 16): 512 x 512, 180 views, forward
    3.3 / 1.9 / 1.2 / 1.4 / 2.0 s in blocks of 1 / 2 / 4 / 8 / 16, adjoint 3.0 / 1.5 / 1.0 /
    0.6 / 0.7 s; 256 x 256 blocks of 8-16 were best for both.
    """
    n, k = rows.shape
    fit = max(1, budget // (k * rows.element_size()))
    block = 1 << (fit.bit_length() - 1)  # largest power of two <= fit
    if block >= n:
        return m @ rows.T.contiguous()
    return torch.cat([m @ rows[i : i + block].T.contiguous() for i in range(0, n, block)], dim=1)


# ----- operator -------------------------------------------------------------------------------------
_BACKENDS = ("auto", "matrix", "astra", "cuda")
# Measured on an NVIDIA H200 (2026-11-26): ASTRA's cone-beam back-projector weights each voxel by the
# squared magnification (right for a 2D detector), so a fan beam run as a one-row cone is not
# adjoint to its forward projection: <Ax, y> and <x, A^T y> differed by 55 %.
_FAN_CUDA_MESSAGE = (
    "ASTRA's CUDA kernels have no matched 2D fan-beam back-projection (the cone-beam "
    "back-projector is weighted for a 2D detector: 55 % adjoint error measured)"
)


class CTProjector(LinearOperator):
    """X-ray transform of a CT geometry: ``mu`` [1/mm] on the image grid -> line integrals [1].

    Parameters
    ----------
    geometry : ParallelBeam2D, FanBeam2D, ParallelBeam3D or ConeBeam3D
        Acquisition geometry in mm (ASTRA conventions, see :mod:`operators.geometry`).
    device : str or torch.device
        ``"cpu"`` or a CUDA device.
    backend : {"auto", "matrix", "astra", "cuda"}
        See the module docstring. ``"auto"``: ``"matrix"`` unless the matrices would exceed
        ``max_matrix_bytes``, then ``"astra"`` on CPU or ``"cuda"`` (parallel beam) on a CUDA
        device; 3D geometries always ``"cuda"``.
    projector_type : str, optional
        ASTRA CPU projector (default ``"linear"`` parallel, ``"line_fanflat"`` fan).
    max_matrix_bytes : int, optional
        Memory bound for this operator's cached matrix pair (default:
        ``operators.settings.max_matrix_bytes``, 2 GiB, see :func:`set_matrix_cache_limits`).
    num_threads : int, optional
        CPU threads of this operator's calls (input checks and sparse products); default
        ``operators.settings.threads`` read at each call (1 unless changed with
        :func:`operators.set_threads`); 0 = leave torch's setting alone.

    Shapes
    ------
    2D: ``in_shape = (H, W)``, ``out_shape = (views, detector_count)``.
    3D: ``in_shape = (D, H, W)``, ``out_shape = (detector_rows, views, detector_cols)`` (ASTRA's).

    Notes
    -----
    A uniform disk of radius ``r`` mm and attenuation ``mu`` /mm projects to ``2 r mu`` through
    its centre. The forward/adjoint pair is exactly matched on the CPU backends; ASTRA's CUDA
    kernels are matched only approximately (ray-driven FP, voxel-driven BP).
    """

    def __init__(
        self,
        geometry: Geometry,
        device: str | torch.device = "cpu",
        backend: str = "auto",
        projector_type: str | None = None,
        max_matrix_bytes: int | None = None,
        num_threads: int | None = None,
    ):
        if not isinstance(geometry, (_Beam2D, _Beam3D)):
            raise TypeError(
                f"geometry must be ParallelBeam2D, FanBeam2D, ParallelBeam3D or ConeBeam3D, "
                f"got {type(geometry).__name__}"
            )
        if backend not in _BACKENDS:
            raise ValueError(f"backend must be one of {_BACKENDS}, got {backend!r}")
        try:
            device = torch.device(device)
        except (RuntimeError, TypeError) as exc:
            raise ValueError(f"invalid device {device!r}") from exc
        self.geometry = geometry
        if isinstance(geometry, _Beam2D):
            out_shape = geometry.sinogram_shape
        else:
            out_shape = geometry.projection_shape
        super().__init__(geometry.image_shape, out_shape, device)
        self.projector_type = projector_type
        self.max_matrix_bytes = int(max_matrix_bytes) if max_matrix_bytes is not None else None
        if num_threads is not None and int(num_threads) < 0:
            raise ValueError(f"num_threads must be >= 0 (0 = torch's setting), got {num_threads}")
        self.num_threads = None if num_threads is None else int(num_threads)
        self.backend = self._choose_backend(backend)
        self._impl = None
        self._device_matrices: dict = {}
        if self.backend == "cuda":
            from .cuda import AstraCudaProjector

            self._impl = AstraCudaProjector(geometry, self.device)
            self.supported_dtypes = (torch.float32, torch.float64)
        elif self.backend == "astra":
            default_projector_type(geometry)  # raises for 3D
        if self.backend in ("matrix", "astra") and projector_type is not None:
            with astra_projector(geometry, projector_type):
                pass  # fail now, with ASTRA's message, for an unknown projector type

    # ----- backend choice -----------------------------------------------------------------------------
    def _choose_backend(self, backend: str) -> str:
        g = self.geometry
        is_cuda = self.device.type == "cuda"
        if self.device.type not in ("cpu", "cuda"):
            raise ValueError(f"CTProjector supports device 'cpu' or 'cuda', got {self.device}")
        if is_cuda and not torch.cuda.is_available():
            raise ValueError("device='cuda' requested but torch sees no CUDA device; use device='cpu'")
        if backend == "auto":
            if is_cuda and isinstance(g, _Beam3D):
                return "cuda"
            if is_cuda:
                # 2D on a GPU: the cached matrix is exactly adjoint and was as fast or faster than
                # ASTRA's kernels on an H200 (docs/benchmarks_operators.md); ASTRA only where the
                # matrix is too big, and never for fan beam (no matched back-projector).
                if self.estimated_matrix_bytes() <= self._bound():
                    return "matrix"
                if isinstance(g, FanBeam2D):
                    raise ValueError(
                        _FAN_CUDA_MESSAGE + f"; its matrix ({self.estimated_matrix_bytes() / 2**30:.1f} "
                        f"GiB) exceeds max_matrix_bytes: raise it (set_matrix_cache_limits)"
                    )
                return "cuda"
            if isinstance(g, _Beam3D):
                raise ValueError(
                    f"{type(g).__name__} needs ASTRA's CUDA kernels: use device='cuda' (ASTRA has no CPU 3D projector)"
                )
            return "matrix" if self.estimated_matrix_bytes() <= self._bound() else "astra"
        if backend == "cuda" and not is_cuda:
            raise ValueError("backend='cuda' needs device='cuda'")
        if backend == "cuda" and isinstance(g, FanBeam2D):
            raise ValueError(_FAN_CUDA_MESSAGE + "; use backend='matrix' (the default on CUDA)")
        if backend in ("matrix", "astra") and isinstance(g, _Beam3D):
            raise ValueError(f"backend={backend!r} supports 2D geometries only; {type(g).__name__} needs device='cuda'")
        if backend == "astra" and is_cuda:
            raise ValueError("backend='astra' (per-slice CPU calls) needs device='cpu'")
        return backend

    def _bound(self) -> int:
        return self.max_matrix_bytes if self.max_matrix_bytes is not None else settings.max_matrix_bytes

    def estimated_matrix_bytes(self, dtype: torch.dtype = torch.float32) -> int:
        """Predicted bytes of this geometry's cached ``W``/``W^T`` pair (2D only)."""
        return estimate_matrix_bytes(self.geometry, dtype, self.projector_type)

    @property
    def matrix_bytes(self) -> int | None:
        """Bytes of the float32 matrix pair if it is cached (built on first use), else ``None``."""
        key = (
            self.geometry.to_json(),
            self.projector_type or default_projector_type(self.geometry),
            torch.float32,
            type(self.geometry).__name__,
            self.geometry.num_views,
        )
        hit = _CACHE.get(key) if isinstance(self.geometry, _Beam2D) else None
        return None if hit is None else hit[2]

    # ----- kernels --------------------------------------------------------------------------------------
    def _threads(self) -> int | None:
        """Threads for this call: ``None`` = leave torch's setting alone (always on a GPU)."""
        if self.device.type != "cpu":
            return None
        if self.num_threads is None:
            return settings.threads
        return self.num_threads or None

    def _matrices(self, dtype):
        if self.device.type != "cpu":  # GPU copy kept by this operator (not in the CPU cache's budget)
            if dtype not in self._device_matrices:
                w, wt, _ = system_matrix(self.geometry, dtype, self.projector_type)
                self._device_matrices[dtype] = (w.to(self.device), wt.to(self.device))
            return self._device_matrices[dtype]
        w, wt, _ = system_matrix(self.geometry, dtype, self.projector_type)
        return w, wt

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # validation and reshapes run under the same thread setting as the products: a
        # 2-thread isfinite() over a batch stalled ~90 ms on the loaded 2-core machine
        with torch_threads(self._threads()):
            return super().forward(x)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        with torch_threads(self._threads()):
            return super().adjoint(y)

    @property
    def T(self) -> AdjointOperator:
        """The adjoint as an operator (``A.T(y) == A.adjoint(y)``), same thread setting."""
        return _CTAdjoint(self)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        if self.backend == "matrix":
            w, _ = self._matrices(x.dtype)
            with torch_threads(self._threads()):
                y = _blocked_product(w, x.reshape(n, -1), _BLOCK_BYTES["forward"])
            return y.T.reshape((n,) + self.out_shape).contiguous()
        if self.backend == "astra":
            return self._astra_loop(x, forward=True)
        return self._impl.forward(x)

    def _adjoint(self, y: torch.Tensor) -> torch.Tensor:
        n = y.shape[0]
        if self.backend == "matrix":
            _, wt = self._matrices(y.dtype)
            with torch_threads(self._threads()):
                x = _blocked_product(wt, y.reshape(n, -1), _BLOCK_BYTES["adjoint"])
            return x.T.reshape((n,) + self.in_shape).contiguous()
        if self.backend == "astra":
            return self._astra_loop(y, forward=False)
        return self._impl.adjoint(y)

    def _astra_loop(self, t: torch.Tensor, forward: bool) -> torch.Tensor:
        """One ASTRA CPU call per slice, float32 (ASTRA computes in float32)."""
        import astra.experimental as ax

        src = t.detach().to(torch.float32).contiguous().numpy()
        out_shape = self.out_shape if forward else self.in_shape
        out = np.empty((src.shape[0],) + out_shape, dtype=np.float32)
        with astra_projector(self.geometry, self.projector_type) as pid:
            for i in range(src.shape[0]):
                if forward:
                    ax.direct_FP2D(pid, src[i], out[i])
                else:
                    ax.direct_BP2D(pid, out[i], src[i])
        return torch.from_numpy(out).to(t.dtype)

    def __repr__(self) -> str:
        return (
            f"CTProjector({type(self.geometry).__name__}, in_shape={self.in_shape}, "
            f"out_shape={self.out_shape}, device={self.device}, backend={self.backend!r})"
        )


class _CTAdjoint(AdjointOperator):
    """``CTProjector.T``: an :class:`AdjointOperator` that keeps the projector's thread setting."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch_threads(self.op._threads()):
            return super().forward(x)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        with torch_threads(self.op._threads()):
            return super().adjoint(y)
