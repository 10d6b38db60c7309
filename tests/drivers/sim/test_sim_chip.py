"""Physics of the simulated chip at fixed seeds: program-and-verify, stuck cells, drift, ADC, MVM."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy import stats

from cimcal.drivers.sim.chip import SimChip
from cimcal.drivers.sim.config import load_preset
from cimcal.errors import ConfigError


@pytest.fixture(scope="module")
def programmed_rram():
    """A full 256 x 256 RRAM array programmed to a random level map (seed 0)."""
    chip = SimChip.from_preset("rram", seed=0)
    levels = np.random.default_rng(1).integers(0, chip.n_levels, (256, 256))
    pulses = chip.program_array(0, levels)
    first_read = chip.read_map(0)
    return chip, levels, pulses, first_read


def test_program_and_verify_lands_most_cells_within_tolerance(programmed_rram):
    chip, levels, pulses, first_read = programmed_rram
    healthy = chip.stuck_map(0) == 0
    err = (first_read - chip.targets_us[levels])[healthy]
    tol = chip.config.tol_us
    assert np.mean(np.abs(err) <= tol) > 0.75
    assert np.mean(np.abs(err) <= 2 * tol) > 0.97
    assert np.mean(pulses[healthy] < 0) < 0.02  # few healthy cells fail verify
    assert 2 < pulses[pulses > 0].mean() < 15
    assert pulses.max() <= chip.config.max_pulses


def test_programming_error_is_not_gaussian(programmed_rram):
    chip, levels, pulses, _ = programmed_rram
    ok = (chip.stuck_map(0) == 0) & (pulses > 0)
    err = chip.true_conductance_us(0) - chip.targets_us[levels]
    # within one level the verified error is a truncated band: lighter tails than a gaussian
    e = err[ok & (levels == 3)]
    z = (e - e.mean()) / e.std()
    assert stats.kstest(z, "norm").pvalue < 1e-4
    assert stats.kurtosis(e) < -0.3


def test_failed_cells_are_reported_and_stuck_cells_never_verify_far_targets(programmed_rram):
    chip, levels, pulses, first_read = programmed_rram
    stuck = chip.stuck_map(0)
    on_far = (stuck == 1) & (levels <= 5)
    assert on_far.sum() > 0
    assert np.all(pulses[on_far] == -1)
    assert np.all(first_read[stuck == 1] > chip.config.g_max_us * 0.75)


@pytest.mark.parametrize("preset", ["rram", "pcm"])
def test_stuck_fractions_match_the_preset(preset):
    chip = SimChip.from_preset(preset, seed=3)
    cfg = chip.config
    chip.program_array(0, np.zeros((256, 256), dtype=int))
    low = chip.read_map(0)
    chip.program_array(1, np.full((256, 256), cfg.n_levels - 1))
    high = chip.read_map(1)
    n = 256 * 256
    # observable: cells that stay high when asked for level 0, and stay near 0 when asked for the top
    for frac, seen in ((cfg.stuck_on_frac, np.mean(low > cfg.g_max_us * 0.8)),
                       (cfg.stuck_off_frac, np.mean(high < cfg.g_min_us * 0.5 + 0.05))):
        sigma = np.sqrt(frac * (1 - frac) / n)
        assert abs(seen - frac) < 5 * sigma + 1e-4, (frac, seen)


def test_drift_exponent_recovered_from_log_log_fit():
    chip = SimChip.from_preset("pcm", seed=0)
    levels = np.random.default_rng(0).integers(4, 16, (256, 256))
    chip.program_array(0, levels)
    times = chip.program_time(0)
    log_t, log_g = [], []
    for t_s in (30.0, 300.0, 3000.0, 30_000.0, 300_000.0):  # all beyond t0 = 20 s
        chip.advance(times.max() + t_s - chip.clock_s)
        log_t.append(np.log(chip.clock_s - times))
        log_g.append(np.log(np.mean([chip.read_map(0) for _ in range(2)], axis=0)))
    log_t, log_g = np.array(log_t), np.array(log_g)
    healthy = chip.stuck_map(0) == 0
    # per-cell least-squares slope of log G against log t
    dt = log_t - log_t.mean(axis=0)
    slope = (dt * (log_g - log_g.mean(axis=0))).sum(axis=0) / (dt * dt).sum(axis=0)
    nu_true = chip.drift_nu(0)
    nu_fit = -slope
    assert np.median(np.abs(nu_fit - nu_true)[healthy]) < 0.005
    assert np.corrcoef(nu_fit[healthy], nu_true[healthy])[0, 1] > 0.9
    assert np.mean(nu_fit[healthy]) == pytest.approx(np.mean(nu_true[healthy]), abs=0.003)
    assert 0.03 < np.mean(nu_true[healthy]) < 0.1  # PCM drifts strongly


def test_rram_drifts_weakly_and_pcm_strongly():
    ratios = {}
    for preset in ("rram", "pcm"):
        chip = SimChip.from_preset(preset, seed=0)
        chip.program_array(0, np.full((256, 256), chip.n_levels // 2))
        before = chip.true_conductance_us(0)
        chip.advance(24 * 3600.0)
        ratios[preset] = np.median(chip.true_conductance_us(0) / before)
    assert 0.9 < ratios["rram"] < 1.0
    assert ratios["pcm"] < 0.7


def test_temperature_raises_read_conductance_and_accelerates_drift():
    chip = SimChip.from_preset("pcm", seed=0)
    chip.program_array(0, np.full((256, 256), 8))
    cool = chip.true_conductance_us(0)
    chip.temperature_c = 85.0
    hot = chip.true_conductance_us(0)
    assert np.median(hot / cool) == pytest.approx(1 + chip.config.g_tc_per_c * 60, rel=1e-3)
    # an hour at 85 °C ages the chip more than an hour at 25 °C
    twin = SimChip.from_preset("pcm", seed=0)
    twin.program_array(0, np.full((256, 256), 8))
    twin.advance(3600.0)
    chip.advance(3600.0)
    chip.temperature_c = 25.0
    assert np.median(chip.true_conductance_us(0)) < 0.97 * np.median(twin.true_conductance_us(0))
    with pytest.raises(ConfigError, match="temperature"):
        chip.temperature_c = 300.0


def test_read_noise_grows_with_conductance(programmed_rram):
    chip, levels, _, _ = programmed_rram
    reads = np.stack([chip.read_map(0, 0, 64) for _ in range(20)])
    healthy = (chip.stuck_map(0)[:64] == 0) & ~chip._rtn[0, :64]
    sigma = reads.std(axis=0)
    low = np.median(sigma[healthy & (levels[:64] == 0)])
    high = np.median(sigma[healthy & (levels[:64] == 7)])
    cfg = chip.config
    assert high / low == pytest.approx((40.0 / 1.0) ** cfg.read_noise_b, rel=0.3)


def test_adc_gain_offset_and_dnl_as_configured():
    chip = SimChip.from_preset("rram", seed=0)
    cfg = chip.config
    params = chip.adc_params(0)
    n_codes = 2**cfg.adc_bits
    lsb_ua = (cfg.adc_max_ua - cfg.adc_min_ua) / n_codes
    x = np.linspace(-10 * lsb_ua, cfg.adc_max_ua + 10 * lsb_ua, 200_000)
    for col in (0, 7, 100):
        codes = chip.adc_test(0, col, x)
        # DNL from the code histogram of a uniform ramp equals the threshold spacing
        hist = np.bincount(codes, minlength=n_codes)[1:-1].astype(float)
        dnl = hist / hist.mean() - 1
        true_dnl = np.diff(params["thresholds_lsb"][col]) / np.diff(params["thresholds_lsb"][col]).mean() - 1
        assert dnl.std() > 0.1
        assert np.corrcoef(dnl, true_dnl)[0, 1] > 0.9
        # gain and offset: least squares of the mean code on (ideal code, 1, INL bow) away from saturation
        y = (x - cfg.adc_min_ua) / lsb_ua
        mid = (codes > 5) & (codes < n_codes - 6)
        u = y / n_codes
        design = np.stack([y, np.ones_like(y), 4 * u * (1 - u)], axis=1)[mid]
        coef, *_ = np.linalg.lstsq(design, codes[mid] + 0.5, rcond=None)
        assert coef[0] == pytest.approx(params["gain"][col], abs=0.003)
        assert coef[1] == pytest.approx(params["offset_lsb"][col], abs=0.4)
        assert coef[2] == pytest.approx(params["bow_lsb"][col], abs=0.4)
    assert np.std(params["gain"]) == pytest.approx(cfg.adc_gain_sigma, rel=0.3)


def _ideal(preset: str, **overrides: object) -> SimChip:
    """Every noise and non-ideality off: the MVM must be exact arithmetic."""
    quiet = dict(read_noise_a=0.0, rtn_frac=0.0, adc_gain_sigma=0.0, adc_offset_sigma_lsb=0.0,
                 adc_inl_bow_sigma_lsb=0.0, adc_dnl_sigma_lsb=0.0, adc_noise_lsb=0.0, n_arrays=1, rows=64, cols=32)
    quiet.update(overrides)
    return SimChip(dataclasses.replace(load_preset(preset), **quiet), seed=0)


def test_mvm_is_dac_quantized_dot_product_through_the_adc():
    chip = _ideal("rram")
    chip.program_array(0, np.random.default_rng(0).integers(0, 8, (64, 32)))
    v = np.random.default_rng(1).uniform(0.0, 0.2, (5, 64))
    codes = chip.mvm(0, v)
    g = chip.true_conductance_us(0)
    v_q = chip.quantize_inputs(v)
    assert len(np.unique(v_q)) <= 2**chip.config.dac_bits
    assert np.max(np.abs(v_q - v)) <= 0.5 * 0.2 / 255 + 1e-12
    lsb = chip.config.adc_max_ua / 256
    expected = np.clip(np.floor(v_q @ g / lsb), 0, 255)
    assert np.mean(codes == expected) > 0.99  # floating point ties aside
    assert codes.dtype == np.int16


def test_typical_inputs_use_a_realistic_part_of_the_adc_range(programmed_rram):
    chip = programmed_rram[0]
    v = np.random.default_rng(2).uniform(0.0, 0.2, (20, 256))
    codes = chip.mvm(0, v)
    assert 60 < codes.mean() < 200
    assert np.mean((codes == 0) | (codes == 255)) < 0.01


def test_ir_drop_lowers_column_currents():
    v = np.full((4, 64), 0.2)
    means = []
    for r_wire_ohm in (0.0, 10.0):
        chip = _ideal("rram", r_wire_ohm=r_wire_ohm)
        chip.program_array(0, np.full((64, 32), 7))
        means.append(chip.mvm(0, v).astype(float).mean())
    assert means[1] < means[0] - 1


def test_same_seed_same_chip_and_different_seed_differs():
    reads = []
    for seed in (5, 5, 6):
        chip = SimChip.from_preset("rram", seed=seed)
        chip.program_array(1, np.full((256, 256), 3))
        reads.append(chip.read_map(1, 0, 8))
    np.testing.assert_array_equal(reads[0], reads[1])
    assert not np.array_equal(reads[0], reads[2])


def test_program_time_is_per_cell_in_programming_order():
    chip = SimChip.from_preset("rram", seed=0)
    assert np.all(np.isnan(chip.program_time(0)))
    chip.advance(100.0)
    chip.program_array(0, np.zeros((256, 256), dtype=int))
    t = chip.program_time(0).ravel()
    assert t[0] > 100.0
    assert np.all(np.diff(t) > 0)
    assert t[-1] <= chip.clock_s


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda c: c.read_map(4), "array"),
        (lambda c: c.read_map(0, 5, 5), "window"),
        (lambda c: c.program_array(0, np.full((256, 256), 8)), "levels"),
        (lambda c: c.program_array(0, np.zeros((2, 2), int)), "shape"),
        (lambda c: c.mvm(0, np.full((1, 256), 0.3)), "DAC range"),
        (lambda c: c.adc_test(0, 256, [1.0]), "column"),
        (lambda c: c.advance(-1.0), "advance"),
    ],
)
def test_out_of_range_requests_raise_config_error(call, match):
    with pytest.raises(ConfigError, match=match):
        call(SimChip.from_preset("rram", seed=0))
