"""Fidelity: a profile fitted on some cells / repeats is indistinguishable from the held-out rest.

The dump has the features a Gaussian model misses: stuck-on/off cells, skewed programming error,
heavy-tailed read noise, power-law drift over four time points, non-uniform ADC code widths,
an INL bow, per-column gain/offset and sparkle codes. Thresholds are the issue's:

- conductance (10^4 held-out cells, 2 * 10^4 fitted): pooled PIT KS <= 0.04; per-(level, t_s) two-sample KS rejects
  at 1 % in <= 10 % of the groups; stuck/outlier tail fractions within 0.5 percentage points;
- ADC (2 * 10^4 held-out conversions; 64 fitted repeats of each ramp input): pooled randomized-PIT KS <= 0.012.

The Gaussian-per-level baseline (mean/std per level and time; linear ADC with Gaussian noise),
fitted on the same data, fails the same checks. Run with ``-s`` to print the figures.
"""

from __future__ import annotations

import pytest
from reference_models import GaussianADC, GaussianConductance, ReferenceProfile, split_adc, split_conductance

from cimcal import ChipProfile, fit_profile
from cimcal.data.synthetic import synthetic_adc, synthetic_conductance
from cimcal.noise.validation import validate_profile

MAX_PIT_KS_CONDUCTANCE = 0.04
MAX_PIT_KS_ADC = 0.012
MAX_REJECT_FRACTION = 0.10
MAX_TAIL_DIFFERENCE = 0.005


@pytest.fixture(scope="module")
def dumps():
    # Fit on 2 of every 3 cells: the profile's own sampling noise then inflates the per-group KS
    # rejection rate of a perfect model from 1 % to about 3 % (about 5 % with a 1:1 split).
    cond = synthetic_conductance(n_cells=30_000, levels=8, reads=2, seed=21)
    cond_fit, cond_held = split_conductance(cond, every=3)
    adc_fit, adc_held = split_adc(synthetic_adc(cols=8, n_inputs=256, repeats=74, seed=22), fit_repeats=64)
    return cond_fit, cond_held, adc_fit, adc_held


@pytest.fixture(scope="module")
def lut_result(dumps, tmp_path_factory):
    cond_fit, cond_held, adc_fit, adc_held = dumps
    profile = fit_profile(conductance=cond_fit, adc=adc_fit)
    path = profile.save(tmp_path_factory.mktemp("fidelity") / "chip.cimprof")
    return validate_profile(ChipProfile.load(path), cond_held, adc_held, seed=0)


@pytest.fixture(scope="module")
def gaussian_result(dumps):
    cond_fit, cond_held, adc_fit, adc_held = dumps
    baseline = ReferenceProfile(GaussianConductance().fit(cond_fit), GaussianADC().fit(adc_fit))
    return validate_profile(baseline, cond_held, adc_held, seed=0)


def _figures(result) -> str:
    return (
        f"conductance pooled PIT KS {result.conductance_pit_ks:.4f}, rejecting groups "
        f"{result.reject_fraction:.1%} of {len(result.conductance)}, tail |diff| "
        f"{100 * result.tail_difference:.3f} pp (low {100 * result.low_tail_measured:.2f}/"
        f"{100 * result.low_tail_model:.2f} %, high {100 * result.high_tail_measured:.2f}/"
        f"{100 * result.high_tail_model:.2f} %); ADC pooled PIT KS {result.adc_pit_ks:.4f}, "
        f"pooled TV {result.adc_tv:.4f}, max column TV {max(c.tv for c in result.adc):.4f}"
    )


def test_held_out_sizes_match_the_claim(dumps):
    _, cond_held, _, adc_held = dumps
    assert cond_held.groupby(["row", "col"]).ngroups == 10_000
    assert len(adc_held) == 20_480


def test_lut_profile_conductance_is_indistinguishable_from_held_out(lut_result):
    print("\nLUT:      " + _figures(lut_result))
    assert lut_result.conductance_pit_ks <= MAX_PIT_KS_CONDUCTANCE
    assert lut_result.reject_fraction <= MAX_REJECT_FRACTION
    assert lut_result.tail_difference <= MAX_TAIL_DIFFERENCE


def test_lut_profile_adc_randomized_pit_is_uniform(lut_result):
    assert lut_result.adc_pit_ks <= MAX_PIT_KS_ADC


def test_gaussian_baseline_fails_the_same_checks(gaussian_result):
    print("\nGaussian: " + _figures(gaussian_result))
    assert gaussian_result.conductance_pit_ks > MAX_PIT_KS_CONDUCTANCE
    assert gaussian_result.reject_fraction > MAX_REJECT_FRACTION
    assert gaussian_result.tail_difference > MAX_TAIL_DIFFERENCE
    assert gaussian_result.adc_pit_ks > MAX_PIT_KS_ADC


def test_lut_beats_gaussian_on_every_adc_column_histogram(lut_result, gaussian_result):
    lut_tv = {c.col: c.tv for c in lut_result.adc}
    assert all(lut_tv[c.col] < c.tv for c in gaussian_result.adc)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(100, 110))
def test_fidelity_holds_across_seeds(seed):
    """The same claims on ten other dumps (run with ``-m slow -s`` to print the figures per seed)."""
    cond_fit, cond_held = split_conductance(
        synthetic_conductance(n_cells=30_000, levels=8, reads=2, seed=seed), every=3
    )
    adc_fit, adc_held = split_adc(synthetic_adc(cols=8, n_inputs=256, repeats=74, seed=seed + 1000), fit_repeats=64)
    lut = validate_profile(fit_profile(conductance=cond_fit, adc=adc_fit), cond_held, adc_held, seed=seed)
    baseline = ReferenceProfile(GaussianConductance().fit(cond_fit), GaussianADC().fit(adc_fit))
    gauss = validate_profile(baseline, cond_held, adc_held, seed=seed)
    print(f"\nseed {seed} LUT:      " + _figures(lut))
    print(f"seed {seed} Gaussian: " + _figures(gauss))
    assert lut.conductance_pit_ks <= MAX_PIT_KS_CONDUCTANCE and lut.adc_pit_ks <= MAX_PIT_KS_ADC
    assert lut.reject_fraction <= MAX_REJECT_FRACTION and lut.tail_difference <= MAX_TAIL_DIFFERENCE
    assert gauss.conductance_pit_ks > MAX_PIT_KS_CONDUCTANCE and gauss.adc_pit_ks > MAX_PIT_KS_ADC
    assert gauss.reject_fraction > MAX_REJECT_FRACTION and gauss.tail_difference > MAX_TAIL_DIFFERENCE
