"""Mergeable per-partition summaries that the noise models are fitted from.

A summary of a batch of rows can be merged with the summary of any other batch; the model
fitted from the merged summary does not depend on how the rows were split. That is what lets
:func:`cimcal.noise.fit_profile` stream batches in one process or map partitions on Dask.

Values are histogrammed on a fixed, data-independent grid: the float32 bit pattern of a value
truncated to ``MANTISSA_BITS`` mantissa bits (a log-spaced grid with 2**12 bins per octave,
relative bin width 2.4e-4: about 2**15 bins over a 0.1-50 µS range). No first pass over the data is needed to choose a range, and merged
counts are exactly the counts of a single pass. Quantiles are read from the histogram assuming
values are uniform inside a bin, then clamped to the exact minimum and maximum (kept per group).

Per-cell means (for the programming error / read noise split) need grouping rows by cell
across batches. :class:`CellAccumulator` keeps, per cell and time point, a 64-bit hash key,
the sum and the count of its reads: O(cells) memory, never the rows. Partial aggregates of
each batch are appended and compacted (sort + reduce) whenever they outgrow the compacted
table, so the cost is amortized O(rows) and the peak about three times the cell table.
Read-to-read noise then needs a second pass: :func:`summarize_residuals` histograms each read's
deviation from its cell mean, looked up by key in the finished cell table.

Times are keyed on a fine log1p(t_s) grid and only clustered into time points (:class:`TimeMap`,
gaps wider than TIME_GAP_LOG1P) from the merged summary, so per-cell timestamps that jitter
around a nominal time form one time point however the rows were partitioned.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from cimcal.data.schema import TIME_POINT_GAP_LOG1P

__all__ = [
    "MANTISSA_BITS",
    "T_KEYS_PER_E",
    "TIME_GAP_KEYS",
    "TIME_GAP_LOG1P",
    "TimeMap",
    "float_keys",
    "key_edges",
    "histogram_quantiles",
    "time_keys",
    "GroupedHistogram",
    "CellAccumulator",
    "CellTable",
    "ConductanceSummary",
    "ResidualSummary",
    "ADCSummary",
    "input_keys",
    "input_key_centres",
    "summarize_conductance",
    "summarize_residuals",
    "summarize_adc",
]

MANTISSA_BITS = 12
_SHIFT = 23 - MANTISSA_BITS
_KEY_OFFSET = 1 << 23  # signed keys become non-negative for packing
# Time points. Reads are first keyed on a fine grid, round(log1p(t_s) * T_KEYS_PER_E) (a mergeable
# histogram of times), then the occupied fine keys are clustered by gaps: a new time point starts
# where consecutive occupied keys are more than TIME_GAP_KEYS apart (0.1 in log1p(t_s), about 10 %
# in time). Reads taken at one nominal time but timestamped per cell (t = 1.0..2.3 s for a nominal
# 1 s) thus form one time point, while a decade-spaced schedule stays separate.
T_KEYS_PER_E = 100
TIME_GAP_KEYS = round(TIME_POINT_GAP_LOG1P * T_KEYS_PER_E)
TIME_GAP_LOG1P = TIME_GAP_KEYS / T_KEYS_PER_E
_T_MASK = (1 << 12) - 1
_GROUP_SHIFT = 28  # packed = group << 28 | (key + offset)


def float_keys(x: np.ndarray) -> np.ndarray:
    """Histogram bin index of each value (monotone in the value, signed, int64)."""
    x = np.asarray(x, dtype=np.float64)
    a = np.abs(x)
    f32 = a.astype(np.float32)
    bits = f32.view(np.int32).astype(np.int64)
    bits -= f32.astype(np.float64) > a  # truncate toward zero so that a value never leaves its bin
    mag = bits >> _SHIFT
    return np.where(x < 0, -mag - 1, mag)


def _mag_edge(b: np.ndarray) -> np.ndarray:
    return (np.asarray(b, dtype=np.int64) << _SHIFT).astype(np.int32).view(np.float32).astype(np.float64)


def key_edges(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper value edges of the histogram bins ``keys``."""
    keys = np.asarray(keys, dtype=np.int64)
    neg = keys < 0
    b = np.where(neg, -keys - 1, keys)
    lo_mag, hi_mag = _mag_edge(b), _mag_edge(b + 1)
    lo = np.where(neg, -hi_mag, lo_mag)
    hi = np.where(neg, -lo_mag, hi_mag)
    return lo, hi


def histogram_quantiles(
    keys: np.ndarray,
    counts: np.ndarray,
    probs: np.ndarray,
    vmin: float,
    vmax: float,
    extremes: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """Inverse CDF of a sparse histogram at ``probs`` (uniform inside bins, clamped to [vmin, vmax]).

    With each bin's exact (min, max) value in ``extremes``, a bin's mass is spread over
    [min, max] instead of the whole bin: a bin holding a single value (an atom: exact zeros,
    quantized readings, cells stuck at one value) keeps its mass at that value.
    """
    order = np.argsort(keys, kind="stable")
    keys, counts = np.asarray(keys)[order], np.asarray(counts, dtype=np.float64)[order]
    if extremes is not None:
        lo, hi = (np.asarray(e, dtype=np.float64)[order] for e in extremes)
    else:
        lo, hi = key_edges(keys)
    cum = np.cumsum(counts)
    total = cum[-1]
    target = np.asarray(probs, dtype=np.float64) * total
    i = np.clip(np.searchsorted(cum, target, side="left"), 0, len(cum) - 1)
    before = cum[i] - counts[i]
    frac = np.clip((target - before) / counts[i], 0.0, 1.0)
    q = lo[i] + frac * (hi[i] - lo[i])
    q = np.clip(q, vmin, vmax)
    q[0], q[-1] = vmin, vmax
    return np.maximum.accumulate(q)


def time_keys(t_s: np.ndarray) -> np.ndarray:
    """Fine time key of each ``t_s``: round(log1p(t_s) * T_KEYS_PER_E) (see :class:`TimeMap`)."""
    return np.rint(np.log1p(np.asarray(t_s, dtype=np.float64)) * T_KEYS_PER_E).astype(np.int64)


@dataclass
class TimeMap:
    """Fine time keys -> time points (each named by the first fine key of its cluster).

    Built from the occupied fine keys of a whole (merged) summary, so the clustering does not
    depend on how the rows were partitioned.
    """

    fine: np.ndarray  # sorted occupied fine keys
    cluster: np.ndarray  # cluster key of each

    @classmethod
    def of(cls, keys: np.ndarray) -> TimeMap:
        """Cluster fine keys: a gap of more than TIME_GAP_KEYS between occupied keys starts a time point."""
        fine = np.unique(np.asarray(keys, dtype=np.int64))
        new = np.concatenate([[True], np.diff(fine) > TIME_GAP_KEYS]) if len(fine) else np.zeros(0, bool)
        return cls(fine, fine[new][np.cumsum(new) - 1] if len(fine) else fine)

    def apply(self, keys: np.ndarray) -> np.ndarray:
        """Cluster key of each fine key (keys absent from the map go to the nearest occupied key)."""
        keys = np.asarray(keys, dtype=np.int64)
        if len(self.fine) == 0:
            return keys
        i = np.clip(np.searchsorted(self.fine, keys), 1, len(self.fine) - 1) if len(self.fine) > 1 \
            else np.zeros(len(keys), np.int64)
        if len(self.fine) > 1:
            i = np.where(np.abs(self.fine[i - 1] - keys) <= np.abs(self.fine[i] - keys), i - 1, i)
        return self.cluster[i]


@dataclass
class GroupedHistogram:
    """Sparse counts of float keys per integer group, with each bin's exact min and max value.

    Keeping the extremes is what lets atoms (exact zeros, instrument-quantized readings, cells
    stuck at one value) stay atoms: a bin whose min equals its max holds one value only.
    """

    packed: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    counts: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    vmin: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float64))
    vmax: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float64))

    @staticmethod
    def _reduce(packed, counts, vmin, vmax, order) -> GroupedHistogram:
        packed, counts, vmin, vmax = packed[order], counts[order], vmin[order], vmax[order]
        if len(packed) == 0:
            return GroupedHistogram(packed, counts, vmin, vmax)
        starts = np.flatnonzero(np.concatenate([[True], packed[1:] != packed[:-1]]))
        return GroupedHistogram(packed[starts], np.add.reduceat(counts, starts),
                                np.minimum.reduceat(vmin, starts), np.maximum.reduceat(vmax, starts))

    @classmethod
    def of(cls, groups: np.ndarray, keys: np.ndarray, values: np.ndarray) -> GroupedHistogram:
        packed = (np.asarray(groups, np.int64) << _GROUP_SHIFT) | (np.asarray(keys, np.int64) + _KEY_OFFSET)
        values = np.asarray(values, np.float64)
        return cls._reduce(packed, np.ones(len(packed), np.int64), values, values, np.argsort(packed))

    def merge(self, other: GroupedHistogram) -> GroupedHistogram:
        packed = np.concatenate([self.packed, other.packed])
        order = np.argsort(packed, kind="stable")  # two sorted runs: a linear-time merge
        return self._reduce(packed, np.concatenate([self.counts, other.counts]),
                            np.concatenate([self.vmin, other.vmin]), np.concatenate([self.vmax, other.vmax]), order)

    def group(self, group: int) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray]]:
        """Keys, counts and (min, max) value of each bin of one group (sorted by key)."""
        lo = np.searchsorted(self.packed, np.int64(group) << _GROUP_SHIFT)
        hi = np.searchsorted(self.packed, np.int64(group + 1) << _GROUP_SHIFT)
        keys = (self.packed[lo:hi] & ((1 << _GROUP_SHIFT) - 1)) - _KEY_OFFSET
        return keys, self.counts[lo:hi], (self.vmin[lo:hi], self.vmax[lo:hi])


def _merge_stats(a: dict, b: dict) -> dict:
    """Merge per-group moment dicts {group: [n, sum, sumsq, min, max]}."""
    out = {k: list(v) for k, v in a.items()}
    for k, v in b.items():
        if k not in out:
            out[k] = list(v)
        else:
            o = out[k]
            out[k] = [o[0] + v[0], o[1] + v[1], o[2] + v[2], min(o[3], v[3]), max(o[4], v[4])]
    return out


def _group_stats(groups: np.ndarray, x: np.ndarray) -> dict:
    frame = pd.DataFrame({"g": groups, "x": x, "x2": x * x})
    agg = frame.groupby("g", sort=True).agg(n=("x", "size"), s=("x", "sum"), s2=("x2", "sum"),
                                             lo=("x", "min"), hi=("x", "max"))
    return {int(k): [int(r.n), float(r.s), float(r.s2), float(r.lo), float(r.hi)] for k, r in agg.iterrows()}


_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _mix(h: np.ndarray, v: np.ndarray) -> np.ndarray:
    """One splitmix64 round of ``h`` combined with ``v`` (uint64 arrays, wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        z = (h ^ v.astype(np.uint64)) + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def _chip_hashes(chip_id: pd.Series | None, n: int) -> np.ndarray:
    if chip_id is None:
        return np.zeros(n, np.uint64)
    codes, uniques = pd.factorize(chip_id.astype(str), sort=False)
    table = np.array(
        [int.from_bytes(hashlib.blake2b(str(u).encode(), digest_size=8).digest(), "little") for u in uniques],
        dtype=np.uint64,
    )
    return table[codes]


def cell_keys(df: pd.DataFrame, t_key: np.ndarray) -> np.ndarray:
    """Key of (chip_id, array, row, col, level, time key) per row.

    The high 52 bits hash the cell (collisions ~ cells^2 / 2^53 per time point), the low 12 bits
    hold the time key, so that cells can be regrouped from fine keys to time points later.
    """
    n = len(df)
    h = _chip_hashes(df["chip_id"] if "chip_id" in df else None, n)
    array = df["array"].to_numpy(np.int64) if "array" in df else np.zeros(n, np.int64)
    for v in (array, df["row"].to_numpy(np.int64), df["col"].to_numpy(np.int64),
              df["level"].to_numpy(np.int64)):
        h = _mix(h, v)
    return _with_time(h.view(np.int64), np.asarray(t_key, np.int64))


def _with_time(keys: np.ndarray, t_key: np.ndarray) -> np.ndarray:
    return (keys & ~np.int64(_T_MASK)) | (t_key & _T_MASK)


@dataclass
class CellTable:
    """Finished per-cell table: sorted keys with the cell's level, time key, mean and read count."""

    keys: np.ndarray
    level: np.ndarray
    t_key: np.ndarray
    mean_us: np.ndarray
    count: np.ndarray
    time_map: TimeMap | None = None  # set once fine time keys were merged into time points

    def regroup(self, time_map: TimeMap) -> CellTable:
        """Merge the cells' fine time keys into the time points of ``time_map``."""
        t_key = time_map.apply(self.t_key)
        keys, level, t_key, sums, counts = _reduce_cells(
            _with_time(self.keys, t_key), self.level, t_key, self.mean_us * self.count, self.count)
        return CellTable(keys, level, t_key, sums / np.maximum(counts, 1), counts, time_map)

    def lookup(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mean and count of the cells ``keys`` (every key must be present)."""
        i = np.clip(np.searchsorted(self.keys, keys), 0, max(len(self.keys) - 1, 0))
        if len(keys) and not np.array_equal(self.keys[i], keys):
            raise KeyError("rows of cells not seen in the first pass")
        return self.mean_us[i], self.count[i]


def _reduce_cells(keys, level, t_key, sums, counts) -> tuple[np.ndarray, ...]:
    """Sum ``sums``/``counts`` per key; returns arrays sorted by key (level/t_key of each key kept).

    A stable sort: the inputs are usually a few already sorted runs (compacted table + pending
    parts), which timsort merges in about linear time.
    """
    order = np.argsort(keys, kind="stable")
    keys = keys[order]
    if len(keys) == 0:
        return keys, level[order], t_key[order], sums[order], counts[order]
    starts = np.flatnonzero(np.concatenate([[True], keys[1:] != keys[:-1]]))
    return (keys[starts], level[order[starts]], t_key[order[starts]],
            np.add.reduceat(sums[order], starts), np.add.reduceat(counts[order], starts))


@dataclass
class CellAccumulator:
    """Per-(cell, time point) sum and count of reads with bounded memory (O(cells)).

    New partial aggregates are appended to ``pending`` and folded into the compacted table
    only when they outgrow it (and 2**21 entries), so merging many batch summaries costs
    amortized O(rows) and the peak stays a small multiple of the number of cells.
    """

    keys: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    level: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    t_key: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    sum_us: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float64))
    count: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    pending: list = field(default_factory=list)
    pending_rows: int = 0

    def _parts(self) -> list:
        return [(self.keys, self.level, self.t_key, self.sum_us, self.count), *self.pending]

    def add(self, keys: np.ndarray, level: np.ndarray, t_key: np.ndarray, g_us: np.ndarray) -> None:
        part = _reduce_cells(keys, level, t_key, g_us, np.ones(len(keys), np.int64))
        self.pending.append(part)
        self.pending_rows += len(part[0])
        self._maybe_compact()

    def _maybe_compact(self) -> None:
        if self.pending_rows > max(len(self.keys), 1 << 21):
            self.compact()

    def compact(self) -> CellAccumulator:
        if not self.pending:
            return self
        parts = self._parts()
        merged = _reduce_cells(*(np.concatenate([p[i] for p in parts]) for i in range(5)))
        self.keys, self.level, self.t_key, self.sum_us, self.count = merged
        self.pending, self.pending_rows = [], 0
        return self

    def absorb(self, other: CellAccumulator) -> None:
        """Take over ``other``'s partial aggregates in place (one accumulator for a whole stream)."""
        parts = [p for p in other._parts() if len(p[0])]
        self.pending.extend(parts)
        self.pending_rows += sum(len(p[0]) for p in parts)
        self._maybe_compact()

    def merge(self, other: CellAccumulator) -> CellAccumulator:
        big, small = (self, other) if len(self.keys) >= len(other.keys) else (other, self)
        extra = [p for p in small._parts() if len(p[0])] + list(big.pending)
        out = CellAccumulator(big.keys, big.level, big.t_key, big.sum_us, big.count, extra,
                              sum(len(p[0]) for p in extra))
        out._maybe_compact()
        return out

    def finish(self, time_map: TimeMap | None = None) -> CellTable:
        """The per-cell table; with ``time_map``, cells are per time point instead of per fine time key."""
        self.compact()  # compacted tables are sorted by key
        if time_map is not None:
            t_key = time_map.apply(self.t_key)
            keys, level, t_key, sums, counts = _reduce_cells(
                _with_time(self.keys, t_key), self.level, t_key, self.sum_us, self.count)
            return CellTable(keys, level, t_key, sums / np.maximum(counts, 1), counts, time_map)
        return CellTable(self.keys, self.level, self.t_key, self.sum_us / np.maximum(self.count, 1), self.count)


@dataclass
class ConductanceSummary:
    """Pass-1 summary of conductance reads: single-read histograms, moments, targets and cells."""

    reads: GroupedHistogram = field(default_factory=GroupedHistogram)
    stats: dict = field(default_factory=dict)  # (level << 12 | t_key) -> [n, sum, sumsq, min, max]
    t_sum: dict = field(default_factory=dict)  # t_key -> [sum of t_s, n]
    t_range: dict = field(default_factory=dict)  # t_key -> [min t_s, max t_s]
    target: dict = field(default_factory=dict)  # level -> [sum of g_target_us, n]
    cells: CellAccumulator = field(default_factory=CellAccumulator)
    n_rows: int = 0
    chip_ids: set = field(default_factory=set)

    def merge(self, other: ConductanceSummary) -> ConductanceSummary:
        t_sum = {k: list(v) for k, v in self.t_sum.items()}
        for k, v in other.t_sum.items():
            t_sum[k] = [t_sum.get(k, [0.0, 0])[0] + v[0], t_sum.get(k, [0.0, 0])[1] + v[1]]
        target = {k: list(v) for k, v in self.target.items()}
        for k, v in other.target.items():
            target[k] = [target.get(k, [0.0, 0])[0] + v[0], target.get(k, [0.0, 0])[1] + v[1]]
        return ConductanceSummary(
            reads=self.reads.merge(other.reads),
            stats=_merge_stats(self.stats, other.stats),
            t_sum=t_sum,
            t_range=_merge_ranges(self.t_range, other.t_range),
            target=target,
            cells=self.cells.merge(other.cells),
            n_rows=self.n_rows + other.n_rows,
            chip_ids=self.chip_ids | other.chip_ids,
        )

    def time_map(self) -> TimeMap:
        """Clusters of the occupied fine time keys (the time points of the fitted model)."""
        return TimeMap.of(np.array(sorted(self.t_sum), dtype=np.int64))

    def clustered(self, time_map: TimeMap | None = None) -> ConductanceSummary:
        """The same summary with histograms, moments and times per time point instead of fine key.

        ``cells`` is shared, not regrouped: finish it with ``cells.finish(time_map)``.
        """
        tm = time_map if time_map is not None else self.time_map()
        packed = self.reads.packed
        group = packed >> _GROUP_SHIFT
        new_group = (group & ~np.int64(_T_MASK)) | tm.apply(group & _T_MASK)
        new_packed = (new_group << _GROUP_SHIFT) | (packed & ((1 << _GROUP_SHIFT) - 1))
        reads = GroupedHistogram._reduce(new_packed, self.reads.counts, self.reads.vmin, self.reads.vmax,
                                         np.argsort(new_packed, kind="stable"))
        remap = {int(k): int(c) for k, c in zip(tm.fine, tm.cluster)}
        stats: dict = {}
        for code, v in self.stats.items():
            stats = _merge_stats(stats, {(code & ~_T_MASK) | remap.get(code & _T_MASK, code & _T_MASK): v})
        t_sum: dict = {}
        t_range: dict = {}
        for k, v in self.t_sum.items():
            c = remap.get(k, k)
            t_sum[c] = [t_sum.get(c, [0.0, 0])[0] + v[0], t_sum.get(c, [0.0, 0])[1] + v[1]]
        for k, v in self.t_range.items():
            t_range = _merge_ranges(t_range, {remap.get(k, k): v})
        return ConductanceSummary(reads, stats, t_sum, t_range, dict(self.target), self.cells, self.n_rows,
                                  set(self.chip_ids))


def _merge_ranges(a: dict, b: dict) -> dict:
    out = {k: list(v) for k, v in a.items()}
    for k, v in b.items():
        out[k] = [min(out[k][0], v[0]), max(out[k][1], v[1])] if k in out else list(v)
    return out


@dataclass
class ResidualSummary:
    """Pass-2 summary: per-level histogram of read-to-read deviations from the cell mean."""

    noise: GroupedHistogram = field(default_factory=GroupedHistogram)
    stats: dict = field(default_factory=dict)  # level -> [n, sum, sumsq, min, max]

    def merge(self, other: ResidualSummary) -> ResidualSummary:
        return ResidualSummary(self.noise.merge(other.noise), _merge_stats(self.stats, other.stats))


def _group_code(level: np.ndarray, t_key: np.ndarray) -> np.ndarray:
    return (level.astype(np.int64) << 12) | t_key


def summarize_conductance(df: pd.DataFrame) -> ConductanceSummary:
    """Summarize one batch of a canonical conductance table (row, col, level, g_us[, t_s, ...])."""
    if len(df) == 0:
        return ConductanceSummary()
    level = df["level"].to_numpy(np.int64)
    g_us = df["g_us"].to_numpy(np.float64)
    t_s = df["t_s"].to_numpy(np.float64) if "t_s" in df else np.zeros(len(df))
    t_key = time_keys(t_s)
    if t_key.max() >= 1 << 12 or t_key.min() < 0:
        raise ValueError("t_s must lie in [0, e**40] s to be keyed")
    group = _group_code(level, t_key)
    t_stats = pd.DataFrame({"k": t_key, "t": t_s}).groupby("k")["t"].agg(["sum", "size", "min", "max"])
    t_sum = {int(k): [float(r["sum"]), int(r["size"])] for k, r in t_stats.iterrows()}
    t_range = {int(k): [float(r["min"]), float(r["max"])] for k, r in t_stats.iterrows()}
    target: dict = {}
    if "g_target_us" in df:
        tg = pd.DataFrame({"l": level, "g": df["g_target_us"].to_numpy(np.float64)}).groupby("l")["g"].agg(["sum", "size"])
        target = {int(k): [float(r["sum"]), int(r["size"])] for k, r in tg.iterrows()}
    cells = CellAccumulator()
    cells.add(cell_keys(df, t_key), level, t_key, g_us)
    chips = set(df["chip_id"].astype(str).unique()) if "chip_id" in df else set()
    return ConductanceSummary(
        reads=GroupedHistogram.of(group, float_keys(g_us), g_us),
        stats=_group_stats(group, g_us),
        t_sum=t_sum,
        t_range=t_range,
        target=target,
        cells=cells,
        n_rows=len(df),
        chip_ids=chips,
    )


def summarize_residuals(df: pd.DataFrame, cells: CellTable) -> ResidualSummary:
    """Histogram each read's deviation from its cell mean, scaled by sqrt(n / (n - 1)).

    The scaling undoes the variance shrinkage of deviating from a mean that includes the read
    itself; cells read once carry no read-noise information and are skipped.
    """
    if len(df) == 0:
        return ResidualSummary()
    level = df["level"].to_numpy(np.int64)
    t_s = df["t_s"].to_numpy(np.float64) if "t_s" in df else np.zeros(len(df))
    t_key = time_keys(t_s)
    if cells.time_map is not None:
        t_key = cells.time_map.apply(t_key)
    keys = cell_keys(df, t_key)
    mean_us, count = cells.lookup(keys)
    keep = count > 1
    if not keep.any():
        return ResidualSummary()
    n = count[keep].astype(np.float64)
    dev = (df["g_us"].to_numpy(np.float64)[keep] - mean_us[keep]) * np.sqrt(n / (n - 1.0))
    lv = level[keep]
    return ResidualSummary(GroupedHistogram.of(lv, float_keys(dev), dev), _group_stats(lv, dev))


# ADC inputs: float64 bits cut to ADC_INPUT_BITS mantissa bits (relative 6e-8), so a staircase of
# thousands of input values stays exact enough to be recognised as a grid. A summary whose
# distinct (col, input key, code) entries exceed ADC_MAX_ENTRIES drops 4 more bits at a time;
# since a subset never needs more bits dropped than the whole, the final resolution does not
# depend on how the rows were partitioned.
ADC_INPUT_BITS = 24
ADC_MAX_ENTRIES = 1 << 22
ADC_CODE_BITS = 16  # codes < 2**16


def input_keys(x: np.ndarray, shift: int = 0) -> np.ndarray:
    """Signed, monotone bin index of ADC inputs at resolution ``ADC_INPUT_BITS - shift`` mantissa bits."""
    x = np.asarray(x, dtype=np.float64)
    mag = np.abs(x).view(np.int64) >> (52 - ADC_INPUT_BITS + shift)
    return np.where(x < 0, -mag - 1, mag)


def input_key_centres(keys: np.ndarray, shift: int = 0) -> np.ndarray:
    """Centre value of each input bin."""
    keys = np.asarray(keys, dtype=np.int64)
    neg = keys < 0
    b = np.where(neg, -keys - 1, keys)
    s = 52 - ADC_INPUT_BITS + shift
    lo = (b << s).view(np.float64)
    hi = ((b + 1) << s).view(np.float64)
    return np.where(neg, -1.0, 1.0) * (lo + hi) / 2


def _coarsen_keys(keys: np.ndarray, bits: int) -> np.ndarray:
    neg = keys < 0
    b = np.where(neg, -keys - 1, keys) >> bits
    return np.where(neg, -b - 1, b)


def _reduce_adc(col, xkey, code, count) -> tuple[np.ndarray, ...]:
    order = np.lexsort((code, xkey, col))
    col, xkey, code, count = col[order], xkey[order], code[order], count[order]
    if len(col) == 0:
        return col, xkey, code, count
    new = np.concatenate([[True], (col[1:] != col[:-1]) | (xkey[1:] != xkey[:-1]) | (code[1:] != code[:-1])])
    starts = np.flatnonzero(new)
    return col[starts], xkey[starts], code[starts], np.add.reduceat(count, starts)


@dataclass
class ADCSummary:
    """Counts of (column, input key, code) plus per-column input range."""

    col: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    xkey: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    code: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    count: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    x_shift: int = 0
    x_range: dict = field(default_factory=dict)  # col -> [min, max]
    n_rows: int = 0
    pooled: bool | None = None
    max_code: int = -1
    chip_ids: set = field(default_factory=set)
    arrays: set = field(default_factory=set)  # the chip arrays the conversions came from (if the table says)

    def _at_shift(self, shift: int) -> np.ndarray:
        return self.xkey if shift == self.x_shift else _coarsen_keys(self.xkey, shift - self.x_shift)

    def bounded(self) -> ADCSummary:
        """Drop input resolution (4 bits at a time) until at most ADC_MAX_ENTRIES entries remain."""
        out = self
        while len(out.col) > ADC_MAX_ENTRIES:
            shift = out.x_shift + 4
            col, xkey, code, count = _reduce_adc(out.col, out._at_shift(shift), out.code, out.count)
            out = ADCSummary(col, xkey, code, count, shift, out.x_range, out.n_rows, out.pooled, out.max_code,
                             out.chip_ids, out.arrays)
        return out

    def merge(self, other: ADCSummary) -> ADCSummary:
        if self.pooled is not None and other.pooled is not None and self.pooled != other.pooled:
            raise ValueError("cannot merge a pooled ADC summary (no col) with a per-column one")
        x_range = {k: list(v) for k, v in self.x_range.items()}
        for k, v in other.x_range.items():
            x_range[k] = [min(x_range[k][0], v[0]), max(x_range[k][1], v[1])] if k in x_range else list(v)
        shift = max(self.x_shift, other.x_shift)
        col, xkey, code, count = _reduce_adc(
            np.concatenate([self.col, other.col]),
            np.concatenate([self._at_shift(shift), other._at_shift(shift)]),
            np.concatenate([self.code, other.code]),
            np.concatenate([self.count, other.count]),
        )
        return ADCSummary(
            col, xkey, code, count, shift,
            x_range=x_range,
            n_rows=self.n_rows + other.n_rows,
            pooled=self.pooled if self.pooled is not None else other.pooled,
            max_code=max(self.max_code, other.max_code),
            chip_ids=self.chip_ids | other.chip_ids,
            arrays=self.arrays | other.arrays,
        ).bounded()


def summarize_adc(df: pd.DataFrame) -> ADCSummary:
    """Summarize one batch of a canonical ADC table (input, code[, col, ...])."""
    pooled = "col" not in df
    if len(df) == 0:
        return ADCSummary(pooled=pooled)
    code = df["code"].to_numpy(np.int64)
    if code.max() >= 1 << ADC_CODE_BITS:
        raise ValueError(f"ADC codes must be < {1 << ADC_CODE_BITS}")
    col = np.zeros(len(df), np.int64) if pooled else df["col"].to_numpy(np.int64)
    x = df["input"].to_numpy(np.float64)
    rng = pd.DataFrame({"c": col, "x": x}).groupby("c")["x"].agg(["min", "max"])
    chips = set(df["chip_id"].astype(str).unique()) if "chip_id" in df else set()
    arrays = {int(a) for a in pd.unique(df["array"])} if "array" in df else set()
    reduced = _reduce_adc(col, input_keys(x), code, np.ones(len(df), np.int64))
    return ADCSummary(
        *reduced,
        x_range={int(k): [float(r["min"]), float(r["max"])] for k, r in rng.iterrows()},
        n_rows=len(df),
        pooled=pooled,
        max_code=int(code.max()),
        chip_ids=chips,
        arrays=arrays,
    ).bounded()
