"""`cimcal fit`, `cimcal validate` and `cimcal report` end to end on synthetic dumps (CSV and Parquet)."""

from __future__ import annotations

import json
import re

import pytest

from cimcal.cli import main
from cimcal.data.synthetic import synthetic_adc, synthetic_conductance


@pytest.fixture(scope="module")
def dumps(tmp_path_factory):
    root = tmp_path_factory.mktemp("dumps")
    cond = synthetic_conductance(n_cells=4096, levels=4, reads=2, t_s=(1.0, 100.0), seed=41)
    adc = synthetic_adc(cols=2, n_inputs=128, repeats=24, seed=42)
    held_cells = (cond["row"] * 128 + cond["col"]) % 2 == 1
    paths = {
        "cond_fit": root / "cond_fit.parquet",
        "cond_held": root / "cond_held.csv",
        "cond_held_foreign": root / "cond_held_foreign.csv",
        "adc_fit": root / "adc_fit.parquet",
        "adc_held": root / "adc_held.csv",
    }
    cond[~held_cells].to_parquet(paths["cond_fit"], index=False)
    cond[held_cells].to_csv(paths["cond_held"], index=False)
    cond[held_cells].rename(columns={"g_us": "G"}).to_csv(paths["cond_held_foreign"], index=False)
    adc[adc["repeat"] < 16].to_parquet(paths["adc_fit"], index=False)
    adc[adc["repeat"] >= 16].to_csv(paths["adc_held"], index=False)
    return {k: str(v) for k, v in paths.items()}


@pytest.fixture(scope="module")
def profile_path(dumps, tmp_path_factory):
    out = tmp_path_factory.mktemp("profile") / "chip.cimprof"
    rc = main(["fit", "--conductance", dumps["cond_fit"], "--adc", dumps["adc_fit"], "-o", str(out)])
    assert rc == 0 and out.is_file()
    return str(out)


def _held(dumps):
    return ["--conductance", dumps["cond_held"], "--adc", dumps["adc_held"]]


def test_fit_prints_what_it_wrote(dumps, tmp_path, capsys):
    out = tmp_path / "c.cimprof"
    assert main(["fit", "--conductance", dumps["cond_fit"], "-o", str(out)]) == 0
    assert re.search(r"wrote .*c\.cimprof: 4 levels x 2 time points; sha256 [0-9a-f]{16}", capsys.readouterr().out)


def test_validate_passes_within_thresholds(profile_path, dumps, capsys):
    rc = main(["validate", profile_path, *_held(dumps), "--max-ks", "0.25", "--max-tv", "0.25"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "pooled PIT KS" in out and "PASS" in out


def test_validate_exits_1_when_a_statistic_exceeds(profile_path, dumps, capsys):
    rc = main(["validate", profile_path, *_held(dumps), "--max-ks", "0.001"])
    captured = capsys.readouterr()
    assert rc == 1
    assert "FAIL" in captured.out
    assert captured.err.startswith("error: validation failed: ") and captured.err.count("\n") == 1


def test_validate_json_shape(profile_path, dumps, capsys):
    rc = main(["validate", profile_path, *_held(dumps), "--json", "--max-ks", "0.25", "--max-tv", "0.25"])
    doc = json.loads(capsys.readouterr().out)
    assert rc == 0
    assert {"alpha", "seed", "conductance", "adc", "profile", "max_ks", "max_tv", "passed", "failures"} <= set(doc)
    assert doc["passed"] is True and doc["failures"] == []
    groups = doc["conductance"]["groups"]
    assert len(groups) == 4 * 2
    assert {"level", "t_s", "n_cells", "n_reads", "ks", "ks_pvalue", "pit_ks"} <= set(groups[0])
    assert [c["col"] for c in doc["adc"]["columns"]] == [0, 1]
    assert 0.0 <= doc["adc"]["pit_ks"] <= 1.0


def test_validate_maps_foreign_column_names(profile_path, dumps, capsys):
    rc = main(["validate", profile_path, "--conductance", dumps["cond_held_foreign"], "--map", "G=g_us",
               "--max-ks", "0.25", "--json"])
    assert rc == 0
    assert json.loads(capsys.readouterr().out)["adc"] is None


@pytest.mark.parametrize(
    "args, message",
    [
        (["validate", "{profile}"], "nothing to validate"),
        (["validate", "{profile}", "--conductance", "{cond}", "--map", "no-equals"], "--map 'no-equals'"),
        (["validate", "{missing}", "--conductance", "{cond}"], "missing.cimprof"),
        (["fit", "-o", "{out}"], "nothing to fit"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(profile_path, dumps, tmp_path, capsys, args, message):
    fill = {"profile": profile_path, "cond": dumps["cond_held"], "missing": str(tmp_path / "missing.cimprof"),
            "out": str(tmp_path / "x.cimprof")}
    rc = main([a.format(**fill) for a in args])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_report_writes_one_self_contained_html(profile_path, dumps, tmp_path, capsys):
    out = tmp_path / "report.html"
    assert main(["report", profile_path, *_held(dumps), "-o", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    page = out.read_text(encoding="utf-8")
    assert list(tmp_path.iterdir()) == [out]
    assert page.count('src="data:image/png;base64,') == 5
    assert not re.search(r'(src|href)="(?!data:)', page)
    assert "Validation against held-out measurements" in page and "Provenance" in page


def test_fit_creates_the_output_folder_and_a_path_through_a_file_is_one_line(dumps, profile_path, tmp_path, capsys):
    out = tmp_path / "new" / "dir" / "c.cimprof"
    assert main(["fit", "--conductance", dumps["cond_fit"], "-o", str(out)]) == 0 and out.is_file()
    capsys.readouterr()
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    rc = main(["report", profile_path, "-o", str(blocker / "r.html")])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and "file.txt" in err and len(err.strip().splitlines()) == 1
