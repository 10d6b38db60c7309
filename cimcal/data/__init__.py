"""Measurement tables: the two kinds (conductance, ADC), readers, writers, validation.

Sources are CSV or Parquet files, directories of them (hive ``key=value`` partitions become
columns), pandas DataFrames, or lists of these. Readers stream bounded, canonical, validated
pandas batches; every problem is a :class:`cimcal.errors.DataError` naming file, column and
rows. See docs/data-format.md.
"""

from __future__ import annotations

from cimcal.data.readers import iter_batches, read_table
from cimcal.data.schema import ADC, CONDUCTANCE, KINDS, SCHEMA_VERSION, UNIT_ALIASES, TableKind, kind_of
from cimcal.data.sources import Source, describe_sources
from cimcal.data.summary import detect_kind, summarize
from cimcal.data.writers import read_metadata, write_table

__all__ = [
    "Source",
    "iter_batches",
    "read_table",
    "describe_sources",
    "write_table",
    "read_metadata",
    "summarize",
    "detect_kind",
    "kind_of",
    "TableKind",
    "CONDUCTANCE",
    "ADC",
    "KINDS",
    "UNIT_ALIASES",
    "SCHEMA_VERSION",
]
