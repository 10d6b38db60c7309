"""Empirical conductance model: per level and time point, inverse-CDF tables of the reads.

Three tables per (time point, level), each ``n_knots`` quantiles at probabilities
``linspace(0, 1, n_knots)`` (so the measured minimum and maximum are knots: stuck and outlier
cells stay in the distribution):

- ``quantiles_``: every single read (what :meth:`ConductanceLUT.sample` draws);
- ``programmed_quantiles_``: the per-cell mean over repeated reads (the persistent programming
  error, :meth:`sample_programmed`);
- ``read_noise_quantiles_``: read-to-read deviation from the cell mean, per level, pooled over
  time (:meth:`sample_read_noise`); all zeros when every cell was read once.

Drift: tables of neighbouring time points are mixed linearly in ``log1p(t_s)``. Levels between
measured levels (float levels, or unmeasured integers inside the range) mix the quantiles of
the two neighbouring levels at the same probability (quantile interpolation).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch

from cimcal.errors import CimcalError, ConfigError
from cimcal.noise.defaults import DEFAULT_KNOTS
from cimcal.noise.inverse_cdf import interpolated_gather, random_words
from cimcal.noise.summaries import (
    TIME_GAP_LOG1P,
    CellTable,
    ConductanceSummary,
    GroupedHistogram,
    ResidualSummary,
    float_keys,
    histogram_quantiles,
    summarize_conductance,
    summarize_residuals,
)

__all__ = ["ConductanceLUT", "NotFittedError", "DEFAULT_KNOTS"]


class NotFittedError(CimcalError, ValueError):
    """A model was used before ``fit`` (or ``from_summary``) gave it its tables."""


class ConductanceLUT:
    """Lookup-table model of programmed conductance, read noise and drift (µS).

    Parameters
    ----------
    n_knots : int
        Quantiles per inverse-CDF table (>= 256; default :data:`DEFAULT_KNOTS`).
    """

    def __init__(self, n_knots: int = DEFAULT_KNOTS) -> None:
        self.n_knots = n_knots

    # ------------------------------------------------------------------ fitting
    def fit(self, df: pd.DataFrame) -> ConductanceLUT:
        """Fit from one canonical conductance DataFrame (row, col, level, g_us[, t_s, ...])."""
        summary = summarize_conductance(df)
        cells = summary.cells.finish(summary.time_map())
        residuals = summarize_residuals(df, cells)
        return self._fit_summaries(summary, residuals, cells)

    @classmethod
    def from_summary(
        cls,
        summary: ConductanceSummary,
        residuals: ResidualSummary | None = None,
        *,
        n_knots: int = DEFAULT_KNOTS,
        cells: CellTable | None = None,
    ) -> ConductanceLUT:
        """Fit from merged pass-1 (and optional pass-2 residual) summaries.

        ``cells`` is ``summary.cells.finish(summary.time_map())`` when the caller already has it.
        Reads are grouped into time points by :class:`cimcal.noise.summaries.TimeMap` (gaps of more
        than 0.1 in ``log1p(t_s)`` separate time points).
        """
        return cls(n_knots=n_knots)._fit_summaries(summary, residuals or ResidualSummary(), cells)

    def _fit_summaries(self, summary: ConductanceSummary, residuals: ResidualSummary,
                       cells: CellTable | None = None) -> ConductanceLUT:
        if int(self.n_knots) < 256:
            raise ConfigError(f"n_knots must be >= 256, got {self.n_knots}")
        if summary.n_rows == 0:
            raise ConfigError("cannot fit a conductance model from an empty table")
        k = int(self.n_knots)
        probs = np.linspace(0.0, 1.0, k)
        time_map = summary.time_map()
        cells = cells if cells is not None else summary.cells.finish(time_map)
        if cells.time_map is None:  # a table finished per fine time key
            cells = cells.regroup(time_map)
        summary = summary.clustered(time_map)
        groups = np.array(sorted(summary.stats), dtype=np.int64)
        g_level, g_tkey = groups >> 12, groups & 0xFFF
        levels = np.unique(g_level)
        t_keys = np.unique(g_tkey)
        t_s = np.array([summary.t_sum[int(t)][0] / summary.t_sum[int(t)][1] for t in t_keys])
        t_span = np.array([summary.t_range.get(int(t), [ts, ts]) for t, ts in zip(t_keys, t_s)],
                          dtype=np.float64).reshape(-1, 2)
        n_t, n_l = len(t_keys), len(levels)

        reads_q = np.zeros((n_t, n_l, k))
        prog_q = np.zeros((n_t, n_l, k))
        mean = np.zeros((n_t, n_l))
        sigma = np.zeros((n_t, n_l))
        n_reads = np.zeros((n_t, n_l), np.int64)
        n_cells = np.zeros((n_t, n_l), np.int64)
        present = np.zeros((n_t, n_l), bool)

        # Cell means go through the same fixed-grid histogram as single reads, so that a table
        # read once per cell gives identical programmed and single-read quantiles.
        cell_group = (cells.level << 12) | cells.t_key
        cell_hist = GroupedHistogram.of(cell_group, float_keys(cells.mean_us), cells.mean_us)
        cell_range = pd.Series(cells.mean_us).groupby(cell_group).agg(["min", "max", "size"])

        for code in groups:
            li = int(np.searchsorted(levels, code >> 12))
            ti = int(np.searchsorted(t_keys, code & 0xFFF))
            n, s, s2, vmin, vmax = summary.stats[int(code)]
            keys, counts, extremes = summary.reads.group(int(code))
            reads_q[ti, li] = histogram_quantiles(keys, counts, probs, vmin, vmax, extremes)
            mean[ti, li] = s / n
            sigma[ti, li] = math.sqrt(max(s2 / n - (s / n) ** 2, 0.0))
            n_reads[ti, li] = n
            keys, counts, extremes = cell_hist.group(int(code))
            c_min, c_max, c_n = cell_range.loc[int(code)]
            prog_q[ti, li] = histogram_quantiles(keys, counts, probs, c_min, c_max, extremes)
            n_cells[ti, li] = int(c_n)
            present[ti, li] = True

        # A level missing at a time point takes the table of its nearest measured time point.
        log_t = np.log1p(t_s)
        for li in range(n_l):
            have = np.flatnonzero(present[:, li])
            for ti in np.flatnonzero(~present[:, li]):
                src = have[np.argmin(np.abs(log_t[have] - log_t[ti]))]
                for arr in (reads_q, prog_q, mean, sigma):
                    arr[ti, li] = arr[src, li]

        noise_q = np.zeros((n_l, k))
        noise_sigma = np.zeros(n_l)
        for level, (n, s, s2, vmin, vmax) in residuals.stats.items():
            li = int(np.searchsorted(levels, level))
            if li >= n_l or levels[li] != level:
                continue
            keys, counts, extremes = residuals.noise.group(int(level))
            noise_q[li] = histogram_quantiles(keys, counts, probs, vmin, vmax, extremes)
            noise_sigma[li] = math.sqrt(max(s2 / n - (s / n) ** 2, 0.0))

        if summary.target:
            target = np.array(
                [summary.target[int(lv)][0] / summary.target[int(lv)][1] if int(lv) in summary.target
                 else np.nan for lv in levels]
            )
        else:
            target = np.full(n_l, np.nan)
        first = present.argmax(axis=0)  # earliest measured time point of each level
        median = np.array([np.interp(0.5, probs, reads_q[first[li], li]) for li in range(n_l)])
        target = np.where(np.isnan(target), median, target)

        self.levels_ = torch.as_tensor(levels, dtype=torch.int64)
        self.g_target_us_ = torch.as_tensor(target, dtype=torch.float32)
        self.t_s_ = torch.as_tensor(t_s, dtype=torch.float64)
        self.t_span_s_ = torch.as_tensor(t_span, dtype=torch.float64)
        self.quantiles_ = torch.as_tensor(reads_q, dtype=torch.float32)
        self.programmed_quantiles_ = torch.as_tensor(prog_q, dtype=torch.float32)
        self.read_noise_quantiles_ = torch.as_tensor(noise_q, dtype=torch.float32)
        self.mean_us_ = torch.as_tensor(mean, dtype=torch.float32)
        self.sigma_us_ = torch.as_tensor(sigma, dtype=torch.float32)
        self.read_noise_sigma_us_ = torch.as_tensor(noise_sigma, dtype=torch.float32)
        self.n_reads_ = torch.as_tensor(n_reads)
        self.n_cells_ = torch.as_tensor(n_cells)
        self.filled_ = torch.as_tensor(~present)
        self._finish()
        return self

    def _finish(self) -> None:
        """Derived, non-serialized state (index tables, caches) from the fitted tensors."""
        q = self.quantiles_
        self.g_range_us_ = (float(q[..., 0].min()), float(q[..., -1].max()))
        self.has_read_noise_ = bool((self.read_noise_quantiles_ != 0).any())
        lv = self.levels_
        self._level_row = torch.full((int(lv.max()) + 1,), -1, dtype=torch.int32)
        self._level_row[lv] = torch.arange(len(lv), dtype=torch.int32)
        self._row_offset = self._level_row.clamp(min=0) * (self.quantiles_.shape[-1] - 1)
        self._dense_levels = len(lv) == int(lv[-1]) - int(lv[0]) + 1
        self._log_t = torch.log1p(self.t_s_)
        self._cache: dict = {}

    # ------------------------------------------------------------------ serialization
    _TENSORS = ("levels_", "g_target_us_", "t_s_", "quantiles_", "programmed_quantiles_", "read_noise_quantiles_",
                "mean_us_", "sigma_us_", "read_noise_sigma_us_", "n_reads_", "n_cells_", "filled_")

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """The fitted tables by name (what a profile stores)."""
        self._check_fitted()
        return {name.rstrip("_"): getattr(self, name).contiguous() for name in self._TENSORS}

    @classmethod
    def from_state(cls, tensors: dict[str, torch.Tensor], n_knots: int,
                   t_span_s: list | None = None) -> ConductanceLUT:
        """Rebuild a fitted model from :meth:`state_tensors` (shapes checked by the caller).

        ``t_span_s``: the measured [min, max] t_s of each time point (profile metadata); profiles
        written before it existed get spans of zero width at ``t_s``.
        """
        model = cls(n_knots=n_knots)
        for name in cls._TENSORS:
            setattr(model, name, tensors[name.rstrip("_")])
        t = model.t_s_.double()
        span = torch.stack([t, t], dim=1)
        if t_span_s is not None:
            given = torch.as_tensor(t_span_s, dtype=torch.float64).reshape(-1, 2)
            if given.shape == span.shape and bool(torch.isfinite(given).all()):
                span = given
        model.t_span_s_ = span
        model._finish()
        return model

    # ------------------------------------------------------------------ lookup helpers
    def t_limits_s(self) -> tuple[float, float]:
        """The read times (s) the model answers for: its first and last reads' times, widened by the rule that
        groups reads into time points (``TIME_GAP_LOG1P`` in ``log1p(t_s)``; reads at nominal 1 s have a time
        point near 1.04 s). Times beyond the first or last time point sample that point's tables."""
        self._check_fitted()
        first = math.log1p(float(self.t_span_s_[0, 0])) - TIME_GAP_LOG1P
        last = math.log1p(float(self.t_span_s_[-1, 1])) + TIME_GAP_LOG1P
        return max(math.expm1(first), 0.0), math.expm1(last)

    def _check_fitted(self) -> None:
        if not hasattr(self, "quantiles_"):
            raise NotFittedError("this ConductanceLUT is not fitted yet; call fit(df) or fit_profile(...) first")

    def _time(self, t_s: float | torch.Tensor | None) -> tuple[int, int, float]:
        if t_s is None:
            return 0, 0, 0.0
        if isinstance(t_s, torch.Tensor):
            if t_s.numel() != 1:
                raise ConfigError(f"t_s must be one time (a float), got a tensor of shape {tuple(t_s.shape)}")
            t_s = float(t_s)
        t_s = float(t_s)
        t_min, t_max = float(self.t_s_[0]), float(self.t_s_[-1])
        first, last = self.t_limits_s()
        tol = 1e-9 * max(1.0, last)
        if not math.isfinite(t_s) or t_s < first - tol or t_s > last + tol:
            raise ConfigError(
                f"t_s={t_s:.4g} s is outside the measured time range [{first:.4g}, {last:.4g}] s of this profile "
                "(its reads, +-10 % in time); measure drift at that time or choose a time inside the range"
            )
        if len(self.t_s_) == 1:
            return 0, 0, 0.0
        x = math.log1p(min(max(t_s, t_min), t_max))
        i = int(torch.searchsorted(self._log_t, torch.tensor(x, dtype=torch.float64), right=True)) - 1
        i = min(max(i, 0), len(self.t_s_) - 2)
        lo, hi = float(self._log_t[i]), float(self._log_t[i + 1])
        return i, i + 1, (x - lo) / (hi - lo)

    def _table(self, name: str, t_s: float | torch.Tensor | None) -> torch.Tensor:
        q = getattr(self, name)
        i0, i1, w = self._time(t_s)
        return q[i0] if w == 0.0 else torch.lerp(q[i0], q[i1], w)

    def _flat(self, key: tuple, table: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hit = self._cache.get(key)
        if hit is None:
            base = table[:, :-1].contiguous().view(-1)
            slope = (table[:, 1:] - table[:, :-1]).contiguous().view(-1)
            if len(self._cache) > 32:
                self._cache.clear()
            hit = self._cache[key] = (base, slope)
        return hit

    def _mix(self, level: torch.Tensor) -> tuple | None:
        """None when every element is a measured integer level, else (row0, row1, weight) per element."""
        lv = self.levels_
        lmin, lmax = int(lv[0]), int(lv[-1])
        if level.numel() == 0:
            return None if not level.is_floating_point() else (level.long(), level.long(), level.float())
        if not level.is_floating_point():
            lo, hi = torch.aminmax(level)
            if int(lo) < lmin or int(hi) > lmax:
                raise ConfigError(f"level must lie in the measured levels [{lmin}, {lmax}], got {int(lo)}..{int(hi)}")
            if self._dense_levels or bool((self._level_row[level] >= 0).all()):
                return None
        level = level.to(torch.float64)
        if not bool(torch.isfinite(level).all()) or float(level.min()) < lmin or float(level.max()) > lmax:
            raise ConfigError(f"level must lie in the measured levels [{lmin}, {lmax}]")
        lvf = lv.to(torch.float64)
        if len(lv) == 1:
            zero = torch.zeros(level.shape, dtype=torch.int64)
            return zero, zero, torch.zeros(level.shape, dtype=torch.float32)
        r1 = torch.searchsorted(lvf, level, right=True).clamp(1, len(lv) - 1)
        r0 = r1 - 1
        w = ((level - lvf[r0]) / (lvf[r1] - lvf[r0])).clamp(0, 1).to(torch.float32)
        return r0, r1, w

    def _rows(self, level: torch.Tensor) -> tuple[torch.Tensor | None, tuple | None]:
        mix = self._mix(level)
        return (self._level_row[level].long(), None) if mix is None else (None, mix)

    def _draw(self, name: str, table_key: tuple, table: torch.Tensor, level: torch.Tensor,
              generator: torch.Generator | None) -> torch.Tensor:
        self._check_fitted()
        level = torch.as_tensor(level)
        k1 = table.shape[-1] - 1
        mix = self._mix(level)
        if mix is None:
            base, slope = self._flat((name, *table_key), table)
            return interpolated_gather(level, self._row_offset, base, slope, k1, generator)
        r0, r1, w = (t.reshape(-1) for t in mix)
        words = random_words(r0.numel(), generator)
        pos = words.to(torch.float32) * (k1 * (1.0 - 2.0**-20) / 2.0**32) + (k1 * (1.0 - 2.0**-20) / 2.0)
        j = pos.to(torch.int64)
        f = pos - j.to(torch.float32)

        def at(r: torch.Tensor) -> torch.Tensor:
            row = table[r]
            lo = row.gather(1, j[:, None])[:, 0]
            hi = row.gather(1, (j + 1)[:, None])[:, 0]
            return lo + f * (hi - lo)

        return torch.lerp(at(r0), at(r1), w).view(level.shape)

    # ------------------------------------------------------------------ public sampling
    def sample(self, level: torch.Tensor, t_s: float | None = None,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """One read (programming error + read noise) per element of ``level``: float32 µS, same shape.

        ``t_s=None`` is the earliest measured time; a ``t_s`` outside the measured range raises
        :class:`~cimcal.errors.ConfigError`.
        """
        self._check_fitted()
        return self._draw("reads", self._time(t_s), self._table("quantiles_", t_s), level, generator)

    def sample_programmed(self, level: torch.Tensor, t_s: float | None = None,
                          generator: torch.Generator | None = None) -> torch.Tensor:
        """Persistent per-cell conductance (the cell mean over reads) at ``t_s``; float32 µS."""
        self._check_fitted()
        return self._draw("programmed", self._time(t_s), self._table("programmed_quantiles_", t_s), level, generator)

    def sample_read_noise(self, level: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Read-to-read deviation (µS) to add per read to :meth:`sample_programmed`; zeros without repeats."""
        self._check_fitted()
        level = torch.as_tensor(level)
        if not self.has_read_noise_:
            self._mix(level)  # still validate the levels
            return torch.zeros(level.shape, dtype=torch.float32)
        return self._draw("noise", (), self.read_noise_quantiles_, level, generator)

    def _per_level(self, values: torch.Tensor, level: torch.Tensor, t_s: float | None) -> torch.Tensor:
        self._check_fitted()
        i0, i1, w = self._time(t_s)
        row_values = values[i0] if w == 0.0 else torch.lerp(values[i0], values[i1], w)
        level = torch.as_tensor(level)
        rows, mix = self._rows(level)
        if rows is not None:
            return row_values[rows.long()]
        r0, r1, lw = mix
        return torch.lerp(row_values[r0], row_values[r1], lw)

    def mean_us(self, level: torch.Tensor, t_s: float | None = None) -> torch.Tensor:
        """Mean single-read conductance (µS) of each element's level at ``t_s``."""
        return self._per_level(self.mean_us_, level, t_s)

    def sigma_us(self, level: torch.Tensor, t_s: float | None = None) -> torch.Tensor:
        """Standard deviation of single reads (µS) of each element's level at ``t_s``."""
        return self._per_level(self.sigma_us_, level, t_s)

    def quantiles(self, level: torch.Tensor, t_s: float | None = None) -> torch.Tensor:
        """Inverse-CDF knots of single reads, shape ``level.shape + (n_knots,)`` (probabilities ``probs_``)."""
        self._check_fitted()
        table = self._table("quantiles_", t_s)
        level = torch.as_tensor(level)
        rows, mix = self._rows(level)
        if rows is not None:
            return table[rows.long()]
        r0, r1, w = mix
        return torch.lerp(table[r0], table[r1], w[..., None])

    @property
    def probs_(self) -> torch.Tensor:
        """Probabilities of the knots: ``linspace(0, 1, n_knots)``."""
        return torch.linspace(0.0, 1.0, self.quantiles_.shape[-1], dtype=torch.float64)

    def __repr__(self) -> str:
        if not hasattr(self, "quantiles_"):
            return f"ConductanceLUT(n_knots={self.n_knots})"
        return (f"ConductanceLUT(n_knots={self.n_knots}, levels={len(self.levels_)}, "
                f"time_points={len(self.t_s_)}, read_noise={self.has_read_noise_})")
