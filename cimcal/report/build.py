"""Assemble the report of a chip profile: read held-out tables, validate, draw, render.

This is what ``cimcal report`` calls; everything it does is reachable from Python.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from cimcal.report import plots
from cimcal.report.html import EmbeddedFigure, render_html, validation_table_html

__all__ = ["build_report", "write_report"]

MAX_PLOT_ROWS = 500_000  # measured rows drawn in plots (a seeded subsample beyond this)


def _read(sources: Any, kind: str, column_map: Mapping[str, str] | None) -> pd.DataFrame | None:
    if sources is None:
        return None
    from cimcal.data import read_table

    return read_table(sources, kind, column_map=dict(column_map) if column_map else None)


def _for_plots(table: pd.DataFrame | None) -> pd.DataFrame | None:
    if table is None or len(table) <= MAX_PLOT_ROWS:
        return table
    return table.sample(MAX_PLOT_ROWS, random_state=0)


def _summary(profile: Any, profile_path: str | os.PathLike | None) -> dict[str, Any]:
    prov = getattr(profile, "provenance", {}) or {}
    out: dict[str, Any] = {}
    if profile_path is not None:
        out["profile"] = str(profile_path)
    sha = getattr(profile, "sha256", None)
    if sha:
        out["sha256"] = sha
    for key in ("created", "cimcal_version", "chip_ids"):
        if key in prov:
            out[key] = prov[key]
    if profile.conductance is not None:
        c = profile.conductance
        out["conductance"] = (
            f"{len(c.levels_)} levels, {len(c.t_s_)} time points "
            f"({float(c.t_s_.min()):g}..{float(c.t_s_.max()):g} s)"
        )
    if profile.adc is not None:
        a = profile.adc
        out["ADC"] = f"{len(a.cols_)} column(s), {int(a.n_codes_)} codes, input range {tuple(a.input_range_)}"
    return out


def build_report(
    profile: Any,
    conductance: Any = None,
    adc: Any = None,
    *,
    column_map: Mapping[str, str] | None = None,
    seed: int = 0,
    max_ks: float | None = None,
    max_tv: float | None = None,
    profile_path: str | os.PathLike | None = None,
    title: str = "cimcal chip profile report",
    preface_html: str = "",
) -> str:
    """The report of ``profile`` as one HTML string; held-out tables (optional) add overlays and validation.

    ``preface_html`` (trusted HTML) goes between the summary and the validation section.
    """
    from cimcal.noise.validation import validate_profile

    cond_table = _read(conductance, "conductance", column_map)
    adc_table = _read(adc, "adc", column_map)
    validation = None
    if cond_table is not None or adc_table is not None:  # read once: validate the canonical tables
        validation = validate_profile(profile, cond_table, adc_table, seed=seed)
    cond_table, adc_table = _for_plots(cond_table), _for_plots(adc_table)

    figures = []
    if profile.conductance is not None:
        model = profile.conductance
        figures += [
            EmbeddedFigure("Conductance per level: measured vs sampled",
                   plots.png_bytes(plots.conductance_histograms(model, cond_table, seed=seed)),
                   "Histograms of profile samples (red) and measured reads (blue) at the earliest time point; "
                   "log density scale so stuck and outlier cells show."),
            EmbeddedFigure("QQ plots per level",
                   plots.png_bytes(plots.conductance_qq(model, cond_table, seed=seed)),
                   "Measured quantiles against profile quantiles; points on the diagonal agree."),
            EmbeddedFigure("Drift over time",
                   plots.png_bytes(plots.conductance_drift(model, cond_table, seed=seed)),
                   "Profile median and 5-95 % band per level, interpolated in log(1 + t) between measured "
                   "time points."),
        ]
    if profile.adc is not None:
        figures.append(
            EmbeddedFigure("ADC transfer curve per column",
                   plots.png_bytes(plots.adc_transfer(profile.adc, adc_table, seed=seed)),
                   "Mean code of the profile (line) with the 5-95 % spread of its samples (band); measured "
                   "mean codes as dots.")
        )
        linearity = plots.adc_linearity(profile.adc)
        if linearity is not None:
            figures.append(EmbeddedFigure("INL and DNL", plots.png_bytes(linearity),
                                  "From code transition levels (IEEE 1241 style)."))
    validation_html = (
        validation_table_html(validation.to_dict(), max_ks, max_tv) if validation is not None
        else "<p>No held-out data given: pass --conductance / --adc to validate.</p>"
    )
    return render_html(
        title,
        _summary(profile, profile_path),
        figures,
        validation_html,
        getattr(profile, "provenance", {}) or {},
        preface_html=preface_html,
    )


def write_report(
    profile: Any,
    path: str | os.PathLike,
    conductance: Any = None,
    adc: Any = None,
    **options: Any,
) -> Path:
    """Write :func:`build_report` to ``path`` (one self-contained HTML file) and return the path."""
    out = Path(path)
    page = build_report(profile, conductance, adc, **options)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    return out
