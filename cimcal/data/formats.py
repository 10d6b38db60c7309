"""Raw rows out of each file format, in bounded batches: Parquet, CSV, in-memory DataFrames.

Nothing here knows the column contract beyond "which raw columns to read, as what Arrow
type"; every pyarrow or OS failure becomes a :class:`DataError` naming the file (and, for a
malformed CSV line, its 0-based data row).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Callable

import pandas as pd
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from cimcal.data.sources import SourceFile
from cimcal.errors import DataError

__all__ = ["METADATA_KEY", "OpenedSource", "open_source", "raw_batches", "count_rows"]

METADATA_KEY = b"cimcal"
# UnicodeDecodeError: pyarrow decodes column names (and text cells) as UTF-8 in Python.
_ARROW_ERRORS = (pa.ArrowException, OSError, UnicodeDecodeError)


def first_line(err: BaseException) -> str:
    """The first line of an exception's text, at most 200 characters (for one-line errors)."""
    text = str(err).strip().splitlines()
    line = text[0] if text else type(err).__name__
    return line if len(line) <= 200 else line[:197] + "..."


@dataclass
class OpenedSource:
    """A source whose column names (and metadata chip id) are known; no rows read yet."""

    source: SourceFile
    names: list[str]
    metadata_chip_id: str | None = None


# ---------------------------------------------------------------------------- Parquet
def _parquet_file(source: SourceFile, text_columns: Sequence[str] = ()) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(source.path, read_dictionary=list(text_columns) or None)
    except _ARROW_ERRORS as err:
        raise DataError(
            f"not a readable Parquet file (truncated or corrupt?): {first_line(err)}", path=source.name
        ) from err


def _metadata_chip_id(metadata: Mapping[bytes, bytes] | None, name: str) -> str | None:
    raw = (metadata or {}).get(METADATA_KEY)
    if raw is None:
        return None
    try:
        record = json.loads(raw)
    except ValueError as err:
        raise DataError("the cimcal metadata in this Parquet file is not valid JSON", path=name) from err
    if not isinstance(record, dict):
        raise DataError("the cimcal metadata in this Parquet file is not a JSON object", path=name)
    chip_id = record.get("chip_id")
    return None if chip_id in (None, "") else str(chip_id)


# ---------------------------------------------------------------------------- CSV
def _locate_bad_line(source: SourceFile) -> int | None:
    """0-based data row of the first malformed CSV line.

    A single-threaded pass: only then does pyarrow know (and report) physical line numbers.
    """
    try:
        reader = pcsv.open_csv(
            source.path,
            read_options=pcsv.ReadOptions(use_threads=False),
            convert_options=pcsv.ConvertOptions(include_columns=[]),
        )
        for _ in reader:
            pass
    except _ARROW_ERRORS as err:
        found = re.search(r"Row #(\d+)", str(err))
        # Physical line numbers are 1-based and line 1 is the header.
        return int(found.group(1)) - 2 if found else None
    return None


def _wide_text(source: SourceFile) -> bool:
    """Whether the file starts with a UTF-16/32 byte-order mark (Excel's "Unicode text" export)."""
    if source.path is None:
        return False
    try:
        with open(source.path, "rb") as handle:
            head = handle.read(2)
    except OSError:
        return False
    return head in (b"\xff\xfe", b"\xfe\xff")  # UTF-32 LE starts with FF FE too


def _csv_failure(source: SourceFile, err: BaseException, rows_done: int) -> DataError:
    message = first_line(err)
    if isinstance(err, UnicodeDecodeError) or "invalid UTF8" in message or _wide_text(source):
        return DataError("the CSV file is not UTF-8 text; save it as UTF-8 (or export to Parquet)", path=source.name)
    if "Empty CSV file" in message:
        return DataError("empty input: the CSV file has no header and no rows", path=source.name)
    if "CSV parse error" in message:
        row = _locate_bad_line(source)
        detail = re.sub(r"^CSV parse error: (Row #\d+: )?", "", message)
        if detail.startswith("Expected 1 columns"):
            detail += " (the header is one column: cimcal reads comma-separated CSV)"
        return DataError(f"malformed CSV row: {detail}", path=source.name, rows=None if row is None else [row])
    after = f" after row {rows_done}" if rows_done else ""
    return DataError(f"cannot read CSV{after}: {message}", path=source.name)


def _csv_reader(source: SourceFile, **options: object) -> pcsv.CSVStreamingReader:
    try:
        return pcsv.open_csv(source.path, **options)
    except _ARROW_ERRORS as err:
        raise _csv_failure(source, err, 0) from err


# ---------------------------------------------------------------------------- opening
def open_source(source: SourceFile) -> OpenedSource:
    """Learn a source's column names (and the chip id its metadata names) without reading rows."""
    if source.format == "dataframe":
        chip_id = source.frame.attrs.get("chip_id")
        names = [str(name) for name in source.frame.columns]
        return OpenedSource(source, names, None if chip_id in (None, "") else str(chip_id))
    if source.format == "parquet":
        try:
            with _parquet_file(source) as parquet:
                schema = parquet.schema_arrow
                names = list(schema.names)
        except _ARROW_ERRORS as err:
            raise DataError(
                f"not a readable Parquet file (truncated or corrupt?): {first_line(err)}", path=source.name
            ) from err
        return OpenedSource(source, names, _metadata_chip_id(schema.metadata, source.name))
    reader = _csv_reader(source, convert_options=pcsv.ConvertOptions(include_columns=[]))
    try:
        names = list(reader.schema.names)
    except UnicodeDecodeError as err:
        raise _csv_failure(source, err, 0) from err
    finally:
        reader.close()
    return OpenedSource(source, names)


# ---------------------------------------------------------------------------- batches
def _rebatch(batches: Iterable[pa.RecordBatch], batch_rows: int) -> Iterator[pa.Table | pa.RecordBatch]:
    """Re-cut a stream of record batches into batches of exactly ``batch_rows`` (last: fewer)."""
    pending: list[pa.RecordBatch] = []
    pending_rows = 0
    for batch in batches:
        if batch.num_rows == 0:
            continue
        if not pending and batch.num_rows == batch_rows:
            yield batch
            continue
        pending.append(batch)
        pending_rows += batch.num_rows
        while pending_rows >= batch_rows:
            table = pa.Table.from_batches(pending)
            yield table.slice(0, batch_rows)
            rest = table.slice(batch_rows)
            pending = [b for b in rest.to_batches() if b.num_rows]
            pending_rows = rest.num_rows
    if pending_rows:
        yield pa.Table.from_batches(pending)


def _to_pandas(chunk: pa.Table | pa.RecordBatch) -> pd.DataFrame:
    # Dictionary-encoded text (chip ids) decodes faster in Arrow than as a pandas Categorical.
    for index, arrow_field in enumerate(chunk.schema):
        if pa.types.is_dictionary(arrow_field.type):
            chunk = chunk.set_column(index, arrow_field.name, chunk.column(index).cast(arrow_field.type.value_type))
    # Not split_blocks: its zero-copy arrays are read-only, and batches must be writable.
    return chunk.to_pandas()


def _parquet_batches(source: SourceFile, types: Mapping[str, pa.DataType], batch_rows: int) -> Iterator[pd.DataFrame]:
    text = [raw for raw, arrow_type in types.items() if arrow_type == pa.string()]
    rows_done = 0
    try:
        with _parquet_file(source, text) as parquet:
            for chunk in _rebatch(parquet.iter_batches(batch_size=batch_rows, columns=list(types)), batch_rows):
                frame = _to_pandas(chunk)
                rows_done += len(frame)
                yield frame
    except _ARROW_ERRORS as err:
        raise DataError(
            f"cannot read rows after row {rows_done} (truncated or corrupt?): {first_line(err)}", path=source.name
        ) from err


def _csv_batches(
    source: SourceFile,
    types: Mapping[str, pa.DataType],
    batch_rows: int,
    on_conversion_error: Callable[[], None],
) -> Iterator[pd.DataFrame]:
    # About 64 bytes a row: blocks near batch_rows, never tiny nor huge.
    block_size = int(min(max(batch_rows * 64, 1 << 20), 64 << 20))
    options = {
        "read_options": pcsv.ReadOptions(block_size=block_size),
        "convert_options": pcsv.ConvertOptions(include_columns=list(types), column_types=dict(types)),
    }
    rows_done = 0
    try:
        reader = pcsv.open_csv(source.path, **options)
        try:
            for chunk in _rebatch(reader, batch_rows):
                frame = _to_pandas(chunk)
                rows_done += len(frame)
                yield frame
        finally:
            reader.close()
    except _ARROW_ERRORS as err:
        if "conversion error" in first_line(err):
            on_conversion_error()  # raises a precise DataError when it finds the cell
        raise _csv_failure(source, err, rows_done) from err


def text_batches(source: SourceFile, columns: Sequence[str], batch_rows: int) -> Iterator[pd.DataFrame]:
    """A CSV's columns as text, in batches (the slow path that names an unparsable cell)."""
    reader = _csv_reader(
        source,
        convert_options=pcsv.ConvertOptions(include_columns=list(columns),
                                            column_types={name: pa.string() for name in columns}),
    )
    try:
        for chunk in _rebatch(reader, batch_rows):
            yield _to_pandas(chunk)
    except _ARROW_ERRORS:
        return
    finally:
        reader.close()


def _frame_batches(source: SourceFile, columns: Sequence[str], batch_rows: int) -> Iterator[pd.DataFrame]:
    frame = source.frame
    names = [str(name) for name in frame.columns]
    positions = [names.index(raw) for raw in columns]
    for start in range(0, len(frame), batch_rows):
        part = frame.iloc[start : start + batch_rows, positions]
        # Own copy: batches must not alias (or be aliased by) the caller's frame.
        part = part.copy(deep=True)
        part.columns = list(columns)
        yield part.reset_index(drop=True)


def raw_batches(
    source: SourceFile,
    types: Mapping[str, pa.DataType],
    batch_rows: int,
    on_conversion_error: Callable[[], None] = lambda: None,
) -> Iterator[pd.DataFrame]:
    """Raw batches of at most ``batch_rows`` rows holding the columns ``types`` names.

    ``types`` maps raw column name -> Arrow type to parse CSV text as (Parquet and DataFrames
    keep their own types; strings are read dictionary-encoded from Parquet and decoded).
    """
    if source.format == "dataframe":
        return _frame_batches(source, list(types), batch_rows)
    if source.format == "parquet":
        return _parquet_batches(source, types, batch_rows)
    return _csv_batches(source, types, batch_rows, on_conversion_error)


def count_rows(source: SourceFile) -> int:
    """Data rows in one source: Parquet from its footer, CSV by streaming one column as text."""
    if source.format == "dataframe":
        return len(source.frame)
    if source.format == "parquet":
        with _parquet_file(source) as parquet:
            return int(parquet.metadata.num_rows)
    names = open_source(source).names
    if not names:
        return 0
    reader = _csv_reader(
        source, convert_options=pcsv.ConvertOptions(include_columns=names[:1], column_types={names[0]: pa.string()})
    )
    rows = 0
    try:
        for batch in reader:
            rows += batch.num_rows
    except _ARROW_ERRORS as err:
        raise _csv_failure(source, err, rows) from err
    finally:
        reader.close()
    return rows
