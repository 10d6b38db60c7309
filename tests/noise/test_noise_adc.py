"""ADCLUT: derived IEEE 1241 figures on a synthetic ADC, sampling, saturation, pooling."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from noise_tables import ideal_thresholds, make_adc

from cimcal.errors import ConfigError
from cimcal.noise import ADCLUT

N_CODES = 64
GAIN = 0.03
OFFSET_LSB = 0.6
SIGMA_LSB = 0.4


def _dnl_pattern() -> np.ndarray:
    # zero-mean code-width errors so the best-fit line is the true gain/offset line;
    # code 30 is missing (width 0), its neighbour is wide.
    dnl = 0.15 * np.where(np.arange(N_CODES) % 2 == 0, 1.0, -1.0)
    dnl[30], dnl[31] = -1.0, 1.0
    dnl[0] = dnl[-1] = 0.0
    return dnl


@pytest.fixture(scope="module")
def adc_model() -> ADCLUT:
    table = make_adc(N_CODES, GAIN, OFFSET_LSB, SIGMA_LSB, dnl=_dnl_pattern())
    return ADCLUT(ideal_range=(0.0, float(N_CODES))).fit(table)


def _true_line() -> tuple[float, float, np.ndarray]:
    """IEEE 1241 independent-line gain error, offset (LSB) and DNL of the true transition levels."""
    t = ideal_thresholds(N_CODES, GAIN, OFFSET_LSB, _dnl_pattern())
    k = np.arange(1, N_CODES)
    slope, intercept = np.polyfit(k, t[1:], 1)
    dnl = np.full(N_CODES, np.nan)
    dnl[1:-1] = np.diff(t[1:]) / slope - 1.0
    return 1.0 / slope - 1.0, -intercept / slope, dnl


def test_derived_gain_offset_noise_and_dnl_match_the_synthetic_adc(adc_model):
    gain, offset, true = _true_line()
    assert gain == pytest.approx(GAIN, abs=0.002) and offset == pytest.approx(OFFSET_LSB, abs=0.15)
    assert adc_model.cols_.tolist() == [2, 7]
    assert adc_model.n_codes_ == N_CODES
    assert np.allclose(adc_model.gain_error_.numpy(), gain, atol=0.002)
    assert np.allclose(adc_model.offset_lsb_.numpy(), offset, atol=0.05)
    assert np.allclose(adc_model.sigma_lsb_.numpy(), SIGMA_LSB, rtol=0.2)
    dnl = adc_model.dnl_lsb_[0].numpy()
    inner = [k for k in range(2, N_CODES - 3) if k not in (29, 30, 31, 32)]
    assert np.nanmax(np.abs(dnl[inner] - true[inner])) < 0.15  # binomial noise of 32 repeats
    assert abs(dnl[30] + 1.0) < 0.15
    assert all(30 in missing for missing in adc_model.missing_codes_)
    inl = adc_model.inl_lsb_[0].numpy()
    assert np.nanmax(np.abs(inl[2:N_CODES - 2])) < 1.2  # the missing code's 1 LSB step dominates


def test_sampled_codes_match_held_out_conversions_at_a_grid_input():
    kwargs = dict(dnl=_dnl_pattern(), points_per_lsb=1, cols=(7,))
    adc_model = ADCLUT().fit(make_adc(N_CODES, GAIN, OFFSET_LSB, SIGMA_LSB, repeats=3000, seed=2, **kwargs))
    table = make_adc(N_CODES, GAIN, OFFSET_LSB, SIGMA_LSB, repeats=3000, seed=3, **kwargs)
    x_in = 20.0
    measured = table[(table["col"] == 7) & (table["input"] == x_in)]["code"].to_numpy()
    drawn = adc_model.sample(torch.full((50_000,), x_in), torch.tensor(7),
                             generator=torch.Generator().manual_seed(0)).numpy()
    hist_m = np.bincount(measured, minlength=N_CODES) / len(measured)
    hist_s = np.bincount(drawn, minlength=N_CODES) / len(drawn)
    assert 0.5 * np.abs(hist_m - hist_s).sum() < 0.035  # 3000 held-out conversions: TV noise ~0.015


def test_inputs_beyond_the_measured_range_saturate_to_the_end_bins(adc_model):
    gen = torch.Generator().manual_seed(1)
    lo, hi = adc_model.input_range_
    far = adc_model.sample(torch.tensor([lo - 1e6] * 2000), torch.tensor([2]), generator=gen)
    edge = adc_model.sample(torch.tensor([lo] * 2000), torch.tensor([2]), generator=gen)
    assert torch.equal(far, torch.zeros(2000, dtype=torch.int64)) and torch.equal(edge, far)
    top = adc_model.sample(torch.tensor([hi + 1e6] * 100), torch.tensor([7]), generator=gen)
    assert bool((top == N_CODES - 1).all())
    assert float(adc_model.mean_code(torch.tensor([hi + 5.0]), 7)) == pytest.approx(
        float(adc_model.mean_code(torch.tensor([hi]), 7)))


def test_sample_broadcasts_x_and_col_and_returns_long(adc_model):
    x = torch.linspace(0.0, 60.0, 12).reshape(3, 4)
    col = torch.tensor([2, 7, 2, 7])
    codes = adc_model.sample(x, col, generator=torch.Generator().manual_seed(2))
    assert codes.shape == (3, 4) and codes.dtype == torch.int64
    again = adc_model.sample(x, col, generator=torch.Generator().manual_seed(2))
    assert torch.equal(codes, again)
    mean = adc_model.mean_code(x, col)
    assert mean.shape == (3, 4)
    assert bool((mean.reshape(-1).diff()[mean.reshape(-1).diff() != 0].abs() > 0).all())


def test_mean_transfer_follows_the_line():
    adc_model = ADCLUT().fit(make_adc(N_CODES, GAIN, OFFSET_LSB, SIGMA_LSB, cols=(2,), repeats=64))
    x = torch.linspace(5.0, 55.0, 101)
    mean = adc_model.mean_code(x, 2).numpy()
    # mean code = (1 + gain) x + offset - 0.5 (codes floor the noisy value)
    expected = (1 + GAIN) * x.numpy() + OFFSET_LSB - 0.5
    assert np.abs(mean - expected).max() < 0.2


def test_unknown_column_is_a_config_error(adc_model):
    with pytest.raises(ConfigError, match="measured columns"):
        adc_model.sample(torch.tensor([1.0]), torch.tensor([3]))
    with pytest.raises(ConfigError, match="NaN"):
        adc_model.sample(torch.tensor([float("nan")]), torch.tensor([2]))


def test_table_without_col_gives_a_pooled_model_any_col_maps_to_it():
    table = make_adc(N_CODES, GAIN, OFFSET_LSB, SIGMA_LSB, cols=None, repeats=8)
    model = ADCLUT().fit(table)
    assert model.pooled_ and model.cols_.tolist() == [0]
    gen = torch.Generator().manual_seed(3)
    codes = model.sample(torch.full((5,), 10.0), torch.tensor([0, 3, 17, 99, 5]), generator=gen)
    assert codes.shape == (5,)
    assert bool((codes - 10).abs().max() <= 3)


def test_continuous_inputs_use_uniform_bins():
    rng = np.random.default_rng(4)
    x = rng.uniform(0, N_CODES, 40_000)
    code = np.clip(np.floor(x + rng.normal(0, 0.3, x.size)), 0, N_CODES - 1).astype(np.int64)
    model = ADCLUT(n_input_bins=256).fit(pd.DataFrame({"input": x, "code": code}))
    assert len(model.input_edges_) == 257
    assert model.input_range_ == pytest.approx((x.min(), x.max()))
    assert abs(float(model.gain_error_[0])) < 0.02


def test_alias_sampler_draws_exactly_the_inverse_cdf_table_distribution(adc_model):
    assert adc_model._alias is not None
    x_in = 20.0
    b = int((x_in - float(adc_model.input_edges_[0])) // float(adc_model.input_edges_[1] - adc_model.input_edges_[0]))
    centre = float(adc_model.input_edges_[b] + adc_model.input_edges_[b + 1]) / 2
    knots = adc_model.code_table_[0, b].long()
    expected = torch.bincount(knots, minlength=N_CODES).double() / len(knots)
    drawn = adc_model.sample(torch.full((400_000,), centre), torch.tensor(2), generator=torch.Generator().manual_seed(5))
    observed = torch.bincount(drawn, minlength=N_CODES).double() / len(drawn)
    assert float((observed - expected).abs().max()) < 0.004


def test_wide_code_windows_fall_back_to_the_inverse_cdf_gather():
    rng = np.random.default_rng(6)
    x = np.repeat(np.arange(8.0), 500)
    code = rng.integers(0, 200, x.size)  # every bin spans ~200 codes: too wide for alias tables
    model = ADCLUT().fit(pd.DataFrame({"input": x, "code": code}))
    assert model._alias is None
    drawn = model.sample(torch.full((50_000,), 3.0), torch.tensor(0), generator=torch.Generator().manual_seed(7))
    assert int(drawn.min()) >= 0 and int(drawn.max()) < model.n_codes_
    assert abs(float(drawn.double().mean()) - 99.5) < 2.0


def test_synthetic_inl_scale_gives_the_fitted_profile_a_strong_transfer_curve_error():
    """The strong-INL synthetic chip of the accuracy benchmark: the fitted LUT recovers the larger INL."""
    from cimcal.data.synthetic import synthetic_adc

    worst = {}
    for scale in (1.0, 16.0):
        df = synthetic_adc(cols=4, n_inputs=256, repeats=8, seed=3, inl_scale=scale)
        lut = ADCLUT(n_codes=64).fit(df)
        worst[scale] = float(np.nanmax(np.abs(lut.inl_lsb_.numpy()), axis=1).mean())
    assert worst[1.0] < 3.0 and worst[16.0] > 3 * worst[1.0], worst
