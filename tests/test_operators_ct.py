"""CTProjector on the CPU: units, agreement with ASTRA, exact adjoints, gradients, memory bound, bad input."""

import astra
import numpy as np
import pytest
import torch

from operators import (
    ConeBeam3D,
    CTProjector,
    FanBeam2D,
    ParallelBeam2D,
    ParallelBeam3D,
    clear_matrix_cache,
    estimate_matrix_bytes,
    matrix_cache_info,
    set_matrix_cache_limits,
)
from operators.ct import astra_projector, default_projector_type


def par(n=32, views=12, px=0.8):
    return ParallelBeam2D((n, n), px, np.linspace(0, np.pi, views, endpoint=False), int(1.5 * n), px)


def fan(n=32, views=16, px=0.8):
    return FanBeam2D((n, n), px, np.linspace(0, 2 * np.pi, views, endpoint=False), 2 * n, 1.5 * px, 2 * n * px, n * px)


GEOMETRIES = {"parallel": par, "fan": fan}
BACKENDS = ["matrix", "astra"]


def disk(g, radius_mm, mu):
    h, w = g.image_shape
    p = g.pixel_spacing_mm
    # 8x8 supersampled disk so its area (and projection) is accurate
    ss = 8
    y = (h / 2 - (np.arange(h * ss) + 0.5) / ss) * p
    x = ((np.arange(w * ss) + 0.5) / ss - w / 2) * p
    inside = (x[None, :] ** 2 + y[:, None] ** 2) <= radius_mm**2
    return torch.from_numpy(inside.reshape(h, ss, w, ss).mean(axis=(1, 3)) * mu)


@pytest.mark.parametrize("name", GEOMETRIES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_uniform_disk_gives_2_r_mu_through_centre(name, backend):
    g = GEOMETRIES[name](n=64, views=8)
    r, mu = 10.0, 0.0192
    s = CTProjector(g, backend=backend)(disk(g, r, mu))
    c = g.detector_count // 2  # even count: the centre lies between bins c-1 and c
    centre = s[:, c - 1 : c + 1].mean(dim=1)
    # chord at the bin centres (+-half a bin width from the axis), at the rotation axis for fan beam
    half_bin = 0.5 * g.detector_spacing_mm / (g.magnification if name == "fan" else 1.0)
    expected = 2 * mu * np.sqrt(r**2 - half_bin**2)
    assert torch.allclose(centre, torch.full_like(centre, expected), rtol=0.01), (centre, expected)


@pytest.mark.parametrize("name", GEOMETRIES)
def test_matrix_path_matches_astra_calls(name):
    g = GEOMETRIES[name]()
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(3, *g.image_shape, generator=gen)
    y = torch.rand(3, *g.sinogram_shape, generator=gen)
    A = CTProjector(g, backend="matrix")
    fx, bty = A(x), A.T(y)
    with astra_projector(g) as pid:
        for i in range(3):
            sid, ref = astra.create_sino(x[i].numpy(), pid)
            astra.data2d.delete(sid)
            bid, bref = astra.create_backprojection(y[i].numpy(), pid)
            astra.data2d.delete(bid)
            # float32 sums in a different order: ~1e-7 relative
            assert np.abs(fx[i].numpy() - ref).max() <= 1e-5 * np.abs(ref).max()
            assert np.abs(bty[i].numpy() - bref).max() <= 1e-5 * np.abs(bref).max()


@pytest.mark.parametrize("name", GEOMETRIES)
def test_astra_backend_equals_matrix_backend(name):
    g = GEOMETRIES[name]()
    x = torch.rand(2, *g.image_shape, generator=torch.Generator().manual_seed(1))
    a, m = CTProjector(g, backend="astra"), CTProjector(g, backend="matrix")
    assert torch.allclose(a(x), m(x), rtol=1e-5, atol=1e-6 * float(m(x).abs().max()))


@pytest.mark.parametrize("name", GEOMETRIES)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dot_product_adjoint(name, backend, dtype):
    """<A x, y> == <x, A^T y>; relative error |<Ax,y> - <x,A^T y>| / (|Ax| |y|), measured here:
    matrix float64 0 .. 8e-18, matrix float32 1e-9 .. 2e-9; astra backend (float32 inside,
    for either input dtype) 1e-10 .. 4.5e-9."""
    g = GEOMETRIES[name]()
    A = CTProjector(g, backend=backend)
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(4, 1, *A.in_shape, generator=gen, dtype=dtype)
    y = torch.randn(4, 1, *A.out_shape, generator=gen, dtype=dtype)
    ax, aty = A(x), A.T(y)
    lhs, rhs = float((ax * y).sum()), float((x * aty).sum())
    # normalised by |Ax| |y| (Cauchy-Schwarz bound of both sides), not by |lhs|, which can be
    # small by cancellation for random vectors
    rel = abs(lhs - rhs) / float(ax.norm() * y.norm())
    exact = backend == "matrix" and dtype == torch.float64
    print(f"adjoint {name}/{backend}/{dtype}: relative error {rel:.2e}")
    assert rel < (1e-14 if exact else 1e-6), rel


@pytest.mark.parametrize("name", GEOMETRIES)
def test_gradcheck_float64(name):
    g = GEOMETRIES[name](n=8, views=4)
    A = CTProjector(g, backend="matrix")
    x = torch.randn(2, 8, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(A, (x,), eps=1e-6, atol=1e-8, fast_mode=True)
    y = torch.randn(2, *A.out_shape, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(A.T, (y,), eps=1e-6, atol=1e-8, fast_mode=True)
    # second derivatives go through the adjoint again (base class wiring)
    assert torch.autograd.gradgradcheck(A, (x,), eps=1e-6, atol=1e-8, fast_mode=True)


def test_batch_shapes_and_leading_dims():
    A = CTProjector(par())
    x = torch.rand(2, 3, 32, 32)
    y = A(x)
    assert y.shape == (2, 3, 12, 48)
    assert torch.allclose(y[1, 2], A(x[1, 2]), rtol=1e-5, atol=1e-6)
    assert A.T(y).shape == (2, 3, 32, 32)


def test_memory_estimate_and_fallback():
    clear_matrix_cache()
    g = par(n=48, views=20)
    est = estimate_matrix_bytes(g)
    A = CTProjector(g)
    assert A.backend == "matrix"
    A(torch.zeros(48, 48))  # builds the matrix
    actual = A.matrix_bytes
    assert actual is not None and abs(est - actual) / actual < 0.15, (est, actual)
    info = matrix_cache_info()
    assert info["total_bytes"] >= actual and len(info["entries"]) >= 1
    # above the bound: ASTRA's per-slice calls instead, same numbers
    B = CTProjector(g, max_matrix_bytes=est // 2)
    assert B.backend == "astra"
    x = torch.rand(2, 48, 48, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(A(x), B(x), rtol=1e-5, atol=1e-6)


def test_cache_evicts_least_recently_used():
    clear_matrix_cache()
    old = set_matrix_cache_limits()
    try:
        g1, g2 = par(n=24, views=6), par(n=24, views=7)
        CTProjector(g1)(torch.zeros(24, 24))
        one = matrix_cache_info()["total_bytes"]
        set_matrix_cache_limits(max_total_bytes=int(one * 1.5))
        CTProjector(g2)(torch.zeros(24, 24))
        entries = matrix_cache_info()["entries"]
        assert len(entries) == 1 and entries[0][1] == 7  # g1 evicted
    finally:
        set_matrix_cache_limits(**{k: old[k] for k in ("max_matrix_bytes", "max_total_bytes")})
        clear_matrix_cache()


def test_projector_types():
    assert default_projector_type(par()) == "linear"
    assert default_projector_type(fan()) == "line_fanflat"
    A = CTProjector(par(), projector_type="strip")
    x = torch.rand(32, 32, dtype=torch.float64)
    y = torch.rand(*A.out_shape, dtype=torch.float64)
    assert abs(float((A(x) * y).sum() - (x * A.T(y)).sum())) < 1e-10 * float((A(x) * y).sum())
    with pytest.raises(Exception):
        CTProjector(par(), projector_type="no-such-projector")


# ----- bad input ---------------------------------------------------------------------------------------
def test_bad_inputs_are_refused_clearly():
    A = CTProjector(par())
    with pytest.raises(ValueError, match="must end in the image shape"):
        A(torch.zeros(31, 32))
    with pytest.raises(ValueError, match="measurement shape"):
        A.adjoint(torch.zeros(12, 47))
    with pytest.raises(TypeError, match="floating-point"):
        A(torch.zeros(32, 32, dtype=torch.int64))
    with pytest.raises(TypeError, match="torch.Tensor"):
        A(np.zeros((32, 32)))
    with pytest.raises(ValueError, match="NaN or Inf"):
        A(torch.full((32, 32), float("nan")))
    with pytest.raises(TypeError, match="supports dtypes"):
        A(torch.zeros(32, 32, dtype=torch.float16))
    with pytest.raises(TypeError, match="geometry"):
        CTProjector({"type": "ParallelBeam2D"})
    with pytest.raises(ValueError, match="backend"):
        CTProjector(par(), backend="gpu-magic")
    with pytest.raises(ValueError, match="device"):
        CTProjector(par(), device="not-a-device")


def test_3d_geometries_need_cuda_on_cpu():
    g3 = ParallelBeam3D((4, 16, 16), 1.0, [0.0, 1.0], 6, 24, (1.0, 1.0))
    with pytest.raises(ValueError, match="CUDA"):
        CTProjector(g3)
    c3 = ConeBeam3D((4, 16, 16), 1.0, [0.0, 1.0], 6, 24, (1.0, 1.0), source_origin_mm=40, origin_detector_mm=10)
    with pytest.raises(ValueError, match="2D geometries only"):
        CTProjector(c3, backend="matrix")


@pytest.mark.skipif(torch.cuda.is_available() and astra.use_cuda(), reason="this machine has CUDA")
def test_cuda_request_without_gpu_raises_clear_error():
    # must be a Python exception, not a process abort inside ASTRA
    with pytest.raises(ValueError, match="CUDA|cuda"):
        CTProjector(par(), device="cuda")


def test_matrix_threads_setting_is_restored():
    from operators import set_matrix_threads

    before = torch.get_num_threads()
    old = set_matrix_threads(1)
    try:
        A = CTProjector(par(), num_threads=1)
        A(torch.rand(32, 32))
        assert torch.get_num_threads() == before
        with pytest.raises(ValueError, match=">= 0"):
            set_matrix_threads(-1)
    finally:
        set_matrix_threads(old)


def test_thread_setting_reaches_the_projector_and_fbp(monkeypatch):
    """operators.settings.threads is what the sparse products and FBP run with; None lets
    torch.set_num_threads (e.g. the command's --threads) through; num_threads overrides both."""
    import operators.ct as ct
    from operators import FBP, fbp, set_threads

    seen = []
    product, backproject = ct._blocked_product, FBP.backproject

    def spy_product(*args):
        seen.append(torch.get_num_threads())
        return product(*args)

    def spy_backproject(self, q):
        seen.append(torch.get_num_threads())
        return backproject(self, q)

    monkeypatch.setattr(ct, "_blocked_product", spy_product)
    monkeypatch.setattr(FBP, "backproject", spy_backproject)
    g = par()
    x, y = torch.rand(32, 32), torch.rand(*g.sinogram_shape)

    def threads_seen(op):
        seen.clear()
        op(x), op.T(y), op.adjoint(y), fbp(y, g)
        return seen[:]

    outside = torch.get_num_threads()
    other = outside + 1
    old = set_threads(other)
    try:
        assert threads_seen(CTProjector(g)) == [other] * 4
        assert torch.get_num_threads() == outside  # restored after each call
        set_threads(None)  # follow torch's own setting
        torch.set_num_threads(other)
        assert threads_seen(CTProjector(g)) == [other] * 4
        # a per-operator setting wins over the global one (FBP keeps the global: the 4th entry)
        assert threads_seen(CTProjector(g, num_threads=1)) == [1, 1, 1, other]
    finally:
        set_threads(old)
        torch.set_num_threads(outside)
    with pytest.raises(ValueError, match="threads"):
        set_threads(0)


def test_all_threads_sets_torch_and_the_operators_for_a_block():
    from operators.settings import all_threads, settings

    outside, before = torch.get_num_threads(), settings.threads
    with all_threads(outside + 1):
        assert (torch.get_num_threads(), settings.threads) == (outside + 1, outside + 1)
    with all_threads(None):  # torch's own setting, which the operators then follow
        assert (torch.get_num_threads(), settings.threads) == (outside, None)
    assert (torch.get_num_threads(), settings.threads) == (outside, before)


def test_blocked_products_equal_one_product(monkeypatch):
    """Batches go through the sparse product in cache-sized blocks; the result must not change."""
    import operators.ct as ct

    A = CTProjector(par())
    x = torch.rand(5, 32, 32, generator=torch.Generator().manual_seed(4))
    y = torch.rand(5, *A.out_shape, generator=torch.Generator().manual_seed(5))
    whole_f, whole_b = A(x), A.T(y)
    monkeypatch.setattr(ct, "_BLOCK_BYTES", {"forward": 2 * 32 * 32 * 4, "adjoint": 3 * 12 * 48 * 4})
    assert torch.equal(A(x), whole_f) and torch.equal(A.T(y), whole_b)
