"""Stream measurement tables as bounded, canonical, validated pandas batches.

Every source is planned before a row is read (columns, ``--map``, units, chip identity), so a
dump that cannot work fails at once; then files stream through pyarrow in batches of at most
``batch_rows`` rows (``ParquetFile.iter_batches``, ``pyarrow.csv.open_csv``), so memory stays
bounded whatever the input size. Each batch is validated vectorized (cimcal.data.validation).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa

from cimcal.data.columns import ColumnPlan, check_column_map, check_selection, plan_columns
from cimcal.data.formats import OpenedSource, open_source, raw_batches, text_batches
from cimcal.data.schema import TableKind, kind_of
from cimcal.data.sources import Source, expand_sources
from cimcal.data.validation import canonical_batch, check_duplicate_keys, constant_value
from cimcal.errors import ConfigError, DataError

# plan_sources / stream_planned / Planned are for cimcal.data's own modules (summary).
__all__ = ["iter_batches", "read_table", "plan_sources", "stream_planned", "Planned", "DEFAULT_BATCH_ROWS"]

DEFAULT_BATCH_ROWS = 262_144


def _read_types(plan: ColumnPlan, kind: TableKind) -> dict[str, pa.DataType]:
    """Raw column -> Arrow type to parse CSV text as."""
    types: dict[str, pa.DataType] = {}
    for raw in plan.read:
        spec = kind.columns.get(plan.rename.get(raw, raw))
        # Integers are parsed as float64 so that "3.0" is accepted and "3.5" gets a clear error.
        types[raw] = pa.string() if spec is not None and spec.dtype == "str" else pa.float64()
    return types


def _raw_batches(opened: OpenedSource, plan: ColumnPlan, kind: TableKind, batch_rows: int) -> Iterator[pd.DataFrame]:
    source = opened.source

    def locate_text_cells() -> None:
        # A CSV number failed to parse: re-read as text so validation names column and rows.
        offset = 0
        for frame in text_batches(source, plan.read, batch_rows):
            canonical_batch(frame, plan, kind, path=source.name, row_offset=offset)
            offset += len(frame)

    return raw_batches(source, _read_types(plan, kind), batch_rows, locate_text_cells)


# ---------------------------------------------------------------------------- planning
@dataclass
class Planned:
    opened: OpenedSource
    plan: ColumnPlan
    constants: dict[str, object]  # canonical column -> validated scalar


def plan_sources(
    sources: Source | Sequence[Source],
    kind: TableKind,
    column_map: Mapping[str, str],
    selected: tuple[str, ...] | None,
) -> tuple[list[Planned], bool]:
    """Plan every source; enforce the chip-identity rule and one set of columns for all."""
    opened = [open_source(source) for source in expand_sources(sources)]

    def plan(item: OpenedSource, selection: tuple[str, ...] | None) -> ColumnPlan:
        return plan_columns(
            item.names,
            kind,
            column_map,
            path=item.source.name,
            partition=item.source.partition,
            metadata_chip_id=item.metadata_chip_id,
            selected=selection,
        )

    base = [plan(item, None) for item in opened]
    has_chip = [("chip_id" in p.produced) for p in base]
    if any(has_chip) and not all(has_chip):
        named = next(item for item, has in zip(opened, has_chip) if has)
        lacking = next(item for item, has in zip(opened, has_chip) if not has)
        raise DataError(
            f"no chip_id (column, hive partition or Parquet metadata) while {named.source.name} names "
            "its chip: mixing chips needs a chip id on every source; add a chip_id column or "
            "--map your chip column to chip_id",
            path=lacking.source.name,
            column="chip_id",
        )
    if selected is None:
        common = set.intersection(*(set(p.produced) for p in base))
        selected = tuple(name for name in kind.columns if name in common)
    plans = [plan(item, selected) for item in opened]
    planned = []
    for item, item_plan in zip(opened, plans):
        constants = {
            name: constant_value(value, kind.columns[name], path=item.source.name, column=name)
            for name, value in item_plan.constants.items()
        }
        planned.append(Planned(item, item_plan, constants))
    return planned, all(has_chip)


def _constant_columns(constants: Mapping[str, object], kind: TableKind, n_rows: int) -> dict[str, pd.Series]:
    """Typed columns repeating each partition / metadata value (Series: copy-on-write shares them)."""
    columns: dict[str, pd.Series] = {}
    for name, value in constants.items():
        dtype = kind.columns[name].dtype
        if dtype == "str":
            columns[name] = pd.Series(pa.repeat(pa.scalar(value, pa.string()), n_rows).to_pandas(), dtype="str")
        else:
            columns[name] = pd.Series(np.full(n_rows, value, dtype=np.int64 if dtype == "int" else np.float64))
    return columns


# ---------------------------------------------------------------------------- public API
def iter_batches(
    sources: Source | Sequence[Source],
    kind: str | TableKind,
    *,
    column_map: Mapping[str, str] | None = None,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    columns: Sequence[str] | None = None,
) -> Iterator[pd.DataFrame]:
    """Stream canonical, validated batches of at most ``batch_rows`` rows from ``sources``.

    Parameters
    ----------
    sources
        A CSV or Parquet path, a directory of them (hive ``key=value`` partitions become
        columns), a pandas DataFrame, or a list of these.
    kind
        ``"conductance"`` or ``"adc"``.
    column_map
        ``{old: new}`` renames applied before anything else (the CLI's ``--map old=new``).
    batch_rows
        Upper bound on rows per batch; memory stays bounded by it whatever the input size.
    columns
        Canonical columns to yield (others are not read nor validated); default: every
        contract column present in all sources.

    Every source is opened and planned before this returns, so missing columns, unreadable
    files and mixed chips raise :class:`DataError` immediately; bad values raise it when their
    batch is reached. Each batch's ``attrs`` hold ``source`` and ``row_offset`` (0-based row of
    the batch's first row within that source).
    """
    table_kind = kind_of(kind)
    mapping = check_column_map(column_map)
    selected = check_selection(columns, table_kind)
    if isinstance(batch_rows, bool) or not isinstance(batch_rows, (int, np.integer)) or batch_rows < 1:
        raise ConfigError(f"batch_rows must be a positive integer, got {batch_rows!r}")
    planned, has_chip = plan_sources(sources, table_kind, mapping, selected)
    return stream_planned(planned, table_kind, int(batch_rows), check_duplicates=not has_chip)


def stream_planned(
    planned: list[Planned], kind: TableKind, batch_rows: int, *, check_duplicates: bool
) -> Iterator[pd.DataFrame]:
    """Canonical batches of planned sources, in order; DataError at the end if none had rows."""
    total = 0
    for item in planned:
        name = item.opened.source.name
        cache: dict[str, pd.Series] = {}
        offset = 0
        for raw in _raw_batches(item.opened, item.plan, kind, batch_rows):
            n_rows = len(raw)
            constants = None
            if item.constants:
                if not cache or len(next(iter(cache.values()))) < n_rows:
                    cache = _constant_columns(item.constants, kind, max(n_rows, batch_rows))
                constants = {key: value.iloc[:n_rows] for key, value in cache.items()}
            batch = canonical_batch(raw, item.plan, kind, path=name, row_offset=offset, constants=constants)
            if check_duplicates:
                check_duplicate_keys(batch, kind, path=name, row_offset=offset)
            offset += n_rows
            total += n_rows
            yield batch
    if total == 0:
        names = [item.opened.source.name for item in planned]
        shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        raise DataError(f"empty input: no data rows in {shown}", path=names[0] if len(names) == 1 else None)


def read_table(
    sources: Source | Sequence[Source],
    kind: str | TableKind,
    *,
    column_map: Mapping[str, str] | None = None,
    columns: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Read whole ``sources`` into one canonical DataFrame (for inputs that fit in memory).

    Same sources, validation and errors as :func:`iter_batches`; in addition, without a chip
    id, repeated measurement keys are checked across each whole source, not only per batch.
    ``attrs["sources"]`` lists the files read.
    """
    table_kind = kind_of(kind)
    selected = check_selection(columns, table_kind)
    planned, has_chip = plan_sources(sources, table_kind, check_column_map(column_map), selected)
    frames = list(stream_planned(planned, table_kind, DEFAULT_BATCH_ROWS, check_duplicates=not has_chip))
    names = list(dict.fromkeys(frame.attrs["source"] for frame in frames))
    if not has_chip:
        for name in names:
            parts = [frame for frame in frames if frame.attrs["source"] == name]
            if len(parts) > 1:
                check_duplicate_keys(pd.concat(parts, ignore_index=True), table_kind, path=name)
    table = frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)
    table.attrs = {"sources": names}
    return table
