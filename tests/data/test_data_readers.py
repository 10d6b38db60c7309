"""Readers: every source form gives the same canonical batches, bounded and with offsets."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from data_tables import make_conductance, write_csv, write_parquet

from cimcal.data import iter_batches, read_table
from cimcal.errors import ConfigError, DataError

CANONICAL_DTYPES = {"row": "int64", "col": "int64", "level": "int64", "g_us": "float64", "t_s": "float64",
                    "read_idx": "int64"}


def _same_values(table: pd.DataFrame, expected: pd.DataFrame) -> None:
    for name in expected.columns:
        np.testing.assert_array_equal(table[name].to_numpy(), expected[name].to_numpy(), err_msg=name)


def test_csv_parquet_and_dataframe_read_identically(tmp_path, conductance):
    csv = write_csv(conductance, tmp_path / "c.csv")
    parquet = write_parquet(conductance, tmp_path / "c.parquet")
    tables = [read_table(source, "conductance") for source in (csv, parquet, conductance)]
    for table in tables:
        assert list(table.columns) == ["row", "col", "level", "g_us", "t_s", "read_idx"]
        assert {k: str(v) for k, v in table.dtypes.items()} == CANONICAL_DTYPES
        _same_values(table, conductance)


def test_batches_are_bounded_and_carry_source_and_row_offset(tmp_path):
    table = make_conductance(n_cells=100, reads=1, t_s=(1.0,))
    parquet = write_parquet(table, tmp_path / "c.parquet", row_group_size=33)
    csv = write_csv(table, tmp_path / "c.csv")
    for source in (parquet, csv, table):
        batches = list(iter_batches(source, "conductance", batch_rows=40))
        assert [len(b) for b in batches] == [40, 40, 20]
        assert [b.attrs["row_offset"] for b in batches] == [0, 40, 80]
        assert {b.attrs["source"] for b in batches} == {str(source) if not isinstance(source, pd.DataFrame)
                                                         else "<DataFrame 0>"}
        _same_values(pd.concat(batches, ignore_index=True), table)


def test_row_offsets_restart_per_file_in_a_list(tmp_path, conductance):
    a = write_parquet(conductance, tmp_path / "a.parquet")
    b = write_csv(conductance, tmp_path / "b.csv")
    batches = list(iter_batches([a, b], "conductance", batch_rows=30))
    assert [(x.attrs["source"], x.attrs["row_offset"]) for x in batches][:3] == [
        (str(a), 0), (str(a), 30), (str(a), 60)]
    firsts = [x for x in batches if x.attrs["source"] == str(b)]
    assert firsts[0].attrs["row_offset"] == 0


def test_directory_of_mixed_files_reads_all_sorted_and_skips_hidden(tmp_path, conductance):
    (tmp_path / "d").mkdir()
    write_parquet(conductance.iloc[:40], tmp_path / "d" / "part-0.parquet")
    write_csv(conductance.iloc[40:], tmp_path / "d" / "part-1.csv")
    (tmp_path / "d" / "_SUCCESS").write_text("")
    (tmp_path / "d" / ".part-2.csv.crc").write_text("junk")
    table = read_table(tmp_path / "d", "conductance")
    _same_values(table, conductance)
    assert table.attrs["sources"] == [str(tmp_path / "d" / "part-0.parquet"), str(tmp_path / "d" / "part-1.csv")]


def test_hive_partitions_become_typed_columns(tmp_path, conductance):
    root = tmp_path / "ds"
    for chip in ("A", "007"):
        for array in (0, 3):
            folder = root / f"chip_id={chip}" / f"array={array}"
            folder.mkdir(parents=True)
            write_parquet(conductance, folder / "part-0.parquet")
    table = read_table(root, "conductance")
    assert len(table) == 4 * len(conductance)
    assert str(table["chip_id"].dtype) == "str" and str(table["array"].dtype) == "int64"
    assert sorted(table["chip_id"].unique()) == ["007", "A"]  # text ids keep their leading zeros
    assert sorted(table["array"].unique()) == [0, 3]


def test_hive_partition_key_can_be_mapped(tmp_path, conductance):
    folder = tmp_path / "ds" / "chip=X1"
    folder.mkdir(parents=True)
    write_parquet(conductance, folder / "p.parquet")
    table = read_table(tmp_path / "ds", "conductance", column_map={"chip": "chip_id"})
    assert set(table["chip_id"]) == {"X1"}


def test_bad_hive_partition_value_names_the_file(tmp_path, conductance):
    folder = tmp_path / "ds" / "array=minus1"
    folder.mkdir(parents=True)
    write_parquet(conductance, folder / "p.parquet")
    with pytest.raises(DataError, match=r"p\.parquet, column 'array'.*expected numbers"):
        read_table(tmp_path / "ds", "conductance")


def test_columns_selection_reads_only_those(tmp_path, conductance):
    parquet = write_parquet(conductance, tmp_path / "c.parquet")
    table = read_table(parquet, "conductance", columns=["level", "g_us"])
    assert list(table.columns) == ["level", "g_us"]
    with pytest.raises(ConfigError, match="unknown conductance column"):
        read_table(parquet, "conductance", columns=["nope"])
    with pytest.raises(DataError, match="'temp_c' not in this source"):
        read_table(parquet, "conductance", columns=["temp_c"])


def test_optional_columns_not_in_every_source_are_dropped(tmp_path, conductance):
    with_temp = conductance.assign(temp_c=25.0)
    table = read_table([with_temp, conductance], "conductance")
    assert "temp_c" not in table.columns
    assert "temp_c" in read_table(with_temp, "conductance").columns


def test_unknown_columns_are_ignored_and_batches_do_not_alias_the_input(conductance):
    source = conductance.assign(comment="x")
    batch = next(iter_batches(source, "conductance"))
    assert "comment" not in batch.columns
    batch.loc[0, "g_us"] = -1.0
    assert source.loc[0, "g_us"] != -1.0


def test_compressed_csv(tmp_path, conductance):
    path = tmp_path / "c.csv.gz"
    conductance.to_csv(path, index=False, compression="gzip")
    _same_values(read_table(path, "conductance"), conductance)


def test_integers_written_as_floats_are_accepted(conductance):
    table = read_table(conductance.astype({"level": "float64"}), "conductance")
    assert str(table["level"].dtype) == "int64"


def test_bad_batch_rows_is_a_config_error(conductance):
    with pytest.raises(ConfigError, match="batch_rows"):
        iter_batches(conductance, "conductance", batch_rows=0)


def test_adc_table_reads_with_and_without_col(adc):
    table = read_table(adc, "adc")
    assert list(table.columns) == ["input", "code", "col", "repeat"]
    pooled = read_table(adc.drop(columns=["col"]), "adc")
    assert "col" not in pooled.columns


def test_large_file_streams_in_many_batches(tmp_path):
    n = 50_000
    rng = np.random.default_rng(1)
    table = pd.DataFrame({"row": rng.integers(0, 64, n), "col": rng.integers(0, 64, n),
                          "level": rng.integers(0, 8, n), "g_us": rng.random(n)})
    path = write_parquet(table, tmp_path / "big.parquet", row_group_size=7_000)
    sizes = [len(b) for b in iter_batches(path, "conductance", batch_rows=8_192)]
    assert max(sizes) == 8_192 and sum(sizes) == n


def test_writing_into_a_batch_does_not_leak_into_later_batches(tmp_path, conductance):
    folder = tmp_path / "ds" / "array=2"
    folder.mkdir(parents=True)
    write_parquet(conductance, folder / "p.parquet", metadata={b"cimcal": b'{"chip_id": "A"}'})
    batches = iter_batches(tmp_path / "ds", "conductance", batch_rows=10)
    first = next(batches)
    first.loc[:, "array"] = 99
    first.loc[:, "chip_id"] = "Z"
    rest = pd.concat(list(batches))
    assert set(rest["array"]) == {2} and set(rest["chip_id"]) == {"A"}


def test_one_file_of_a_dataset_keeps_its_partition_values(tmp_path, conductance):
    from cimcal.data.sources import expand_sources

    for chip in ("A", "B"):
        folder = tmp_path / "ds" / f"chip_id={chip}"
        folder.mkdir(parents=True)
        write_parquet(conductance, folder / "p.parquet")
    files = expand_sources(tmp_path / "ds")
    assert [f.partition for f in files] == [{"chip_id": "A"}, {"chip_id": "B"}]
    assert set(read_table(files[1], "conductance")["chip_id"]) == {"B"}


def test_spaces_after_commas_in_a_csv_are_fine(tmp_path):
    path = tmp_path / "spaced.csv"
    path.write_text("row, col, level, g_us\n0, 1, 2, 3.5\n1, 1, 2,  4e1 \n")
    table = read_table(path, "conductance")
    assert list(table.columns) == ["row", "col", "level", "g_us"]
    assert table["g_us"].tolist() == [3.5, 40.0]
