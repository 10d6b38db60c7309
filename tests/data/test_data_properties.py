"""Property tests: malformed tables give valid canonical data or a DataError, nothing else.

Hypothesis builds tables with missing, extra and misnamed columns and values of the wrong
kind (text, NaN, inf, negatives, fractions, booleans, None), writes them as CSV, Parquet or
passes them as DataFrames, and sometimes throws random bytes at the readers instead.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cimcal.data import iter_batches
from cimcal.data.schema import KINDS
from cimcal.errors import DataError

_counter = itertools.count()
SETTINGS = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

_COLUMN_NAMES = st.sampled_from(
    ["row", "col", "level", "g_us", "chip_id", "array", "t_s", "read_idx", "g_target_us", "temp_c",
     "input", "code", "repeat", "r_ohm", "g_ms", "junk", "Row"]
)
_SCALARS = {
    "int": st.integers(min_value=-3, max_value=2**40),
    "float": st.floats(allow_nan=True, allow_infinity=True, width=64),
    "text": st.text(alphabet="ab1.-e ,\"\n", max_size=5),
    "bool": st.booleans(),
}


@st.composite
def tables(draw) -> pd.DataFrame:
    names = draw(st.lists(_COLUMN_NAMES, min_size=0, max_size=7, unique=True))
    n_rows = draw(st.integers(min_value=0, max_value=12))
    data = {}
    for name in names:
        value_type = draw(st.sampled_from(sorted(_SCALARS)))
        values = draw(st.lists(_SCALARS[value_type], min_size=n_rows, max_size=n_rows))
        if value_type != "bool" and n_rows and draw(st.booleans()):
            values[draw(st.integers(0, n_rows - 1))] = None  # a hole
        data[name] = pd.Series(values, dtype=object if value_type == "text" else None)
    return pd.DataFrame(data, index=pd.RangeIndex(n_rows))


def _check_canonical(batch: pd.DataFrame, kind_name: str) -> None:
    kind = KINDS[kind_name]
    assert set(kind.required_names) <= set(batch.columns)
    for name in batch.columns:
        spec = kind.columns[name]
        dtype = str(batch[name].dtype)
        if spec.dtype == "int":
            assert dtype == "int64", name
        elif spec.dtype == "float":
            assert dtype == "float64", name
            assert np.isfinite(batch[name].to_numpy()).all(), name
        else:
            assert dtype == "str", name
            assert batch[name].notna().all() and (batch[name].str.strip() != "").all()
        if spec.nonnegative:
            assert (batch[name].to_numpy() >= 0).all(), name
    assert isinstance(batch.attrs["row_offset"], int)


def _read_or_data_error(source, kind_name: str, name_in_message: str) -> None:
    try:
        for batch in iter_batches(source, kind_name, batch_rows=5):
            _check_canonical(batch, kind_name)
    except DataError as err:
        message = str(err)
        assert "\n" not in message
        assert name_in_message in message, message
        if err.column is not None:
            assert f"column '{err.column}'" in message
        if err.rows:
            assert all(isinstance(r, int) and r >= 0 for r in err.rows)


def _write_parquet(table: pd.DataFrame, path) -> bool:
    """Parquet needs one type per column: text columns go as strings. False if pyarrow refuses."""
    fixed = table.copy()
    for name in fixed.columns:
        if fixed[name].dtype == object:
            fixed[name] = fixed[name].map(lambda v: None if v is None else str(v)).astype(object)
    try:
        pq.write_table(pa.Table.from_pandas(fixed, preserve_index=False), path)
    except (pa.ArrowException, ValueError, TypeError):
        return False
    return True


@SETTINGS
@given(
    table=tables(),
    kind_name=st.sampled_from(["conductance", "adc"]),
    form=st.sampled_from(["csv", "parquet", "frame"]),
)
def test_malformed_tables_give_canonical_data_or_data_error(tmp_path, table, kind_name, form):
    if form == "frame":
        _read_or_data_error(table, kind_name, "<DataFrame 0>")
        return
    path = tmp_path / f"t{next(_counter)}.{form}"
    if form == "csv":
        table.to_csv(path, index=False)
    elif not _write_parquet(table, path):
        return
    _read_or_data_error(path, kind_name, str(path))


@SETTINGS
@given(data=st.binary(max_size=300), suffix=st.sampled_from([".csv", ".parquet"]))
def test_random_bytes_give_data_error_or_valid_rows(tmp_path, data, suffix):
    path = tmp_path / f"b{next(_counter)}{suffix}"
    path.write_bytes(data)
    _read_or_data_error(path, "conductance", str(path))


@SETTINGS
@given(
    text=st.text(alphabet="0123456789.,-\n\"ae ", max_size=200),
)
def test_random_csv_text_under_a_valid_header(tmp_path, text):
    path = tmp_path / f"h{next(_counter)}.csv"
    path.write_text("row,col,level,g_us\n" + text)
    _read_or_data_error(path, "conductance", str(path))


@SETTINGS
@given(g_us=st.lists(st.floats(min_value=0, max_value=1e6), min_size=1, max_size=20))
def test_valid_values_survive_exactly(tmp_path, g_us):
    n = len(g_us)
    table = pd.DataFrame({"row": np.arange(n), "col": np.zeros(n, dtype=int), "level": np.ones(n, dtype=int),
                          "g_us": g_us})
    path = tmp_path / f"v{next(_counter)}.csv"
    table.to_csv(path, index=False)
    (batch,) = list(iter_batches(path, "conductance"))
    assert batch["g_us"].tolist() == [float(v) for v in g_us] and not any(math.isnan(v) for v in batch["g_us"])


def test_truncating_a_parquet_file_anywhere_gives_data_error(tmp_path):
    n = 2000
    table = pd.DataFrame({"row": np.arange(n), "col": np.arange(n) % 7, "level": np.arange(n) % 4,
                          "g_us": np.linspace(0, 50, n)})
    whole = tmp_path / "whole.parquet"
    pq.write_table(pa.Table.from_pandas(table, preserve_index=False), whole, row_group_size=500)
    data = whole.read_bytes()
    for cut in np.linspace(1, len(data) - 1, 25).astype(int):
        path = tmp_path / f"cut{cut}.parquet"
        path.write_bytes(data[:cut])
        with pytest.raises(DataError, match=rf"cut{cut}\.parquet"):
            list(iter_batches(path, "conductance"))
