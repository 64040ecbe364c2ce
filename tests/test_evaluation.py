"""The evaluation library: cases, runner, report schema, baselines, tuning grids, machine (tiny data)."""

import json

import numpy as np
import pytest
import torch

from operators.units import hu_to_mu
from tomo.evaluation.cases import (
    Slice,
    build_cases,
    build_operators,
    load_ct_tune_slices,
    load_dev_axial_slices,
    load_dev_reformats,
    load_dev_slices,
    load_train_slices,
    task_reference,
)
from tomo.evaluation.machine import machine_info
from tomo.evaluation.report import (
    Record,
    Summary,
    mean_table,
    per_case_tables,
    settings_table,
    summarise,
    write_json,
    write_section,
)
from tomo.evaluation.runner import evaluate, evaluate_registry, evaluate_task, registry_options, task_cases
from tomo.evaluation.scores import (
    Z_90,
    calibration_factor,
    coverage_from_quantiles,
    error_to_std_quantile,
    error_to_std_quantiles,
    interval_coverage,
    psnr,
    z_difference_rmse,
)
from tomo.evaluation.simulation import simulate_volume
from tomo.evaluation.tuning import append_json_line, parse_grid, parse_settings, settings_grid
from tomo.methods import MethodOption, MethodRegistry


def _disk(n=32, radius=0.35, hu_in=0.0):
    yy, xx = np.mgrid[:n, :n] / n - 0.5
    return np.where(xx**2 + yy**2 < radius**2, hu_in, -1000.0).astype(np.float32)


@pytest.fixture
def slices():
    return [Slice("a", _disk(), (1.0, 1.0)), Slice("b", _disk(hu_in=200.0), (1.0, 1.0))]


# ----- cases -------------------------------------------------------------------------------------
def test_build_cases_simulates_with_seed_plus_index(slices):
    cases = build_cases(slices, "parallel-8", seed=5)
    assert [(c.name, c.config, c.index) for c in cases] == [("a", "parallel-8", 0), ("b", "parallel-8", 1)]
    direct = simulate_volume(slices[1].hu, (1.0, 1.0), "parallel-8", seed=6, progress=False)
    np.testing.assert_array_equal(cases[1].data.sinogram, direct.sinogram)
    assert cases[1].problem.i0 == direct.i0 and cases[1].geometry == direct.geometry
    assert len(build_operators(cases)) == 2 and cases[0].problem._operator is not None


def test_loaders_refuse_a_folder_without_the_slices(tmp_path):
    with pytest.raises(FileNotFoundError, match="--data"):
        load_dev_slices(tmp_path)
    with pytest.raises(FileNotFoundError, match="--data"):
        load_train_slices(tmp_path)
    with pytest.raises(FileNotFoundError, match="--data"):
        load_ct_tune_slices(tmp_path)


def test_load_ct_tune_slices_upsamples_onto_a_finer_grid(tmp_path):
    folder = tmp_path / "train" / "ct-1.5mm"
    folder.mkdir(parents=True)
    hu = np.stack([_disk(16), _disk(16, hu_in=300.0)])
    np.savez(folder / "p.npz", hu=hu, spacing_mm=np.array([1.5, 1.5, 3.0]))
    (native,) = load_ct_tune_slices(tmp_path, (("p.npz", 1),))
    (fine,) = load_ct_tune_slices(tmp_path, (("p.npz", 1),), upsample=2)
    assert native.name == fine.name == "p.npz[1]"
    np.testing.assert_array_equal(native.hu, hu[1])
    assert native.pixel_spacing_mm == (1.5, 1.5) and fine.pixel_spacing_mm == (0.75, 0.75)
    assert fine.hu.shape == (32, 32) and fine.hu.dtype == np.float32
    assert fine.hu.max() == pytest.approx(300.0) and fine.hu.min() == pytest.approx(-1000.0)


def test_load_dev_slices_reads_every_dicom_sorted(tmp_path):
    from tomo.io.dicom_write import write_series

    for study in ("p2", "p1"):
        write_series(
            _disk()[None],
            tmp_path / "dev" / "dicom" / study,
            pixel_spacing_mm=0.8,
            description="test",
            derivation="test",
        )
    got = load_dev_slices(tmp_path)
    assert [s.name for s in got] == ["p1/CT000001.dcm", "p2/CT000001.dcm"]
    assert got[0].hu.shape == (32, 32) and got[0].pixel_spacing_mm == pytest.approx((0.8, 0.8))
    np.testing.assert_allclose(got[0].hu, _disk(), atol=1.0)
    assert len(load_dev_slices(tmp_path, limit=1)) == 1


def test_real_dev_set_is_the_18_slices(shared_data):
    names = [s.name for s in load_dev_slices(shared_data)]
    assert len(names) == 18 and names == sorted(names)


def test_real_dev_axial_set_covers_the_five_patients_and_reformats_stay_apart(shared_data):
    axial, reformats = load_dev_axial_slices(shared_data), load_dev_reformats(shared_data)
    names = [s.name for s in axial]
    assert len(axial) == 10 and all("/coronal/" not in n and "/sagittal/" not in n for n in names)
    patients = {n.split("/")[2].split("[")[0] for n in names}  # A046441 ... and the two ct-native files
    assert len(patients) == 5, patients
    assert len(reformats) == 12 and not set(names) & {s.name for s in reformats}
    assert all(s.hu.shape == (512, 512) for s in axial)


def test_task_reference_longer_side_and_multiple():
    ref = task_reference(np.full((300, 200), 5000.0, np.float32), size=256, multiple=4)
    assert ref.shape == (256, 172) and ref.dtype == np.float32
    assert ref.max() == pytest.approx(3071.0)  # clipped to the HU range before resizing


# ----- runner ------------------------------------------------------------------------------------
def test_evaluate_scores_against_the_reference(slices):
    cases = build_cases(slices, "parallel-8")
    perfect = evaluate(
        lambda sino, case: torch.from_numpy(hu_to_mu(case.data.hu_reference)), cases, name="oracle", verbose=False
    )
    assert all(r.psnr > 60 and r.ssim == pytest.approx(1.0, abs=1e-4) for r in perfect)
    fbp = evaluate_registry("fbp", cases, verbose=False)
    assert [r.case for r in fbp] == ["a", "b"] and all(np.isfinite(r.psnr) and r.psnr < 60 for r in fbp)
    assert all(r.network_evaluations == 0 and r.seconds >= 0 for r in fbp)


def test_evaluate_scores_the_interval_of_a_method_with_a_std(slices):
    """A method that returns (mu, std): coverage of mean +- 1.645 std over tissue pixels."""
    cases = build_cases(slices, "parallel-8")[:1]
    ref = torch.from_numpy(hu_to_mu(cases[0].data.hu_reference))
    offset = 0.02 * 0.0192  # 20 HU off everywhere

    def method(std_hu):
        return lambda sino, case: (ref + offset, torch.full_like(ref, std_hu * 0.0192 / 1000))

    wide = evaluate(method(100.0), cases, name="wide", verbose=False)[0]  # 20 HU < 164.5 HU
    narrow = evaluate(method(5.0), cases, name="narrow", verbose=False)[0]  # 20 HU > 8.2 HU
    assert wide.coverage == 1.0 and narrow.coverage == 0.0
    assert narrow.error_std_q90 == pytest.approx(4.0, rel=1e-3)  # |error| / std = 20 / 5
    assert summarise([wide])[0].coverage == 1.0 and "coverage" in wide.as_dict()
    assert evaluate_registry("fbp", cases, verbose=False)[0].coverage is None


def test_coverage_scores_of_gaussian_errors_and_their_calibration():
    gen = np.random.default_rng(0)
    truth = gen.normal(0.0, 200.0, (128, 128))
    std = np.full_like(truth, 20.0)
    mean = truth + gen.normal(0.0, 40.0, truth.shape)  # errors twice the stated std
    assert interval_coverage(mean, std, truth) == pytest.approx(0.59, abs=0.02)  # P(|z| < 0.82)
    factor = error_to_std_quantile(mean, std, truth) / Z_90
    assert factor == pytest.approx(2.0, rel=0.03)
    assert interval_coverage(mean, factor * std, truth) == pytest.approx(0.90, abs=0.005)
    quantiles = error_to_std_quantiles(mean, std, truth)  # stored results, calibrated afterwards
    assert calibration_factor([quantiles, quantiles]) == pytest.approx(factor, rel=0.01)
    for c in (0.5, 1.0, factor, 3.0):
        assert coverage_from_quantiles(quantiles, c) == pytest.approx(interval_coverage(mean, c * std, truth), abs=2e-3)
    air = np.full_like(truth, -1000.0)
    with pytest.raises(ValueError, match="tissue"):
        interval_coverage(mean, std, air)


def test_z_difference_rmse_sees_slice_to_slice_noise_that_a_constant_bias_hides():
    truth = np.zeros((4, 8, 8)) + np.arange(4)[:, None, None] * 10.0
    assert z_difference_rmse(truth + 50.0, truth) == 0.0
    noisy = truth + np.array([0.0, 5.0, 0.0, 5.0])[:, None, None]
    assert z_difference_rmse(noisy, truth) == pytest.approx(5.0)
    with pytest.raises(ValueError, match="slices"):
        z_difference_rmse(truth[:1], truth[:1])


def test_evaluate_registry_passes_settings_and_seeds_each_case(slices):
    registry = MethodRegistry()
    seen = []

    def run(sinogram, problem, *, seed=0, level=0.0):
        seen.append((seed, level))
        return torch.full((sinogram.shape[0],) + problem.geometry.image_shape, level)

    registry.register(
        "const",
        run,
        help="constant",
        options=(MethodOption("--seed", "seed", int), MethodOption("--level", "level", float)),
    )
    cases = build_cases(slices, "parallel-8")
    records = evaluate_registry("const", cases, {"level": 0.01}, registry=registry, verbose=False)
    assert seen == [(0, 0.01), (1, 0.01)]
    assert records[0].settings == {"level": 0.01}
    evaluate_registry("const", cases, {"seed": 7}, registry=registry, verbose=False)
    assert seen[-2:] == [(7, 0.0), (7, 0.0)]


def test_registry_options_for_the_diffusion_solvers():
    opts = registry_options(
        "dds", {"bf16": True, "weighted": True, "model_error": 0.05, "init": None, "start": 0.2, "steps": 5}
    )
    assert opts == {"autocast_dtype": torch.bfloat16, "init": "none", "start": 1.0, "steps": 5}
    with pytest.raises(ValueError, match="weighted=false"):
        registry_options("dds", {"weighted": False})
    with pytest.raises(ValueError, match="model_error"):
        registry_options("dps", {"model_error": 0.1})
    assert registry_options("tv", {"model_error": 0.1}) == {"model_error": 0.1}  # TV's own option


def test_wiener_baseline_beats_the_blurred_image():
    hu = _disk(64, 0.3, 400.0)
    hu[20:28, 30:34] = 1000.0
    [case] = task_cases([Slice("s", hu, (1.0, 1.0))], "deblur", noise_hu=2.0, size=64)
    (rec,) = evaluate_task("wiener", [case], {"balance": 0.005}, verbose=False)
    assert rec.psnr > psnr(case.measurement.numpy(), case.reference) + 1.0
    assert rec.config == "deblur" and rec.network_evaluations == 0


# ----- report ------------------------------------------------------------------------------------
def _records():
    return [
        Record("s1", "p30", "fbp", 20.0, 0.5, 1.0),
        Record("s2", "p30", "fbp", 22.0, 0.7, 3.0),
        Record("s1", "p30", "dds", 25.0, 0.8, 10.0, 50, {"steps": 50}),
    ]


def test_summarise_means_and_order():
    fbp, dds = summarise(_records())
    assert (fbp.method, fbp.n, fbp.psnr, fbp.psnr_std, fbp.seconds) == ("fbp", 2, 21.0, 1.0, 2.0)
    assert fbp.ssim == pytest.approx(0.6) and fbp.cases == ["s1", "s2"] and fbp.psnr_each == [20.0, 22.0]
    assert (dds.network_evaluations, dds.settings) == (50, {"steps": 50})
    assert Summary.from_dict(json.loads(json.dumps(dds.as_dict()))) == dds


def test_json_keys_of_the_committed_reports(tmp_path):
    recs = _records()
    write_json(tmp_path / "r.json", {"command": "x"}, summarise(recs), recs)
    data = json.loads((tmp_path / "r.json").read_text())
    assert set(data) == {"meta", "runs", "records"}
    assert {"config", "method", "slice", "psnr", "ssim", "seconds", "network_evaluations"} <= set(data["records"][0])
    assert {"n", "psnr", "ssim", "seconds_per_slice", "nfe", "settings", "slices", "psnr_each"} <= set(data["runs"][0])


def test_markdown_tables():
    summaries = summarise(_records())
    lines = settings_table(summaries)
    assert lines[0] == "| config | method | settings | n | PSNR [dB] | SSIM | s / slice | network evals |"
    assert lines[2] == "| p30 | fbp | default | 2 | 21.00 | 0.6000 | 2.0 | 0 |"
    assert lines[3] == "| p30 | dds | steps=50 | 1 | 25.00 | 0.8000 | 10.0 | 50 |"
    assert mean_table(summaries)[2] == "| p30 | fbp | 2 | 21.00 (1.00) | 0.6000 (0.1000) | 2.00 |"
    per_case = per_case_tables(_records())
    assert "| slice | fbp | dds |" in per_case and "| s2 | 22.00 / 0.700 | - |" in per_case


def test_write_section_replaces_only_its_block(tmp_path):
    path = tmp_path / "b.md"
    path.write_text("# title\n\nnotes\n")
    write_section(path, "ct", "first")
    write_section(path, "tasks", "tasks")
    write_section(path, "ct", "second")
    text = path.read_text()
    assert text.startswith("# title\n\nnotes\n") and "first" not in text
    assert text.index("<!-- ct:begin -->\nsecond\n<!-- ct:end -->") < text.index("<!-- tasks:begin -->")


# ----- tuning grids and machine ------------------------------------------------------------------
def test_parse_grid_and_settings_grid():
    grid = parse_grid(["eta=0.5,0.85", "steps=10", "init=none,tv", "bf16=true"])
    assert grid == {"eta": [0.5, 0.85], "steps": [10], "init": [None, "tv"], "bf16": [True]}
    combos = list(settings_grid({"a": [1, 2], "b": ["x", "y"]}, {"c": 0}))
    assert combos[:2] == [{"c": 0, "a": 1, "b": "x"}, {"c": 0, "a": 1, "b": "y"}] and len(combos) == 4
    assert list(settings_grid({}, {"c": 0})) == [{"c": 0}]
    with pytest.raises(ValueError, match="key=v1"):
        parse_grid(["eta"])


def test_machine_info_describes_hardware_and_software():
    info = machine_info()
    assert info.cores >= 1 and info.threads == torch.get_num_threads() and info.torch == torch.__version__
    assert f"torch {torch.__version__}" in info.describe() and set(info.as_dict()) >= {"cpu", "astra", "date"}


def test_parse_settings_and_json_lines(tmp_path, capsys):
    assert parse_settings("") == {}
    assert parse_settings("steps=25, dds_tv=3e-4,init=none") == {"steps": 25, "dds_tv": 3e-4, "init": None}
    with pytest.raises(ValueError, match="key=value"):
        parse_settings("steps")
    out = tmp_path / "rows.jsonl"
    append_json_line(out, {"a": 1})
    append_json_line(out, {"b": 2})
    append_json_line(None, {"c": 3})  # printed only
    assert [json.loads(line) for line in out.read_text().splitlines()] == [{"a": 1}, {"b": 2}]
    assert capsys.readouterr().out.count("\n") == 3
