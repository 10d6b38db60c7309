"""fit_profile: measurement tables in, a :class:`ChipProfile` out, with bounded memory.

The models are fitted from mergeable summaries (:mod:`cimcal.noise.summaries`). In one process,
batches streamed by :func:`cimcal.data.iter_batches` are summarized and merged in a binary tree
(at most log2(batches) partial summaries alive). With ``dask_client``, each file (or slice of a
DataFrame) is one partition summarized on a worker, and the summaries are merged pairwise on
the cluster. The conductance fit takes two passes when cells were read more than once: the
second histograms each read's deviation from its cell mean (read-to-read noise).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime, timezone
from typing import Any

import pandas as pd

from cimcal.errors import ConfigError
from cimcal.noise.adc import ADCLUT
from cimcal.noise.conductance import DEFAULT_KNOTS, ConductanceLUT
from cimcal.noise.profile import FORMAT_VERSION, ChipProfile
from cimcal.noise.summaries import (
    ADCSummary,
    CellAccumulator,
    CellTable,
    ConductanceSummary,
    ResidualSummary,
    summarize_adc,
    summarize_conductance,
    summarize_residuals,
)

__all__ = ["fit_profile", "DEFAULT_BATCH_ROWS"]

DEFAULT_BATCH_ROWS = 262_144
_INT_COLUMNS = {"row", "col", "level", "read_idx", "array", "repeat", "code"}


class _TreeMerge:
    """Merge summaries pairwise like a binary counter: O(log n) partial summaries alive."""

    def __init__(self) -> None:
        self._stack: list[tuple[int, Any]] = []

    def push(self, summary: Any) -> None:
        rank = 0
        while self._stack and self._stack[-1][0] == rank:
            summary = self._stack.pop()[1].merge(summary)
            rank += 1
        self._stack.append((rank, summary))

    def result(self, empty: Any) -> Any:
        out = None
        for _, summary in self._stack:
            out = summary if out is None else out.merge(summary)
        return empty if out is None else out


def _batches(source: Any, kind: str, column_map: Mapping[str, str] | None, batch_rows: int,
             partition: Mapping[str, object] | None = None) -> Iterator[pd.DataFrame]:
    from cimcal.data import iter_batches, kind_of

    columns = kind_of(kind).columns
    cast = {"int": int, "float": float, "str": str}
    for batch in iter_batches(source, kind, column_map=column_map, batch_rows=batch_rows):
        # A file of a hive dataset read on its own: its key=value directories become columns.
        for key, value in (partition or {}).items():
            name = (column_map or {}).get(key, key)
            if name in columns and name not in batch.columns:
                batch[name] = cast[columns[name].dtype](value)
        yield batch


def _pass(batches: Iterable[pd.DataFrame], summarize, empty, bar=None) -> Any:
    """Summarize batches and merge them in a tree; conductance cells go to one accumulator.

    The per-cell accumulators are O(cells) each: keeping one per tree rank would hold up to
    log2(batches) copies, so every batch's cells are absorbed into a single accumulator instead.
    """
    tree = _TreeMerge()
    cells = CellAccumulator() if isinstance(empty, ConductanceSummary) else None
    for batch in batches:
        summary = summarize(batch)
        if cells is not None:
            cells.absorb(summary.cells)
            summary.cells = CellAccumulator()
        tree.push(summary)
        if bar is not None:
            bar.update(len(batch))
    result = tree.result(empty)
    if cells is not None:
        result.cells = cells
    return result


def _summarize_partition(kind: str, source: Any, partition: dict, column_map: Any, batch_rows: int,
                         cells: CellTable | None = None) -> Any:
    """One Dask task: summarize every batch of one partition (a file or a DataFrame slice)."""
    if kind == "adc":
        fn, empty = summarize_adc, ADCSummary()
    elif cells is None:
        fn, empty = summarize_conductance, ConductanceSummary()
    else:
        def fn(batch: pd.DataFrame) -> ResidualSummary:
            return summarize_residuals(batch, cells)
        empty = ResidualSummary()
    return _pass(_batches(source, kind, column_map, batch_rows, partition), fn, empty)


def _merge_pair(a: Any, b: Any) -> Any:
    return a.merge(b)


def _partitions(sources: Any, batch_rows: int) -> list[tuple[Any, dict]]:
    from cimcal.data.sources import expand_sources

    parts: list[tuple[Any, dict]] = []
    for item in expand_sources(sources):
        if item.frame is not None:
            for start in range(0, max(len(item.frame), 1), batch_rows):
                parts.append((item.frame.iloc[start:start + batch_rows], {}))
        else:
            parts.append((str(item.path), dict(item.partition)))
    return parts


def _dask_pass(client: Any, kind: str, sources: Any, column_map: Any, batch_rows: int, cells: Any = None) -> Any:
    futures = [client.submit(_summarize_partition, kind, src, part, column_map, batch_rows, cells, pure=False)
               for src, part in _partitions(sources, batch_rows)]
    while len(futures) > 1:
        paired = [client.submit(_merge_pair, futures[i], futures[i + 1], pure=False)
                  for i in range(0, len(futures) - 1, 2)]
        if len(futures) % 2:
            paired.append(futures[-1])
        futures = paired
    return futures[0].result()


def fit_profile(
    conductance: Any = None,
    adc: Any = None,
    *,
    column_map: Mapping[str, str] | None = None,
    n_knots: int = DEFAULT_KNOTS,
    progress: bool = False,
    dask_client: Any = None,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    adc_params: Mapping[str, Any] | None = None,
) -> ChipProfile:
    """Fit a chip profile from conductance and/or ADC measurement tables.

    Parameters
    ----------
    conductance, adc
        Sources as for :func:`cimcal.data.iter_batches`: a CSV/Parquet path, a directory or
        hive-partitioned dataset, a DataFrame, or a list of these. At least one is required.
    column_map
        ``{old: new}`` column renames (the CLI's ``--map``).
    n_knots
        Knots per conductance inverse-CDF table (>= 256; default 4096, see
        :data:`cimcal.noise.conductance.DEFAULT_KNOTS`). The ADC model's code knots are ``adc_params["n_knots"]``
        (default 256).
    progress
        Show a tqdm progress bar on stderr.
    dask_client
        A ``dask.distributed.Client``: summarize partitions (files, DataFrame slices) on it.
    batch_rows
        Rows per streamed batch (memory bound of the single-process path).
    adc_params
        Extra :class:`ADCLUT` parameters (``n_knots``, ``n_input_bins``, ``max_grid_bins``, ``n_codes``, ``ideal_range``).
    """
    from tqdm import tqdm

    import cimcal
    from cimcal.data import describe_sources, iter_batches

    if conductance is None and adc is None:
        raise ConfigError("fit_profile needs conductance and/or adc sources")
    if int(n_knots) < 256:
        raise ConfigError(f"n_knots must be >= 256, got {n_knots}")
    if int(batch_rows) < 1:
        raise ConfigError(f"batch_rows must be >= 1, got {batch_rows}")
    adc_params = dict(adc_params or {})
    provenance: dict[str, Any] = {
        "cimcal_version": cimcal.__version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "format_version": FORMAT_VERSION,
        "fit_params": {"n_knots": int(n_knots), "batch_rows": int(batch_rows), "adc_params": adc_params,
                       "column_map": dict(column_map or {}), "dask": dask_client is not None},
    }
    described = {}
    for kind, sources in (("conductance", conductance), ("adc", adc)):
        if sources is not None:
            # Plans every source (missing columns, mixed chips fail here, before any work).
            iter_batches(sources, kind, column_map=column_map, batch_rows=batch_rows)
            described[kind] = describe_sources(sources)
    total = sum(d["rows"] or 0 for files in described.values() for d in files)
    bar = tqdm(total=total, unit="rows", disable=not progress, file=sys.stderr, desc="fit")

    cond_model = adc_model = None
    try:
        if conductance is not None:
            if dask_client is not None:
                summary = _dask_pass(dask_client, "conductance", conductance, column_map, batch_rows)
                bar.update(summary.n_rows)
            else:
                summary = _pass(_batches(conductance, "conductance", column_map, batch_rows),
                                summarize_conductance, ConductanceSummary(), bar)
            cells = summary.cells.finish(summary.time_map())
            residuals = ResidualSummary()
            if len(cells.count) and int(cells.count.max()) > 1:
                bar.set_description("fit (read noise pass)")
                bar.total = (bar.total or 0) + summary.n_rows
                bar.refresh()
                if dask_client is not None:
                    scattered = dask_client.scatter(cells, broadcast=True)
                    residuals = _dask_pass(dask_client, "conductance", conductance, column_map, batch_rows,
                                           scattered)
                else:
                    residuals = _pass(_batches(conductance, "conductance", column_map, batch_rows),
                                      lambda b: summarize_residuals(b, cells), ResidualSummary(), bar)
            cond_model = ConductanceLUT.from_summary(summary, residuals, n_knots=int(n_knots), cells=cells)
            provenance["conductance"] = {
                "sources": described["conductance"],
                "rows": int(summary.n_rows),
                "chip_ids": sorted(summary.chip_ids),
                "cells": int(len(cells.count)),
            }
        if adc is not None:
            if dask_client is not None:
                adc_summary = _dask_pass(dask_client, "adc", adc, column_map, batch_rows)
                bar.update(adc_summary.n_rows)
            else:
                adc_summary = _pass(_batches(adc, "adc", column_map, batch_rows), summarize_adc, ADCSummary(), bar)
            adc_model = ADCLUT.from_summary(adc_summary, **adc_params)
            provenance["adc"] = {
                "sources": described["adc"],
                "rows": int(adc_summary.n_rows),
                "chip_ids": sorted(adc_summary.chip_ids),
                "arrays": sorted(adc_summary.arrays),  # deploy places layers on these arrays' ADCs
                "pooled": bool(adc_summary.pooled),
            }
    finally:
        bar.close()
    return ChipProfile(cond_model, adc_model, provenance)
