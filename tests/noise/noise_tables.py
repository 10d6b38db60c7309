"""Synthetic tables with known distributions for the noise-model tests (imported by test_noise_*.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd

STUCK_FRACTION = 0.03
STUCK_US = 0.2
READ_SIGMA_US = 0.4


def programmed_us(level: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Skewed programming error per level plus stuck-off cells at about STUCK_US."""
    g = 5.0 + 10.0 * level + rng.gamma(2.0, 1.0 + 0.2 * level)
    stuck = rng.random(len(level)) < STUCK_FRACTION
    g[stuck] = STUCK_US * (1.0 + 0.05 * rng.random(stuck.sum()))
    return g


def make_conductance(
    n_cells: int = 20_000,
    levels: tuple[int, ...] = (0, 1, 2, 3),
    reads: int = 3,
    t_s: tuple[float, ...] = (0.0,),
    drift_per_log: float = 0.0,
    seed: int = 0,
) -> pd.DataFrame:
    """A conductance table: one row per read; drift multiplies by (1 - drift_per_log * log1p(t))."""
    rng = np.random.default_rng(seed)
    level = np.asarray(levels)[rng.integers(0, len(levels), n_cells)]
    g0 = programmed_us(level, rng)
    frames = []
    for t in t_s:
        for r in range(reads):
            g = g0 * (1.0 - drift_per_log * np.log1p(t)) + rng.normal(0.0, READ_SIGMA_US, n_cells)
            frames.append(pd.DataFrame({
                "row": np.arange(n_cells) // 128, "col": np.arange(n_cells) % 128, "level": level,
                "g_us": np.abs(g), "t_s": float(t), "read_idx": r,
            }))
    return pd.concat(frames, ignore_index=True)


def ideal_thresholds(n_codes: int, gain: float, offset_lsb: float, dnl: np.ndarray) -> np.ndarray:
    """Transition levels T[k] (k = 0..n_codes-1) in ideal-LSB input units; T[0] = -inf."""
    widths = 1.0 + dnl  # width of code k in actual LSB, k = 1..n_codes-2
    t = np.empty(n_codes)
    t[0] = -np.inf
    t[1] = 1.0
    t[2:] = 1.0 + np.cumsum(widths[1:n_codes - 1])
    return (t - offset_lsb) / (1.0 + gain)


def make_adc(
    n_codes: int = 64,
    gain: float = 0.03,
    offset_lsb: float = 0.6,
    sigma_lsb: float = 0.4,
    dnl: np.ndarray | None = None,
    cols: tuple[int, ...] | None = (2, 7),
    points_per_lsb: int = 8,
    repeats: int = 32,
    seed: int = 0,
) -> pd.DataFrame:
    """A staircase ADC test: inputs in ideal-LSB units (LSB = 1.0, full scale [0, n_codes))."""
    rng = np.random.default_rng(seed)
    if dnl is None:
        dnl = np.zeros(n_codes)
    thresholds = ideal_thresholds(n_codes, gain, offset_lsb, dnl)
    x_grid = np.arange(-2 * points_per_lsb, (n_codes + 2) * points_per_lsb) / points_per_lsb
    frames = []
    for c in (cols or (0,)):
        x = np.repeat(x_grid, repeats)
        noisy = x + rng.normal(0.0, sigma_lsb, len(x)) / (1.0 + gain)
        code = np.clip(np.searchsorted(thresholds, noisy, side="right") - 1, 0, n_codes - 1)
        frame = pd.DataFrame({"input": x, "code": code})
        if cols is not None:
            frame.insert(0, "col", c)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)
