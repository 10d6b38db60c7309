"""calibration_data/ holds dumps measured from the simulated chip through the driver; fit works on them."""

from __future__ import annotations

from pathlib import Path

import pytest

from cimcal.cli import main
from cimcal.data import read_metadata, read_table

DATA = Path(__file__).resolve().parents[2] / "calibration_data"
FILES = [("conductance_fit.parquet", "conductance"), ("conductance_heldout.parquet", "conductance"),
         ("adc_fit.parquet", "adc"), ("adc_heldout.csv", "adc")]


@pytest.mark.parametrize("name, kind", FILES)
def test_sample_dumps_are_valid_tables(name, kind):
    table = read_table(DATA / name, kind)
    assert len(table) > 10_000
    if name.endswith(".parquet"):
        meta = read_metadata(DATA / name)
        assert meta["instrument_idn"].startswith("CIMCAL,SIMCHIP-RRAM,0")
        assert "sample_dumps" in meta["source"]


def test_heldout_cells_differ_from_fit_cells():
    fit = read_table(DATA / "conductance_fit.parquet", "conductance")
    held = read_table(DATA / "conductance_heldout.parquet", "conductance")
    assert set(zip(fit["row"], fit["col"])).isdisjoint(zip(held["row"], held["col"]))


@pytest.mark.slow
def test_fit_on_the_sample_dumps_validates_on_the_heldout_ones(tmp_path):
    profile = tmp_path / "chip.cimprof"
    assert main(["fit", "--conductance", str(DATA / "conductance_fit.parquet"),
                 "--adc", str(DATA / "adc_fit.parquet"), "-o", str(profile)]) == 0
    assert main(["validate", str(profile), "--conductance", str(DATA / "conductance_heldout.parquet"),
                 "--adc", str(DATA / "adc_heldout.csv")]) == 0
