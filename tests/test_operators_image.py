"""Image-domain operators: exact adjoints, kernels, shapes, masks, bad input."""

import math

import pytest
import torch

from operators import Downsample, GaussianBlur, Identity, Inpaint, MotionBlur, Outpaint, box_mask, random_mask
from operators.image import Convolution, gaussian_kernel, motion_kernel

SHAPE = (32, 32)


def operators():
    return {
        "identity": Identity(SHAPE),
        "gaussian": GaussianBlur(SHAPE, 1.5),
        "gaussian_k5": GaussianBlur(SHAPE, 2.0, kernel_size=5),
        "motion": MotionBlur(SHAPE, 9, math.radians(30)),
        "down2": Downsample(SHAPE, 2),
        "down4": Downsample(SHAPE, 4),
        "inpaint_box": Inpaint(box_mask(SHAPE, (8, 8, 10, 12))),
        "inpaint_random": Inpaint(random_mask(SHAPE, 0.5, seed=3)),
        "outpaint": Outpaint(SHAPE, 0.5),
        "asymmetric_conv": Convolution(SHAPE, torch.arange(15.0).reshape(3, 5)),
    }


@pytest.mark.parametrize("name", list(operators()))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dot_product_adjoint(name, dtype):
    """Relative error |<Ax,y> - <x,A^T y>| / (|Ax| |y|), measured on this machine:
    float64 0 .. 1e-17, float32 0 .. 1.2e-8 (down2)."""
    A = operators()[name]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, *A.in_shape, generator=g, dtype=dtype)
    y = torch.randn(2, 3, *A.out_shape, generator=g, dtype=dtype)
    ax, aty = A(x), A.T(y)
    lhs, rhs = float((ax * y).sum()), float((x * aty).sum())
    # normalised by |Ax| |y| (Cauchy-Schwarz bound of both sides), not by |lhs|, which can be
    # small by cancellation for random vectors
    rel = abs(lhs - rhs) / float(ax.norm() * y.norm())
    print(f"adjoint {name}/{dtype}: relative error {rel:.1e}")
    assert rel < (1e-14 if dtype == torch.float64 else 1e-6), rel


def test_blurs_preserve_constants_away_from_edges():
    x = torch.ones(1, 1, *SHAPE)
    for A in (GaussianBlur(SHAPE, 1.5), MotionBlur(SHAPE, 7, 0.3)):
        y = A(x)
        assert torch.allclose(y[..., 10:22, 10:22], torch.ones(12, 12), atol=1e-6)
        assert float(y[..., 0, 0]) < 1  # zero padding darkens the border


def test_kernels():
    k = gaussian_kernel(1.0)
    assert k.shape == (7, 7) and float(k.sum()) == pytest.approx(1.0)
    m = motion_kernel(8, 0.0)
    assert float(m.sum()) == pytest.approx(1.0)
    # horizontal motion: all weight on the centre row, spread over ~8 columns
    r = m.shape[0] // 2
    assert float(m[r].sum()) == pytest.approx(1.0)
    assert int((m[r] > 0).sum()) in (9, 10)
    v = motion_kernel(8, math.pi / 2)
    assert torch.allclose(v, m.T, atol=1e-12)


def test_downsample_block_average_and_adjoint():
    A = Downsample((4, 4), 2)
    x = torch.arange(16.0).reshape(4, 4)
    assert torch.equal(A(x), torch.tensor([[2.5, 4.5], [10.5, 12.5]]))
    y = torch.rand(2, 2)
    assert torch.allclose(A(A.T(y)), y / 4)


def test_masks():
    m = box_mask((10, 10), (2, 3, 4, 5))
    assert int((~m).sum()) == 20 and not bool(m[2, 3]) and bool(m[0, 0])
    r = random_mask((20, 20), 0.25, seed=7)
    assert int((~r).sum()) == 100
    assert torch.equal(r, random_mask((20, 20), 0.25, seed=7))
    assert not torch.equal(r, random_mask((20, 20), 0.25, seed=8))
    o = Outpaint((10, 10), (4, 6))
    assert int(o.mask.sum()) == 24 and bool(o.mask[5, 5]) and not bool(o.mask[0, 0])
    A = Inpaint(m)
    x = torch.rand(10, 10)
    assert torch.equal(A(x), x * m)
    assert A.fraction_observed == pytest.approx(0.8)


def test_bad_input():
    with pytest.raises(ValueError, match="sigma_px"):
        GaussianBlur(SHAPE, 0.0)
    with pytest.raises(ValueError, match="odd"):
        GaussianBlur(SHAPE, 1.0, kernel_size=4)
    with pytest.raises(ValueError, match="length_px"):
        MotionBlur(SHAPE, -1, 0.0)
    with pytest.raises(ValueError, match="2 or 4"):
        Downsample(SHAPE, 3)
    with pytest.raises(ValueError, match="divisible"):
        Downsample((30, 30), 4)
    with pytest.raises(ValueError, match="0 and 1"):
        Inpaint(torch.full(SHAPE, 0.5))
    with pytest.raises(TypeError, match="torch.Tensor"):
        Inpaint([[1, 0], [0, 1]])
    with pytest.raises(ValueError, match="does not fit"):
        box_mask(SHAPE, (30, 30, 5, 5))
    with pytest.raises(ValueError, match="fraction_missing"):
        random_mask(SHAPE, 1.0)
    with pytest.raises(ValueError, match="larger than the image"):
        Outpaint(SHAPE, (40, 10))
    with pytest.raises(ValueError, match="image shape"):
        GaussianBlur(SHAPE, 1.0)(torch.zeros(31, 32))
