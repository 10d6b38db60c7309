"""What a set of measurement tables holds, in one streaming pass (for ``cimcal info``).

Rows, chips, arrays, levels (or ADC columns), time points and the range of every numeric
column, accumulated batch by batch so any input size fits in memory. Distinct-value lists
stop growing at :data:`MAX_DISTINCT` values (their count is then reported as a lower bound).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from cimcal.data.columns import check_column_map, plan_columns, suggest_name
from cimcal.data.formats import open_source
from cimcal.data.readers import DEFAULT_BATCH_ROWS, plan_sources, stream_planned
from cimcal.data.schema import ADC, CONDUCTANCE, KINDS, TableKind, kind_of, TIME_POINT_GAP_LOG1P, time_point_groups
from cimcal.data.sources import Source, expand_sources
from cimcal.errors import DataError

__all__ = ["summarize", "detect_kind", "MAX_DISTINCT"]

MAX_DISTINCT = 10_000

# Columns whose distinct values are listed, per kind, under these summary keys.
_LISTED = {
    "conductance": {"chip_id": "chips", "array": "arrays", "level": "levels", "t_s": "time_points_s"},
    "adc": {"chip_id": "chips", "array": "arrays", "col": "cols", "repeat": "repeats"},
}


class _TimeSpread:
    """Min and max ``t_s`` per fine log-time bin (1/1000 of the time-point gap wide): bounded, and
    enough to cluster every value into time points exactly as :func:`time_point_groups` would."""

    def __init__(self) -> None:
        self.low: dict[int, float] = {}
        self.high: dict[int, float] = {}

    def update(self, t_s: pd.Series) -> None:
        values = t_s.to_numpy(dtype=float)
        if values.size == 0:
            return
        keys = np.floor(np.log1p(values) * (1000.0 / TIME_POINT_GAP_LOG1P)).astype(np.int64)
        frame = pd.DataFrame({"key": keys, "t": values}).groupby("key")["t"].agg(["min", "max"])
        for key, low, high in zip(frame.index.tolist(), frame["min"].tolist(), frame["max"].tolist()):
            self.low[key] = min(low, self.low.get(key, low))
            self.high[key] = max(high, self.high.get(key, high))

    def groups(self) -> list[list[float]]:
        return [list(g) for g in time_point_groups([*self.low.values(), *self.high.values()])]


class _Distinct:
    """Distinct values of one column, capped at MAX_DISTINCT."""

    def __init__(self) -> None:
        self.values: set = set()
        self.truncated = False

    def update(self, column: pd.Series) -> None:
        if self.truncated:
            return
        self.values.update(pd.unique(column).tolist())
        if len(self.values) > MAX_DISTINCT:
            self.values = set(sorted(self.values)[:MAX_DISTINCT])
            self.truncated = True


def detect_kind(sources: Source | Sequence[Source], column_map: Mapping[str, str] | None = None) -> str:
    """``"conductance"`` or ``"adc"``: the kind whose required columns every source has.

    When neither fits, the error is the one of the kind the columns resemble most (its
    message suggests the ``--map`` renames), prefixed by a hint to give the kind.
    """
    mapping = check_column_map(column_map)
    opened = [open_source(source) for source in expand_sources(sources)]
    fits: list[str] = []
    failures: list[tuple[int, DataError]] = []
    for kind in KINDS.values():
        try:
            for item in opened:
                names = [*item.names, *item.source.partition]
                plan_columns(item.names, kind, mapping, path=item.source.name, partition=item.source.partition)
        except DataError as err:
            renamed = {mapping.get(name, name) for name in names}
            resemblance = sum(
                1 for name in kind.required_names if name in renamed or suggest_name(name, renamed) is not None
            )
            failures.append((resemblance, err))
            continue
        fits.append(kind.name)
    if len(fits) == 1:
        return fits[0]
    first = opened[0]
    if fits:
        raise DataError(
            "the columns fit both a conductance and an ADC table; give --kind conductance or --kind adc",
            path=first.source.name,
        )
    resemblance, err = max(failures, key=lambda pair: pair[0])
    if resemblance == 0:
        shown = ", ".join([*first.names, *first.source.partition][:20]) or "no columns"
        raise DataError(
            f"cannot tell the table kind: neither conductance ({', '.join(CONDUCTANCE.required_names)}) "
            f"nor ADC ({', '.join(ADC.required_names)}) columns in ({shown}); rename with --map OLD=NEW "
            "or give --kind",
            path=first.source.name,
        )
    raise DataError(f"cannot tell the table kind (give --kind); {err.reason}", path=err.path, column=err.column)


def _python(value: object) -> object:
    return value.item() if isinstance(value, np.generic) else value


def summarize(
    sources: Source | Sequence[Source],
    kind: str | TableKind,
    column_map: Mapping[str, str] | None = None,
    *,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    progress: bool = False,
) -> dict:
    """Summarize ``sources`` of ``kind`` (or ``"auto"``) in one streaming pass.

    Returns a JSON-ready dict: ``kind``, ``rows``, ``columns`` (canonical, as read),
    ``ignored_columns`` (in the files but not in the contract), ``sources`` (path and rows of
    each file), the distinct ``chips`` / ``arrays`` / ``levels`` / ``time_points_s``
    (conductance) or ``cols`` / ``repeats`` (ADC) with ``<key>_truncated`` flags, and
    ``ranges``: ``{column: [min, max]}`` for every numeric column.
    """
    mapping = check_column_map(column_map)
    if kind == "auto":
        kind = detect_kind(sources, mapping)
    table_kind = kind_of(kind)
    planned, has_chip = plan_sources(sources, table_kind, mapping, None)
    listed = {col: key for col, key in _LISTED[table_kind.name].items()}
    distinct = {col: _Distinct() for col in listed}
    spread = _TimeSpread()
    minimum: dict[str, float] = {}
    maximum: dict[str, float] = {}
    rows_per_source: dict[str, int] = {item.opened.source.name: 0 for item in planned}
    columns: list[str] = []
    batches: Iterable[pd.DataFrame] = stream_planned(
        planned, table_kind, batch_rows, check_duplicates=not has_chip
    )
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(unit="rows", unit_scale=True, desc="reading", leave=False)
    try:
        for batch in batches:
            if not columns:
                columns = list(batch.columns)
            rows_per_source[batch.attrs["source"]] += len(batch)
            for name in batch.columns:
                if name in distinct:
                    distinct[name].update(batch[name])
                if name == "t_s":
                    spread.update(batch[name])
                if table_kind.columns[name].dtype == "str" or len(batch) == 0:
                    continue
                values = batch[name].to_numpy()
                low, high = values.min(), values.max()
                minimum[name] = low if name not in minimum else min(minimum[name], low)
                maximum[name] = high if name not in maximum else max(maximum[name], high)
            if bar is not None:
                bar.update(len(batch))
    finally:
        if bar is not None:
            bar.close()

    summary: dict[str, object] = {
        "kind": table_kind.name,
        "rows": int(sum(rows_per_source.values())),
        "columns": columns,
        "ignored_columns": sorted({name for item in planned for name in item.plan.ignored}),
        "sources": [{"path": name, "rows": rows} for name, rows in rows_per_source.items()],
    }
    for col, key in listed.items():
        if col in columns:
            summary[key] = sorted(_python(v) for v in distinct[col].values)
            summary[f"{key}_truncated"] = distinct[col].truncated
        else:
            summary[key] = None
    if summary.get("time_points_s") is not None:
        # timestamps (one per cell, say) clustered into the time points the fit will use
        summary["time_point_groups_s"] = spread.groups()
    summary["ranges"] = {
        name: [_python(minimum[name]), _python(maximum[name])] for name in columns if name in minimum
    }
    return summary
