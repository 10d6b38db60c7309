"""Writers: Parquet with provenance metadata and CSV, both round trip exactly."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from data_tables import make_adc, make_conductance

from cimcal import __version__
from cimcal.data import read_metadata, read_table, write_table
from cimcal.data.schema import SCHEMA_VERSION
from cimcal.errors import ConfigError, DataError


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".csv.gz"])
@pytest.mark.parametrize("kind", ["conductance", "adc"])
def test_round_trip_is_exact(tmp_path, suffix, kind):
    table = make_conductance(chip_id="C-007") if kind == "conductance" else make_adc().assign(chip_id="007")
    path = write_table(table, tmp_path / f"t{suffix}", kind)
    back = read_table(path, kind)
    expected = read_table(table, kind)
    back.attrs, expected.attrs = {}, {}
    pd.testing.assert_frame_equal(back, expected, check_exact=True)


def test_parquet_metadata_has_the_provenance_keys(tmp_path):
    path = write_table(
        make_conductance(chip_id="A1"),
        tmp_path / "c.parquet",
        "conductance",
        metadata={"instrument_idn": "CIMCAL,SIMCHIP-rram,0,0.1", "source": "TCPIP0::127.0.0.1::5025::SOCKET",
                  "campaign": "levels", "seed": np.int64(3)},
    )
    record = read_metadata(path)
    assert record["schema_version"] == SCHEMA_VERSION and record["kind"] == "conductance"
    assert record["chip_id"] == "A1" and record["cimcal_version"] == __version__
    assert record["instrument_idn"].startswith("CIMCAL,SIMCHIP")
    assert record["source"].startswith("TCPIP0::")
    assert record["units"] == {"g_us": "uS", "t_s": "s"}
    assert record["campaign"] == "levels" and record["seed"] == 3
    created = dt.datetime.fromisoformat(record["created"].replace("Z", "+00:00"))
    assert created.tzinfo is not None and abs(dt.datetime.now(dt.timezone.utc) - created).total_seconds() < 600
    raw = pq.read_schema(path).metadata[b"cimcal"]
    assert json.loads(raw) == record


def test_metadata_chip_id_without_column_reads_back_as_column(tmp_path):
    path = write_table(make_conductance(), tmp_path / "c.parquet", "conductance", metadata={"chip_id": "Z9"})
    assert read_metadata(path)["chip_id"] == "Z9"
    assert set(read_table(path, "conductance")["chip_id"]) == {"Z9"}


def test_contradicting_chip_id_is_refused(tmp_path):
    with pytest.raises(DataError, match="contradicts"):
        write_table(make_conductance(chip_id="A"), tmp_path / "c.parquet", "conductance", metadata={"chip_id": "B"})


def test_reserved_metadata_keys_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="'created' is written by cimcal"):
        write_table(make_conductance(), tmp_path / "c.parquet", "conductance", metadata={"created": "yesterday"})


def test_writer_validates_before_writing_and_leaves_nothing_behind(tmp_path):
    bad = make_conductance()
    bad.loc[3, "g_us"] = -1.0
    with pytest.raises(DataError, match="negative conductance"):
        write_table(bad, tmp_path / "bad.parquet", "conductance")
    assert list(tmp_path.iterdir()) == []


def test_writer_converts_units_and_drops_foreign_columns(tmp_path):
    foreign = make_conductance().drop(columns=["g_us"]).assign(r_kohm=100.0, note="x")
    path = write_table(foreign, tmp_path / "c.parquet", "conductance")
    assert pq.read_schema(path).names == ["row", "col", "level", "g_us", "t_s", "read_idx"]
    assert np.all(read_table(path, "conductance")["g_us"] == 10.0)


def test_unknown_suffix_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="suffix"):
        write_table(make_conductance(), tmp_path / "c.xlsx", "conductance")


def test_read_metadata_of_csv_and_foreign_parquet_is_empty(tmp_path):
    table = make_conductance()
    csv = write_table(table, tmp_path / "c.csv", "conductance")
    table.to_parquet(tmp_path / "plain.parquet")
    assert read_metadata(csv) == {} and read_metadata(tmp_path / "plain.parquet") == {}


def test_read_metadata_errors_name_the_file(tmp_path):
    junk = tmp_path / "junk.parquet"
    junk.write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"junk\.parquet: not a readable Parquet file"):
        read_metadata(junk)
    with pytest.raises(DataError, match="no such file"):
        read_metadata(tmp_path / "missing.parquet")


def test_numpy_datetime_metadata_is_stored_as_iso_text(tmp_path):
    path = write_table(make_conductance(), tmp_path / "c.parquet", "conductance",
                       metadata={"measured": np.datetime64("2024-01-01T00:00:00", "ns")})
    assert read_metadata(path)["measured"] == "2024-01-01T00:00:00"
