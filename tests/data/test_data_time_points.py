"""Per-cell timestamps cluster into time points: one rule for `cimcal info`, the fit and validation."""

import numpy as np
import pandas as pd

from cimcal.data import summarize
from cimcal.data.schema import TIME_POINT_GAP_LOG1P, time_point_groups


def test_jittered_timestamps_form_one_time_point_per_nominal_time() -> None:
    rng = np.random.default_rng(0)
    nominal = np.repeat([0.0, 1.0, 100.0, 1e4], 500)
    t_s = nominal + rng.uniform(0, 1.3, nominal.size)  # cells programmed one after another
    groups = time_point_groups(t_s)
    # 0..1.3 s and 1..2.3 s overlap in log1p time and merge; the decades stay apart
    assert len(groups) == 3
    assert [round(lo) for lo, _ in groups] == [0, 100, 10000]


def test_a_gap_just_wider_than_the_rule_splits() -> None:
    t1 = 10.0
    t2 = np.expm1(np.log1p(t1) + TIME_POINT_GAP_LOG1P * 1.01)
    t3 = np.expm1(np.log1p(t1) + TIME_POINT_GAP_LOG1P * 0.99)
    assert len(time_point_groups([t1, t2])) == 2
    assert len(time_point_groups([t1, t3])) == 1


def test_info_reports_time_points_even_past_the_distinct_value_cap(tmp_path) -> None:
    n = 24_000  # more distinct timestamps than summarize lists
    rng = np.random.default_rng(1)
    t_s = np.concatenate([1.0 + rng.uniform(0, 0.5, n // 2), 1000.0 + rng.uniform(0, 0.5, n // 2)])
    df = pd.DataFrame(
        {"row": np.arange(n) // 64, "col": np.arange(n) % 64, "level": 0, "g_us": 10.0, "t_s": t_s}
    )
    summary = summarize(df, "conductance")
    assert summary["time_points_s_truncated"]
    groups = summary["time_point_groups_s"]
    assert len(groups) == 2
    assert groups[0][0] == t_s[: n // 2].min() and groups[1][1] == t_s[n // 2 :].max()


def test_the_fit_uses_the_same_gap() -> None:
    from cimcal.noise.summaries import TIME_GAP_LOG1P

    assert TIME_GAP_LOG1P == TIME_POINT_GAP_LOG1P
