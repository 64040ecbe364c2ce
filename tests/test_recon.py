"""Classical reconstruction: SIRT, CGLS, TV (Chambolle-Pock), FBP wrapper and the method registry.

Small problems (32 x 32 Shepp-Logan, a few tens of views) so the whole file runs in seconds.
"""

import itertools
import math

import numpy as np
import pytest
import torch

from operators import CTProjector, ParallelBeam2D, shepp_logan
from operators.base import LinearOperator
from tomo.methods import classical as methods_module
from tomo.methods.registry import MethodOption, MethodRegistry, default_registry, get_method, reconstruct
from tomo.recon import cgls, fbp_reconstruct, gradient, gradient_adjoint, sirt, total_variation, tv_pdhg

N, PX = 32, 2.0


def _geometry(views=24, det=48):
    return ParallelBeam2D(
        image_shape=(N, N),
        pixel_spacing_mm=PX,
        angles=np.linspace(0, np.pi, views, endpoint=False),
        detector_count=det,
        detector_spacing_mm=PX,
    )


@pytest.fixture(scope="module")
def problem():
    g = _geometry()
    op = CTProjector(g)
    x = shepp_logan((N, N), PX)
    return g, op, x, op(x)


def _rel(a, b):
    return float((a - b).norm() / b.norm())


def test_gradient_adjoint_dot_product():
    """<grad u, g> == <u, grad^T g>: measured relative error ~1e-16 in float64."""
    gen = torch.Generator().manual_seed(0)
    u = torch.randn(3, 7, 9, generator=gen, dtype=torch.float64)
    g = torch.randn(3, 2, 7, 9, generator=gen, dtype=torch.float64)
    lhs = float((gradient(u) * g).sum())
    rhs = float((u * gradient_adjoint(g)).sum())
    assert abs(lhs - rhs) <= 1e-12 * abs(lhs)


def test_total_variation_of_a_step():
    u = torch.zeros(1, 4, 6)
    u[:, :, 3:] = 2.0  # a vertical edge of height 2 over 4 rows
    assert float(total_variation(u)) == pytest.approx(8.0)


def test_sirt_converges_and_stays_non_negative(problem):
    _, op, x, y = problem
    residuals = []
    rec = sirt(
        op,
        y,
        iterations=200,
        progress=False,
        callback=lambda k, xk: residuals.append(float((op(xk) - y).norm())) and None,
    )
    assert rec.shape == x.shape and float(rec.min()) >= 0.0
    assert residuals[-1] < 0.1 * residuals[0]
    assert all(b <= a * (1 + 1e-4) for a, b in itertools.pairwise(residuals)), "SIRT residual must not grow"
    assert _rel(rec, x) < 0.25  # measured 0.17 after 200 iterations (slowly converging)


def test_cgls_converges_on_consistent_data(problem):
    _, op, x, y = problem
    normal_res = []
    rec = cgls(
        op,
        y,
        iterations=60,
        progress=False,
        callback=lambda k, xk: normal_res.append(float(op.adjoint(y - op(xk)).norm())) and None,
    )
    assert normal_res[-1] < 1e-2 * normal_res[0]
    assert _rel(rec, x) < 0.15  # measured 0.09 (24 views x 48 bins for 32 x 32 unknowns)


def test_cgls_tolerance_stops_early(problem):
    _, op, _, y = problem
    seen = []
    cgls(op, y, iterations=500, tol=1e-2, progress=False, callback=lambda k, xk: seen.append(k) and None)
    assert 1 < len(seen) < 500


def test_cgls_uniform_weights_change_nothing(problem):
    _, op, _, y = problem
    a = cgls(op, y, iterations=10, progress=False)
    b = cgls(op, y, iterations=10, weights=torch.full_like(y, 7.0), progress=False)
    assert _rel(b, a) < 1e-4


def test_tv_beats_fbp_on_sparse_views_and_is_non_negative():
    g = _geometry(views=10)
    op = CTProjector(g)
    x = shepp_logan((N, N), PX)
    y = op(x)
    rec = tv_pdhg(op, y, weight=1e-4, iterations=400, progress=False)
    fbp_err = _rel(fbp_reconstruct(y, g), x)
    assert float(rec.min()) >= 0.0
    assert _rel(rec, x) < 0.5 * fbp_err, f"TV {_rel(rec, x):.3f} vs FBP {fbp_err:.3f}"


def test_tv_objective_decreases(problem):
    """The normalised objective of the module docstring decreases from the start to the end."""
    _, op, x, y = problem
    weight = 1e-3
    c = op.norm() * 0.0192

    def objective(mu):
        return float(0.5 * ((op(mu) - y) ** 2).sum() / c**2 + weight * total_variation(mu[None] / 0.0192))

    start = torch.zeros_like(x) + 0.01
    values = []
    tv_pdhg(
        op,
        y,
        weight=weight,
        iterations=300,
        x0=start,
        progress=False,
        callback=lambda k, m: values.append(objective(m[0])) and None,
    )
    assert values[-1] < 0.2 * objective(start)
    assert abs(values[-1] - values[-50]) < 1e-3 * abs(values[-1]), "TV did not settle in 300 iterations"


def test_tv_weight_orders_smoothness(problem):
    """Weight 0 is non-negative least squares (close to the truth on consistent data); a larger
    weight gives a smaller total variation (measured 3.48, 3.09, 1.87 at 200 iterations)."""
    _, op, x, y = problem
    recs = tv_pdhg(op, torch.stack([y, y, y]), weight=[0.0, 1e-4, 1e-2], iterations=200, progress=False)
    tvs = [float(t) for t in total_variation(recs)]
    assert tvs[0] > tvs[1] > tvs[2]
    assert _rel(recs[0], x) < 0.06  # measured 0.033


@pytest.mark.parametrize(
    "solver, kwargs",
    [
        (sirt, dict(iterations=40, tol=1e-3)),
        (cgls, dict(iterations=40, tol=1e-2)),
        (tv_pdhg, dict(weight=1e-3, iterations=60, tol=1e-3)),
    ],
)
def test_batch_equals_per_slice(problem, solver, kwargs):
    """Items meeting the stopping rule are frozen, so a batch gives the per-item results."""
    _, op, x, y = problem
    y2 = torch.stack([y, 0.5 * op(x.flip(0))])
    batched = solver(op, y2, progress=False, **kwargs)
    for i in range(2):
        single = solver(op, y2[i], progress=False, **kwargs)
        assert _rel(batched[i], single) < 1e-5


def test_tv_per_item_weights_equal_separate_runs(problem):
    _, op, _, y = problem
    both = tv_pdhg(op, torch.stack([y, y]), weight=[1e-4, 1e-2], iterations=30, progress=False)
    for i, w in enumerate((1e-4, 1e-2)):
        assert _rel(both[i], tv_pdhg(op, y, weight=w, iterations=30, progress=False)) < 1e-5


def test_solvers_validate_input(problem):
    _, op, _, y = problem
    with pytest.raises(ValueError, match="shape"):
        sirt(op, y[:, :-1], iterations=2, progress=False)
    with pytest.raises(ValueError, match="non-negative"):
        cgls(op, y, weights=-torch.ones_like(y), iterations=2, progress=False)
    with pytest.raises(ValueError, match="broadcast"):
        cgls(op, y, weights=torch.ones(3), iterations=2, progress=False)
    with pytest.raises(ValueError, match="iterations"):
        cgls(op, y, iterations=-1, progress=False)
    with pytest.raises(ValueError, match="relaxation"):
        sirt(op, y, relaxation=2.5, progress=False)
    with pytest.raises(ValueError, match="TV weight"):
        tv_pdhg(op, y, weight=-1.0, progress=False)
    with pytest.raises(ValueError, match="NaN"):
        tv_pdhg(op, y * float("nan"), weight=1.0, progress=False)
    with pytest.raises(TypeError, match="LinearOperator"):
        sirt(np.eye(3), y, progress=False)


def test_callback_can_stop(problem):
    _, op, _, y = problem
    seen = []
    sirt(op, y, iterations=50, progress=False, callback=lambda k, x: seen.append(k) or k == 3)
    assert seen == [1, 2, 3]


def test_generic_linear_operator():
    """The solvers need only a LinearOperator (here an explicit well-conditioned matrix)."""

    class Dense(LinearOperator):
        def __init__(self, m):
            super().__init__((m.shape[1],), (m.shape[0],))
            self.m = m

        def _forward(self, x):
            return x @ self.m.T

        def _adjoint(self, y):
            return y @ self.m

    gen = torch.Generator().manual_seed(0)
    m = torch.rand(40, 10, generator=gen, dtype=torch.float64) + 0.1
    x = torch.rand(10, generator=gen, dtype=torch.float64)
    rec = cgls(Dense(m), m @ x, iterations=30, progress=False)
    assert _rel(rec, x) < 1e-8


# ----- registry and reconstruct() ------------------------------------------------------------------
def test_reconstruct_shapes_and_methods(problem):
    g, _op, x, y = problem
    for name in ("fbp", "sirt", "cgls", "tv"):
        opts = {} if name == "fbp" else {"iterations": 20}
        if name == "tv":
            opts["tv_weight"] = 1e-3
        one = reconstruct(y.numpy(), g, name, progress=False, **opts)
        assert one.shape == (N, N) and one.dtype == torch.float32
        many = reconstruct(torch.stack([y, y, y]), g, name, progress=False, batch_size=2, **opts)
        assert many.shape == (3, N, N)
        assert _rel(many[2], one) < 1e-5, name
    assert _rel(reconstruct(y, g, "tv", tv_weight=1e-4, iterations=300, progress=False), x) < 0.2


def test_reconstruct_rejects_bad_requests(problem):
    g, _, _, y = problem
    with pytest.raises(ValueError, match="unknown method 'art'"):
        reconstruct(y, g, "art")
    with pytest.raises(ValueError, match="no option"):
        reconstruct(y, g, "sirt", tv_weight=1.0)
    with pytest.raises(ValueError, match="sinogram must be"):
        reconstruct(y[:-1], g, "fbp")
    with pytest.raises(TypeError, match="floating point"):
        reconstruct(y.numpy().astype(np.int32), g, "fbp")
    with pytest.raises(ValueError, match="i0"):
        reconstruct(y, g, "fbp", i0=-1)


def test_register_method_plugin(problem):
    """A method added by another package is callable through reconstruct() with its own options."""
    g, _, _, y = problem
    calls = {}

    def run(sinogram, prob, *, steps=5):
        calls["steps"], calls["i0"] = steps, prob.i0
        assert prob.operator.in_shape == (N, N)
        return torch.zeros((sinogram.shape[0], N, N), device=prob.device)

    registry = MethodRegistry()
    registry.register("dummy-test", run, help="test", options=(MethodOption("--steps", "steps", int, "steps"),))
    with pytest.raises(ValueError, match="already registered"):
        registry.register("dummy-test", run, help="again")
    out = reconstruct(y, g, "dummy-test", i0=1e5, steps=9, progress=False, registry=registry)
    assert out.shape == (N, N) and calls == {"steps": 9, "i0": 1e5}
    assert registry.get_method("dummy-test").option_names == ("steps",)
    assert "dummy-test" not in default_registry()  # an explicit registry stays apart
    with pytest.raises(ValueError, match="unknown method"):
        get_method("dummy-test")


def test_tv_default_weight_scales_with_views_per_half_turn():
    from tomo.evaluation.simulation import CONFIGS, protocol_geometry

    w = {
        name: methods_module.tv_default_weight(protocol_geometry(c.geometry, c.views, 300.0), c.i0)
        for name, c in CONFIGS.items()
    }
    assert all(math.isfinite(v) and v > 0 for v in w.values())
    assert w["fanbeam-60"] == pytest.approx(w["parallel-30"])  # 60 fan views over 2 pi ~ 30 per half turn
    assert w["parallel-8"] == pytest.approx(w["parallel-30"] * 30 / 8)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_solvers_run_on_cuda(problem):
    g, _, x, y = problem
    mu = reconstruct(y, g, "tv", device="cuda", tv_weight=1e-4, iterations=300, progress=False)
    assert mu.device.type == "cuda"
    assert _rel(mu.cpu(), x) < 0.25
