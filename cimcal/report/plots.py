"""The report's figures: measured vs profile, as PNG bytes.

Figures are built on :class:`matplotlib.figure.Figure` directly (Agg canvas, no pyplot state,
no display needed). Each function takes a fitted model plus, optionally, a measured table, and
returns a Figure; :func:`png_bytes` renders one. Only the models' public sampling API is used,
so a report shows what a layer would actually draw from the profile.
"""

from __future__ import annotations

import io
import math

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure

__all__ = [
    "png_bytes",
    "conductance_histograms",
    "conductance_qq",
    "conductance_drift",
    "adc_transfer",
    "adc_linearity",
]

MEASURED = "#1f77b4"
MODEL = "#d62728"
MAX_PANELS = 16  # levels / columns shown per figure
_N_SAMPLES = 20_000


def png_bytes(fig: Figure, dpi: int = 80) -> bytes:
    """Render ``fig`` to PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def _grid(n: int, title: str, panel_in: float = 2.6) -> tuple[Figure, list]:
    n_cols = min(4, n)
    n_rows = math.ceil(n / n_cols)
    height_in = 0.85 * panel_in * n_rows + 0.6
    fig = Figure(figsize=(panel_in * n_cols, height_in))
    # Fixed margins instead of constrained layout: several times faster to render.
    fig.subplots_adjust(left=0.25 / n_cols + 0.03, right=0.98, bottom=0.5 / height_in, top=1 - 0.62 / height_in,
                        wspace=0.35, hspace=0.55)
    axes = fig.subplots(n_rows, n_cols, squeeze=False).ravel().tolist()
    for ax in axes[n:]:
        ax.set_visible(False)
    fig.suptitle(title)
    return fig, axes[:n]


def _levels(model) -> list[int]:
    return [int(v) for v in model.levels_.tolist()][:MAX_PANELS]


def _t0(model) -> float:
    return float(model.t_s_.min())


def _measured_at(measured: pd.DataFrame | None, level: int, t_s: float) -> np.ndarray | None:
    if measured is None:
        return None
    sel = measured["level"] == level
    if "t_s" in measured.columns:
        sel &= np.isclose(measured["t_s"], t_s, rtol=1e-6, atol=1e-9)
    values = measured.loc[sel, "g_us"].to_numpy(dtype=np.float64)
    return values if values.size else None


def _level_quantiles(
    model, levels: list[int], t_s: float, probs: np.ndarray, generator: torch.Generator, n: int = 4000
) -> np.ndarray:
    """(len(levels), len(probs)) quantiles: from the inverse-CDF knots when the model has them, else sampled."""
    lvl = torch.tensor(levels, dtype=torch.long)
    if hasattr(model, "quantiles") and hasattr(model, "probs_"):
        knots = model.quantiles(lvl, t_s=t_s).double().numpy()
        knot_probs = model.probs_.double().numpy()
        return np.stack([np.interp(probs, knot_probs, row) for row in knots])
    draws = model.sample(lvl[:, None].expand(-1, n), t_s=t_s, generator=generator).double().numpy()
    return np.quantile(draws, probs, axis=1).T


def conductance_histograms(
    model, measured: pd.DataFrame | None = None, *, t_s: float | None = None, seed: int = 0
) -> Figure:
    """Per level: histogram of profile samples, with the measured reads overlaid when given."""
    gen = torch.Generator().manual_seed(seed)
    t = _t0(model) if t_s is None else float(t_s)
    levels = _levels(model)
    fig, axes = _grid(len(levels), f"conductance per level at t = {t:g} s (log counts show the tails)")
    lvl = torch.tensor(levels, dtype=torch.long)[:, None].expand(-1, _N_SAMPLES)
    draws = model.sample(lvl, t_s=t, generator=gen).double().numpy()
    for ax, level, sampled in zip(axes, levels, draws):
        meas = _measured_at(measured, level, t)
        pooled = sampled if meas is None else np.concatenate([sampled, meas])
        bins = np.linspace(pooled.min(), pooled.max(), 60)
        ax.hist(sampled, bins=bins, density=True, histtype="step", color=MODEL, label="profile")
        if meas is not None:
            ax.hist(meas, bins=bins, density=True, histtype="step", color=MEASURED, label="measured")
        ax.set_yscale("log")
        ax.set_title(f"level {level}", fontsize=9)
        ax.set_xlabel("g (µS)", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0].legend(fontsize=7)
    return fig


def conductance_qq(
    model, measured: pd.DataFrame | None = None, *, t_s: float | None = None, seed: int = 0
) -> Figure:
    """Per level: measured quantiles against profile quantiles (on the diagonal when they agree)."""
    gen = torch.Generator().manual_seed(seed + 1)
    t = _t0(model) if t_s is None else float(t_s)
    levels = _levels(model)
    fig, axes = _grid(len(levels), f"QQ: measured vs profile at t = {t:g} s")
    probs = np.linspace(0.001, 0.999, 200)
    q_models = _level_quantiles(model, levels, t, probs, gen, n=_N_SAMPLES)
    for ax, level, q_model in zip(axes, levels, q_models):
        meas = _measured_at(measured, level, t)
        if meas is None:  # without data: the profile's own quantile function
            ax.plot(probs, q_model, color=MODEL)
            ax.set_xlabel("probability", fontsize=8)
        else:
            q_meas = np.quantile(meas, probs)
            lo, hi = min(q_model.min(), q_meas.min()), max(q_model.max(), q_meas.max())
            ax.plot([lo, hi], [lo, hi], color="0.6", lw=0.8)
            ax.plot(q_model, q_meas, ".", ms=2, color=MEASURED)
            ax.set_xlabel("profile (µS)", fontsize=8)
            ax.set_ylabel("measured (µS)", fontsize=8)
        ax.set_title(f"level {level}", fontsize=9)
        ax.tick_params(labelsize=7)
    return fig


def conductance_drift(model, measured: pd.DataFrame | None = None, *, seed: int = 0) -> Figure:
    """Median and 5-95 % band of each level over time (profile interpolated between measured t_s)."""
    gen = torch.Generator().manual_seed(seed + 2)
    t_grid = model.t_s_.double()
    t_lo, t_hi = float(t_grid.min()), float(t_grid.max())
    fig = Figure(figsize=(7.5, 4.5))
    fig.subplots_adjust(left=0.09, right=0.98, bottom=0.12, top=0.92)
    ax = fig.subplots()
    if t_hi > t_lo:
        times = np.expm1(np.linspace(math.log1p(t_lo), math.log1p(t_hi), 25))
        times[0], times[-1] = t_lo, t_hi
    else:
        times = np.array([t_lo])
    levels = _levels(model)
    # (times, levels, 3): the 5 %, 50 % and 95 % quantiles
    bands = np.stack([_level_quantiles(model, levels, float(t), np.array([0.05, 0.5, 0.95]), gen) for t in times])
    for i, level in enumerate(levels):
        q = bands[:, i, :]
        colour = f"C{i % 10}"
        ax.plot(times, q[:, 1], color=colour, label=f"level {level}")
        ax.fill_between(times, q[:, 0], q[:, 2], color=colour, alpha=0.15)
        if measured is not None and "t_s" in measured.columns:
            sel = measured[measured["level"] == level]
            med = sel.groupby("t_s")["g_us"].median()
            ax.plot(med.index, med.to_numpy(), "o", color=colour, ms=4, mfc="none")
    ax.set_xscale("symlog", linthresh=max(t_lo, 1e-3) if t_lo > 0 else 1.0)
    ax.set_xlabel("time since programming t_s (s)")
    ax.set_ylabel("g (µS)")
    ax.set_title("drift: profile median and 5-95 % band; circles = measured medians")
    ax.legend(fontsize=7, ncol=2)
    return fig


def _cols(model) -> list[int]:
    return [int(c) for c in model.cols_.tolist()][:MAX_PANELS]


def adc_transfer(model, measured: pd.DataFrame | None = None, *, n_points: int = 200, seed: int = 0) -> Figure:
    """Per column: mean transfer curve with the 5-95 % code spread of profile samples; measured means as dots."""
    gen = torch.Generator().manual_seed(seed + 3)
    x_min, x_max = (float(v) for v in model.input_range_)
    x = torch.linspace(x_min, x_max, n_points)
    cols = _cols(model)
    fig, axes = _grid(len(cols), "ADC transfer per column (line: profile mean, band: 5-95 %, dots: measured mean)")
    for ax, col in zip(axes, cols):
        c = torch.full_like(x, col, dtype=torch.long)
        draws = model.sample(x[:, None].expand(-1, 200), c[:, None].expand(-1, 200), generator=gen)
        draws = draws.double().numpy()
        mean = (model.mean_code(x, c).double().numpy() if hasattr(model, "mean_code") else draws.mean(axis=1))
        lo, hi = np.quantile(draws, [0.05, 0.95], axis=1)
        if measured is not None:
            pooled = "col" not in measured.columns or len(model.cols_) == 1
            sel = measured if pooled else measured[measured["col"] == col]
            if len(sel):
                m = sel.groupby("input")["code"].mean()
                ax.plot(m.index, m.to_numpy(), ".", ms=2, color=MEASURED, alpha=0.5, zorder=1)
        ax.fill_between(x.numpy(), lo, hi, color=MODEL, alpha=0.25, lw=0, zorder=2)
        ax.plot(x.numpy(), mean, color=MODEL, lw=0.8, zorder=3)
        ax.set_title(f"column {col}", fontsize=9)
        ax.set_xlabel("input", fontsize=8)
        ax.set_ylabel("code", fontsize=8)
        ax.tick_params(labelsize=7)
    return fig


def adc_linearity(model) -> Figure | None:
    """INL and DNL (LSB) per column from the profile's code transition levels; None if not available."""
    inl = getattr(model, "inl_lsb_", None)
    dnl = getattr(model, "dnl_lsb_", None)
    if inl is None or dnl is None:
        return None
    inl, dnl = torch.as_tensor(inl).double().numpy(), torch.as_tensor(dnl).double().numpy()
    fig = Figure(figsize=(9, 3.6))
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.14, top=0.9, wspace=0.2)
    ax_dnl, ax_inl = fig.subplots(1, 2)
    codes = np.arange(inl.shape[-1])
    for i, col in enumerate(_cols(model)):
        ax_dnl.plot(codes, dnl[i], lw=0.8, color=f"C{i % 10}", label=f"col {col}")
        ax_inl.plot(codes, inl[i], lw=0.8, color=f"C{i % 10}")
    ax_dnl.set_title("DNL (LSB); -1 = missing code")
    ax_inl.set_title("INL (LSB)")
    for ax in (ax_dnl, ax_inl):
        ax.set_xlabel("code")
        ax.axhline(0.0, color="0.6", lw=0.6)
    ax_dnl.legend(fontsize=6, ncol=2)
    return fig
