"""`tomo demo` end to end with the fast methods (the diffusion methods run in benchmarks)."""

import csv

from tomo.cli.main import main


def test_demo_writes_table_figure_scan_and_dicom(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--methods", "fbp,sirt", "--out", str(out)]) == 0  # --quiet would silence the table
    printed = capsys.readouterr().out
    assert "PSNR" in printed and "fbp" in printed
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert [r["method"] for r in rows] == ["fbp", "sirt"]
    # 30 noisy views of a real slice: FBP is poor but far from random, SIRT better than FBP
    fbp, sirt = (float(r["psnr_db"]) for r in rows)
    assert 18 < fbp < 40 and sirt > fbp
    assert (out / "comparison.png").stat().st_size > 10_000
    assert (out / "scan.npz").exists()
    dicom_files = list((out / "dicom").glob("*.dcm"))
    assert len(dicom_files) == 1


def test_demo_refuses_non_empty_output(tmp_path, capsys):
    (tmp_path / "keep.txt").write_text("user data")
    assert main(["demo", "--methods", "fbp", "--out", str(tmp_path), "--quiet"]) == 2
    assert "not empty" in capsys.readouterr().err
    assert (tmp_path / "keep.txt").read_text() == "user data"


def test_demo_unknown_method_is_a_one_line_error(tmp_path, capsys):
    assert main(["demo", "--methods", "magic", "--out", str(tmp_path / "d"), "--quiet"]) == 2
    assert "unknown method" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


def test_demo_runs_dps_at_the_default_of_reconstruct():
    """No --dps-steps: the demo's DPS is ``tomo reconstruct --method dps`` as shipped (its successor's
    defaults), not the 1000-step reference; --dps-steps still overrides the steps."""
    from argparse import Namespace

    from tomo.cli.demo import DEMO_DPS_STEPS, _method_options

    assert DEMO_DPS_STEPS is None
    assert _method_options("dps", Namespace(seed=3, prior=None, dps_steps=None)) == {"seed": 3}
    assert _method_options("dps", Namespace(seed=3, prior=None, dps_steps=7))["steps"] == 7
