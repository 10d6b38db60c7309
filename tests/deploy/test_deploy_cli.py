"""``cimcal deploy`` and ``cimcal demo`` from the command line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cimcal.cli import main


@pytest.fixture()
def checkpoint(trained_small, digits, profile, tmp_path):
    from cimcal.analog import AnalogConfig
    from cimcal.train.builtin import config_to_json, json_safe
    from cimcal.train.checkpoint import save_checkpoint

    meta = {"task": "digits", "task_options": {}, "task_info": json_safe(digits.info), "split_seed": 0,
            "model": "mlp", "hparams": {"hidden": [8]}, "method": "clean", "seed": 0,
            "analog_config": config_to_json(AnalogConfig(compile=False)), "profile_sha256": [profile.sha256]}
    profile_path = profile.save(tmp_path / "chip.cimprof")
    return save_checkpoint(tmp_path / "small.ckpt", trained_small, meta), profile_path


def test_deploy_command_prints_on_chip_beside_predicted_as_json(checkpoint, capsys):
    ckpt, profile_path = checkpoint
    rc = main(["deploy", str(ckpt), "--profile", str(profile_path), "--mc", "1", "--json", "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0, out
    result = json.loads(out)
    assert result["metric"] == "accuracy" and 0.0 <= result["on_chip"] <= 1.0
    assert result["gap"] == pytest.approx(result["on_chip"] - result["predicted"])
    assert result["instrument_idn"].startswith("CIMCAL,SIMCHIP-RRAM")
    assert result["state_path"].endswith("small.ckpt.deploy.json")
    assert {layer["layer"] for layer in result["layers"]} == {"net.1", "net.3"}


def test_deploy_command_refuses_a_missing_checkpoint_with_exit_code_2(tmp_path, capsys):
    profile = tmp_path / "p.cimprof"
    profile.write_bytes(b"")
    rc = main(["deploy", str(tmp_path / "nope.ckpt"), "--profile", str(profile)])
    assert rc == 2
    assert capsys.readouterr().err.startswith("error:")


@pytest.mark.slow
def test_demo_quick_runs_the_whole_loop_and_writes_the_report(tmp_path, capsys):
    rc = main(["demo", "--quick", "--workdir", str(tmp_path / "demo"), "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0, out
    for method in ("clean", "gaussian", "STE-LUT"):
        assert method in out
    report = (tmp_path / "demo" / "report.html").read_text()
    assert "predicted vs on-chip" in report and "data:image/png;base64" in report
    results = json.loads((tmp_path / "demo" / "results.json").read_text())
    assert [row["method"] for row in results["rows"]] == ["clean", "gaussian", "ste"]
    assert results["validation_passed"] is True
    assert all(0.0 <= row["on_chip"] <= 1.0 for row in results["rows"])
    # 3 simulated instances in the quick run: the chip matched or beat 0, 1, 2 or 3 of them
    assert all(row["on_chip_rank"] in (0.0, 1 / 3, 2 / 3, 1.0) for row in results["rows"])
    assert "rank: share of the simulated chip instances" in out
    # gaussian and STE-LUT fine-tune the clean model; all three train, predict and deploy with pair compensation
    from cimcal.data.sources import sha256_file
    from cimcal.train.checkpoint import load_checkpoint

    models = tmp_path / "demo" / "models"
    for method in ("clean", "gaussian", "ste"):
        meta = load_checkpoint(models / f"{method}.ckpt").meta
        assert meta["analog_config"]["pair_compensation"] is True
        assert (meta.get("init") or {}).get("sha256") == (None if method == "clean" else sha256_file(models / "clean.ckpt"))
    assert [row["init"] is not None for row in results["rows"]] == [False, True, True]
    assert "fine-tuned from the clean model" in out and report.count("(fine-tuned from clean)") == 2
    assert all(deploy["stats"]["cells_compensated"] > 0 for deploy in results["deploys"].values())


@pytest.mark.slow
def test_demo_smoke_one_method_at_reduced_size(tmp_path):
    from cimcal.demo import format_table, run_demo

    lines = []
    result = run_demo(tmp_path / "demo", quick=True, methods=("ste",), epochs=1, mc=1, echo=lines.append)
    assert [row.method for row in result.rows] == ["ste"]
    assert result.validation_passed
    assert set(result.stage_s) >= {"measure", "fit", "validate", "train ste", "evaluate ste", "deploy ste", "report"}
    assert "STE-LUT" in format_table(result.rows)
    assert (tmp_path / "demo" / "report.html").stat().st_size > 10_000
    assert all(Path(path).exists() for path in result.files.values())


def test_report_plot_shows_a_cells_prediction_far_below_the_others():
    from cimcal.demo import DemoRow
    from cimcal.demo_report import results_figure

    row = DemoRow("ste", 0.95, 0.01, 0.93, -0.02, 0.1, 0.96, 1.0, 10.0, "x.ckpt", predicted_cells=0.80)
    low, high = results_figure([row]).axes[0].get_ylim()
    assert low < 80.0 < high
