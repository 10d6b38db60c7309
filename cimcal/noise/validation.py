"""Check a chip profile against held-out measurements.

Conductance, per (level, t_s) group of the held-out table:

- two-sample KS between one read per held-out cell and as many reads sampled from the profile
  (one read per cell keeps the samples independent, so the KS p-value means what it says);
- the probability integral transform (PIT) of every held-out read under the profile's
  single-read distribution: exact from its inverse-CDF knots (``quantiles``/``probs_``) when the
  model has them, else from a large pool of its samples; pooled over all groups the PIT of a
  faithful profile is uniform (one-sample KS against U(0, 1));
- tail fractions below / above Tukey's far fences of the measured group (q25 - 3 IQR, but at
  least median / 4; q75 + 3 IQR): stuck and outlier cells, measured vs profile.

ADC, per column: the code-histogram total-variation distance between held-out conversions and
profile samples at the same inputs, and a randomized PIT for integer codes: with ``K`` profile
samples at the conversion's input, ``u = (#below + v * (#equal + 1)) / (K + 1)`` with
``v ~ U(0, 1)`` is exactly uniform when the held-out code is another draw of the profile.

The two-sample KS p-values treat the profile as known. A profile fitted on ``n_fit`` cells carries
its own sampling noise, so even a perfect model rejects more often than ``alpha``: about 5 % of
groups at ``alpha = 1 %`` when ``n_fit`` equals the held-out count, about 3 % when it is twice
that. Fit on more cells than you hold out. Likewise the code-histogram TV of a perfect model is
not 0: the held-out histogram alone puts it up to about ``0.4 * sqrt(n_codes / n_conversions)``.

Held-out tables are read whole (they are the small part of a dump); sampling is seeded by
``seed`` (a ``torch.Generator`` for the profile, a numpy generator for the PIT randomization).

Only the public sampling API of the models is used (``sample``, ``levels_``, ``t_s_``, ``cols_``,
``n_codes_``), so any object with that API can be validated the same way, for example a
Gaussian baseline.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy import stats

from cimcal.errors import ConfigError, DataError
from cimcal.noise.defaults import DEFAULT_MAX_KS, DEFAULT_MAX_TV
from cimcal.noise.summaries import TIME_GAP_LOG1P, TimeMap, time_keys

__all__ = [
    "ConductanceGroupCheck",
    "ADCColumnCheck",
    "ValidationResult",
    "validate_profile",
    "validate_conductance",
    "validate_adc",
    "randomized_pit",
    "DEFAULT_MAX_KS",
    "DEFAULT_MAX_TV",
]

ALPHA = 0.01  # significance level of the per-group two-sample KS tests
PIT_POOL_MIN = 20_000  # profile samples per conductance group for a sample-based PIT (at least 8 per read)
ADC_DRAWS = 63  # profile samples per held-out conversion for the randomized PIT
_CELL_KEYS = ("chip_id", "array", "row", "col")


@dataclass(frozen=True)
class ConductanceGroupCheck:
    """Held-out vs profile for one (level, t_s) group."""

    level: int
    t_s: float
    n_reads: int  # held-out reads in the group (all used for PIT and tails)
    n_cells: int  # held-out cells (one read each for the two-sample KS)
    ks: float  # two-sample KS statistic
    ks_pvalue: float
    pit_ks: float  # one-sample KS of the group's PIT against U(0, 1)
    low_tail_measured: float
    low_tail_model: float
    high_tail_measured: float
    high_tail_model: float


@dataclass(frozen=True)
class ADCColumnCheck:
    """Held-out vs profile for one ADC column."""

    col: int
    n_conversions: int
    tv: float  # total-variation distance of the code histograms
    pit_ks: float  # KS of the randomized PIT against U(0, 1)
    pit_pvalue: float


@dataclass
class ValidationResult:
    """What :func:`validate_profile` measured; ``passed`` applies thresholds, ``to_dict`` is JSON-able."""

    conductance: list[ConductanceGroupCheck] = field(default_factory=list)
    adc: list[ADCColumnCheck] = field(default_factory=list)
    conductance_pit_ks: float | None = None
    conductance_pit_pvalue: float | None = None
    adc_pit_ks: float | None = None
    adc_pit_pvalue: float | None = None
    adc_tv: float | None = None  # pooled over columns
    low_tail_measured: float | None = None  # pooled over groups, weighted by reads
    low_tail_model: float | None = None
    high_tail_measured: float | None = None
    high_tail_model: float | None = None
    alpha: float = ALPHA
    seed: int = 0

    @property
    def reject_fraction(self) -> float | None:
        """Fraction of (level, t_s) groups whose two-sample KS rejects at ``alpha``."""
        if not self.conductance:
            return None
        return sum(g.ks_pvalue < self.alpha for g in self.conductance) / len(self.conductance)

    @property
    def tail_difference(self) -> float | None:
        """Largest |measured - model| of the pooled low and high tail fractions."""
        if self.low_tail_measured is None:
            return None
        return max(
            abs(self.low_tail_measured - self.low_tail_model),
            abs(self.high_tail_measured - self.high_tail_model),
        )

    def failures(self, max_ks: float | None = DEFAULT_MAX_KS, max_tv: float | None = DEFAULT_MAX_TV) -> list[str]:
        """One line per statistic above its threshold (KS: per group, per column and pooled PIT; TV: per column)."""
        out = []
        if max_ks is not None:
            for g in self.conductance:
                if g.ks > max_ks:
                    out.append(f"conductance level {g.level} t_s={g.t_s:g}: KS {g.ks:.4f} > {max_ks:g}")
            if self.conductance_pit_ks is not None and self.conductance_pit_ks > max_ks:
                out.append(f"conductance pooled PIT KS {self.conductance_pit_ks:.4f} > {max_ks:g}")
            for c in self.adc:
                if c.pit_ks > max_ks:
                    out.append(f"ADC column {c.col}: PIT KS {c.pit_ks:.4f} > {max_ks:g}")
            if self.adc_pit_ks is not None and self.adc_pit_ks > max_ks:
                out.append(f"ADC pooled PIT KS {self.adc_pit_ks:.4f} > {max_ks:g}")
        if max_tv is not None:
            for c in self.adc:
                if c.tv > max_tv:
                    out.append(f"ADC column {c.col}: TV {c.tv:.4f} > {max_tv:g}")
        return out

    def passed(self, max_ks: float | None = DEFAULT_MAX_KS, max_tv: float | None = DEFAULT_MAX_TV) -> bool:
        """True when no statistic exceeds its threshold (``None`` skips that check). The TV of a perfect model is
        not zero: with ``n`` held-out conversions per column it is up to ~``0.4 * sqrt(n_codes / n)``, so judge
        TV only on enough conversions (16 k per column for 256 codes to sit at 0.05)."""
        return not self.failures(max_ks, max_tv)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict: summary figures plus one record per group / column."""
        return {
            "alpha": self.alpha,
            "seed": self.seed,
            "conductance": None
            if not self.conductance
            else {
                "pit_ks": self.conductance_pit_ks,
                "pit_pvalue": self.conductance_pit_pvalue,
                "reject_fraction": self.reject_fraction,
                "low_tail_measured": self.low_tail_measured,
                "low_tail_model": self.low_tail_model,
                "high_tail_measured": self.high_tail_measured,
                "high_tail_model": self.high_tail_model,
                "tail_difference": self.tail_difference,
                "groups": [asdict(g) for g in self.conductance],
            },
            "adc": None
            if not self.adc
            else {
                "pit_ks": self.adc_pit_ks,
                "pit_pvalue": self.adc_pit_pvalue,
                "tv": self.adc_tv,
                "columns": [asdict(c) for c in self.adc],
            },
        }

    def format_table(self) -> str:
        """A readable plain-text table for the terminal."""
        lines = []
        if self.conductance:
            lines.append("conductance: held-out vs profile per (level, t_s)")
            lines.append(
                f"{'level':>5} {'t_s':>10} {'cells':>7} {'reads':>7} {'KS':>7} {'p':>8} {'PIT KS':>7}"
                f" {'low% meas/model':>16} {'high% meas/model':>17}"
            )
            for g in self.conductance:
                lines.append(
                    f"{g.level:>5} {g.t_s:>10g} {g.n_cells:>7} {g.n_reads:>7} {g.ks:>7.4f} {g.ks_pvalue:>8.3g}"
                    f" {g.pit_ks:>7.4f} {100 * g.low_tail_measured:>7.2f}/{100 * g.low_tail_model:<7.2f}"
                    f"  {100 * g.high_tail_measured:>7.2f}/{100 * g.high_tail_model:<7.2f}"
                )
            lines.append(
                f"pooled PIT KS {self.conductance_pit_ks:.4f} (p={self.conductance_pit_pvalue:.3g}); "
                f"groups rejecting at {self.alpha:g}: {self.reject_fraction:.1%}; "
                f"tails low {100 * self.low_tail_measured:.2f}%/{100 * self.low_tail_model:.2f}% "
                f"high {100 * self.high_tail_measured:.2f}%/{100 * self.high_tail_model:.2f}% (measured/model)"
            )
        if self.adc:
            if lines:
                lines.append("")
            lines.append("ADC: held-out vs profile per column")
            lines.append(f"{'col':>5} {'conversions':>11} {'TV':>7} {'PIT KS':>7} {'p':>8}")
            for c in self.adc:
                lines.append(
                    f"{c.col:>5} {c.n_conversions:>11} {c.tv:>7.4f} {c.pit_ks:>7.4f} {c.pit_pvalue:>8.3g}"
                )
            lines.append(
                f"pooled PIT KS {self.adc_pit_ks:.4f} (p={self.adc_pit_pvalue:.3g}); pooled TV {self.adc_tv:.4f}"
            )
        if not lines:
            lines.append("nothing validated: give held-out conductance and/or ADC tables")
        return "\n".join(lines)


def _read(sources: Any, kind: str, column_map: Mapping[str, str] | None) -> pd.DataFrame:
    from cimcal.data import read_table

    return read_table(sources, kind, column_map=dict(column_map) if column_map else None)


def _first_read_per_cell(group: pd.DataFrame) -> pd.DataFrame:
    keys = [k for k in _CELL_KEYS if k in group.columns]
    if "read_idx" in group.columns:
        group = group.sort_values("read_idx", kind="stable")
    return group.drop_duplicates(subset=keys, keep="first")


def _uniform_ks(u: np.ndarray) -> tuple[float, float]:
    res = stats.kstest(u, "uniform")
    return float(res.statistic), float(res.pvalue)


def _table_cdf(model: Any, level: int, t_s: float):
    """CDF of single reads from the model's inverse-CDF knots, or None if it has none.

    The inverse CDF is piecewise linear between knots, so the CDF is too; where knots tie (a
    point mass, e.g. clamped reads) a value's PIT is spread uniformly over the jump when an
    ``rng`` is given (randomized PIT), else the upper end of the jump is returned.
    """
    if not (hasattr(model, "quantiles") and hasattr(model, "probs_")):
        return None
    knots = model.quantiles(torch.tensor([level]), t_s=t_s)[0].double().numpy()
    probs = model.probs_.double().numpy()

    def cdf(x: np.ndarray, rng: np.random.Generator | None) -> np.ndarray:
        left = np.searchsorted(knots, x, side="left")
        right = np.searchsorted(knots, x, side="right")
        i = np.clip(left, 1, knots.size - 1)
        dq = knots[i] - knots[i - 1]
        frac = np.divide(x - knots[i - 1], dq, out=np.zeros_like(x), where=dq > 0)
        u = np.clip(probs[i - 1] + frac * (probs[i] - probs[i - 1]), 0.0, 1.0)
        tie = right > left  # x equals one or more knots: the CDF jumps over [probs[left], probs[right-1]]
        lo_p = probs[np.minimum(left, knots.size - 1)]
        hi_p = probs[np.maximum(right - 1, 0)]
        spread = lo_p + (rng.random(x.size) if rng is not None else 1.0) * (hi_p - lo_p)
        u = np.where(tie, spread, u)
        return np.where(x < knots[0], 0.0, np.where(x > knots[-1], 1.0, u))

    return cdf



def _time_points(model: Any, t_s: np.ndarray, source: str) -> tuple[np.ndarray, dict[int, float]]:
    """Group held-out reads by time point the way the fit does, and say where to evaluate each.

    A read within ``TIME_GAP_LOG1P`` (in ``log1p(t_s)``) of a profile time point's measured
    span belongs to the nearest such time point and is compared with the profile at exactly that
    point. Reads between time points are clustered by gaps like a fit would, and compared at
    their cluster's mean time (drift interpolated). Reads beyond the profile's range: DataError.
    """
    points = model.t_s_.double().numpy()
    span = getattr(model, "t_span_s_", None)
    span = span.double().numpy() if span is not None else np.stack([points, points], axis=1)
    lo, hi = np.log1p(span[:, 0]), np.log1p(span[:, 1])
    log_t = np.log1p(t_s)
    outside = np.flatnonzero(~((log_t >= lo[0] - TIME_GAP_LOG1P) & (log_t <= hi[-1] + TIME_GAP_LOG1P)))
    if outside.size:
        raise DataError(
            f"t_s outside the profile's measured range [{span[0, 0]:g}, {span[-1, 1]:g}] s; the profile cannot "
            "extrapolate drift",
            path=source,
            column="t_s",
            rows=outside,
        )
    best = np.full(log_t.shape, np.inf)
    point = np.full(log_t.shape, -1, np.int64)
    for i in range(len(points)):
        d = np.maximum(lo[i] - log_t, 0.0) + np.maximum(log_t - hi[i], 0.0)
        closer = d < best
        best[closer], point[closer] = d[closer], i
    t_eval = {i: float(points[i]) for i in range(len(points))}
    between = best > TIME_GAP_LOG1P
    if between.any():
        keys = time_keys(t_s[between])
        cluster = TimeMap.of(keys).apply(keys) + len(points)
        point[between] = cluster
        for c in np.unique(cluster):
            t_eval[int(c)] = float(np.clip(t_s[between][cluster == c].mean(), points[0], points[-1]))
    return point, t_eval


def validate_conductance(
    model: Any, table: pd.DataFrame, *, seed: int = 0, source: str = "<held-out conductance>"
) -> ValidationResult:
    """Compare a conductance model (``sample(level, t_s, generator)``) with a held-out table."""
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    levels = {int(v) for v in model.levels_.tolist()}
    t_grid = model.t_s_.double()
    t_lo, t_hi = float(t_grid.min()), float(t_grid.max())
    if "t_s" not in table.columns:
        table = table.assign(t_s=t_lo)
    unknown = sorted(set(table["level"].unique().tolist()) - levels)
    if unknown:
        rows = np.flatnonzero(table["level"].isin(unknown).to_numpy())
        raise DataError(
            f"level {unknown[0]} is not in the profile (levels {sorted(levels)}); validate against data "
            "of the same level set",
            path=source,
            column="level",
            rows=rows,
        )
    point, t_eval = _time_points(model, table["t_s"].to_numpy(np.float64), source)
    # Profiles hold and sample float32 values: compare at that resolution, else a reading quantized
    # to 0.1 µS (float64) never ties with the profile's 0.1 µS (float32, 1.5e-9 µS above it).
    table = table.assign(g_us=table["g_us"].to_numpy(np.float32).astype(np.float64))

    groups, pits = [], []
    low_meas = low_pooled = high_meas = high_pooled = 0.0
    n_total = 0
    for (level, tp), group in table.assign(_tp=point).groupby(["level", "_tp"], sort=True):
        t_s = float(t_eval[tp])
        g_meas = group["g_us"].to_numpy(dtype=np.float64)
        g_cells = _first_read_per_cell(group)["g_us"].to_numpy(dtype=np.float64)
        t_arg = float(min(max(t_s, t_lo), t_hi))
        table_cdf = _table_cdf(model, int(level), t_arg)
        n_pool = 0 if table_cdf is not None else max(PIT_POOL_MIN, 8 * g_meas.size)
        lvl = torch.full((n_pool + g_cells.size,), int(level), dtype=torch.long)
        draws = model.sample(lvl, t_s=t_arg, generator=gen).double().numpy()
        pool, g_model = np.sort(draws[:n_pool]), draws[n_pool:]

        ks = stats.ks_2samp(g_cells, g_model)
        q25, q75 = np.quantile(g_meas, [0.25, 0.75])
        # Tukey's far-out fences; the low one at least a quarter of the median, so that at a low
        # level with a wide spread it still lies between stuck-off cells and the level's body.
        lo = max(q25 - 3.0 * (q75 - q25), 0.25 * float(np.median(g_meas)))
        hi = q75 + 3.0 * (q75 - q25)
        if table_cdf is not None:  # exact PIT under the profile's inverse-CDF table
            pit = table_cdf(g_meas, rng)
            low_model, high_model = table_cdf(np.array([lo]), None)[0], 1.0 - table_cdf(np.array([hi]), None)[0]
        else:  # any other model: PIT against a large pool of its samples
            below = np.searchsorted(pool, g_meas, side="left")
            equal = np.searchsorted(pool, g_meas, side="right") - below
            pit = (below + rng.random(g_meas.size) * (equal + 1)) / (n_pool + 1)
            low_model, high_model = float(np.mean(pool < lo)), float(np.mean(pool > hi))
        pits.append(pit)
        check = ConductanceGroupCheck(
            level=int(level),
            t_s=float(t_s),
            n_reads=int(g_meas.size),
            n_cells=int(g_cells.size),
            ks=float(ks.statistic),
            ks_pvalue=float(ks.pvalue),
            pit_ks=_uniform_ks(pit)[0],
            low_tail_measured=float(np.mean(g_meas < lo)),
            low_tail_model=float(low_model),
            high_tail_measured=float(np.mean(g_meas > hi)),
            high_tail_model=float(high_model),
        )
        groups.append(check)
        n = g_meas.size
        n_total += n
        low_meas += n * check.low_tail_measured
        low_pooled += n * check.low_tail_model
        high_meas += n * check.high_tail_measured
        high_pooled += n * check.high_tail_model

    pit_ks, pit_p = _uniform_ks(np.concatenate(pits))
    return ValidationResult(
        conductance=groups,
        conductance_pit_ks=pit_ks,
        conductance_pit_pvalue=pit_p,
        low_tail_measured=low_meas / n_total,
        low_tail_model=low_pooled / n_total,
        high_tail_measured=high_meas / n_total,
        high_tail_model=high_pooled / n_total,
        seed=seed,
    )


def randomized_pit(codes: np.ndarray, draws: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Randomized PIT of integer ``codes`` (n,) given ``draws`` (n, K) of the model at the same inputs.

    Exactly U(0, 1) when each code and its K draws are exchangeable (the model is right).
    """
    codes = codes[:, None]
    below = (draws < codes).sum(axis=1)
    equal = (draws == codes).sum(axis=1)
    return (below + rng.random(below.size) * (equal + 1)) / (draws.shape[1] + 1)


def _tv(a: np.ndarray, b: np.ndarray, n_codes: int) -> float:
    pa = np.bincount(a, minlength=n_codes) / max(a.size, 1)
    pb = np.bincount(b, minlength=n_codes) / max(b.size, 1)
    return 0.5 * float(np.abs(pa - pb).sum())


def validate_adc(
    model: Any,
    table: pd.DataFrame,
    *,
    seed: int = 0,
    draws: int = ADC_DRAWS,
    source: str = "<held-out ADC>",
    chunk: int = 65_536,
) -> ValidationResult:
    """Compare an ADC model (``sample(x, col, generator)``) with a held-out conversion table.

    A pooled model (``pooled_`` true) ignores the table's ``col``; a per-column model needs it.
    """
    if draws < 1:
        raise ConfigError(f"draws must be >= 1, got {draws}")
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    model_cols = [int(c) for c in model.cols_.tolist()]
    n_codes = int(model.n_codes_)
    # The model says whether it is one pooled transfer (fitted without ``col``); a per-column
    # model fitted on a single column is still per column. Models without ``pooled_`` are per column.
    pooled = bool(getattr(model, "pooled_", False))
    if pooled:
        table = table.assign(col=model_cols[0])
    elif "col" not in table.columns:
        raise DataError(
            f"the table has no 'col' column but the profile's ADC is per column (columns {model_cols}); "
            "add the column ids",
            path=source,
        )
    unknown = sorted(set(table["col"].unique().tolist()) - set(model_cols))
    if unknown:
        rows = np.flatnonzero(table["col"].isin(unknown).to_numpy())
        raise DataError(
            f"ADC column {unknown[0]} is not in the profile (columns {model_cols})",
            path=source,
            column="col",
            rows=rows,
        )
    big = np.flatnonzero(table["code"].to_numpy() >= n_codes)
    if big.size:
        raise DataError(
            f"code above the profile's range 0..{n_codes - 1}", path=source, column="code", rows=big
        )

    x_all = torch.tensor(table["input"].to_numpy(dtype=np.float64), dtype=torch.float32)
    col_all = torch.tensor(table["col"].to_numpy(dtype=np.int64))
    code_all = table["code"].to_numpy(dtype=np.int64)
    pit = np.empty(code_all.size)
    model_codes = np.empty((code_all.size, draws), dtype=np.int64)
    for start in range(0, code_all.size, chunk):
        sl = slice(start, start + chunk)
        n = code_all[sl].size
        x = x_all[sl, None].expand(n, draws)
        c = col_all[sl, None].expand(n, draws)
        drawn = model.sample(x, c, generator=gen).long().numpy()
        model_codes[sl] = drawn
        pit[sl] = randomized_pit(code_all[sl], drawn, rng)

    columns = []
    col_np = col_all.numpy()
    for col in sorted(set(col_np.tolist())):
        mask = col_np == col
        ks, p = _uniform_ks(pit[mask])
        columns.append(
            ADCColumnCheck(
                col=int(col),
                n_conversions=int(mask.sum()),
                tv=_tv(code_all[mask], model_codes[mask].ravel(), n_codes),
                pit_ks=ks,
                pit_pvalue=p,
            )
        )
    ks, p = _uniform_ks(pit)
    return ValidationResult(
        adc=columns,
        adc_pit_ks=ks,
        adc_pit_pvalue=p,
        adc_tv=_tv(code_all, model_codes.ravel(), n_codes),
        seed=seed,
    )


def validate_profile(
    profile: Any,
    conductance: Any = None,
    adc: Any = None,
    *,
    column_map: Mapping[str, str] | None = None,
    seed: int = 0,
) -> ValidationResult:
    """Validate ``profile`` (a :class:`~cimcal.noise.profile.ChipProfile`) against held-out tables.

    ``conductance`` / ``adc`` are sources as for :func:`cimcal.data.iter_batches` (paths, lists
    of paths, DataFrames). Sampling is seeded by ``seed``, so results are reproducible.
    """
    if conductance is None and adc is None:
        raise ConfigError("nothing to validate: give held-out conductance and/or ADC tables")
    result = ValidationResult(seed=seed)
    if conductance is not None:
        if profile.conductance is None:
            raise ConfigError("the profile has no conductance model; fit one with --conductance first")
        table = _read(conductance, "conductance", column_map)
        part = validate_conductance(profile.conductance, table, seed=seed, source=_describe(conductance))
        _merge(result, part, conductance_part=True)
    if adc is not None:
        if profile.adc is None:
            raise ConfigError("the profile has no ADC model; fit one with --adc first")
        table = _read(adc, "adc", column_map)
        part = validate_adc(profile.adc, table, seed=seed, source=_describe(adc))
        _merge(result, part, conductance_part=False)
    return result


def _describe(sources: Any) -> str:
    items = sources if isinstance(sources, (list, tuple)) else [sources]
    names = [("<DataFrame>" if isinstance(s, pd.DataFrame) else str(s)) for s in items]
    return names[0] if len(names) == 1 else f"{names[0]} (+{len(names) - 1} more)"


def _merge(into: ValidationResult, part: ValidationResult, *, conductance_part: bool) -> None:
    names = (
        [
            "conductance",
            "conductance_pit_ks",
            "conductance_pit_pvalue",
            "low_tail_measured",
            "low_tail_model",
            "high_tail_measured",
            "high_tail_model",
        ]
        if conductance_part
        else ["adc", "adc_pit_ks", "adc_pit_pvalue", "adc_tv"]
    )
    for name in names:
        setattr(into, name, getattr(part, name))

