"""Turn one raw batch into a canonical, validated one (vectorized; no per-row Python).

Canonical means: contract column names in contract order, ``int64`` integers, ``float64``
floats, ``str`` chip ids, conductances in microsiemens, every number finite, indices and
conductances non-negative. Every problem is a :class:`DataError` naming the file, the column
and the first offending rows (0-based data rows within the file).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
from pandas.api import types as ptypes

from cimcal.data.columns import ColumnPlan
from cimcal.data.schema import Column, TableKind, UnitAlias
from cimcal.errors import DataError

__all__ = ["canonical_batch", "constant_value", "check_duplicate_keys"]

_SHOWN_ROWS = 5
# Integers travel through float64 when a file stores them as floats or text; beyond 2**53
# a float no longer holds every integer exactly.
_EXACT_INT_LIMIT = float(2**53)


def _fail(message: str, *, path: str, column: str, mask: np.ndarray, row_offset: int) -> DataError:
    hits = np.flatnonzero(mask)
    rows = (hits[:_SHOWN_ROWS] + row_offset).tolist()
    if hits.size > _SHOWN_ROWS:
        message += f" ({hits.size} such rows in rows {row_offset}-{row_offset + mask.size - 1})"
    return DataError(message, path=path, column=column, rows=rows)


def _show(value: object) -> str:
    """repr of one offending value for a message (plain Python, at most 40 characters)."""
    text = repr(value.item() if isinstance(value, np.generic) else value)
    return text if len(text) <= 40 else text[:37] + "..."


def _as_float(series: pd.Series, *, path: str, column: str, row_offset: int) -> np.ndarray:
    """Any column that holds numbers (or text of numbers) -> float64 array; else DataError."""
    dtype = series.dtype
    if ptypes.is_bool_dtype(dtype):
        raise DataError(
            "holds true/false values; expected numbers", path=path, column=column, rows=[row_offset]
        )
    if ptypes.is_numeric_dtype(dtype) and not isinstance(dtype, pd.CategoricalDtype):
        if ptypes.is_complex_dtype(dtype):
            raise DataError("holds complex numbers; expected real numbers", path=path, column=column)
        if isinstance(dtype, np.dtype):
            return series.to_numpy().astype(np.float64, copy=False)
        return series.to_numpy(dtype=np.float64, na_value=np.nan)
    if ptypes.is_datetime64_any_dtype(dtype) or ptypes.is_timedelta64_dtype(dtype):
        raise DataError(f"holds {dtype} values; expected plain numbers", path=path, column=column)
    # Text (CSV cells, object columns, categoricals): parse; anything unparsable is a type error.
    try:
        parsed = pd.to_numeric(series.astype(object), errors="coerce")
        values = np.asarray(parsed, dtype=np.float64)
    except (TypeError, ValueError, OverflowError):
        values = np.full(len(series), np.nan)
        parsed = None
    bad = np.isnan(values) & series.notna().to_numpy(dtype=bool)
    if parsed is not None and bad.any():
        # NaN spelled as text ("nan", "NaN") is a missing value, not a type error.
        text = series[bad].astype(str).str.strip().str.lower()
        bad[bad] = ~text.isin(["nan", "-nan", "+nan"]).to_numpy()
    if bad.any():
        first = series.iloc[int(np.flatnonzero(bad)[0])]
        what = "text" if isinstance(first, str) else "values"
        raise _fail(
            f"expected numbers, found {what} such as {_show(first)}",
            path=path,
            column=column,
            mask=bad,
            row_offset=row_offset,
        )
    return values


def _check_finite(values: np.ndarray, *, path: str, column: str, row_offset: int) -> None:
    finite = np.isfinite(values)
    if not finite.all():
        what = "missing or NaN" if np.isnan(values[~finite]).all() else "NaN or infinite"
        raise _fail(
            f"{what} values; every value must be a finite number (drop or fix those rows)",
            path=path,
            column=column,
            mask=~finite,
            row_offset=row_offset,
        )


def _as_int(series: pd.Series, *, path: str, column: str, row_offset: int) -> np.ndarray:
    dtype = series.dtype
    if ptypes.is_integer_dtype(dtype) and not isinstance(dtype, pd.CategoricalDtype):
        if not series.hasnans:
            if ptypes.is_unsigned_integer_dtype(dtype) and dtype.itemsize == 8:
                too_big = series.to_numpy() > np.iinfo(np.int64).max
                if too_big.any():
                    raise _fail(
                        "integer too large for int64", path=path, column=column, mask=too_big, row_offset=row_offset
                    )
            return series.to_numpy(dtype=np.int64)
    values = _as_float(series, path=path, column=column, row_offset=row_offset)
    _check_finite(values, path=path, column=column, row_offset=row_offset)
    # a CSV's integers come through float64 (so that "3.0" reads), exact only in magnitude below 2**53
    too_big = np.abs(values) >= _EXACT_INT_LIMIT
    fraction = (values != np.floor(values)) & ~too_big
    first_big = int(np.argmax(too_big)) if too_big.any() else len(values)
    if fraction.any() and int(np.argmax(fraction)) < first_big:  # the first bad row decides the message
        raise _fail(
            f"expected whole numbers, found {_show(values[fraction][0])}",
            path=path,
            column=column,
            mask=fraction,
            row_offset=row_offset,
        )
    if too_big.any():
        raise _fail(
            "integer too large to read exactly from text or floats (magnitude at most 2**53 - 1), found about "
            f"{values[too_big][0]:.6g}",
            path=path,
            column=column,
            mask=too_big,
            row_offset=row_offset,
        )
    return values.astype(np.int64)


def _as_str(series: pd.Series, *, path: str, column: str, row_offset: int) -> pd.Series:
    if ptypes.is_float_dtype(series.dtype):
        # A chip id column that arrived as floats (e.g. 7.0): keep the integral ones readable.
        values = series.to_numpy(dtype=np.float64, na_value=np.nan)
        with np.errstate(invalid="ignore"):
            integral = np.isfinite(values) & (values == np.floor(values)) & (np.abs(values) < _EXACT_INT_LIMIT)
        text = values.astype(object)
        text[integral] = values[integral].astype(np.int64).astype(object)
        text[np.isnan(values)] = None
        series = pd.Series(text, dtype=object)
    try:
        out = series.astype("str")
    except (TypeError, ValueError):
        out = series.astype(object).map(str, na_action="ignore").astype("str")
    # Chip ids repeat: validate the few distinct values, build a row mask only on failure.
    distinct = out.unique()
    blank = [value for value in distinct if not isinstance(value, str) or not value.strip()]
    if blank:
        empty = (out.isna() | out.isin([value for value in blank if isinstance(value, str)])).to_numpy(dtype=bool)
        raise _fail(
            "empty chip id; every row needs one (or drop the column for a single chip)",
            path=path,
            column=column,
            mask=empty,
            row_offset=row_offset,
        )
    return out.reset_index(drop=True)


def _check_nonnegative(values: np.ndarray, spec: Column, *, path: str, column: str, row_offset: int) -> None:
    if spec.nonnegative:
        negative = values < 0
        if negative.any():
            what = "negative conductance" if spec.name.startswith("g_") else "negative value"
            raise _fail(
                f"{what} {_show(values[negative][0])}; {spec.name} must be >= 0",
                path=path,
                column=column,
                mask=negative,
                row_offset=row_offset,
            )


def _convert_unit(values: np.ndarray, alias: UnitAlias, *, path: str, row_offset: int) -> np.ndarray:
    if alias.inverse:
        nonpositive = values <= 0
        if nonpositive.any():
            raise _fail(
                f"resistance must be > 0 to convert to conductance, found {_show(values[nonpositive][0])}",
                path=path,
                column=alias.name,
                mask=nonpositive,
                row_offset=row_offset,
            )
        return alias.factor / values
    return values * alias.factor


def canonical_batch(
    raw: pd.DataFrame,
    plan: ColumnPlan,
    kind: TableKind,
    *,
    path: str,
    row_offset: int,
    constants: Mapping[str, pd.Series | np.ndarray] | None = None,
) -> pd.DataFrame:
    """Rename, convert units, coerce dtypes and validate one batch of raw rows.

    ``raw`` holds the columns ``plan.read`` under their raw names; ``constants`` maps canonical
    columns to ready-made typed arrays of ``len(raw)`` rows (partition and metadata values).
    """
    n_rows = len(raw)
    out: dict[str, object] = {}
    for name, spec in kind.columns.items():
        if constants and name in constants:
            out[name] = constants[name]
            continue
        alias = plan.converted.get(name)
        if alias is None and name not in plan.direct:
            continue
        source_name = alias.name if alias is not None else name
        raw_name = next((r for r in plan.read if plan.rename.get(r, r) == source_name), source_name)
        series = raw[raw_name]
        # Messages use the name the user sees in their file.
        column = raw_name
        if spec.dtype == "str":
            out[name] = _as_str(series, path=path, column=column, row_offset=row_offset)
            continue
        if spec.dtype == "int":
            values = _as_int(series, path=path, column=column, row_offset=row_offset)
        else:
            values = _as_float(series, path=path, column=column, row_offset=row_offset)
            _check_finite(values, path=path, column=column, row_offset=row_offset)
            if alias is not None:
                values = _convert_unit(values, alias, path=path, row_offset=row_offset)
        _check_nonnegative(values, spec, path=path, column=column, row_offset=row_offset)
        # Unchanged data comes back as a read-only view of the pandas column: hand over the
        # Series itself, so copy-on-write keeps the batch writable without copying it now.
        same = not values.flags.writeable and alias is None and values.dtype == series.dtype
        out[name] = series if same else values
    frame = pd.DataFrame(out, index=pd.RangeIndex(n_rows), copy=False)
    frame.attrs["source"] = path
    frame.attrs["row_offset"] = int(row_offset)
    return frame


def constant_value(value: object, spec: Column, *, path: str, column: str) -> object:
    """Validate one partition or metadata value (raw text) against its column's contract."""
    series = pd.Series([value], dtype=object)
    if spec.dtype == "str":
        return str(_as_str(series, path=path, column=column, row_offset=0).iloc[0])
    if spec.dtype == "int":
        number = _as_int(series, path=path, column=column, row_offset=0)
    else:
        number = _as_float(series, path=path, column=column, row_offset=0)
        _check_finite(number, path=path, column=column, row_offset=0)
    _check_nonnegative(number, spec, path=path, column=column, row_offset=0)
    return number[0].item()


def _any_repeated_key(batch: pd.DataFrame, keys: list[str]) -> bool:
    """Whether two rows may share a key (the caller confirms a hit exactly).

    A 64-bit multiplicative hash per row, built in place and sorted: a few passes over the
    batch, faster than a hash table on 10^5+ random keys.
    """
    multiplier = np.uint64(0x9E3779B97F4A7C15)
    acc = np.zeros(len(batch), dtype=np.uint64)
    for name in keys:
        values = batch[name].to_numpy()
        if values.dtype.kind == "f":  # 64-bit words, and -0.0 made 0.0: equal values must hash alike
            values = np.add(values, 0.0, dtype=np.float64)  # one pass: widen and normalize
        else:
            values = values.astype(np.int64, copy=False)
        np.bitwise_xor(acc, np.ascontiguousarray(values).view(np.uint64), out=acc)
        np.multiply(acc, multiplier, out=acc)
    acc.sort()
    return bool((acc[1:] == acc[:-1]).any())


def check_duplicate_keys(batch: pd.DataFrame, kind: TableKind, *, path: str, row_offset: int = 0) -> None:
    """Reject repeated measurement keys in a table that has no chip id: pasted-together chips.

    Applies only when the table numbers its repeats (``read_idx`` / ``repeat``) and has no
    ``chip_id``: then the same (array, row, col, level, t_s, read_idx) twice can only mean two
    chips (or two campaigns) in one table.
    """
    if "chip_id" in batch.columns or kind.repeat is None or kind.repeat not in batch.columns:
        return
    keys = [name for name in kind.key if name in batch.columns]
    # array and t_s may be absent (one array, one time); every other key column must be there.
    required_keys = [name for name in kind.key if name not in ("array", "t_s")]
    if len(batch) < 2 or any(name not in batch.columns for name in required_keys):
        return
    if not _any_repeated_key(batch, keys):
        return
    later = batch.duplicated(subset=keys, keep="first").to_numpy()
    if not later.any():  # a 64-bit hash collision, not a duplicate
        return
    second = int(np.flatnonzero(later)[0])
    same = np.ones(len(batch), dtype=bool)
    for name in keys:
        same &= batch[name].to_numpy() == batch[name].to_numpy()[second]
    first = int(np.flatnonzero(same)[0])
    raise DataError(
        f"the same measurement ({', '.join(keys)}) appears twice ({int(later.sum())} repeated rows) and "
        "there is no chip_id: this looks like several chips (or arrays, or time points) in one table; "
        f"add a chip_id column (or --map your chip column to chip_id), or number repeated measurements in "
        f"{kind.repeat}",
        path=path,
        column=kind.repeat,
        rows=[first + row_offset, second + row_offset],
    )
