"""Mergeable summaries: merged partial summaries fit the same model as one pass."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from noise_tables import make_adc, make_conductance

from cimcal.noise import ADCLUT, ConductanceLUT
from cimcal.noise.summaries import (
    CellAccumulator,
    cell_keys,
    float_keys,
    histogram_quantiles,
    key_edges,
    summarize_adc,
    summarize_conductance,
    summarize_residuals,
    time_keys,
)


def _chunks(df: pd.DataFrame, n: int, seed: int) -> list[pd.DataFrame]:
    shuffled = df.sample(frac=1.0, random_state=seed)
    bounds = np.linspace(0, len(shuffled), n + 1).astype(int)
    return [shuffled.iloc[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


def test_float_keys_are_monotone_and_their_bins_contain_the_values():
    x = np.concatenate([np.random.default_rng(0).normal(0, 10, 10_000), [0.0, -0.0, 1e-30, -1e-30, 3e5]])
    keys = float_keys(x)
    order = np.argsort(x, kind="stable")
    assert bool((np.diff(keys[order]) >= 0).all())
    lo, hi = key_edges(keys)
    assert bool(((lo <= x) & (x <= hi)).all())
    rel = (hi - lo) / np.maximum(np.abs(x), 1e-300)
    assert float(rel[np.abs(x) > 1e-3].max()) < 2.0**-11  # MANTISSA_BITS = 12


def test_histogram_quantiles_match_exact_quantiles_closely():
    x = np.random.default_rng(1).gamma(2.0, 3.0, 50_000)
    keys, counts = np.unique(float_keys(x), return_counts=True)
    probs = np.linspace(0, 1, 257)
    q = histogram_quantiles(keys, counts, probs, x.min(), x.max())
    exact = np.quantile(x, probs)
    assert q[0] == x.min() and q[-1] == x.max()
    assert np.abs(q[1:-1] - exact[1:-1]).max() < 0.02 * np.std(x)


def test_cell_accumulator_groups_across_batches_with_compaction():
    rng = np.random.default_rng(2)
    n = 30_000
    keys = rng.integers(0, 5_000, n).astype(np.int64)
    g = rng.random(n)
    acc = CellAccumulator()
    for part in np.array_split(np.arange(n), 7):
        acc.add(keys[part], keys[part] % 3, np.zeros(len(part), np.int64), g[part])
        acc.compact()  # force compaction between batches
    table = acc.finish()
    expected = pd.Series(g).groupby(keys).agg(["mean", "size"])
    assert np.array_equal(table.keys, expected.index.to_numpy())
    assert np.allclose(table.mean_us, expected["mean"].to_numpy())
    assert np.array_equal(table.count, expected["size"].to_numpy())


def test_cell_keys_distinguish_chip_array_cell_level_and_time():
    base = pd.DataFrame({"row": [1, 1, 1, 1, 2], "col": [3, 3, 3, 3, 3], "level": [0, 0, 1, 0, 0],
                         "chip_id": ["A", "B", "A", "A", "A"], "array": [0, 0, 0, 1, 0]})
    keys = cell_keys(base, np.zeros(5, np.int64))
    assert len(set(keys.tolist())) == 5
    assert cell_keys(base, np.ones(5, np.int64))[0] != keys[0]
    assert np.array_equal(time_keys(np.array([0.0, 0.001, 1000.0, 1000.3])), [0, 0, 691, 691])


def test_merged_summaries_fit_the_same_conductance_model_as_one_pass():
    df = make_conductance(n_cells=6000, t_s=(1.0, 100.0), reads=2, seed=3)
    single = ConductanceLUT().fit(df)
    parts = _chunks(df, 5, seed=4)
    summary = summarize_conductance(parts[0])
    for part in parts[1:]:
        summary = summary.merge(summarize_conductance(part))
    cells = summary.cells.finish()
    residuals = summarize_residuals(parts[0], cells)
    for part in parts[1:]:
        residuals = residuals.merge(summarize_residuals(part, cells))
    merged = ConductanceLUT.from_summary(summary, residuals)
    for name, tensor in single.state_tensors().items():
        other = merged.state_tensors()[name]
        assert tensor.shape == other.shape, name
        assert torch.allclose(tensor.double(), other.double(), rtol=1e-5, atol=1e-5), name
    assert torch.equal(single.n_reads_, merged.n_reads_)


def test_merged_summaries_fit_the_same_adc_model_as_one_pass():
    df = make_adc(cols=(0, 1, 4), repeats=8)
    single = ADCLUT().fit(df)
    parts = _chunks(df, 4, seed=5)
    summary = summarize_adc(parts[0])
    for part in parts[1:]:
        summary = summary.merge(summarize_adc(part))
    merged = ADCLUT.from_summary(summary)
    for name, tensor in single.state_tensors().items():
        assert torch.equal(tensor.nan_to_num(-9.0), merged.state_tensors()[name].nan_to_num(-9.0)) or torch.allclose(
            tensor.double(), merged.state_tensors()[name].double(), equal_nan=True, atol=1e-6), name
    assert single.missing_codes_ == merged.missing_codes_


def test_pooled_and_per_column_adc_summaries_do_not_merge():
    with pytest.raises(ValueError, match="pooled"):
        summarize_adc(make_adc(cols=None, repeats=1)).merge(summarize_adc(make_adc(repeats=1)))
