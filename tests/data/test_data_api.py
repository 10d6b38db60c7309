"""The public surface of cimcal.data is pinned; planning is eager; DataFrame attrs name chips."""

from __future__ import annotations

import pytest
from data_tables import make_conductance

import cimcal.data
from cimcal.data import iter_batches, read_table
from cimcal.errors import DataError


def test_public_api_names():
    assert set(cimcal.data.__all__) == {
        "Source", "iter_batches", "read_table", "describe_sources", "write_table", "read_metadata",
        "summarize", "detect_kind", "kind_of", "TableKind", "CONDUCTANCE", "ADC", "KINDS", "UNIT_ALIASES",
        "SCHEMA_VERSION",
    }
    for name in cimcal.data.__all__:
        assert getattr(cimcal.data, name) is not None


def test_iter_batches_checks_every_source_before_returning(tmp_path):
    good = make_conductance()
    with pytest.raises(DataError, match="missing required conductance column 'g_us'"):
        iter_batches([good, good.drop(columns=["g_us"])], "conductance")  # no next() needed


def test_dataframe_attrs_chip_id_names_the_chip():
    table = make_conductance()
    table.attrs["chip_id"] = "W1"
    assert set(read_table(table, "conductance")["chip_id"]) == {"W1"}
