"""summarize / detect_kind / describe_sources and the `cimcal info` command."""

from __future__ import annotations

import hashlib
import json

import pytest
from data_tables import make_adc, make_conductance, write_csv, write_parquet

from cimcal.cli import main
from cimcal.cli.options import parse_column_map
from cimcal.data import describe_sources, detect_kind, summarize, write_table
from cimcal.errors import ConfigError, DataError


def test_summary_of_a_conductance_dump(tmp_path):
    a = write_table(make_conductance(chip_id="A"), tmp_path / "a.parquet", "conductance")
    b = write_table(make_conductance(chip_id="B", t_s=(1.0, 100.0)), tmp_path / "b.csv", "conductance")
    summary = summarize([a, b], "conductance")
    assert summary["rows"] == 2 * 96
    assert summary["chips"] == ["A", "B"]
    assert summary["levels"] == [0, 1, 2, 3]
    assert summary["time_points_s"] == [1.0, 10.0, 100.0]
    assert summary["arrays"] is None
    assert summary["columns"] == ["row", "col", "level", "g_us", "chip_id", "t_s", "read_idx"]
    assert summary["ranges"]["level"] == [0, 3]
    assert summary["sources"] == [{"path": str(a), "rows": 96}, {"path": str(b), "rows": 96}]
    json.dumps(summary)  # JSON-ready


def test_detect_kind_from_columns(tmp_path):
    assert detect_kind(make_conductance()) == "conductance"
    assert detect_kind(make_adc()) == "adc"
    assert detect_kind(make_conductance().rename(columns={"g_us": "G"}), {"G": "g_us"}) == "conductance"
    with pytest.raises(DataError, match="cannot tell the table kind"):
        detect_kind(make_conductance().drop(columns=["g_us"]))


def test_summary_lists_ignored_columns():
    summary = summarize(make_adc().assign(operator="bob"), "auto")
    assert summary["kind"] == "adc" and summary["ignored_columns"] == ["operator"]
    assert summary["cols"] == [0, 1]


def test_describe_sources_streams_sha256_and_counts_rows(tmp_path):
    table = make_conductance()
    csv = write_csv(table, tmp_path / "c.csv")
    parquet = write_parquet(table, tmp_path / "c.parquet")
    described = describe_sources([csv, parquet, table])
    assert [d["format"] for d in described] == ["csv", "parquet", "dataframe"]
    assert [d["rows"] for d in described] == [len(table)] * 3
    assert described[0]["sha256"] == hashlib.sha256(csv.read_bytes()).hexdigest()
    assert described[1]["sha256"] == hashlib.sha256(parquet.read_bytes()).hexdigest()
    assert described[2]["sha256"] == describe_sources(table.copy())[0]["sha256"]
    assert described[2]["sha256"] != describe_sources(table.assign(g_us=table["g_us"] + 1))[0]["sha256"]


def test_describe_sources_lists_dataset_files_with_partitions(tmp_path):
    folder = tmp_path / "ds" / "chip_id=A"
    folder.mkdir(parents=True)
    write_parquet(make_conductance(), folder / "p.parquet")
    (described,) = describe_sources(tmp_path / "ds")
    assert described["partition"] == {"chip_id": "A"} and described["rows"] == 96


def test_cli_info_text(tmp_path, capsys):
    path = write_table(make_conductance(chip_id="A"), tmp_path / "c.parquet", "conductance")
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "conductance table: 96 rows from 1 source" in out
    assert "levels       0-3 (4 values)" in out
    assert "chips        A" in out
    assert "time points  1, 10 s (2 values)" in out


def test_cli_info_json_with_map_and_kind(tmp_path, capsys):
    foreign = make_adc().rename(columns={"code": "Code", "input": "vin"})
    path = write_csv(foreign, tmp_path / "adc.csv")
    rc = main(["info", str(path), "--kind", "adc", "--map", "Code=code", "--map", "vin = input", "--json"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["kind"] == "adc" and summary["rows"] == len(foreign)
    assert summary["ranges"]["input"] == [0.0, 10.0]


def test_cli_bad_map_is_one_line_exit_2(tmp_path, capsys):
    path = write_csv(make_adc(), tmp_path / "adc.csv")
    assert main(["info", str(path), "--map", "nonsense"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --map 'nonsense'")


def test_parse_column_map():
    assert parse_column_map(["G=g_us", " Row = row "]) == {"G": "g_us", "Row": "row"}
    assert parse_column_map([]) == {}
    with pytest.raises(ConfigError, match="expected OLD=NEW"):
        parse_column_map(["=g_us"])
    with pytest.raises(ConfigError, match="maps 'G' twice"):
        parse_column_map(["G=g_us", "G=g_s"])
    with pytest.raises(ConfigError, match="sends both"):
        parse_column_map(["a=g_us", "b=g_us"])
