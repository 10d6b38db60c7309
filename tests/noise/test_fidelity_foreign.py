"""Fidelity against device models that are not in this repository.

Issue 2 promises that "a held-out dump from a device model that is not in this repository will be
checked the same way, through the API above". The device models here are deliberately unlike
``cimcal.data.synthetic`` and the simulated chip: lognormal, bimodal, Student-t (df = 2) and
level-dependently skewed programming error; conductances from 0.01 to 100 µS; stuck cells at exactly
0 µS; instrument-quantized readings; 50 cells per level; non-contiguous level indices; one read vs
ten reads per cell; one time point vs four log-spaced ones (including t_s = 0); a CSV in siemens;
ADCs with 4, 6 and 10 bits, missing codes, a column saturating at both ends, a pooled ADC (no
``col``) and random (off-grid) inputs.

Every check is computed here from the public API only (``fit_profile``, ``conductance.sample``,
``conductance.quantiles``, ``adc.sample``), so it does not depend on ``cimcal.noise.validation``:

- conductance PIT: per (level, t_s) group, the randomized PIT of each held-out read against the
  empirical CDF of ``max(20_000, 20 n)`` profile samples, ``u = (#below + v (#equal + 1)) / (m + 1)``
  (exactly uniform for a right model, atoms included); pooled one-sample KS against U(0, 1).
  A second PIT from the inverse-CDF knots (``quantiles``) is computed as a cross-check;
- per-group two-sample KS: one read per held-out cell vs as many profile samples, reject at 1 %;
- stuck-cell fraction: held-out reads at 0 µS (or below a stated threshold) vs the profile samples;
- ADC: randomized PIT of each held-out code against 63 profile codes at the same input.

Targets are the issue's: pooled PIT KS <= 0.04 (conductance, ~10^4 held-out cells) and <= 0.012
(ADC, 2 * 10^4 held-out conversions); <= 10 % of groups rejecting; stuck fractions within 0.5
percentage points. Fits use twice as many cells (or repeats) as are held out.

Run with
``-s`` to print the figures; ``-m slow`` runs the per-feature sweep.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from cimcal import fit_profile
from cimcal.data import read_table
from cimcal.noise.adc import ADCLUT

MAX_PIT_KS_CONDUCTANCE = 0.04
MAX_PIT_KS_ADC = 0.012
MAX_REJECT_FRACTION = 0.10
MAX_STUCK_DIFFERENCE = 0.005
ALPHA = 0.01
N_COLS = 128


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Sampling many small batches with 2 intra-op threads on a shared 2-core machine is ~20x slower
    (thread contention) than with one; the figures do not depend on it."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ============================================================================ device models
def conductance_dump(
    n_cells: int,
    levels,
    programmed,
    *,
    reads: int = 1,
    t_s=(0.0,),
    drift=None,
    read_noise=None,
    quantum_us: float | None = None,
    stuck_fraction: float = 0.0,
    stuck_us: float = 0.0,
    stuck_jitter: float = 0.0,
    seed: int = 0,
) -> pd.DataFrame:
    """One row per read. ``programmed(level, rng) -> g0`` per cell (µS); ``drift(g0, t, nu)`` ages it
    (``nu`` a per-cell N(0, 1) drift coefficient); ``read_noise(g, rng)`` is added per read; stuck
    cells read ``stuck_us`` (times 1 + U(0, ``stuck_jitter``) per read: 0 means exactly, an atom);
    ``quantum_us`` rounds every reading (instrument resolution). Reads are clipped at 0 µS (a meter
    does not report negative conductance)."""
    rng = np.random.default_rng(seed)
    levels = np.asarray(levels)
    level = levels[np.arange(n_cells) % len(levels)]
    rng.shuffle(level)
    g0 = programmed(level, rng)
    stuck = rng.random(n_cells) < stuck_fraction
    nu = rng.normal(0.0, 1.0, n_cells)
    cell = np.arange(n_cells)
    frames = []
    for t in t_s:
        g_t = g0 if drift is None else drift(g0, float(t), nu)
        for r in range(reads):
            g = g_t + (read_noise(g_t, rng) if read_noise is not None else 0.0)
            stuck_g = stuck_us * (1.0 + stuck_jitter * rng.random(n_cells))
            g = np.where(stuck, stuck_g, np.maximum(g, 0.0))
            if quantum_us:
                g = np.round(g / quantum_us) * quantum_us
            frames.append(pd.DataFrame({"row": cell // N_COLS, "col": cell % N_COLS, "level": level,
                                        "g_us": g, "t_s": float(t), "read_idx": r}))
    return pd.concat(frames, ignore_index=True)


def split_cells(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Hold out every third cell (all its reads and times); fit on the other two thirds."""
    held = (df["row"] * N_COLS + df["col"]) % 3 == 2
    return df[~held].reset_index(drop=True), df[held].reset_index(drop=True)


def lognormal(level, rng):
    return (2.0 + 10.0 * level) * np.exp(rng.normal(0.0, 0.15, level.size))


def bimodal(level, rng):
    centre = 5.0 + 10.0 * level
    low = rng.random(level.size) < 0.3
    return np.where(low, centre - 3.0, centre + 1.0) + rng.normal(0.0, 0.5, level.size)


def student_t2(level, rng):
    return 40.0 + 10.0 * level + 0.8 * rng.standard_t(2.0, level.size)


def skew_by_level(level, rng):
    shape = np.linspace(-6.0, 6.0, int(level.max()) + 1)[level]
    return 20.0 + 10.0 * level + 2.0 * stats.skewnorm.rvs(shape, size=level.size, random_state=rng)


def decades(level, rng):
    """Medians log-spaced 0.01 .. 100 µS (8 levels), 20 % lognormal spread."""
    return np.logspace(-2, 2, 8)[level] * np.exp(rng.normal(0.0, 0.2, level.size))


def gamma_skew(level, rng):
    return 5.0 + 10.0 * level + rng.gamma(2.0, 1.0, level.size)


def mixed_families(level, rng):
    """A different error family per level: lognormal, bimodal, Student-t, skew-normal, uniform."""
    centre = np.array([0.05, 0.5, 3.0, 8.0, 15.0, 30.0, 60.0, 100.0])[level]
    fam = level % 5
    out = centre * np.exp(rng.normal(0.0, 0.25, level.size))
    bim = centre * np.where(rng.random(level.size) < 0.35, 0.8, 1.1) * (1 + 0.03 * rng.normal(size=level.size))
    stu = centre * (1.0 + 0.04 * rng.standard_t(2.5, level.size))
    skn = centre * (1.0 + 0.08 * stats.skewnorm.rvs(-5.0, size=level.size, random_state=rng))
    uni = centre * rng.uniform(0.85, 1.15, level.size)
    return np.choose(fam, [out, bim, stu, skn, uni])


def power_law_drift(g0, t, nu):
    return g0 * (1.0 + t) ** (-(0.05 + 0.02 * nu))


def t3_read_noise(scale):
    return lambda g, rng: scale * rng.standard_t(3.0, g.size)


def relative_read_noise(rel):
    return lambda g, rng: rel * g * rng.normal(0.0, 1.0, g.size)


# ============================================================================ independent checks
def _randomized_pit(values: np.ndarray, pool_sorted: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    below = np.searchsorted(pool_sorted, values, "left")
    equal = np.searchsorted(pool_sorted, values, "right") - below
    return (below + rng.random(values.size) * (equal + 1)) / (pool_sorted.size + 1)


def _knot_pit(values: np.ndarray, knots: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """PIT from piecewise-linear inverse-CDF knots at linspace(0, 1, K); ties spread over the jump."""
    probs = np.linspace(0.0, 1.0, knots.size)
    u = np.interp(values, knots, probs, left=0.0, right=1.0)
    lo, hi = np.searchsorted(knots, values, "left"), np.searchsorted(knots, values, "right")
    p_lo, p_hi = probs[np.clip(lo, 0, knots.size - 1)], probs[np.clip(hi - 1, 0, knots.size - 1)]
    return np.where(hi > lo, p_lo + rng.random(values.size) * (p_hi - p_lo), u)


def conductance_figures(model, held: pd.DataFrame, *, seed: int = 0, stuck_at_most_us: float | None = None,
                        pool: int = 20_000) -> dict:
    """The issue's conductance figures, from ``sample``/``quantiles`` only."""
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    pits, knot_pits, pvalues = [], [], []
    stuck_meas = stuck_model = 0.0
    for (level, t_s), group in held.groupby(["level", "t_s"], sort=True):
        # the profile holds and samples float32 values: compare at that resolution, else a reading
        # of 0.1 µS (float64) never ties with the profile's 0.1 µS (float32, 1.5e-9 above it)
        x = group["g_us"].to_numpy(np.float32).astype(np.float64)
        one_per_cell = group.sort_values("read_idx", kind="stable").drop_duplicates(["row", "col"])
        cells = one_per_cell["g_us"].to_numpy(np.float32).astype(np.float64)
        m = max(pool, 20 * x.size)
        draws = model.sample(torch.full((m + cells.size,), int(level), dtype=torch.long), t_s=float(t_s),
                             generator=gen).double().numpy()
        pooled, paired = np.sort(draws[:m]), draws[m:]
        pits.append(_randomized_pit(x, pooled, rng))
        knots = model.quantiles(torch.tensor([int(level)]), t_s=float(t_s))[0].double().numpy()
        knot_pits.append(_knot_pit(x, knots, rng))
        pvalues.append(stats.ks_2samp(cells, paired).pvalue)
        if stuck_at_most_us is not None:
            at_most = float(np.float32(stuck_at_most_us))
            stuck_meas += np.sum(x <= at_most)
            stuck_model += x.size * np.mean(pooled <= at_most)
    pit = np.concatenate(pits)
    out = {
        "pit_ks": float(stats.kstest(pit, "uniform").statistic),
        "knot_pit_ks": float(stats.kstest(np.concatenate(knot_pits), "uniform").statistic),
        "groups": len(pvalues),
        "rejects": int(np.sum(np.asarray(pvalues) < ALPHA)),
        "reject_fraction": float(np.mean(np.asarray(pvalues) < ALPHA)),
        "held_cells": int(held.groupby(["row", "col"]).ngroups),
    }
    if stuck_at_most_us is not None:
        out["stuck_measured"] = stuck_meas / len(held)
        out["stuck_model"] = stuck_model / len(held)
        out["stuck_difference"] = abs(stuck_meas - stuck_model) / len(held)
    print("\n  " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in out.items()))
    return out


def adc_dump(n_codes: int, cols=(0,), *, offset_lsb=None, gain=None, dnl=None, sigma_lsb: float = 0.4,
             x_range=None, points_per_lsb: int = 4, repeats: int = 40, random_inputs: int = 0,
             pooled: bool = False, seed: int = 0) -> tuple[pd.DataFrame, dict]:
    """ADC conversions with inputs in ideal-LSB units (the ideal transition into code k is at x = k).

    Column c has code widths ``1 + dnl[c][k]`` (a width of 0 is a missing code), then a gain error
    and an offset (LSB, positive shifts transitions down), and Gaussian input noise of ``sigma_lsb``
    (in actual LSB). Returns the table and the true transition levels per column.
    """
    rng = np.random.default_rng(seed)
    lo, hi = x_range or (-2.0, n_codes + 2.0)
    frames, truth = [], {}
    for ci, c in enumerate(cols):
        off = 0.0 if offset_lsb is None else offset_lsb[ci]
        g = 0.0 if gain is None else gain[ci]
        width = np.ones(n_codes) if dnl is None else 1.0 + dnl[ci]
        t_act = np.concatenate([[-np.inf, 1.0], 1.0 + np.cumsum(width[1:n_codes - 1])])
        thresholds = (t_act - off) / (1.0 + g)
        truth[c] = {"thresholds": thresholds, "width": width}
        if random_inputs:
            x = rng.uniform(lo, hi, random_inputs)
            rep = np.arange(random_inputs) % 10
        else:
            grid = np.arange(round(lo * points_per_lsb), round(hi * points_per_lsb) + 1) / points_per_lsb
            x, rep = np.repeat(grid, repeats), np.tile(np.arange(repeats), grid.size)
        noisy = x + rng.normal(0.0, sigma_lsb / (1.0 + g), x.size)
        code = np.clip(np.searchsorted(thresholds[1:], noisy, side="right"), 0, n_codes - 1)
        frame = pd.DataFrame({"input": x, "code": code, "repeat": rep})
        if not pooled:
            frame.insert(0, "col", c)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True), truth


def split_repeats(df: pd.DataFrame, held_from: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    held = df["repeat"] >= held_from
    return df[~held].reset_index(drop=True), df[held].reset_index(drop=True)


def adc_pit_ks(model, held: pd.DataFrame, *, draws: int = 63, seed: int = 0) -> dict:
    """Randomized PIT of each held-out code against ``draws`` profile codes at the same input."""
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    x = torch.tensor(held["input"].to_numpy(np.float64), dtype=torch.float32)
    col = torch.tensor(held["col"].to_numpy(np.int64)) if "col" in held else torch.zeros(len(held), dtype=torch.long)
    code = held["code"].to_numpy(np.int64)
    d = model.sample(x[:, None].expand(-1, draws), col[:, None].expand(-1, draws), generator=gen).numpy()
    below, equal = (d < code[:, None]).sum(1), (d == code[:, None]).sum(1)
    pit = (below + rng.random(code.size) * (equal + 1)) / (draws + 1)
    out = {"pit_ks": float(stats.kstest(pit, "uniform").statistic), "n": int(code.size),
           "per_col": {int(c): float(stats.kstest(pit[col.numpy() == c], "uniform").statistic)
                       for c in np.unique(col.numpy())}}
    print(f"\n  ADC PIT KS {out['pit_ks']:.4f} over {out['n']} conversions; per column {out['per_col']}")
    return out


def true_figures(thresholds: np.ndarray, valid: np.ndarray) -> dict:
    """Offset, gain error, INL, DNL of the true transitions, by the model's IEEE 1241 convention
    (least-squares line over the same transitions; ideal range [0, n_codes))."""
    k = np.arange(thresholds.size)
    b, a = np.polyfit(k[valid], thresholds[valid], 1)
    dnl = np.full(thresholds.size, np.nan)
    dnl[:-1] = np.diff(thresholds) / b - 1.0
    return {"offset": -a / b, "gain": 1.0 / b - 1.0, "inl": (thresholds - a - b * k) / b, "dnl": dnl}


# ============================================================================ conductance: default
@pytest.fixture(scope="module")
def mixed_device():
    """8 levels, a different error family per level, 0.05..100 µS, 3 % stuck-off cells near 2 nS,
    2 reads with 1 % read noise, power-law drift with per-cell exponents at t_s = 0, 10, 1e3, 1e5;
    2 * 10^4 fit cells, 10^4 held-out cells."""
    df = conductance_dump(30_000, np.arange(8), mixed_families, reads=2, t_s=(0.0, 10.0, 1e3, 1e5),
                          drift=power_law_drift, read_noise=relative_read_noise(0.01), stuck_fraction=0.03,
                          stuck_us=0.002, stuck_jitter=0.2, seed=101)
    fit, held = split_cells(df)
    return fit_profile(conductance=fit), fit, held


def test_mixed_families_drift_and_stuck_cells_are_indistinguishable_from_held_out(mixed_device):
    profile, _, held = mixed_device
    f = conductance_figures(profile.conductance, held, stuck_at_most_us=0.003)
    assert f["held_cells"] == 10_000 and f["groups"] == 32
    assert f["pit_ks"] <= MAX_PIT_KS_CONDUCTANCE
    assert f["knot_pit_ks"] <= MAX_PIT_KS_CONDUCTANCE
    assert f["reject_fraction"] <= MAX_REJECT_FRACTION
    assert f["stuck_difference"] <= MAX_STUCK_DIFFERENCE


def _stuck_and_gap(model, fit: pd.DataFrame, stuck_at_most_us: float, n: int = 200_000) -> np.ndarray:
    """Per (level, t_s) of the fit data: stuck fraction in the data, in the profile, and the profile's
    mass strictly between the stuck cluster and the smallest non-stuck fit read (the data has none)."""
    gen = torch.Generator().manual_seed(1)
    rows = []
    for (level, t_s), group in fit.groupby(["level", "t_s"], sort=True):
        g = group["g_us"].to_numpy()
        s = model.sample(torch.full((n,), int(level)), t_s=float(t_s), generator=gen).double().numpy()
        bulk_min = g[g > stuck_at_most_us].min()
        rows.append((np.mean(g <= stuck_at_most_us), np.mean(s <= stuck_at_most_us),
                     np.mean((s > stuck_at_most_us) & (s < bulk_min))))
    return np.array(rows)


def test_profile_reproduces_the_stuck_fraction_of_its_own_fit_data(mixed_device):
    """The knot interval that straddles the stuck cluster and the bulk spreads its probability, 1/(K-1), over
    the empty gap: at K = 256 (0.39 %) the stuck fraction came out 0.18 pp low on average (up to 0.39 pp) against
    the very data it was fit on; the default K = 4096 keeps both within the bounds below."""
    profile, fit, _ = mixed_device
    r = _stuck_and_gap(profile.conductance, fit, 0.003)
    print(f"\n  stuck % fit data {100 * r[:, 0].mean():.3f}, profile {100 * r[:, 1].mean():.3f}; "
          f"profile mass in the empty gap {100 * r[:, 2].mean():.3f} % (max {100 * r[:, 2].max():.3f} %)")
    assert np.max(np.abs(r[:, 1] - r[:, 0])) <= 0.002  # 0.2 pp per group (Monte-Carlo sd ~0.04 pp)
    assert np.max(r[:, 2]) <= 0.001  # the data has nothing there


@pytest.mark.slow
def test_a_gaussian_per_level_model_fails_the_same_checks(mixed_device):
    """The checks have power: mean/std per (level, t_s) with the same API fails them."""
    profile, _, held = mixed_device

    class Gaussian:
        def __init__(self, lut):
            self.lut = lut

        def sample(self, level, t_s=None, generator=None):
            z = torch.randn(level.shape, generator=generator)
            return (self.lut.mean_us(level, t_s) + self.lut.sigma_us(level, t_s) * z).clamp_min(0.0)

        def quantiles(self, level, t_s=None):
            p = torch.linspace(1e-6, 1 - 1e-6, 256, dtype=torch.float64)
            z = torch.special.ndtri(p)
            return (self.lut.mean_us(level, t_s)[..., None] + self.lut.sigma_us(level, t_s)[..., None] * z).float()

    f = conductance_figures(Gaussian(profile.conductance), held, stuck_at_most_us=0.003)
    assert f["pit_ks"] > MAX_PIT_KS_CONDUCTANCE
    assert f["reject_fraction"] > MAX_REJECT_FRACTION
    assert f["stuck_difference"] > MAX_STUCK_DIFFERENCE


def test_csv_in_siemens_non_contiguous_levels_through_the_data_layer(tmp_path):
    """Levels 0, 3, 7 (nothing in between), g in siemens in CSV files, fitted and read through paths."""
    df = conductance_dump(15_000, (0, 3, 7), lognormal, reads=2, read_noise=t3_read_noise(0.2), seed=102)
    fit, held = split_cells(df)
    for name, part in (("fit", fit), ("held", held)):
        part.assign(g_s=part["g_us"] * 1e-6).drop(columns="g_us").to_csv(tmp_path / f"{name}.csv", index=False)
    profile = fit_profile(conductance=tmp_path / "fit.csv")
    assert profile.conductance.levels_.tolist() == [0, 3, 7]
    held_read = read_table(tmp_path / "held.csv", "conductance")
    np.testing.assert_allclose(held_read["g_us"].to_numpy(), held["g_us"].to_numpy(), rtol=1e-12)
    f = conductance_figures(profile.conductance, held_read)
    assert f["pit_ks"] <= MAX_PIT_KS_CONDUCTANCE
    assert f["rejects"] == 0  # 3 groups: one rejection would already be 33 %
    # unmeasured level 5 lies between the medians of its neighbours (quantile interpolation)
    med = profile.conductance.quantiles(torch.tensor([3, 5, 7]))[:, 128]
    assert float(med[0]) < float(med[1]) < float(med[2])


def test_fifty_cells_per_level_the_lut_is_the_empirical_cdf():
    """With 50 fit cells per level the PIT target is below the noise floor of 50 held-out cells, so
    check what the LUT can promise: its CDF is the fit data's ECDF (within one knot step), and the
    held-out PIT passes the two-sample KS test that accounts for both sample sizes."""
    df = conductance_dump(75 * 8, np.arange(8), student_t2, reads=1, seed=103)  # 50 fit + 25 held per level
    held_mask = (df["row"] * N_COLS + df["col"]) % 3 == 2
    fit, held = df[~held_mask], df[held_mask]
    profile = fit_profile(conductance=fit)
    model = profile.conductance
    gen = torch.Generator().manual_seed(0)
    worst = 0.0
    for level, group in fit.groupby("level"):
        x = np.sort(group["g_us"].to_numpy())
        s = np.sort(model.sample(torch.full((100_000,), int(level)), generator=gen).double().numpy())
        # compare between consecutive fit values (at a fit value the histogram bin's width decides)
        mid = (x[1:] + x[:-1]) / 2
        ecdf_fit = np.arange(1, x.size) / x.size
        model_cdf = np.searchsorted(s, mid, "right") / s.size
        worst = max(worst, float(np.max(np.abs(model_cdf - ecdf_fit))))
    print(f"\n  max |F_profile - ECDF_fit| at fit points: {worst:.4f} (n_fit/level = {len(fit) // 8})")
    # one order statistic (two fit values can share a histogram bin) + knot step + Monte-Carlo noise
    assert worst <= 1.0 / (len(fit) // 8) + 1.0 / 255 + 0.006
    f = conductance_figures(model, held)
    n_eff = 1.0 / (1.0 / len(held) + 1.0 / len(fit))
    assert f["pit_ks"] <= 1.63 / np.sqrt(n_eff)  # 1 % critical value with both samples' noise


# ============================================================================ conductance: defects
def test_stuck_cells_at_exactly_zero():
    """6 % of cells read exactly 0 µS: the profile returns exactly 0 for them (an atom, not a smear
    over the first histogram bin), so the randomized PIT stays uniform."""
    df = conductance_dump(30_000, np.arange(8), gamma_skew, reads=1, stuck_fraction=0.06, stuck_us=0.0, seed=104)
    fit, held = split_cells(df)
    f = conductance_figures(fit_profile(conductance=fit).conductance, held, stuck_at_most_us=0.0)
    assert_stuck_fraction(f, fit, held, 0.0)
    assert f["pit_ks"] <= MAX_PIT_KS_CONDUCTANCE


def assert_stuck_fraction(f: dict, fit: pd.DataFrame, held: pd.DataFrame, at_most_us: float) -> None:
    """The profile's stuck fraction equals its fit data's (0.1 pp: Monte-Carlo and knot resolution) and the
    held-out data's within the issue's 0.5 pp, or within the 1 % two-sample binomial bound where the two halves of
    the dump themselves differ by more (seed 104: fit 6.16 %, held out 5.63 %; sd of the difference 0.29 pp)."""
    in_fit = float((fit["g_us"] <= np.float32(at_most_us)).mean())
    assert abs(f["stuck_model"] - in_fit) <= 0.001, (f["stuck_model"], in_fit)
    p = f["stuck_measured"]
    bound = 2.58 * np.sqrt(p * (1 - p) * (1 / len(held) + 1 / len(fit)))
    assert f["stuck_difference"] <= max(MAX_STUCK_DIFFERENCE, bound)


@pytest.mark.parametrize("quantum_us", [1.0, 0.25])
def test_dyadic_quantized_readings_keep_their_ties(quantum_us):
    """Readings on a 1 µS or 0.25 µS grid (values exactly on float histogram edges) stay atoms."""
    df = conductance_dump(15_000, np.arange(8),
                          lambda lv, rng: 10.0 + 5.0 * lv + rng.normal(0, quantum_us, lv.size),
                          reads=1, quantum_us=quantum_us, seed=105)
    fit, held = split_cells(df)
    f = conductance_figures(fit_profile(conductance=fit).conductance, held)
    assert f["pit_ks"] <= MAX_PIT_KS_CONDUCTANCE
    assert f["reject_fraction"] <= MAX_REJECT_FRACTION


def test_non_dyadic_quantized_readings_keep_their_ties():
    df = conductance_dump(15_000, np.arange(8), lambda lv, rng: 10.0 + 5.0 * lv + rng.normal(0, 0.1, lv.size),
                          reads=1, quantum_us=0.1, seed=105)
    fit, held = split_cells(df)
    f = conductance_figures(fit_profile(conductance=fit).conductance, held)
    assert f["pit_ks"] <= MAX_PIT_KS_CONDUCTANCE
    assert f["reject_fraction"] <= MAX_REJECT_FRACTION


def test_cells_stuck_at_a_non_dyadic_floor():
    df = conductance_dump(30_000, np.arange(8), gamma_skew, reads=1, stuck_fraction=0.06, stuck_us=0.1, seed=104)
    fit, held = split_cells(df)
    f = conductance_figures(fit_profile(conductance=fit).conductance, held, stuck_at_most_us=0.1)
    assert_stuck_fraction(f, fit, held, 0.1)
    assert f["pit_ks"] <= MAX_PIT_KS_CONDUCTANCE


# ============================================================================ conductance: slow sweep
SWEEP = {
    # name: (dump kwargs, stuck threshold or None, max rejecting groups)
    "lognormal_2reads": (dict(n_cells=30_000, levels=np.arange(8), programmed=lognormal, reads=2,
                              read_noise=t3_read_noise(0.3), seed=1), None),
    "bimodal_2reads": (dict(n_cells=30_000, levels=np.arange(8), programmed=bimodal, reads=2,
                            read_noise=t3_read_noise(0.2), seed=2), None),
    "student_t2_1read": (dict(n_cells=30_000, levels=np.arange(8), programmed=student_t2, seed=3), None),
    "skew_by_level_3reads": (dict(n_cells=30_000, levels=np.arange(8), programmed=skew_by_level, reads=3,
                                  read_noise=t3_read_noise(0.2), seed=4), None),
    "levels_0_3_7": (dict(n_cells=30_000, levels=(0, 3, 7), programmed=lognormal, reads=2,
                          read_noise=t3_read_noise(0.3), seed=8), None),
    "ten_reads_per_cell": (dict(n_cells=15_000, levels=np.arange(8), programmed=skew_by_level, reads=10,
                                read_noise=t3_read_noise(0.5), seed=9), None),
    "one_time_point_t3600": (dict(n_cells=30_000, levels=np.arange(8), programmed=skew_by_level, reads=2,
                                  read_noise=t3_read_noise(0.2), t_s=(3600.0,), drift=power_law_drift, seed=14),
                             None),
    "decades_0.01_100us": (dict(n_cells=30_000, levels=np.arange(8), programmed=decades, reads=2,
                                read_noise=relative_read_noise(0.02), seed=11), None),
    "drift_4t_16_levels_stuck": (dict(n_cells=30_000, levels=np.arange(16),
                                      programmed=lambda lv, rng: 2.0 + 4.0 * lv + rng.gamma(1.5 + 0.1 * lv, 0.5),
                                      t_s=(0.0, 10.0, 1e3, 1e5), drift=power_law_drift, stuck_fraction=0.03,
                                      stuck_us=0.05, stuck_jitter=0.1, seed=15), 0.06),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SWEEP))
def test_foreign_conductance_sweep(name):
    from cimcal.noise.validation import validate_profile

    kwargs, stuck = SWEEP[name]
    df = conductance_dump(**kwargs)
    fit, held = split_cells(df)
    profile = fit_profile(conductance=fit)
    f = conductance_figures(profile.conductance, held, stuck_at_most_us=stuck)
    v = validate_profile(profile, conductance=held, seed=0)
    print(f"  validate_profile: PIT KS {v.conductance_pit_ks:.4f}, rejecting {v.reject_fraction:.1%}, "
          f"tail |diff| {100 * v.tail_difference:.3f} pp")
    assert f["held_cells"] >= 5000
    assert f["pit_ks"] <= MAX_PIT_KS_CONDUCTANCE
    assert f["knot_pit_ks"] <= MAX_PIT_KS_CONDUCTANCE
    # with 3 or 8 groups a single rejection exceeds 10 %; a right model rejects ~3 % of groups each
    assert f["rejects"] <= max(1, int(MAX_REJECT_FRACTION * f["groups"]))
    assert abs(v.conductance_pit_ks - f["knot_pit_ks"]) <= 0.01  # validation's exact PIT agrees with ours
    if stuck is not None:
        assert f["stuck_difference"] <= MAX_STUCK_DIFFERENCE


# ============================================================================ ADC
def _six_bit_columns(points_per_lsb: int, repeats: int):
    """Col 0: missing codes 10, 21, 40 and DNL noise; col 1: +20 % gain and -6 LSB offset (saturates at
    both ends of the sweep); col 2: large DNL (sigma 0.3 LSB widths). Sweep -2 .. 66 LSB."""
    rng = np.random.default_rng(7)
    d0 = rng.normal(0.0, 0.1, 64)
    d0[[10, 21, 40]] = -1.0
    dnl = [d0, np.zeros(64), rng.normal(0.0, 0.3, 64).clip(-0.9, None)]
    return adc_dump(64, cols=(0, 1, 2), offset_lsb=[0.3, -6.0, 0.0], gain=[0.02, 0.2, -0.03], dnl=dnl,
                    sigma_lsb=0.4, points_per_lsb=points_per_lsb, repeats=repeats, seed=201)


@pytest.fixture(scope="module")
def six_bit_fine():
    """8 points per LSB (545 inputs per column), 64 fit repeats per input."""
    df, truth = _six_bit_columns(8, 64)
    return df, truth


def test_six_bit_missing_codes_saturation_and_dnl_pit():
    """2 points per LSB (137 inputs), 98 fit and 49 held-out repeats: 2 * 10^4 held-out conversions.
    """
    df, _ = _six_bit_columns(2, 147)
    fit, held = split_repeats(df, 98)
    assert len(held) >= 20_000
    model = fit_profile(adc=fit).adc
    assert len(model.input_edges_) - 1 == 137  # one bin per staircase input
    f = adc_pit_ks(model, held)
    assert f["pit_ks"] <= MAX_PIT_KS_ADC


def test_six_bit_fine_staircase_is_binned_on_its_grid(six_bit_fine):
    """545 inputs (-2..66 LSB, step 1/8): one bin per input, so the model's mean code at each input is
    the data's (an earlier fit mistook this grid for continuous inputs: 697 misaligned bins, mean code
    off by up to 0.22 codes)."""
    df, _ = six_bit_fine
    model = fit_profile(adc=df).adc
    means = df.groupby(["col", "input"])["code"].mean()
    x = torch.tensor(means.index.get_level_values("input").to_numpy(), dtype=torch.float32)
    col = torch.tensor(means.index.get_level_values("col").to_numpy())
    err = np.abs(model.mean_code(x, col).double().numpy() - means.to_numpy())
    print(f"\n  bins {len(model.input_edges_) - 1} for 545 inputs; max |mean code - data| {err.max():.3f}")
    assert len(model.input_edges_) - 1 == 545
    assert err.max() <= 0.02


def test_six_bit_derived_figures_match_the_device(six_bit_fine):
    df, truth = six_bit_fine
    model = ADCLUT(ideal_range=(0.0, 64.0)).fit(df)
    assert model.missing_codes_[0] == [10, 21, 40]
    assert model.missing_codes_[1] == [] and model.missing_codes_[2] == []
    for ci, col in enumerate(model.cols_.tolist()):
        inl = model.inl_lsb_[ci].numpy()
        valid = np.isfinite(inl) & np.isfinite(truth[col]["thresholds"])
        t = true_figures(truth[col]["thresholds"], valid)
        dnl = model.dnl_lsb_[ci].numpy()
        ok = np.isfinite(dnl) & np.isfinite(t["dnl"])
        print(f"\n  col {col}: offset {float(model.offset_lsb_[ci]):.3f} (true {t['offset']:.3f}), gain error "
              f"{float(model.gain_error_[ci]):.4f} (true {t['gain']:.4f}), sigma {float(model.sigma_lsb_[ci]):.3f} "
              f"(true 0.4), INL max err {np.max(np.abs(inl[valid] - t['inl'][valid])):.3f}, DNL max err "
              f"{np.max(np.abs(dnl[ok] - t['dnl'][ok])):.3f}, transitions {valid.sum()}/63")
        assert abs(float(model.offset_lsb_[ci]) - t["offset"]) <= 0.05
        assert abs(float(model.gain_error_[ci]) - t["gain"]) <= 0.002
        assert np.max(np.abs(inl[valid] - t["inl"][valid])) <= 0.1
        assert np.max(np.abs(dnl[ok] - t["dnl"][ok])) <= 0.15
        assert abs(float(model.sigma_lsb_[ci]) - 0.4) <= 0.05  # resolution-limited estimate (documented)
    # the saturating column sees every transition inside the sweep (codes 1..~58 for col 1)
    assert np.isfinite(model.inl_lsb_[1].numpy()[1:]).sum() >= 55


def test_pooled_adc_with_random_inputs():
    """No col column, inputs uniform at random (no grid): 9.6*10^4 fit, 2.4*10^4 held-out conversions."""
    rng = np.random.default_rng(8)
    df, _ = adc_dump(64, cols=(0,), dnl=[rng.normal(0.0, 0.25, 64)], sigma_lsb=0.4, random_inputs=120_000,
                     pooled=True, seed=202)
    fit, held = split_repeats(df, 8)  # repeat = index % 10: fit on 8/10, hold out 2/10
    model = fit_profile(adc=fit).adc
    assert model.pooled_
    f = adc_pit_ks(model, held.drop(columns="repeat"))
    assert f["n"] == 24_000
    assert f["pit_ks"] <= MAX_PIT_KS_ADC


def test_four_bit_adc_three_columns():
    rng = np.random.default_rng(9)
    df, truth = adc_dump(16, cols=(0, 1, 2), offset_lsb=[0.5, -0.5, 0.0], gain=[0.05, 0.0, -0.05],
                         dnl=[rng.normal(0.0, 0.2, 16) for _ in range(3)], sigma_lsb=0.3, points_per_lsb=8,
                         repeats=240, seed=203)
    fit, held = split_repeats(df, 200)
    assert len(held) >= 19_000
    model = fit_profile(adc=fit).adc
    assert model.n_codes_ == 16
    f = adc_pit_ks(model, held)
    assert f["pit_ks"] <= MAX_PIT_KS_ADC


def test_ten_bit_four_points_per_lsb_staircase_is_binned_on_its_grid():
    rng = np.random.default_rng(10)
    df, _ = adc_dump(1024, cols=(0,), dnl=[rng.normal(0.0, 0.2, 1024)], sigma_lsb=0.5, points_per_lsb=4,
                     repeats=20, seed=204)
    model = fit_profile(adc=df).adc
    means = df.groupby("input")["code"].mean()
    x = torch.tensor(means.index.to_numpy(), dtype=torch.float32)
    err = np.abs(model.mean_code(x, 0).double().numpy() - means.to_numpy())
    print(f"\n  bins {len(model.input_edges_) - 1} for {len(means)} inputs; max |mean code - data| {err.max():.3f}")
    assert err.max() <= 0.02


@pytest.mark.slow
@pytest.mark.parametrize("inputs", ["staircase_2_per_lsb", "random"])
def test_ten_bit_adc(inputs):
    """10 bits, DNL sigma 0.2, noise 0.5 LSB; 2 * 10^4 held-out conversions, >= 7x as many fitted."""
    rng = np.random.default_rng(10)
    dnl = [rng.normal(0.0, 0.2, 1024)]
    if inputs == "random":
        df, _ = adc_dump(1024, cols=(0,), dnl=dnl, sigma_lsb=0.5, random_inputs=200_000, seed=205)
        fit, held = split_repeats(df, 9)
    else:
        df, _ = adc_dump(1024, cols=(0,), dnl=dnl, sigma_lsb=0.5, points_per_lsb=2, repeats=160, seed=204)
        fit, held = split_repeats(df, 150)
        held = held.sample(20_480, random_state=0)
    model = fit_profile(adc=fit).adc
    f = adc_pit_ks(model, held)
    print(f"  bins {len(model.input_edges_) - 1}, sigma {float(model.sigma_lsb_[0]):.3f} LSB (true 0.5)")
    assert f["pit_ks"] <= MAX_PIT_KS_ADC
    assert abs(float(model.sigma_lsb_[0]) - 0.5) <= 0.06  # resolution-limited estimate


@pytest.mark.slow
def test_six_bit_adc_validate_profile_agrees():
    from cimcal.noise.validation import validate_profile

    df, _ = _six_bit_columns(2, 147)
    fit, held = split_repeats(df, 98)
    profile = fit_profile(adc=fit)
    ours = adc_pit_ks(profile.adc, held)
    v = validate_profile(profile, adc=held, seed=0)
    print(f"  validate_profile: ADC PIT KS {v.adc_pit_ks:.4f}, TV {v.adc_tv:.4f}")
    assert v.adc_pit_ks <= MAX_PIT_KS_ADC
    assert abs(v.adc_pit_ks - ours["pit_ks"]) <= 0.01
