"""The validation statistics themselves, pinned with reference models (no noise-package fit involved).

A bootstrap of the fit data is the ideal non-parametric model: validation must accept it. The
Gaussian baseline misses stuck cells, skew, drift shape and ADC non-linearity: validation must
reject it. Fixed seeds throughout.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from reference_models import (
    BootstrapADC,
    BootstrapConductance,
    GaussianADC,
    GaussianConductance,
    ReferenceProfile,
    split_adc,
    split_conductance,
)
from scipy import stats

from cimcal.data.synthetic import synthetic_adc, synthetic_conductance
from cimcal.errors import ConfigError, DataError
from cimcal.noise.validation import ValidationResult, randomized_pit, validate_adc, validate_conductance


@pytest.fixture(scope="module")
def conductance_split():
    return split_conductance(synthetic_conductance(n_cells=8000, levels=8, reads=2, seed=11))


@pytest.fixture(scope="module")
def adc_split():
    return split_adc(synthetic_adc(cols=4, n_inputs=256, repeats=74, seed=12), fit_repeats=64)


@pytest.fixture(scope="module")
def conductance_results(conductance_split):
    fit, held = conductance_split
    good = validate_conductance(BootstrapConductance().fit(fit), held, seed=0)
    bad = validate_conductance(GaussianConductance().fit(fit), held, seed=0)
    return good, bad


def test_randomized_pit_is_exactly_uniform_for_discrete_draws():
    rng = np.random.default_rng(0)
    probs = np.array([0.05, 0.6, 0.3, 0.05])  # few codes: ties everywhere
    codes = rng.choice(4, size=20_000, p=probs)
    draws = rng.choice(4, size=(20_000, 15), p=probs)
    pit = randomized_pit(codes, draws, rng)
    assert stats.kstest(pit, "uniform").statistic < 0.012
    shifted = np.minimum(codes + 1, 3)  # the model is one code too low
    assert stats.kstest(randomized_pit(shifted, draws, rng), "uniform").statistic > 0.2


def test_bootstrap_conductance_passes_and_gaussian_fails(conductance_results):
    good, bad = conductance_results
    assert good.conductance_pit_ks <= 0.04
    assert good.reject_fraction <= 0.10
    assert good.tail_difference <= 0.005
    assert bad.conductance_pit_ks > 0.04
    assert bad.reject_fraction > 0.10
    assert bad.tail_difference > 0.005
    assert len(good.conductance) == 8 * 4  # one group per (level, t_s)
    assert {g.n_cells for g in good.conductance} == {g.n_reads // 2 for g in good.conductance}


def test_bootstrap_adc_passes_and_gaussian_fails(adc_split):
    fit, held = adc_split
    good = validate_adc(BootstrapADC().fit(fit), held, seed=0)
    bad = validate_adc(GaussianADC().fit(fit), held, seed=0)
    assert len(held) == 4 * 256 * 10
    assert good.adc_pit_ks <= 0.015
    assert bad.adc_pit_ks > 0.015
    assert max(c.tv for c in good.adc) < min(c.tv for c in bad.adc)


def test_validation_is_reproducible_for_a_seed(conductance_split):
    fit, held = conductance_split
    model = GaussianConductance().fit(fit)
    held = held[held["level"] < 2]
    a = validate_conductance(model, held, seed=3).to_dict()
    b = validate_conductance(model, held, seed=3).to_dict()
    assert a == b


def test_to_dict_is_json_and_thresholds_decide(conductance_results, adc_split):
    cond = conductance_results[1]
    adc = validate_adc(BootstrapADC().fit(adc_split[0]), adc_split[1], seed=0)
    result = ValidationResult(
        conductance=cond.conductance, conductance_pit_ks=cond.conductance_pit_ks,
        conductance_pit_pvalue=cond.conductance_pit_pvalue, low_tail_measured=cond.low_tail_measured,
        low_tail_model=cond.low_tail_model, high_tail_measured=cond.high_tail_measured,
        high_tail_model=cond.high_tail_model, adc=adc.adc, adc_pit_ks=adc.adc_pit_ks,
        adc_pit_pvalue=adc.adc_pit_pvalue, adc_tv=adc.adc_tv,
    )
    doc = json.loads(json.dumps(result.to_dict()))
    assert set(doc) == {"alpha", "seed", "conductance", "adc"}
    assert len(doc["conductance"]["groups"]) == 32 and len(doc["adc"]["columns"]) == 4
    assert set(doc["adc"]["columns"][0]) == {"col", "n_conversions", "tv", "pit_ks", "pit_pvalue"}
    assert not result.passed(max_ks=0.1)  # the Gaussian conductance fails
    assert result.passed(max_ks=1.0, max_tv=1.0)
    assert result.passed(max_ks=None, max_tv=0.2)  # ADC TV of the bootstrap is small
    assert any("conductance level" in line for line in result.failures(max_ks=0.1))
    table = result.format_table()
    assert "pooled PIT KS" in table and "ADC" in table


def test_unknown_level_and_time_outside_range_are_named(conductance_split):
    fit, held = conductance_split
    model = BootstrapConductance().fit(fit[fit["level"] < 7])
    with pytest.raises(DataError, match="column 'level'.*level 7 is not in the profile"):
        validate_conductance(model, held, source="held.csv")
    late = held.assign(t_s=held["t_s"] * 10)
    with pytest.raises(DataError, match="held.csv, column 't_s'.*outside the profile's measured range"):
        validate_conductance(BootstrapConductance().fit(fit), late, source="held.csv")


def test_adc_unknown_column_and_code_range_are_named(adc_split):
    fit, held = adc_split
    model = BootstrapADC().fit(fit[fit["col"] < 3])
    with pytest.raises(DataError, match="column 'col'.*ADC column 3 is not in the profile"):
        validate_adc(model, held)
    with pytest.raises(DataError, match="column 'code'"):
        validate_adc(BootstrapADC().fit(fit), held.assign(code=held["code"] + 64))
    with pytest.raises(ConfigError, match="draws must be >= 1"):
        validate_adc(model, held, draws=0)


def test_validate_profile_needs_data_and_matching_models():
    from cimcal.noise.validation import validate_profile

    with pytest.raises(ConfigError, match="nothing to validate"):
        validate_profile(ReferenceProfile())
    with pytest.raises(ConfigError, match="no ADC model"):
        validate_profile(ReferenceProfile(), adc=pd.DataFrame({"input": [0.0], "code": [0]}))


def test_pooled_adc_model_validates_columns_as_one():
    df = synthetic_adc(cols=2, n_inputs=64, repeats=40, seed=5)
    fit, held = split_adc(df.assign(col=0), fit_repeats=32)
    model = BootstrapADC().fit(fit.drop(columns="col"))
    result = validate_adc(model, held.drop(columns="col"), seed=1)
    assert [c.col for c in result.adc] == [0]
    assert result.adc[0].n_conversions == len(held)
    assert torch.equal(model.cols_, torch.tensor([0]))


def test_single_column_adc_profile_is_per_column_not_pooled():
    from cimcal.noise import ADCLUT

    df = synthetic_adc(cols=3, n_inputs=64, repeats=12, seed=6)
    fit, held = split_adc(df, fit_repeats=8)
    only_col2 = ADCLUT().fit(fit[fit["col"] == 2])
    assert validate_adc(only_col2, held[held["col"] == 2], seed=0).adc[0].col == 2
    with pytest.raises(DataError, match="held.csv, column 'col'.*ADC column 0 is not in the profile"):
        validate_adc(only_col2, held[held["col"] == 0], source="held.csv")
    per_column = ADCLUT().fit(fit)
    with pytest.raises(DataError, match=r"held.csv: .*no 'col' column.*per column \(columns \[0, 1, 2\]\)"):
        validate_adc(per_column, held.drop(columns="col"), source="held.csv")
    pooled = ADCLUT().fit(fit.drop(columns="col"))
    assert [c.col for c in validate_adc(pooled, held, seed=0).adc] == [int(pooled.cols_[0])]


def test_per_read_timestamps_group_into_the_fitted_time_points(conductance_split):
    # held-out reads within 0.1 in log1p(t_s) of a profile time point are compared at that point
    fit, held = conductance_split
    model = BootstrapConductance().fit(fit)
    rng = np.random.default_rng(0)
    held = held[held["level"] < 2]
    times = sorted(held["t_s"].unique().tolist())
    jittered = held.assign(t_s=held["t_s"] * (1.0 + rng.uniform(-0.002, 0.002, len(held))))
    result = validate_conductance(model, jittered, seed=0)
    assert len(result.conductance) == 2 * len(times)
    assert [g.t_s for g in result.conductance[:len(times)]] == times


def test_readings_quantized_to_a_tenth_of_a_micro_siemens_tie_with_the_float32_profile():
    # 0.1 µS steps are not float32 values: the held-out float64 readings must be compared at the
    # profile's float32 resolution, else no reading ever ties with a profile atom.
    from cimcal.noise import ConductanceLUT

    rng = np.random.default_rng(3)
    n = 8000
    level = rng.integers(0, 4, n)
    g_us = np.round((10.0 + 5.0 * level + rng.normal(0.0, 0.1, n)) / 0.1) * 0.1
    df = pd.DataFrame({"row": np.arange(n) // 128, "col": np.arange(n) % 128, "level": level, "g_us": g_us})
    fit, held = df.iloc[: n // 2], df.iloc[n // 2:]
    result = validate_conductance(ConductanceLUT().fit(fit), held, seed=0)
    assert result.conductance_pit_ks <= 0.03
    assert all(g.pit_ks <= 0.06 for g in result.conductance)


def test_passed_applies_the_default_thresholds_unless_told_otherwise():
    """The demo and library callers that ask ``passed()`` get cimcal validate's thresholds, not a vacuous check."""
    from cimcal.noise.validation import DEFAULT_MAX_TV, ADCColumnCheck, ValidationResult

    column = ADCColumnCheck(col=3, n_conversions=1024, tv=DEFAULT_MAX_TV + 0.05, pit_ks=0.01, pit_pvalue=0.5)
    result = ValidationResult(adc=[column], adc_pit_ks=0.01, adc_pit_pvalue=0.5, adc_tv=0.02)
    assert not result.passed() and result.failures() == [f"ADC column 3: TV {column.tv:.4f} > {DEFAULT_MAX_TV:g}"]
    assert result.passed(max_tv=None) and result.passed(max_tv=0.2)
