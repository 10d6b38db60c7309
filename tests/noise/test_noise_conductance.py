"""ConductanceLUT: statistics of samples against the source distribution, drift, levels, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from noise_tables import READ_SIGMA_US, STUCK_FRACTION, make_conductance, programmed_us
from scipy import stats

from cimcal.errors import ConfigError
from cimcal.noise import ConductanceLUT, NotFittedError


@pytest.fixture(scope="module")
def fitted(conductance_table):
    return ConductanceLUT().fit(conductance_table)


def _fresh_reads(level: int, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    g0 = programmed_us(np.full(n, level), rng)
    return np.abs(g0 + rng.normal(0.0, READ_SIGMA_US, n))


def test_single_reads_match_the_source_distribution_ks(fitted):
    gen = torch.Generator().manual_seed(1)
    for level in (0, 3):
        drawn = fitted.sample(torch.full((20_000,), level), generator=gen).numpy()
        result = stats.ks_2samp(drawn, _fresh_reads(level, 20_000, seed=10 + level))
        assert result.statistic < 0.025, (level, result)


def test_stuck_cell_tail_fraction_is_preserved(fitted, conductance_table):
    drawn = fitted.sample(torch.randint(0, 4, (200_000,), generator=torch.Generator().manual_seed(2)),
                          generator=torch.Generator().manual_seed(3))
    sampled = float((drawn < 2.0).float().mean())
    measured = float((conductance_table["g_us"] < 2.0).mean())
    assert abs(sampled - measured) < 0.005
    assert abs(sampled - STUCK_FRACTION) < 0.005


def test_tables_keep_the_measured_min_and_max(fitted, conductance_table):
    for level, group in conductance_table.groupby("level"):
        q = fitted.quantiles(torch.tensor([level]))[0]
        assert float(q[0]) == pytest.approx(group["g_us"].min(), rel=1e-6)
        assert float(q[-1]) == pytest.approx(group["g_us"].max(), rel=1e-6)
    assert bool((fitted.quantiles_.diff(dim=-1) >= 0).all())


def test_program_once_read_many_separates_cell_mean_and_read_noise(fitted, conductance_table):
    gen = torch.Generator().manual_seed(4)
    level = torch.full((20_000,), 2)
    programmed = fitted.sample_programmed(level, generator=gen).numpy()
    noise = fitted.sample_read_noise(level, generator=gen).numpy()
    # the read noise is N(0, READ_SIGMA_US): its own LUT must reproduce it
    assert stats.ks_1samp(noise[np.abs(noise) < 5], stats.norm(0, READ_SIGMA_US).cdf).statistic < 0.02
    assert float(fitted.read_noise_sigma_us_[2]) == pytest.approx(READ_SIGMA_US, rel=0.05)
    # programmed + read noise has the single-read distribution
    combined = programmed + noise
    single = fitted.sample(level, generator=gen).numpy()
    assert stats.ks_2samp(combined[programmed > 2], single[single > 2]).statistic < 0.025
    # cell means have less spread than single reads by about the read-noise variance / 3 reads: both tables drawn
    # with the same uniforms (common random numbers), else the difference of two variances of ~4 µS² has a
    # Monte-Carlo sd of its own (~0.08 at 20 k independent draws)
    many = torch.full((400_000,), 2)
    single = fitted.sample(many, generator=torch.Generator().manual_seed(7)).numpy()
    programmed = fitted.sample_programmed(many, generator=torch.Generator().manual_seed(7)).numpy()
    var_reads, var_prog = float(np.var(single[single > 2])), float(np.var(programmed[programmed > 2]))
    expected = READ_SIGMA_US**2 * (1 - 1 / 3)
    assert var_reads - var_prog == pytest.approx(expected, abs=0.02)


def test_one_read_per_cell_has_zero_read_noise():
    model = ConductanceLUT().fit(make_conductance(n_cells=3000, reads=1, seed=5))
    assert not model.has_read_noise_
    level = torch.tensor([[0, 1], [2, 3]])
    assert torch.equal(model.sample_read_noise(level), torch.zeros(2, 2))
    assert torch.equal(model.programmed_quantiles_, model.quantiles_) or torch.allclose(
        model.programmed_quantiles_, model.quantiles_, rtol=1e-4)


def test_drift_interpolates_linearly_in_log1p_time():
    table = make_conductance(n_cells=6000, t_s=(0.0, 1000.0), drift_per_log=0.02, reads=1, seed=6)
    model = ConductanceLUT().fit(table)
    assert model.t_s_.tolist() == [0.0, 1000.0]
    t_mid = 30.0
    w = math.log1p(t_mid) / math.log1p(1000.0)
    expected = (1 - w) * model.quantiles_[0] + w * model.quantiles_[1]
    assert torch.allclose(model.quantiles(model.levels_, t_s=t_mid), expected)
    gen = torch.Generator().manual_seed(7)
    lv = torch.full((40_000,), 1)
    mean_mid = float(model.sample(lv, t_s=t_mid, generator=gen).mean())
    m0, m1 = float(model.mean_us_[0, 1]), float(model.mean_us_[1, 1])
    assert mean_mid == pytest.approx((1 - w) * m0 + w * m1, rel=0.01)
    assert float(model.mean_us(torch.tensor(1), t_s=t_mid)) == pytest.approx((1 - w) * m0 + w * m1, rel=1e-5)
    assert float(model.sample(lv, generator=gen).mean()) == pytest.approx(m0, rel=0.01)  # None = earliest


@pytest.mark.parametrize("t_s", [1200.0, -1.0, float("nan")])  # 1000 s + 10 % still belongs to the last point
def test_time_outside_the_measured_range_is_a_config_error(t_s):
    model = ConductanceLUT().fit(make_conductance(n_cells=2000, t_s=(0.0, 1000.0), reads=1, seed=8))
    with pytest.raises(ConfigError, match="outside the measured time range"):
        model.sample(torch.tensor([0]), t_s=t_s)


def test_levels_between_measured_levels_interpolate_quantiles():
    model = ConductanceLUT().fit(make_conductance(n_cells=8000, levels=(0, 2), reads=1, seed=9))
    mid = 0.5 * (model.quantiles_[0, 0] + model.quantiles_[0, 1])
    assert torch.allclose(model.quantiles(torch.tensor([1]))[0], mid)
    assert torch.allclose(model.quantiles(torch.tensor([1.0]))[0], mid)
    gen = torch.Generator().manual_seed(10)
    drawn = model.sample(torch.full((30_000,), 1), generator=gen).numpy()
    target = mid.numpy()
    u = np.random.default_rng(0).random(30_000)
    reference = np.interp(u, np.linspace(0, 1, len(target)), target)
    assert stats.ks_2samp(drawn, reference).statistic < 0.02
    quarter = model.sample(torch.full((4,), 0.5), generator=gen)
    assert quarter.dtype == torch.float32 and quarter.shape == (4,)
    with pytest.raises(ConfigError, match="measured levels"):
        model.sample(torch.tensor([3]))


def test_sample_keeps_shape_dtype_and_is_reproducible(fitted):
    level = torch.randint(0, 4, (3, 5, 7))
    a = fitted.sample(level, generator=torch.Generator().manual_seed(11))
    b = fitted.sample(level, generator=torch.Generator().manual_seed(11))
    assert a.shape == level.shape and a.dtype == torch.float32
    assert torch.equal(a, b)
    assert fitted.mean_us(level).shape == level.shape
    assert fitted.sigma_us(level).shape == level.shape
    assert fitted.quantiles(level).shape == (*level.shape, fitted.n_knots)
    assert fitted.sample(torch.zeros(0, dtype=torch.int64)).shape == (0,)


def test_unfitted_model_raises_not_fitted():
    with pytest.raises(NotFittedError, match="not fitted"):
        ConductanceLUT().sample(torch.tensor([0]))


def test_too_few_knots_is_a_config_error(conductance_table):
    with pytest.raises(ConfigError, match="n_knots must be >= 256"):
        ConductanceLUT(n_knots=16).fit(conductance_table)


def test_exposes_targets_and_ranges(fitted):
    assert fitted.levels_.dtype == torch.int64 and fitted.levels_.tolist() == [0, 1, 2, 3]
    assert fitted.g_target_us_.shape == (4,)
    assert bool((fitted.g_target_us_.diff() > 0).all())
    lo, hi = fitted.g_range_us_
    assert lo < STUCK_FRACTION * 100 and hi > 35.0


@pytest.mark.slow
def test_compiled_kernel_gives_the_eager_values(fitted, monkeypatch):
    level = torch.randint(0, 4, (1 << 16,))
    monkeypatch.setenv("CIMCAL_COMPILE", "0")
    eager = fitted.sample(level, generator=torch.Generator().manual_seed(12))
    monkeypatch.setenv("CIMCAL_COMPILE", "1")
    compiled = fitted.sample(level, generator=torch.Generator().manual_seed(12))
    assert torch.allclose(eager, compiled, rtol=1e-6, atol=1e-5)
