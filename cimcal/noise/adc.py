"""Empirical ADC transfer model: per column and input bin, an inverse CDF over output codes.

Input bins: when the measured inputs form a uniform grid of at most ``max_grid_bins`` values
(the usual staircase test), there is one bin per input value, centred on it; otherwise
``n_input_bins`` equal bins span the measured input range. Empty bins borrow the nearest
non-empty bin of the same column.

Sampling an input between two bin centres picks one of the two neighbouring bins with
probability given by the distance (linear interpolation of the distributions as a mixture).
Inputs beyond the measured range saturate: they use the first or last bin, exactly as if they
were at the edge of the range. Each bin's table holds ``n_knots`` codes at probabilities
``(j + 0.5) / n_knots``, so code probabilities are resolved to ``1 / n_knots``.

Derived figures follow IEEE 1241 with the static transition levels ``T[k]`` (the input at which
half of the conversions give a code >= k, interpolated between bin centres): a least-squares
line ``T[k] = a + b k`` gives the gain error ``Q_ideal / b - 1`` and offset ``(x_lo - a) / b`` (LSB,
against an ideal ADC mapping ``ideal_range`` (default: the measured input range) onto codes
``0..n_codes``), ``INL[k] = (T[k] - a - b k) / b`` and ``DNL[k] = (T[k+1] - T[k]) / b - 1`` in LSB (NaN
where a transition was not observed). The noise sigma is half the distance between the 15.9 %
and 84.1 % crossings, median over codes, in LSB (resolution limited by the input bin spacing).
Missing codes: codes inside the observed span that never occur or have DNL <= -0.9.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch

from cimcal.errors import ConfigError
from cimcal.noise.conductance import NotFittedError
from cimcal.noise.inverse_cdf import adc_gather, alias_gather, alias_tables
from cimcal.noise.summaries import ADCSummary, input_key_centres, summarize_adc

__all__ = ["ADCLUT"]



def _crossings(ge: np.ndarray, centers: np.ndarray, level: float) -> np.ndarray:
    """Input at which each column of ``ge`` (bins x codes, increasing in bins) first reaches ``level``."""
    above = ge >= level
    first = above.argmax(axis=0)
    ok = above.any(axis=0) & (first > 0)
    prev = np.maximum(first - 1, 0)
    cols = np.arange(ge.shape[1])
    g0, g1 = ge[prev, cols], ge[first, cols]
    frac = np.where(g1 > g0, (level - g0) / np.where(g1 > g0, g1 - g0, 1.0), 0.0)
    t = centers[prev] + frac * (centers[first] - centers[prev])
    return np.where(ok, t, np.nan)


def _area_transitions(ge: np.ndarray, x0: float, width: float, t_cross: np.ndarray, half_window: float) -> np.ndarray:
    """Transition levels as ``x_right - integral of P(code >= k | x) dx`` over a window around each crossing.

    For noise symmetric about the transition this is the transition level itself, and it
    averages the binomial noise of every bin in the window instead of the two around the
    crossing. Transitions whose window is cut by the measured range (P not ~0 / ~1 at the cut
    ends) are NaN.
    """
    n_bins = ge.shape[0]
    cum = np.concatenate([np.zeros((1, ge.shape[1])), np.cumsum(ge, axis=0)])
    ok = np.isfinite(t_cross)
    tc = np.where(ok, t_cross, x0)
    lo = np.clip(np.floor((tc - half_window - x0) / width).astype(np.int64), 0, n_bins - 1)
    hi = np.clip(np.floor((tc + half_window - x0) / width).astype(np.int64), 0, n_bins - 1)
    k = np.arange(ge.shape[1])
    area = (cum[hi + 1, k] - cum[lo, k]) * width
    t = x0 + (hi + 1) * width - area
    ok &= (ge[lo, k] <= 0.05) & (ge[hi, k] >= 0.95)
    return np.where(ok, t, np.nan)


class ADCLUT:
    """Lookup-table model of an ADC's transfer (per column, or pooled when the table has no ``col``).

    Parameters
    ----------
    n_knots : int
        Codes per inverse-CDF table (probability resolution ``1 / n_knots``).
    n_input_bins : int or None
        Input bins when the inputs are not a uniform grid (None: about one bin per 50 conversions
        per column, between 8 and max(1024, 4 * n_codes), at most ``max_grid_bins``).
    max_grid_bins : int
        Largest uniform input grid given one bin per input value.
    n_codes : int or None
        Codes ``0..n_codes-1`` (None: the next power of two above the largest observed code).
    ideal_range : (float, float) or None
        Input mapped onto codes ``0..n_codes`` by the ideal ADC (None: the measured input range).
    """

    def __init__(
        self,
        n_knots: int = 256,
        n_input_bins: int | None = None,
        max_grid_bins: int = 8192,
        n_codes: int | None = None,
        ideal_range: tuple[float, float] | None = None,
    ) -> None:
        self.n_knots = n_knots
        self.n_input_bins = n_input_bins
        self.max_grid_bins = max_grid_bins
        self.n_codes = n_codes
        self.ideal_range = ideal_range

    # ------------------------------------------------------------------ fitting
    def fit(self, df: pd.DataFrame) -> ADCLUT:
        """Fit from one canonical ADC DataFrame (input, code[, col, ...])."""
        return self._fit_summary(summarize_adc(df))

    @classmethod
    def from_summary(cls, summary: ADCSummary, **params) -> ADCLUT:
        """Fit from a (merged) :class:`~cimcal.noise.summaries.ADCSummary`."""
        return cls(**params)._fit_summary(summary)

    def _bins(self, centers: np.ndarray, lo: float, hi: float, n_per_col: float,
              n_codes: int = 256) -> tuple[float, float, int]:
        """(x0, width, n_bins) of the input bins; ``centers`` are histogram-key centres, lo/hi exact."""
        xs = np.unique(centers)
        if len(xs) == 1 or hi <= lo:
            return lo - 0.5, 1.0, 1
        # The grid step comes from the exact extremes, not from the (quantized) key centres,
        # so bin centres sit on the measured inputs even for thousands of grid points.
        step = (hi - lo) / (len(xs) - 1)
        on_grid = np.abs(xs - (lo + step * np.round((xs - lo) / step))) <= 0.02 * step
        if len(xs) <= self.max_grid_bins and bool(on_grid.all()):
            return lo - step / 2, step, len(xs)
        n = self.n_input_bins or int(np.clip(n_per_col / 50, 8, min(max(1024, 4 * n_codes), self.max_grid_bins)))
        return lo, (hi - lo) / n, n

    def _fit_summary(self, summary: ADCSummary) -> ADCLUT:
        k = int(self.n_knots)
        if k < 2:
            raise ConfigError(f"n_knots must be >= 2, got {k}")
        if summary.n_rows == 0:
            raise ConfigError("cannot fit an ADC model from an empty table")
        col, code, counts = summary.col, summary.code, summary.count.astype(np.float64)
        xc = input_key_centres(summary.xkey, summary.x_shift)
        cols = np.unique(col)
        n_codes = self.n_codes or 1 << max(1, math.ceil(math.log2(summary.max_code + 1)))
        if summary.max_code >= n_codes:
            raise ConfigError(f"n_codes={n_codes} but the data has code {summary.max_code}")
        x_min = min(v[0] for v in summary.x_range.values())
        x_max = max(v[1] for v in summary.x_range.values())
        xc = np.clip(xc, x_min, x_max)
        x0, width, n_bins = self._bins(xc, x_min, x_max, summary.n_rows / len(cols), n_codes)
        centers = x0 + width * (np.arange(n_bins) + 0.5)
        b = np.clip(np.floor((xc - x0) / width).astype(np.int64), 0, n_bins - 1)
        ideal_lo, ideal_hi = self.ideal_range or (x_min, x_max)
        q_ideal = (ideal_hi - ideal_lo) / n_codes

        n_c = len(cols)
        table = np.zeros((n_c, n_bins, k), np.int64)
        mean_code = np.zeros((n_c, n_bins))
        code_counts = np.zeros((n_c, n_codes), np.int64)
        sigma = np.full(n_c, np.nan)
        offset = np.full(n_c, np.nan)
        gain = np.full(n_c, np.nan)
        inl = np.full((n_c, n_codes), np.nan)
        dnl = np.full((n_c, n_codes), np.nan)
        missing: list[list[int]] = []
        probs = (np.arange(k) + 0.5) / k
        for ci, c in enumerate(cols):
            sel = col == c
            hist = np.zeros((n_bins, n_codes))
            np.add.at(hist, (b[sel], code[sel]), counts[sel])
            filled = hist.sum(1) > 0
            have = np.flatnonzero(filled)
            nearest = have[np.abs(np.arange(n_bins)[:, None] - have[None, :]).argmin(1)]
            hist = hist[nearest]
            code_counts[ci] = np.bincount(code[sel], weights=counts[sel], minlength=n_codes).astype(np.int64)
            cdf = np.cumsum(hist, axis=1) / hist.sum(1, keepdims=True)
            for bi in range(n_bins):
                table[ci, bi] = np.minimum(np.searchsorted(cdf[bi], probs, side="right"), n_codes - 1)
            mean_code[ci] = (hist * np.arange(n_codes)).sum(1) / hist.sum(1)
            # Static transition levels from P(code >= k | x), only over measured bins.
            ge = 1.0 - np.concatenate([np.zeros((n_bins, 1)), cdf[:, :-1]], axis=1)
            ge_m, cen_m = ge[have], centers[have]
            t = _crossings(ge_m, cen_m, 0.5)
            t[0] = np.nan
            valid = np.flatnonzero(np.isfinite(t))
            if len(valid) >= 2:
                slope0 = np.polyfit(valid.astype(np.float64), t[valid], 1)[0]
                t = _area_transitions(ge, x0, width, t, 3.0 * abs(slope0))
                t[0] = np.nan
                valid = np.flatnonzero(np.isfinite(t))
            if len(valid) >= 2:
                slope, intercept = np.polyfit(valid.astype(np.float64), t[valid], 1)
                gain[ci] = q_ideal / slope - 1.0
                offset[ci] = (ideal_lo - intercept) / slope
                inl[ci] = (t - intercept - slope * np.arange(n_codes)) / slope
                dnl[ci, :-1] = np.diff(t) / slope - 1.0
                width_x = (_crossings(ge_m, cen_m, 0.8413) - _crossings(ge_m, cen_m, 0.1587)) / 2
                width_x = width_x[np.isfinite(width_x)]
                if len(width_x):
                    sigma[ci] = float(np.median(width_x)) / slope
            observed = np.flatnonzero(code_counts[ci])
            span = np.arange(observed[0] + 1, observed[-1]) if len(observed) else np.zeros(0, np.int64)
            miss = span[(code_counts[ci][span] == 0) | (dnl[ci][span] <= -0.9)]
            missing.append([int(m) for m in miss])

        code_dtype = torch.int16 if n_codes <= 1 << 15 else torch.int32
        self.cols_ = torch.as_tensor(cols, dtype=torch.int64)
        self.pooled_ = bool(summary.pooled)
        self.n_codes_ = int(n_codes)
        self.input_range_ = (float(x_min), float(x_max))
        self.input_edges_ = torch.as_tensor(x0 + width * np.arange(n_bins + 1), dtype=torch.float64)
        self.code_table_ = torch.as_tensor(table).to(code_dtype)
        self.mean_code_table_ = torch.as_tensor(mean_code, dtype=torch.float32)
        self.code_counts_ = torch.as_tensor(code_counts)
        self.sigma_lsb_ = torch.as_tensor(sigma, dtype=torch.float32)
        self.offset_lsb_ = torch.as_tensor(offset, dtype=torch.float32)
        self.gain_error_ = torch.as_tensor(gain, dtype=torch.float32)
        self.inl_lsb_ = torch.as_tensor(inl, dtype=torch.float32)
        self.dnl_lsb_ = torch.as_tensor(dnl, dtype=torch.float32)
        self.missing_codes_ = missing
        self._finish()
        return self

    def _finish(self) -> None:
        edges = self.input_edges_
        self._x0 = float(edges[0])
        self._width = float(edges[1] - edges[0])
        self._n_bins = len(edges) - 1
        n_c, n_b, k = self.code_table_.shape
        self._flat_table = self.code_table_.reshape(-1).to(torch.int64)
        cols = self.cols_
        self._col_offset = torch.full((int(cols.max()) + 1,), -1, dtype=torch.int64)
        self._col_offset[cols] = torch.arange(n_c, dtype=torch.int64) * (n_b * k)
        self._col_offset_safe = self._col_offset.clamp(min=0)
        self._pooled_offset = torch.zeros(1, dtype=torch.int64)
        self._dense_cols = len(cols) == int(cols.max()) - int(cols.min()) + 1
        # The fast sampler: alias tables over each bin's (narrow) window of codes; they draw
        # exactly the distribution of the inverse-CDF table. None when a bin is too wide.
        self._alias = alias_tables(self.code_table_.reshape(n_c * n_b, k))
        self._col_row = (self._col_offset_safe // k).to(torch.int32)
        self._pooled_row = torch.zeros(1, dtype=torch.int32)

    # ------------------------------------------------------------------ serialization
    _TENSORS = ("cols_", "input_edges_", "code_table_", "mean_code_table_", "code_counts_", "sigma_lsb_",
                "offset_lsb_", "gain_error_", "inl_lsb_", "dnl_lsb_")

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """The fitted tables by name (what a profile stores)."""
        self._check_fitted()
        return {name.rstrip("_"): getattr(self, name).contiguous() for name in self._TENSORS}

    def state_params(self) -> dict:
        """Fitted scalars and lists that are not tensors (stored as JSON in a profile)."""
        return {"pooled": self.pooled_, "n_codes": self.n_codes_, "input_range": list(self.input_range_),
                "missing_codes": self.missing_codes_}

    @classmethod
    def from_state(cls, tensors: dict[str, torch.Tensor], params: dict, fit_params: dict) -> ADCLUT:
        """Rebuild a fitted model from :meth:`state_tensors` and :meth:`state_params`."""
        model = cls(**fit_params)
        for name in cls._TENSORS:
            setattr(model, name, tensors[name.rstrip("_")])
        model.pooled_ = bool(params["pooled"])
        model.n_codes_ = int(params["n_codes"])
        model.input_range_ = tuple(float(v) for v in params["input_range"])
        model.missing_codes_ = [[int(c) for c in m] for m in params["missing_codes"]]
        model._finish()
        return model

    def get_params(self) -> dict:
        return {"n_knots": self.n_knots, "n_input_bins": self.n_input_bins, "max_grid_bins": self.max_grid_bins,
                "n_codes": self.n_codes, "ideal_range": None if self.ideal_range is None else list(self.ideal_range)}

    # ------------------------------------------------------------------ use
    def _check_fitted(self) -> None:
        if not hasattr(self, "code_table_"):
            raise NotFittedError("this ADCLUT is not fitted yet; call fit(df) or fit_profile(...) first")

    def _col_index(self, col: torch.Tensor | int) -> torch.Tensor:
        col = torch.as_tensor(col)
        if col.is_floating_point():
            raise ConfigError("col must be an integer tensor of physical column ids")
        if self.pooled_:
            return torch.zeros(col.shape, dtype=torch.int64)
        if col.numel():
            lo, hi = torch.aminmax(col)
            bad = int(lo) < int(self.cols_[0]) or int(hi) > int(self.cols_[-1])
            if bad or (not self._dense_cols and bool((self._col_offset[col] < 0).any())):
                raise ConfigError(f"col has columns without ADC data; measured columns: {self.cols_.tolist()}")
        return col

    def sample(self, x: torch.Tensor, col: torch.Tensor | int = 0,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """Sample one code per element of ``x`` broadcast with ``col``: LongTensor.

        Inputs beyond the measured range saturate to the end bins.
        """
        self._check_fitted()
        x = torch.as_tensor(x)
        if not x.is_floating_point():
            x = x.to(torch.float32)
        if not math.isfinite(float(torch.sum(x, dtype=torch.float64))):  # one read-only pass
            raise ConfigError("x contains NaN or inf")
        col = self._col_index(col)
        inv_w = 1.0 / self._width
        k = self.code_table_.shape[-1]
        if self._alias is not None:
            base, alias, w_bits = self._alias
            rows = self._col_row if not self.pooled_ else self._pooled_row
            return alias_gather(x, col, rows, base, alias, self._x0, inv_w, self._n_bins, w_bits, generator)
        offsets = self._col_offset_safe if not self.pooled_ else self._pooled_offset
        return adc_gather(x, col, offsets, self._flat_table, self._x0, inv_w, self._n_bins, k, generator)

    def mean_code(self, x: torch.Tensor, col: torch.Tensor | int = 0) -> torch.Tensor:
        """Mean code at ``x`` (linear between bin centres, flat beyond the range): float32 tensor."""
        self._check_fitted()
        x = torch.as_tensor(x, dtype=torch.float32)
        col = self._col_index(col)
        ci = torch.zeros_like(col) if self.pooled_ else self._col_offset[col] // (self._n_bins * self.code_table_.shape[-1])
        pos = ((x - self._x0) / self._width - 0.5).clamp(0, self._n_bins - 1)
        b0 = pos.floor().long().clamp(max=max(self._n_bins - 2, 0))
        b1 = (b0 + 1).clamp(max=self._n_bins - 1)
        w = pos - b0
        m = self.mean_code_table_
        return torch.lerp(m[ci, b0], m[ci, b1], w)

    def __repr__(self) -> str:
        if not hasattr(self, "code_table_"):
            return f"ADCLUT(n_knots={self.n_knots})"
        return (f"ADCLUT(n_knots={self.n_knots}, cols={len(self.cols_)}, bins={self._n_bins}, "
                f"n_codes={self.n_codes_}, pooled={self.pooled_})")
