"""Seeded synthetic chip dumps with the non-Gaussian features real arrays show.

Chip-free measurement tables for the fidelity tests and for trying cimcal without the simulated
chip (whose dumps are the ones in ``calibration_data/``). The tables follow the column contract
of :mod:`cimcal.data.schema` exactly, so everything downstream treats them like a measurement.

Conductance (one row per read): per target level a right-skewed programming error (skew-normal,
spread growing with the target), stuck-off cells (a few 0.1 µS) and stuck-on cells (above the top
level), per-cell power-law drift ``g(t) = g(t_ref) * (t / t_ref) ** -nu`` with a random exponent
``nu`` per cell (stuck cells do not drift), and heavy-tailed (Student-t) read-to-read noise that
grows with the conductance, over several reads per cell and several ``t_s``.

ADC (one row per conversion): per column a gain and offset error, a bowed INL, non-uniform code
widths (random DNL plus a few nearly missing codes), input-referred noise that grows with the
input, and rare "sparkle" conversions several codes away; a fixed ramp of inputs repeated.

Write a fit / held-out set of four files with ``python -m cimcal.data.synthetic DIRECTORY``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

__all__ = ["synthetic_conductance", "synthetic_adc", "write_sample_dumps"]

# Physical constants of the synthetic device (microsiemens unless noted).
G_MIN_US = 2.0
G_MAX_US = 40.0
STUCK_OFF_FRACTION = 0.015
STUCK_ON_FRACTION = 0.01
STUCK_OFF_MEDIAN_US = 0.1
STUCK_ON_US = 46.0
DRIFT_NU_MEAN = 0.04
DRIFT_NU_STD = 0.015
PROG_SKEW_SHAPE = 5.0
READ_NOISE_DF = 4.0


def synthetic_conductance(
    n_cells: int = 4096,
    levels: int = 8,
    reads: int = 2,
    t_s: Sequence[float] = (1.0, 10.0, 100.0, 1000.0),
    seed: int = 0,
    *,
    n_cols: int = 128,
    chip_id: str = "SYN0",
) -> pd.DataFrame:
    """A conductance table of ``n_cells * len(t_s) * reads`` rows (one row per read).

    Cells are laid out row-major over ``n_cols`` columns and get levels in a shuffled, balanced
    order. ``t_s`` are seconds since programming (the first one is the drift reference time).
    """
    if n_cells < 1 or levels < 2 or reads < 1 or len(t_s) < 1:
        raise ValueError(
            f"need n_cells >= 1, levels >= 2, reads >= 1 and at least one t_s; got "
            f"n_cells={n_cells}, levels={levels}, reads={reads}, t_s={list(t_s)}"
        )
    rng = np.random.default_rng(seed)
    t_arr = np.asarray(sorted(float(t) for t in t_s))
    targets_us = np.linspace(G_MIN_US, G_MAX_US, levels)
    level = rng.permutation(np.arange(n_cells) % levels)
    target = targets_us[level]

    # Programming error: skew-normal, centred so its mean is the target, spread ~ 4% of target.
    scale = 0.04 * target + 0.3
    skew = stats.skewnorm(PROG_SKEW_SHAPE)
    err = skew.rvs(size=n_cells, random_state=rng) - skew.mean()
    g_prog = np.maximum(target + scale * err / skew.std(), 0.05)

    kind = rng.random(n_cells)
    stuck_off = kind < STUCK_OFF_FRACTION
    stuck_on = (kind >= STUCK_OFF_FRACTION) & (kind < STUCK_OFF_FRACTION + STUCK_ON_FRACTION)
    g_prog[stuck_off] = STUCK_OFF_MEDIAN_US * rng.lognormal(0.0, 0.4, stuck_off.sum())
    g_prog[stuck_on] = STUCK_ON_US + rng.normal(0.0, 0.6, stuck_on.sum())

    nu = np.clip(rng.normal(DRIFT_NU_MEAN, DRIFT_NU_STD, n_cells), 0.0, None)
    nu[stuck_off | stuck_on] = 0.0
    t_ref = max(t_arr[0], 1e-3)
    # (cells, times): drifted conductance, then (cells, times, reads) with read noise.
    g_t = g_prog[:, None] * (np.maximum(t_arr, 1e-3)[None, :] / t_ref) ** (-nu[:, None])
    read_sigma = 0.015 * g_t + 0.03
    noise = rng.standard_t(READ_NOISE_DF, size=(n_cells, t_arr.size, reads))
    noise /= np.sqrt(READ_NOISE_DF / (READ_NOISE_DF - 2.0))  # unit variance
    g_read = np.maximum(g_t[:, :, None] + read_sigma[:, :, None] * noise, 0.0)

    cell = np.arange(n_cells)
    shape = (n_cells, t_arr.size, reads)
    cell_idx = np.broadcast_to(cell[:, None, None], shape).ravel()
    return pd.DataFrame(
        {
            "row": (cell_idx // n_cols).astype(np.int64),
            "col": (cell_idx % n_cols).astype(np.int64),
            "level": level[cell_idx].astype(np.int64),
            "g_us": g_read.ravel(),
            "chip_id": chip_id,
            "array": np.zeros(cell_idx.size, dtype=np.int64),
            "g_target_us": target[cell_idx],
            "t_s": np.broadcast_to(t_arr[None, :, None], shape).ravel().copy(),
            "read_idx": np.broadcast_to(np.arange(reads)[None, None, :], shape).ravel().astype(np.int64),
        }
    )


def _adc_transitions_lsb(n_codes: int, rng: np.random.Generator, inl_scale: float = 1.0) -> np.ndarray:
    """Code transition levels T_1..T_{N-1} in ideal-LSB units: random DNL, a bowed INL, narrow codes.

    ``inl_scale`` multiplies the bow (and gives it a random sign per column) and widens the DNL; 1 is the
    default, mild ADC (~1.5 LSB INL)."""
    widths = np.clip(1.0 + rng.normal(0.0, 0.22 * min(inl_scale, 2.5), n_codes - 2), 0.25 if inl_scale <= 1 else 0.1, None)
    narrow = rng.choice(n_codes - 2, size=max(1, n_codes // 32), replace=False)
    widths[narrow] = 0.06  # nearly missing codes
    transitions = 1.0 + np.concatenate([[0.0], np.cumsum(widths)])
    transitions *= (n_codes - 2) / (transitions[-1] - transitions[0])  # keep the full-scale span
    transitions += 1.0 - transitions[0]
    k = transitions / n_codes
    bow_lsb = rng.normal(1.2, 0.3)
    if inl_scale != 1.0:
        bow_lsb *= inl_scale * rng.choice([-1, 1])
    return transitions + 4.0 * bow_lsb * k * (1.0 - k)


def synthetic_adc(
    cols: int = 8,
    n_inputs: int = 512,
    repeats: int = 8,
    seed: int = 0,
    *,
    bits: int = 6,
    input_range_ua: tuple[float, float] = (0.0, 100.0),
    chip_id: str = "SYN0",
    inl_scale: float = 1.0,
) -> pd.DataFrame:
    """An ADC table of ``cols * n_inputs * repeats`` rows (one row per conversion).

    Each column sees the same ramp of ``n_inputs`` known inputs (µA of column current, spanning
    slightly beyond ``input_range_ua`` so both ends saturate), each converted ``repeats`` times.
    ``inl_scale`` > 1 gives every column a strong systematic transfer-curve error (bow x ``inl_scale``
    with a random sign, wider DNL), e.g. 16: ~8 LSB residual INL on a 6-bit ADC.
    """
    if cols < 1 or n_inputs < 2 or repeats < 1 or not 2 <= bits <= 12:
        raise ValueError(
            f"need cols >= 1, n_inputs >= 2, repeats >= 1 and 2 <= bits <= 12; got cols={cols}, "
            f"n_inputs={n_inputs}, repeats={repeats}, bits={bits}"
        )
    rng = np.random.default_rng(seed)
    n_codes = 2**bits
    x_min, x_max = input_range_ua
    span = x_max - x_min
    inputs = np.linspace(x_min - 0.02 * span, x_max + 0.02 * span, n_inputs)
    codes = np.empty((cols, n_inputs, repeats), dtype=np.int64)
    for c in range(cols):  # a handful of columns: each gets its own transfer curve
        transitions = _adc_transitions_lsb(n_codes, rng, inl_scale)
        gain = rng.normal(1.0, 0.03)
        offset_lsb = rng.normal(0.0, 0.8)
        u = (inputs - x_min) / span * n_codes * gain + offset_lsb  # ideal-LSB units
        sigma_lsb = 0.25 + 0.25 * np.clip(u / n_codes, 0.0, 1.0)
        u_noisy = u[:, None] + sigma_lsb[:, None] * rng.standard_normal((n_inputs, repeats))
        code = np.searchsorted(transitions, u_noisy, side="right")
        sparkle = rng.random(code.shape) < 0.004
        jump = rng.integers(2, 7, size=code.shape) * rng.choice([-1, 1], size=code.shape)
        code = np.where(sparkle, code + jump, code)
        codes[c] = np.clip(code, 0, n_codes - 1)
    shape = codes.shape
    return pd.DataFrame(
        {
            "col": np.broadcast_to(np.arange(cols)[:, None, None], shape).ravel().astype(np.int64),
            "input": np.broadcast_to(inputs[None, :, None], shape).ravel().copy(),
            "code": codes.ravel(),
            "chip_id": chip_id,
            "array": np.zeros(codes.size, dtype=np.int64),
            "repeat": np.broadcast_to(np.arange(repeats)[None, None, :], shape).ravel().astype(np.int64),
        }
    )


def _write(df: pd.DataFrame, path: Path, kind: str, metadata: dict) -> None:
    try:
        from cimcal.data import write_table
    except ImportError:  # data layer writer not available: plain pandas output
        if path.suffix == ".parquet":
            df.to_parquet(path, index=False)
        else:
            df.to_csv(path, index=False)
        return
    write_table(df, path, kind, metadata=metadata)


def write_sample_dumps(directory: str | Path, seed: int = 0) -> list[Path]:
    """Write a small fit / held-out set (Parquet and CSV) into ``directory`` and return the paths.

    Same file names and roles as the simulated chip's dumps in ``calibration_data/``.
    """
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"source": "cimcal.data.synthetic", "seed": seed, "synthetic": True}
    cond = synthetic_conductance(n_cells=16_384, levels=8, reads=2, seed=seed)
    adc = synthetic_adc(cols=8, n_inputs=256, repeats=42, seed=seed + 1)
    # Fit on half the cells / 32 repeats, keep the rest as held-out data for `cimcal validate`.
    fit_cells = (cond["row"] * 128 + cond["col"]) % 2 == 0
    fit_repeats = adc["repeat"] < 32
    files = [
        (cond[fit_cells], out / "conductance_fit.parquet", "conductance"),
        (cond[~fit_cells], out / "conductance_heldout.parquet", "conductance"),
        (adc[fit_repeats], out / "adc_fit.parquet", "adc"),
        (adc[~fit_repeats], out / "adc_heldout.csv", "adc"),
    ]
    written = []
    for df, path, kind in files:
        _write(df.reset_index(drop=True), path, kind, meta)
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m cimcal.data.synthetic",
        description="Write seeded synthetic fit / held-out dumps (conductance and ADC).",
    )
    parser.add_argument("directory", help="output directory, e.g. synthetic_data")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for path in write_sample_dumps(args.directory, seed=args.seed):
        print(f"{path}  {path.stat().st_size / 1024:.0f} KiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
