"""The synthetic dump generator behind the fidelity tests has the features it claims, deterministically."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from cimcal.data import read_table
from cimcal.data.synthetic import main, synthetic_adc, synthetic_conductance, write_sample_dumps


@pytest.fixture(scope="module")
def cond():
    return synthetic_conductance(n_cells=8000, levels=8, reads=3, seed=7)


def test_same_seed_same_table_other_seed_other_table():
    a = synthetic_conductance(n_cells=256, seed=3)
    pd.testing.assert_frame_equal(a, synthetic_conductance(n_cells=256, seed=3))
    assert not a["g_us"].equals(synthetic_conductance(n_cells=256, seed=4)["g_us"])
    pd.testing.assert_frame_equal(synthetic_adc(cols=2, n_inputs=16, repeats=2, seed=1),
                                  synthetic_adc(cols=2, n_inputs=16, repeats=2, seed=1))


def test_conductance_has_stuck_cells_skew_drift_and_repeated_reads(cond):
    assert len(cond) == 8000 * 4 * 3
    assert sorted(cond["read_idx"].unique()) == [0, 1, 2]
    first = cond[(cond["t_s"] == 1.0) & (cond["read_idx"] == 0)]
    stuck_off = (first["g_us"] < 0.6).mean()
    stuck_on = (first[first["level"] < 7]["g_us"] > 44.0).mean()  # the top level's tail reaches 44 µS
    assert 0.010 < stuck_off < 0.020 and 0.006 < stuck_on < 0.014
    body = first[(first["level"] == 4) & first["g_us"].between(10.0, 40.0)]["g_us"]
    assert stats.skew(body) > 0.3  # right-skewed programming error
    median = cond[cond["level"] == 7].groupby("t_s")["g_us"].median()
    assert median.is_monotonic_decreasing and 0.65 < median[1000.0] / median[1.0] < 0.85  # power-law drift


def test_adc_has_non_uniform_codes_and_repeats():
    adc = synthetic_adc(cols=3, n_inputs=512, repeats=4, seed=2)
    assert len(adc) == 3 * 512 * 4 and adc["code"].between(0, 63).all()
    for _, column in adc.groupby("col"):
        counts = np.bincount(column["code"], minlength=64)[1:-1]  # end codes saturate
        assert counts.std() / counts.mean() > 0.2  # a uniform ADC would be near 0.06 here
        assert counts.min() < 0.3 * counts.mean()  # nearly missing codes
    per_input = adc.groupby(["col", "input"])["code"].nunique()
    assert (per_input > 1).mean() > 0.3  # noise: repeats disagree


def test_sample_dumps_are_readable_tables(tmp_path, capsys):
    assert main([str(tmp_path / "dumps")]) == 0
    assert "conductance_fit.parquet" in capsys.readouterr().out
    paths = {p.name: p for p in write_sample_dumps(tmp_path / "again", seed=0)}
    assert set(paths) == {"conductance_fit.parquet", "conductance_heldout.parquet", "adc_fit.parquet",
                          "adc_heldout.csv"}
    fit = read_table(paths["conductance_fit.parquet"], "conductance")
    held = read_table(paths["conductance_heldout.parquet"], "conductance")
    assert len(fit) == len(held) and not set(zip(fit["row"], fit["col"])) & set(zip(held["row"], held["col"]))
    adc_held = read_table(paths["adc_heldout.csv"], "adc")
    assert adc_held["repeat"].min() == 32 and len(adc_held) == 8 * 256 * 10
    assert sum(p.stat().st_size for p in paths.values()) < 3_000_000
