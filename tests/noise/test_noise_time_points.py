"""Time points: reads timestamped per cell (jittered around a nominal time) form one time point."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from noise_tables import programmed_us

from cimcal.errors import DataError
from cimcal.noise import ChipProfile, ConductanceLUT, validate_profile
from cimcal.noise.summaries import TimeMap, summarize_conductance, summarize_residuals, time_keys

NOMINAL_S = (1.0, 10.0, 100.0)


def jittered_campaign(n_cells: int = 3000, reads: int = 2, seed: int = 0) -> pd.DataFrame:
    """Like a campaign: each cell read at nominal + its own offset (0..1.3 s) + 10 ms per read."""
    rng = np.random.default_rng(seed)
    level = rng.integers(0, 3, n_cells)
    g0 = programmed_us(level, rng)
    offset_s = rng.uniform(0.0, 1.3, n_cells)
    frames = []
    for t in NOMINAL_S:
        for r in range(reads):
            g = g0 * (1.0 - 0.02 * np.log1p(t)) + rng.normal(0.0, 0.4, n_cells)
            frames.append(pd.DataFrame({
                "row": np.arange(n_cells) // 128, "col": np.arange(n_cells) % 128, "level": level,
                "g_us": np.abs(g), "t_s": t + offset_s + 0.01 * r, "read_idx": r,
            }))
    return pd.concat(frames, ignore_index=True)


@pytest.fixture(scope="module")
def campaign() -> pd.DataFrame:
    return jittered_campaign()


@pytest.fixture(scope="module")
def fitted(campaign) -> ConductanceLUT:
    return ConductanceLUT().fit(campaign)


def test_time_map_starts_a_time_point_only_at_gaps_wider_than_a_tenth_in_log1p():
    keys = time_keys(np.concatenate([t + np.linspace(0.0, 1.3, 200) for t in NOMINAL_S]))
    assert np.array_equal(np.unique(TimeMap.of(keys).apply(keys)), time_keys(np.array([1.0, 10.0, 100.0])))
    # 10 keys apart (0.1 in log1p) stay together, 11 apart split
    assert len(np.unique(TimeMap.of(np.array([0, 10, 20])).cluster)) == 1
    assert len(np.unique(TimeMap.of(np.array([0, 11, 22])).cluster)) == 3


def test_jittered_per_cell_times_form_one_time_point_per_nominal_time(campaign, fitted):
    assert len(fitted.t_s_) == len(NOMINAL_S)
    for t_mean, (lo, hi), nominal in zip(fitted.t_s_.tolist(), fitted.t_span_s_.tolist(), NOMINAL_S):
        assert nominal <= lo <= t_mean <= hi <= nominal + 1.32
    n_cells_per_level = campaign[campaign["read_idx"] == 0].groupby("level").size().to_numpy() / len(NOMINAL_S)
    # every cell is one cell per time point (its two reads, in different fine keys, are averaged)
    assert np.array_equal(fitted.n_cells_.numpy(), np.tile(n_cells_per_level, (len(NOMINAL_S), 1)))
    assert not bool(fitted.filled_.any())
    # read noise is measured from the two reads of a cell: about 0.4 µS
    assert float(fitted.read_noise_sigma_us_.mean()) == pytest.approx(0.4, rel=0.1)


def test_time_points_do_not_depend_on_how_rows_were_partitioned(campaign, fitted):
    shuffled = campaign.sample(frac=1.0, random_state=1)
    parts = np.array_split(np.arange(len(shuffled)), 6)
    summary = summarize_conductance(shuffled.iloc[parts[0]])
    for p in parts[1:]:
        summary = summary.merge(summarize_conductance(shuffled.iloc[p]))
    cells = summary.cells.finish(summary.time_map())
    residuals = summarize_residuals(shuffled.iloc[parts[0]], cells)
    for p in parts[1:]:
        residuals = residuals.merge(summarize_residuals(shuffled.iloc[p], cells))
    merged = ConductanceLUT.from_summary(summary, residuals, cells=cells)
    for name, tensor in fitted.state_tensors().items():
        assert torch.allclose(tensor.double(), merged.state_tensors()[name].double(), rtol=1e-6, atol=1e-6), name
    assert torch.allclose(fitted.t_span_s_, merged.t_span_s_)


def test_profile_keeps_time_spans_through_save_and_load(fitted, tmp_path):
    path = ChipProfile(fitted, None, {}).save(tmp_path / "jitter.cimprof")
    loaded = ChipProfile.load(path).conductance
    assert torch.equal(loaded.t_span_s_, fitted.t_span_s_)


def test_validate_groups_jittered_held_out_reads_at_the_profile_time_points(fitted):
    held_out = jittered_campaign(n_cells=3000, seed=7)
    result = validate_profile(ChipProfile(fitted, None, {}), conductance=held_out, seed=0)
    groups = result.conductance
    assert len(groups) == 3 * len(NOMINAL_S)  # levels x time points, no tiny groups
    assert sorted({g.t_s for g in groups}) == fitted.t_s_.tolist()
    assert min(g.n_cells for g in groups) > 800
    assert result.passed(max_ks=0.1, max_tv=0.1)


def test_validate_refuses_held_out_times_beyond_the_profile_range(fitted):
    held_out = jittered_campaign(n_cells=300, seed=8)
    held_out.loc[held_out.index[-5:], "t_s"] = 1000.0
    with pytest.raises(DataError, match="t_s outside"):
        validate_profile(ChipProfile(fitted, None, {}), conductance=held_out)


def test_validate_compares_held_out_reads_between_time_points_at_their_own_time(fitted):
    held_out = jittered_campaign(n_cells=600, seed=9)
    held_out = held_out[held_out["t_s"] < 3.0].assign(t_s=lambda d: d["t_s"] + 30.0)  # 31..33 s
    groups = validate_profile(ChipProfile(fitted, None, {}), conductance=held_out).conductance
    assert {round(g.t_s) for g in groups} == {32}


def test_nominal_first_and_last_read_times_are_inside_the_profile_range(fitted):
    # the time points are cluster means (~1.65 s, ~100.65 s) of reads from 1.0 s to ~101.3 s; like held-out
    # reads, a time within 0.1 in log1p(t_s) of the first or last read belongs to the end time point
    from cimcal.analog.layers import profile_tables
    from cimcal.errors import ConfigError

    first, last = float(fitted.t_span_s_[0, 0]), float(fitted.t_span_s_[-1, 1])
    assert first < 1.01 < float(fitted.t_s_[0]) and last > float(fitted.t_s_[-1])
    lo, hi = fitted.t_limits_s()
    assert lo == pytest.approx(np.expm1(np.log1p(first) - 0.1)) and hi == pytest.approx(np.expm1(np.log1p(last) + 0.1))
    profile = ChipProfile(fitted, None, {})
    level = torch.tensor([2])
    for t_s, point in ((0.9, 0), (first, 0), (last, -1), (1.05 * last, -1)):  # sampled at the end time point
        assert profile_tables(profile, t_s)[0] is not None
        assert float(fitted.mean_us(level, t_s=t_s)) == pytest.approx(float(fitted.mean_us_[point, 2]))
    with pytest.raises(ConfigError, match=r"AnalogConfig.t_s=0.5 s is outside .* \[0.81\d*, 112\.\d\] s$"):
        profile_tables(profile, 0.5)
