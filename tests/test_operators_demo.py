"""The README demo runs, writes a PNG and reports sane numbers (tiny grid)."""
from operators.demo import run_demo


def test_run_demo_small(tmp_path):
    out = tmp_path / "sub" / "demo.png"
    rows = run_demo(out, size=32)
    assert out.is_file() and out.stat().st_size > 1000
    assert [r["geometry"] for r in rows] == ["parallel", "fan beam"]
    for r in rows:
        assert r["adjoint_rel_error"] < 1e-14
        assert r["fbp_rel_error"] < 0.25  # 32x32 is coarse; 128x128 gives ~0.065
        assert r["seconds"] > 0
