"""The operators quick start (examples/operators_quickstart.py) runs, writes a PNG, reports sane numbers."""

import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "operators_quickstart.py"


def test_quickstart_script_runs_on_a_tiny_grid(tmp_path):
    out = tmp_path / "sub" / "demo.png"
    done = subprocess.run(
        [sys.executable, str(EXAMPLE), str(out), "--size", "32"], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert out.is_file() and out.stat().st_size > 1000
    rows = [line.split() for line in done.stdout.splitlines() if line.startswith(("parallel", "fan"))]
    assert [r[0] for r in rows] == ["parallel", "fan"]
    for r in rows:
        adjoint_err, fbp_err = float(r[-4]), float(r[-3])  # columns: ... adjoint, FBP rel, MAE, time
        assert adjoint_err < 1e-14
        assert fbp_err < 0.25  # 32x32 is coarse; 128x128 gives ~0.065
