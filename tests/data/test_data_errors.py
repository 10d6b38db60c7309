"""Every malformed input gives one clear DataError naming file, column and first rows (and CLI exit 2)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from data_tables import make_adc, make_conductance, write_csv, write_parquet

from cimcal.cli import main
from cimcal.data import iter_batches, read_table, write_table
from cimcal.errors import DataError


def _csv_text(tmp_path, text, name="bad.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


def _base():
    return make_conductance(n_cells=8, reads=1, t_s=(1.0,)).drop(columns=["t_s", "read_idx"])


def case_missing_column(tmp_path):
    return write_csv(_base().rename(columns={"g_us": "G_uS"}), tmp_path / "m.csv"), "conductance", "g_us", None, \
        r"missing required conductance column 'g_us'.*--map G_uS=g_us"


def case_text_in_g_us_csv(tmp_path):
    table = _base().astype({"g_us": object})
    table.loc[5, "g_us"] = "abc"
    path = write_csv(table, tmp_path / "t.csv")
    return path, "conductance", "g_us", [5], r"expected numbers, found text such as 'abc'"


def case_text_in_g_us_parquet(tmp_path):
    table = _base().astype({"g_us": str})
    table.loc[3, "g_us"] = "n/a?"
    return write_parquet(table, tmp_path / "t.parquet"), "conductance", "g_us", [3], r"found text such as 'n/a\?'"


def case_nan_g_us(tmp_path):
    table = _base()
    table.loc[2, "g_us"] = np.nan
    return write_csv(table, tmp_path / "n.csv"), "conductance", "g_us", [2], "missing or NaN"


def case_inf_g_us(tmp_path):
    table = _base()
    table.loc[4, "g_us"] = np.inf
    return write_parquet(table, tmp_path / "i.parquet"), "conductance", "g_us", [4], "NaN or infinite"


def case_negative_conductance(tmp_path):
    table = _base()
    table.loc[6, "g_us"] = -0.5
    return write_parquet(table, tmp_path / "neg.parquet"), "conductance", "g_us", [6], "negative conductance -0.5"


def case_fractional_level(tmp_path):
    table = _base().astype({"level": float})
    table.loc[1, "level"] = 2.5
    return write_csv(table, tmp_path / "lv.csv"), "conductance", "level", [1], "expected whole numbers, found 2.5"


def case_csv_integer_beyond_float_precision(tmp_path):
    # 2**53 + 1 has no float64 of its own: named as too large, not as a fraction
    return _csv_text(tmp_path, "row,col,level,g_us\n0,0,1,2.0\n9007199254740993,1,1,2.0\n"), "conductance", "row", [1], \
        r"integer too large to read exactly .* at most 2\*\*53 - 1\), found about 9\.0072e\+15"


def case_fraction_before_a_too_large_integer(tmp_path):
    # the first bad row decides the message
    return _csv_text(tmp_path, "row,col,level,g_us\n0,0,1.5,2.0\n0,1,9007199254740993,2.0\n"), "conductance", "level", \
        [0], "expected whole numbers, found 1.5"


def case_negative_level(tmp_path):
    table = _base()
    table.loc[7, "level"] = -1
    return write_parquet(table, tmp_path / "lv.parquet"), "conductance", "level", [7], "negative value -1"


def case_negative_row(tmp_path):
    table = _base()
    table.loc[0, "row"] = -3
    return write_csv(table, tmp_path / "r.csv"), "conductance", "row", [0], "negative value"


def case_negative_code(tmp_path):
    table = make_adc()
    table.loc[9, "code"] = -2
    return write_csv(table, tmp_path / "adc.csv"), "adc", "code", [9], "negative value -2"


def case_fractional_code(tmp_path):
    table = make_adc().astype({"code": float})
    table.loc[10, "code"] = 3.25
    return write_parquet(table, tmp_path / "adc.parquet"), "adc", "code", [10], "whole numbers"


def case_bool_g_us(tmp_path):
    table = _base().assign(g_us=True)
    return write_parquet(table, tmp_path / "b.parquet"), "conductance", "g_us", [0], "true/false"


def case_header_only_csv(tmp_path):
    return _csv_text(tmp_path, "row,col,level,g_us\n"), "conductance", None, None, "empty input: no data rows"


def case_zero_byte_csv(tmp_path):
    return _csv_text(tmp_path, ""), "conductance", None, None, "empty input: the CSV file has no header"


def case_empty_directory(tmp_path):
    (tmp_path / "empty").mkdir()
    return tmp_path / "empty", "conductance", None, None, "empty input: no CSV or Parquet files"


def case_truncated_parquet(tmp_path):
    path = write_parquet(make_conductance(n_cells=64), tmp_path / "cut.parquet")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path, "conductance", None, None, "not a readable Parquet file"


def case_corrupt_parquet(tmp_path):
    path = tmp_path / "junk.parquet"
    path.write_bytes(b"PAR1" + bytes(range(256)) * 4 + b"PAR1")
    return path, "conductance", None, None, "not a readable Parquet file"


def case_unknown_file_type(tmp_path):
    path = tmp_path / "dump.xlsx"
    path.write_bytes(b"PK\x03\x04")
    return path, "conductance", None, None, r"unsupported file type \.xlsx"


def case_unknown_file_in_directory(tmp_path):
    (tmp_path / "d").mkdir()
    write_csv(_base(), tmp_path / "d" / "a.csv")
    (tmp_path / "d" / "notes.txt").write_text("hello")
    return tmp_path / "d", "conductance", None, None, r"notes\.txt: unsupported file type \.txt"


def case_missing_path(tmp_path):
    return tmp_path / "nope.csv", "conductance", None, None, "no such file or directory"


def case_malformed_csv_row(tmp_path):
    return _csv_text(tmp_path, "row,col,level,g_us\n0,0,1,2.0\n0,1,1,2.0,99\n0,2,1,2.0\n"), "conductance", \
        None, [1], "malformed CSV row"


def case_duplicate_keys_without_chip_id(tmp_path):
    chip_a = make_conductance(n_cells=8, reads=2, t_s=(1.0,))
    both = pd.concat([chip_a, chip_a], ignore_index=True)  # two chips pasted together
    return write_csv(both, tmp_path / "two_chips.csv"), "conductance", "read_idx", [0, 16], \
        r"appears twice .* no chip_id"


def case_zero_resistance(tmp_path):
    table = _base().rename(columns={"g_us": "r_ohm"})
    table["r_ohm"] = 1e5
    table.loc[3, "r_ohm"] = 0.0
    return write_csv(table, tmp_path / "r.csv"), "conductance", "r_ohm", [3], "resistance must be > 0"


def case_empty_chip_id(tmp_path):
    table = _base().assign(chip_id="A")
    table.loc[2, "chip_id"] = ""
    return write_csv(table, tmp_path / "chip.csv"), "conductance", "chip_id", [2], "empty chip id"


def case_ambiguous_units(tmp_path):
    table = _base().rename(columns={"g_us": "g_s"}).assign(r_ohm=1e5)
    return write_csv(table, tmp_path / "u.csv"), "conductance", "g_s", None, r"several columns could give 'g_us'"


def case_text_deep_in_csv(tmp_path):
    table = make_conductance(n_cells=400, reads=1, t_s=(1.0,)).astype({"g_us": object})
    table.loc[357, "g_us"] = "oops"
    return write_csv(table, tmp_path / "deep.csv"), "conductance", "g_us", [357], "found text such as 'oops'"


def case_semicolon_separated(tmp_path):
    return _csv_text(tmp_path, "row;col;level;g_us\n0;0;1;2.5\n"), "conductance", "row", None, \
        "comma-separated"


def case_semicolon_separated_decimal_comma(tmp_path):
    return _csv_text(tmp_path, "row;col;level;g_us\n0;0;1;2,5\n"), "conductance", None, [0], \
        "malformed CSV row.*comma-separated"


def case_list_values_in_parquet(tmp_path):
    table = pa.table({"row": [0, 1], "col": [0, 0], "level": [1, 1], "g_us": pa.array([[1.0], [2.0]])})
    path = tmp_path / "nested.parquet"
    pq.write_table(table, path)
    return path, "conductance", "g_us", [0, 1], "expected numbers, found values such as"


CASES = [value for name, value in sorted(globals().items()) if name.startswith("case_")]


@pytest.mark.parametrize("case", CASES, ids=[c.__name__[5:] for c in CASES])
def test_malformed_input_raises_one_line_data_error(tmp_path, case):
    path, kind, column, rows, pattern = case(tmp_path)
    with pytest.raises(DataError, match=pattern) as info:
        list(iter_batches(path, kind, batch_rows=64))
    err = info.value
    message = str(err)
    assert "\n" not in message
    assert str(path) in message  # names the file (or the file inside the directory)
    if column is not None:
        assert err.column == column and f"column '{column}'" in message
    if rows is not None:
        assert err.rows[: len(rows)] == rows


@pytest.mark.parametrize("case", CASES, ids=[c.__name__[5:] for c in CASES])
def test_malformed_input_via_cli_exits_2_with_one_error_line(tmp_path, case, capsys):
    path, kind, _, _, pattern = case(tmp_path)
    rc = main(["info", str(path), "--kind", kind])
    captured = capsys.readouterr()
    assert rc == 2
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert captured.out == ""


def test_mixed_chips_metadata_and_no_chip_id(tmp_path):
    named = tmp_path / "chipA.parquet"
    write_table(_base(), named, "conductance", metadata={"chip_id": "A"})
    anonymous = write_csv(_base(), tmp_path / "anon.csv")
    with pytest.raises(DataError, match=r"anon\.csv, column 'chip_id': no chip_id .*chipA\.parquet names its chip"):
        read_table([named, anonymous], "conductance")


def test_files_naming_different_chips_in_metadata_get_a_chip_id_column(tmp_path):
    a = write_table(_base(), tmp_path / "a.parquet", "conductance", metadata={"chip_id": "A"})
    b = write_table(_base(), tmp_path / "b.parquet", "conductance", metadata={"chip_id": "B"})
    table = read_table([a, b], "conductance")
    assert table["chip_id"].tolist() == ["A"] * 8 + ["B"] * 8


def test_duplicates_across_batches_are_caught_by_read_table(tmp_path):
    chip = make_conductance(n_cells=8, reads=2, t_s=(1.0,))
    path = write_parquet(pd.concat([chip, chip], ignore_index=True), tmp_path / "two.parquet")
    with pytest.raises(DataError, match="appears twice"):
        read_table(path, "conductance")


def test_duplicates_differing_only_in_the_sign_of_a_zero_t_s_are_caught(tmp_path):
    """t_s 0.0 and -0.0 are one time (equal values, other bit patterns): a pasted copy must not slip through."""
    chip = make_conductance(n_cells=8, reads=2, t_s=(0.0,))
    copy = chip.copy()
    copy["t_s"] = -0.0
    assert np.signbit(copy["t_s"]).all() and not np.signbit(chip["t_s"]).any()
    path = write_parquet(pd.concat([chip, copy], ignore_index=True), tmp_path / "two.parquet")
    with pytest.raises(DataError, match="appears twice"):
        read_table(path, "conductance")


def test_csv_integers_read_exactly_up_to_2_to_the_53(tmp_path):
    path = _csv_text(tmp_path, "row,col,level,g_us\n9007199254740991,0,1,2.0\n0,1,1,2.0\n")
    assert read_table(path, "conductance")["row"].tolist() == [2**53 - 1, 0]
    path = _csv_text(tmp_path, "row,col,level,g_us\n9007199254740992,0,1,2.0\n", name="at_limit.csv")
    with pytest.raises(DataError, match="integer too large"):
        read_table(path, "conductance")


def test_repeated_reads_with_read_idx_and_no_chip_id_are_fine(tmp_path):
    table = make_conductance(n_cells=8, reads=3, t_s=(1.0, 5.0))
    assert len(read_table(table, "conductance")) == len(table)


def test_metadata_chip_id_fills_the_column(tmp_path):
    path = write_table(_base(), tmp_path / "c.parquet", "conductance", metadata={"chip_id": "W3-17"})
    assert set(read_table(path, "conductance")["chip_id"]) == {"W3-17"}


def test_unreadable_parquet_in_a_hive_dataset_names_the_file(tmp_path):
    good = tmp_path / "ds" / "chip_id=A"
    bad = tmp_path / "ds" / "chip_id=B"
    good.mkdir(parents=True)
    bad.mkdir(parents=True)
    write_parquet(_base(), good / "p.parquet")
    (bad / "p.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match=r"chip_id=B/p\.parquet: not a readable Parquet file"):
        read_table(tmp_path / "ds", "conductance")


def test_corrupt_page_data_names_the_file(tmp_path):
    table = pa.table({"row": np.arange(5000), "col": np.zeros(5000, dtype=np.int64),
                      "level": np.zeros(5000, dtype=np.int64), "g_us": np.random.default_rng(0).random(5000)})
    path = tmp_path / "pages.parquet"
    pq.write_table(table, path, compression="snappy")
    data = bytearray(path.read_bytes())
    middle = len(data) // 3
    data[middle : middle + 400] = bytes(400)  # zero a stretch of column chunk bytes, keep the footer
    path.write_bytes(bytes(data))
    try:
        list(iter_batches(path, "conductance"))
    except DataError as err:
        assert str(path) in str(err)
    # Zeroed bytes may still decode to numbers: then the values are validated like any others.


def test_a_utf16_csv_is_told_to_be_saved_as_utf8(tmp_path):
    path = tmp_path / "u16.csv"
    make_conductance().to_csv(path, index=False, encoding="utf-16")
    with pytest.raises(DataError, match="not UTF-8 text; save it as UTF-8") as info:
        read_table(path, "conductance")
    assert "u16.csv" in str(info.value)


def test_a_file_named_twice_is_refused_not_counted_twice(tmp_path):
    folder = tmp_path / "dump"
    folder.mkdir()
    path = folder / "c.csv"
    make_conductance().to_csv(path, index=False)
    for sources in ([path, tmp_path / "dump" / ".." / "dump" / "c.csv"], [folder, path]):
        with pytest.raises(DataError, match="named twice among the sources"):
            read_table(sources, "conductance")


def test_symlinked_equal_files_in_two_partitions_are_two_sources(tmp_path):
    """DVC and git-annex link equal files to one stored object: each link is its own source (own partition)."""
    from cimcal.data.sources import expand_sources

    store = tmp_path / "object.csv"
    make_conductance().to_csv(store, index=False)
    for chip in ("A", "B"):
        (tmp_path / "ds" / f"chip_id={chip}").mkdir(parents=True)
        (tmp_path / "ds" / f"chip_id={chip}" / "part.csv").symlink_to(store)
    files = expand_sources(tmp_path / "ds")
    assert sorted(f.partition["chip_id"] for f in files) == ["A", "B"]
