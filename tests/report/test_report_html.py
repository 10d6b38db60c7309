"""The HTML report: one self-contained file, embedded PNG figures, the validation table, provenance."""

from __future__ import annotations

import base64
import re

import pytest

from cimcal import fit_profile
from cimcal.data.synthetic import synthetic_adc, synthetic_conductance
from cimcal.report import build_report, write_report
from cimcal.report.html import validation_table_html

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def dumps():
    cond = synthetic_conductance(n_cells=2048, levels=4, reads=2, t_s=(1.0, 100.0), seed=31)
    adc = synthetic_adc(cols=2, n_inputs=128, repeats=12, seed=32)
    cell = cond["row"] * 128 + cond["col"]
    return cond[cell % 2 == 0], cond[cell % 2 == 1], adc[adc["repeat"] < 8], adc[adc["repeat"] >= 8]


@pytest.fixture(scope="module")
def profile(dumps):
    cond_fit, _, adc_fit, _ = dumps
    return fit_profile(conductance=cond_fit, adc=adc_fit)


def _images(page: str) -> list[bytes]:
    return [base64.b64decode(b) for b in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)]


def test_report_is_one_self_contained_page_with_embedded_pngs(profile, dumps, tmp_path):
    _, cond_held, _, adc_held = dumps
    path = write_report(profile, tmp_path / "out" / "report.html", conductance=cond_held, adc=adc_held,
                        max_ks=0.2, max_tv=0.2)
    assert [p.name for p in path.parent.iterdir()] == ["report.html"]
    page = path.read_text(encoding="utf-8")
    images = _images(page)
    # histograms, QQ, drift, ADC transfer, INL/DNL
    assert len(images) == 5
    assert all(img.startswith(PNG_MAGIC) and len(img) > 2000 for img in images)
    assert not re.search(r'(src|href)="(?!data:)', page)  # no external assets, no links to files
    assert "<script" not in page
    for heading in ("Validation against held-out measurements", "QQ plots per level", "Drift over time",
                    "ADC transfer curve per column", "INL and DNL", "Provenance"):
        assert heading in page
    assert "pooled PIT KS" in page and "pooled randomized-PIT KS" in page
    assert page.count("<tr>") >= 4 * 2 + 2  # one row per (level, t_s) and per column
    assert profile.provenance["cimcal_version"] in page


def test_conductance_only_report_without_held_out_data(dumps):
    page = build_report(fit_profile(conductance=dumps[0]), title="chip A", preface_html="<h2>Results</h2>")
    assert "<title>chip A</title>" in page
    assert page.index("<h2>Results</h2>") < page.index("<h2>Validation against held-out measurements</h2>")
    assert "No held-out data given" in page
    assert "ADC transfer" not in page and len(_images(page)) == 3


def test_validation_table_marks_values_above_thresholds():
    doc = {
        "alpha": 0.01,
        "adc": {"pit_ks": 0.02, "pit_pvalue": 0.1, "tv": 0.05, "columns": [
            {"col": 0, "n_conversions": 10, "tv": 0.3, "pit_ks": 0.01, "pit_pvalue": 0.5}]},
    }
    html = validation_table_html(doc, max_ks=0.1, max_tv=0.1)
    assert '<td class="bad">0.3</td>' in html and '<td class="good">0.01</td>' in html
