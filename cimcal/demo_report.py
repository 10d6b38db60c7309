"""The demo's ``report.html``: the profile report (cimcal.report) with the results table and plots on top."""

from __future__ import annotations

import html
import os
from pathlib import Path
from typing import Any

__all__ = ["results_figure", "results_html", "write_demo_report"]


def results_figure(rows: list[Any]) -> Any:
    """Predicted (mean +- std over chip instances, and from the programmed cells) vs on-chip accuracy per method,
    and the gaps."""
    from matplotlib.figure import Figure

    from cimcal.demo import METHOD_LABELS

    labels = [METHOD_LABELS.get(r.method, r.method) for r in rows]
    x = range(len(rows))
    fig = Figure(figsize=(9, 3.4))
    left, right = fig.subplots(1, 2)
    left.bar([i - 0.2 for i in x], [100 * r.predicted for r in rows], 0.4, yerr=[100 * r.predicted_std for r in rows],
             label="predicted (Monte Carlo)", color="#8fb3d9", capsize=3)
    left.bar([i + 0.2 for i in x], [100 * r.on_chip for r in rows], 0.4, label="on chip", color="#d98f8f")
    left.plot([i for i in x], [100 * r.noise_free for r in rows], "k_", markersize=18, label="noise-free")
    cells = [(i, 100 * r.predicted_cells) for i, r in zip(x, rows) if r.predicted_cells is not None]
    if cells:
        left.plot([i + 0.2 for i, _ in cells], [v for _, v in cells], "D", color="#444444", markersize=4,
                  label="predicted from the programmed cells")
    low = min(min(100 * r.on_chip, 100 * (r.predicted - r.predicted_std),
                  100 * (r.on_chip if r.predicted_cells is None else r.predicted_cells)) for r in rows)
    left.set_ylim(max(0.0, low - 5.0), 100.0)
    left.set_xticks(list(x), labels)
    left.set_ylabel("test accuracy (%)")
    left.legend(fontsize=7, loc="lower right")
    right.bar(list(x), [100 * r.gap for r in rows], color="#999999", label="on chip - predicted (Monte Carlo)")
    cell_gaps = [(i, 100 * (r.on_chip - r.predicted_cells)) for i, r in zip(x, rows) if r.predicted_cells is not None]
    if cell_gaps:
        right.plot([i for i, _ in cell_gaps], [v for _, v in cell_gaps], "D", color="#444444", markersize=4,
                   label="on chip - predicted from the programmed cells")
    right.axhspan(-1.5, 1.5, color="#cfe8cf", zorder=0, label="within 1.5 points")
    right.axhline(0.0, color="k", linewidth=0.8)
    right.set_xticks(list(x), labels)
    right.set_ylabel("gap (points)")
    right.legend(fontsize=7)
    fig.tight_layout()
    return fig


def results_html(result: Any, table_text: str) -> str:
    """The results section: the table, the plot, what the deployment could not realise exactly."""
    import base64

    from cimcal.demo import METHOD_LABELS
    from cimcal.report.plots import png_bytes

    head = ["method", "predicted accuracy (%)", "on-chip accuracy (%)", "gap (points)",
            "chip rank among simulated instances (%)", "predicted from the programmed cells (%)", "noise-free (%)",
            "training time (s)", "peak memory (MiB)"]
    body = []
    for r in result.rows:
        label = METHOD_LABELS.get(r.method, r.method) + (" (fine-tuned from clean)" if r.init else "")
        cells = [label, f"{100 * r.predicted:.2f} ± {100 * r.predicted_std:.2f}",
                 f"{100 * r.on_chip:.2f}", f"{100 * r.gap:+.2f}",
                 "-" if r.on_chip_rank is None else f"{100 * r.on_chip_rank:.0f}",
                 "-" if r.predicted_cells is None else f"{100 * r.predicted_cells:.2f}", f"{100 * r.noise_free:.2f}",
                 f"{r.train_s:.1f}", f"{r.peak_mib:.1f}"]
        body.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    table = ("<table><thead><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr></thead><tbody>"
             + "".join(body) + "</tbody></table>")
    png = base64.b64encode(png_bytes(results_figure(result.rows))).decode("ascii")
    stages = "".join(f"<tr><th>{html.escape(k)}</th><td>{v:.1f} s</td></tr>" for k, v in result.stage_s.items())
    deviations = "".join(f"<li>{html.escape(d)}</li>" for d in result.deviations) or "<li>none</li>"
    return (
        "<h2>Results: predicted vs on-chip accuracy (digits)</h2>\n" + table
        + f'\n<img alt="results" src="data:image/png;base64,{png}">\n'
        + "<p class=\"caption\">Predicted: Monte-Carlo evaluation over chip instances sampled from the profile. "
          "On chip: the test split with every matrix-vector product on the (simulated) chip through VISA. "
          "Predicted from the programmed cells: the same simulation on the conductances this deployment programmed "
          "and read back, with only read and ADC noise drawn from the profile: where it meets the on-chip figure, "
          "the gap to the Monte-Carlo prediction is this chip's draw of programming error and stuck cells.</p>\n"
        + f"<h3>Stage timings</h3><table>{stages}</table>\n"
        + f"<h3>Where deployment differs from the model</h3><ul>{deviations}</ul>\n"
        + f"<pre>{html.escape(table_text)}</pre>\n"
    )


def write_demo_report(path: str | os.PathLike, profile: Any, result: Any, table_text: str, *,
                      conductance: Any = None, adc: Any = None) -> Path:
    """Write the profile report (validated on the held-out tables) with the results section first."""
    from cimcal.report.build import build_report

    page = build_report(profile, conductance, adc)
    section = results_html(result, table_text)
    marker = "<h2>Validation against held-out measurements</h2>"
    page = page.replace(marker, section + marker, 1) if marker in page else page.replace("</body>", section + "</body>")
    page = page.replace("<title>cimcal chip profile report</title>", "<title>cimcal demo report</title>", 1)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    return out
