"""Write canonical tables as Parquet (with provenance metadata) or CSV; read the metadata back.

Parquet files carry one JSON object under the schema key-value metadata key ``b"cimcal"``:
schema_version, kind, chip_id, units, source, instrument_idn, created (UTC ISO 8601),
cimcal_version, plus whatever the caller adds. Writes go to a temporary file beside the
target and are renamed into place, so a crash never leaves a half-written table behind.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from cimcal.data.formats import METADATA_KEY
from cimcal.data.readers import read_table
from cimcal.data.schema import SCHEMA_VERSION, TableKind, kind_of
from cimcal.data.sources import CSV_SUFFIXES, PARQUET_SUFFIXES, file_format
from cimcal.errors import ConfigError, DataError
from cimcal.publish import publish_file

__all__ = ["write_table", "read_metadata", "table_metadata"]

_RESERVED = ("schema_version", "kind", "units", "created", "cimcal_version")


def _json_safe(value: object, key: str) -> object:
    """Make caller metadata JSON-ready (numpy scalars, paths); reject what cannot be."""
    if isinstance(value, np.datetime64):  # .item() of a nanosecond datetime64 is a bare int
        return pd.Timestamp(value).isoformat()
    if isinstance(value, (np.generic,)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, (dt.datetime, dt.date)):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v, f"{key}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple, set, np.ndarray)):
        return [_json_safe(v, key) for v in (sorted(value) if isinstance(value, set) else value)]
    raise ConfigError(f"metadata[{key!r}] is a {type(value).__name__}; use JSON-compatible values")


def table_metadata(table: pd.DataFrame, kind: TableKind, metadata: Mapping[str, object] | None) -> dict:
    """The provenance JSON object written under ``b"cimcal"`` for ``table``."""
    from cimcal import __version__

    extra = dict(metadata or {})
    chip_ids = sorted(table["chip_id"].unique().tolist()) if "chip_id" in table.columns else []
    chip_id = extra.pop("chip_id", None)
    if chip_id is not None and chip_ids and chip_ids != [str(chip_id)]:
        raise DataError(
            f"metadata chip_id {chip_id!r} contradicts the table's chip_id column ({', '.join(chip_ids[:5])})",
            column="chip_id",
        )
    if chip_id is None and len(chip_ids) == 1:
        chip_id = chip_ids[0]
    for key in _RESERVED:
        if key in extra:
            raise ConfigError(f"metadata key {key!r} is written by cimcal itself; choose another name")
    record: dict[str, object] = {
        "schema_version": SCHEMA_VERSION,
        "kind": kind.name,
        "chip_id": None if chip_id is None else str(chip_id),
        "chip_ids": chip_ids,
        "units": {name: kind.columns[name].unit for name in table.columns if kind.columns[name].unit},
        "source": extra.pop("source", None),
        "instrument_idn": extra.pop("instrument_idn", None),
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "cimcal_version": __version__,
        "rows": int(len(table)),
    }
    for key, value in extra.items():
        record[str(key)] = _json_safe(value, str(key))
    record["source"] = _json_safe(record["source"], "source")
    record["instrument_idn"] = _json_safe(record["instrument_idn"], "instrument_idn")
    return record


def _arrow_table(table: pd.DataFrame) -> pa.Table:
    return pa.Table.from_pandas(table, preserve_index=False)


def write_table(
    df: pd.DataFrame,
    path: str | os.PathLike,
    kind: str | TableKind,
    *,
    metadata: Mapping[str, object] | None = None,
) -> Path:
    """Validate ``df`` against ``kind`` and write it to ``path`` (``.parquet`` or ``.csv`` by suffix).

    The table is brought to canonical form first (names, dtypes, µS), so what lands on disk
    reads back identically. Parquet gets the provenance metadata (see module docstring);
    ``metadata`` keys ``chip_id``, ``source`` and ``instrument_idn`` fill those fields, other
    keys are stored as given. CSV cannot carry metadata: it holds the columns only.
    Returns the path written.
    """
    table_kind = kind_of(kind)
    target = Path(path)
    fmt = file_format(target)
    if fmt is None:
        raise ConfigError(
            f"{target}: cannot tell the format from the suffix; use one of "
            f"{', '.join((*PARQUET_SUFFIXES, *CSV_SUFFIXES))}"
        )
    if not isinstance(df, pd.DataFrame):
        raise ConfigError(f"write_table needs a pandas DataFrame, got {type(df).__name__}")
    table = read_table(df, table_kind)
    arrow = _arrow_table(table)
    if fmt == "parquet":
        record = table_metadata(table, table_kind, metadata)
        arrow = arrow.replace_schema_metadata(
            {**(arrow.schema.metadata or {}), METADATA_KEY: json.dumps(record, sort_keys=True).encode()}
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(handle)
    try:
        if fmt == "parquet":
            pq.write_table(arrow, temporary, compression="zstd")
        elif (codec := _compression(target)) is not None:
            with pa.CompressedOutputStream(temporary, codec) as sink:
                pcsv.write_csv(arrow, sink)
        else:
            pcsv.write_csv(arrow, temporary)
        publish_file(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return target


def _compression(path: Path) -> str | None:
    name = path.name.lower()
    for suffix, codec in ((".gz", "gzip"), (".bz2", "bz2"), (".zst", "zstd")):
        if name.endswith(suffix):
            return codec
    return None


def read_metadata(path: str | os.PathLike) -> dict:
    """The cimcal provenance metadata of a Parquet file (``{}`` for CSV or foreign Parquet)."""
    target = Path(path)
    if not target.exists():
        raise DataError("no such file or directory", path=str(target))
    if target.is_dir():
        raise DataError("read_metadata reads one file, not a directory", path=str(target))
    fmt = file_format(target)
    if fmt == "csv":
        return {}
    if fmt is None:
        raise DataError("unsupported file type; metadata lives in .parquet files", path=str(target))
    try:
        schema = pq.read_schema(target)
    except (pa.ArrowException, OSError) as err:
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise DataError(f"not a readable Parquet file (truncated or corrupt?): {reason}", path=str(target)) from err
    raw = (schema.metadata or {}).get(METADATA_KEY)
    if raw is None:
        return {}
    try:
        record = json.loads(raw)
    except ValueError as err:
        raise DataError("the cimcal metadata is not valid JSON", path=str(target)) from err
    if not isinstance(record, dict):
        raise DataError("the cimcal metadata is not a JSON object", path=str(target))
    return record
