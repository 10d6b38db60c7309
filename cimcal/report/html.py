"""Render the report as one self-contained HTML page.

Everything is inline: CSS in a ``<style>`` block, figures as base64 ``data:image/png`` URIs, no
scripts, no external assets, so the file can be mailed or archived as is.
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["EmbeddedFigure", "render_html", "validation_table_html"]

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; border-bottom: 1px solid #ccc; margin-top: 2em; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0; }
th, td { border: 1px solid #ddd; padding: 2px 6px; text-align: right; }
th { background: #f3f3f3; } td.bad { background: #fdd; } td.good { background: #dfd; }
img { max-width: 100%; } pre { background: #f7f7f7; padding: 0.8em; overflow-x: auto; font-size: 0.8em; }
.caption { color: #555; font-size: 0.9em; }
"""


@dataclass(frozen=True)
class EmbeddedFigure:
    """One embedded figure: a section title, its PNG bytes and a caption."""

    title: str
    png: bytes
    caption: str = ""


def _img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _cell(value: Any, bad: bool | None = None) -> str:
    if isinstance(value, float):
        text = f"{value:.4g}"
    else:
        text = html.escape(str(value))
    cls = "" if bad is None else (' class="bad"' if bad else ' class="good"')
    return f"<td{cls}>{text}</td>"


def validation_table_html(
    result: Mapping[str, Any], max_ks: float | None = None, max_tv: float | None = None
) -> str:
    """HTML tables of a ``ValidationResult.to_dict()``; cells above a threshold are marked."""
    parts = []
    cond = result.get("conductance")
    if cond:
        parts.append(
            f"<p>Conductance: pooled PIT KS <b>{cond['pit_ks']:.4f}</b> (p = {cond['pit_pvalue']:.3g}); "
            f"groups whose two-sample KS rejects at {result['alpha']:g}: <b>{cond['reject_fraction']:.1%}</b>; "
            f"tail fractions low {100 * cond['low_tail_measured']:.2f} % / {100 * cond['low_tail_model']:.2f} %, "
            f"high {100 * cond['high_tail_measured']:.2f} % / {100 * cond['high_tail_model']:.2f} % "
            "(measured / profile).</p>"
        )
        head = ["level", "t_s (s)", "cells", "reads", "KS", "p", "PIT KS", "low tail meas", "low tail model",
                "high tail meas", "high tail model"]
        rows = []
        for g in cond["groups"]:
            rows.append(
                "<tr>"
                + _cell(g["level"])
                + _cell(g["t_s"])
                + _cell(g["n_cells"])
                + _cell(g["n_reads"])
                + _cell(g["ks"], None if max_ks is None else g["ks"] > max_ks)
                + _cell(g["ks_pvalue"], g["ks_pvalue"] < result["alpha"])
                + _cell(g["pit_ks"])
                + "".join(_cell(g[k]) for k in ("low_tail_measured", "low_tail_model", "high_tail_measured",
                                                 "high_tail_model"))
                + "</tr>"
            )
        parts.append(_table(head, rows))
    adc = result.get("adc")
    if adc:
        parts.append(
            f"<p>ADC: pooled randomized-PIT KS <b>{adc['pit_ks']:.4f}</b> (p = {adc['pit_pvalue']:.3g}); "
            f"pooled code-histogram TV <b>{adc['tv']:.4f}</b>.</p>"
        )
        rows = [
            "<tr>"
            + _cell(c["col"])
            + _cell(c["n_conversions"])
            + _cell(c["tv"], None if max_tv is None else c["tv"] > max_tv)
            + _cell(c["pit_ks"], None if max_ks is None else c["pit_ks"] > max_ks)
            + _cell(c["pit_pvalue"])
            + "</tr>"
            for c in adc["columns"]
        ]
        parts.append(_table(["column", "conversions", "TV", "PIT KS", "p"], rows))
    return "\n".join(parts) or "<p>No held-out data given: nothing validated.</p>"


def _table(head: Sequence[str], rows: Sequence[str]) -> str:
    ths = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    return f"<table><thead><tr>{ths}</tr></thead><tbody>\n" + "\n".join(rows) + "\n</tbody></table>"


def render_html(
    title: str,
    summary: Mapping[str, Any],
    figures: Sequence[EmbeddedFigure],
    validation_html: str,
    provenance: Mapping[str, Any],
    preface_html: str = "",
) -> str:
    """The whole page: summary, ``preface_html`` (trusted HTML, e.g. a demo's results), validation
    tables, figures, provenance (as JSON)."""
    items = "".join(
        f"<tr><th>{html.escape(str(k))}</th><td style='text-align:left'>{html.escape(str(v))}</td></tr>"
        for k, v in summary.items()
    )
    body = [
        f"<h1>{html.escape(title)}</h1>",
        f"<table>{items}</table>",
        preface_html,
        "<h2>Validation against held-out measurements</h2>",
        validation_html,
    ]
    for fig in figures:
        body.append(f"<h2>{html.escape(fig.title)}</h2>")
        body.append(_img(fig.png, fig.title))
        if fig.caption:
            body.append(f'<p class="caption">{html.escape(fig.caption)}</p>')
    body.append("<h2>Provenance</h2>")
    body.append(f"<pre>{html.escape(json.dumps(provenance, indent=2, sort_keys=True, default=str))}</pre>")
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )
