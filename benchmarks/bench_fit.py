"""Fit throughput (rows/s) from Parquet and peak memory, for 10^7 and 10^8 conductance rows.

Generates each Parquet file once (streamed, 2^20 rows per row group, never the whole table in
memory) in ``--workdir``, then fits it in a fresh subprocess and reports wall time, rows/s and
the process's peak RSS (``resource.getrusage``) next to its RSS right after imports. The fit
streams batches and keeps O(cells) accumulators, so peak memory must not grow with the rows.

    python benchmarks/bench_fit.py                    # 1e7 and 1e8 rows (minutes; ~3 GB disk)
    python benchmarks/bench_fit.py --rows 1e6         # quick run

Layout: 1.25e6 cells (1250 x 1000), 16 levels, 4 time points, rows / 5e6 reads per cell.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

N_CELLS = 1_250_000
N_COLS = 1000
LEVELS = 16
T_S = (1.0, 10.0, 100.0, 1000.0)


def _rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def generate(path: Path, rows: int, seed: int = 0) -> int:
    """Write a conductance Parquet file of about ``rows`` rows chunk by chunk; return its row count."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    reads = max(1, round(rows / (N_CELLS * len(T_S))))
    total = N_CELLS * len(T_S) * reads
    if path.exists() and pq.ParquetFile(path).metadata.num_rows == total:
        return total
    rng = np.random.default_rng(seed)
    level = rng.integers(0, LEVELS, N_CELLS)
    g0 = 2.0 + 2.5 * level + rng.gamma(2.0, 0.5 + 0.05 * level)
    g0[rng.random(N_CELLS) < 0.02] = 0.1
    nu = rng.normal(0.04, 0.01, N_CELLS)
    cell = np.arange(N_CELLS)
    schema = pa.schema([("row", pa.int32()), ("col", pa.int32()), ("level", pa.int16()), ("g_us", pa.float32()),
                        ("t_s", pa.float32()), ("read_idx", pa.int16())])
    tmp = path.with_suffix(".tmp")
    with pq.ParquetWriter(tmp, schema) as writer:
        for t in T_S:
            g_t = g0 * (t / T_S[0]) ** -nu
            for r in range(reads):
                g = np.abs(g_t + rng.standard_t(4, N_CELLS) * 0.02 * (1.0 + g_t / 10))
                writer.write_table(pa.table({
                    "row": (cell // N_COLS).astype(np.int32), "col": (cell % N_COLS).astype(np.int32),
                    "level": level.astype(np.int16), "g_us": g.astype(np.float32),
                    "t_s": np.full(N_CELLS, t, np.float32), "read_idx": np.full(N_CELLS, r, np.int16),
                }), row_group_size=1 << 20)
    os.replace(tmp, path)
    return total


def fit_only(path: str, batch_rows: int) -> None:
    """Child process: fit one file, print a JSON line with the figures."""
    from cimcal import fit_profile

    rss_imports = _rss_mb()
    usage0 = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    profile = fit_profile(conductance=path, batch_rows=batch_rows)
    seconds = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu_s = usage.ru_utime + usage.ru_stime - usage0.ru_utime - usage0.ru_stime
    peak_mb = usage.ru_maxrss / 1024
    rows = profile.provenance["conductance"]["rows"]
    print(json.dumps({"rows": rows, "seconds": seconds, "rows_per_s": rows / seconds, "cpu_s": cpu_s,
                      "rows_per_cpu_s": rows / cpu_s, "peak_rss_mb": peak_mb,
                      "rss_after_imports_mb": rss_imports, "cells": profile.provenance["conductance"]["cells"]}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="1e7,1e8", help="comma-separated row counts (default 1e7,1e8)")
    parser.add_argument("--workdir", default=os.environ.get("CIMCAL_BENCH_DIR", "/tmp/cimcal-bench"))
    parser.add_argument("--batch-rows", type=int, default=262_144)
    parser.add_argument("--fit-only", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.fit_only:
        fit_only(args.fit_only, args.batch_rows)
        return
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    print(f"cpu count {os.cpu_count()}; shared machine: timings are noisy", flush=True)
    for text in args.rows.split(","):
        rows = int(float(text))
        path = work / f"conductance_{rows:.0e}.parquet".replace("+", "")
        start = time.perf_counter()
        total = generate(path, rows)
        print(f"{total:,} rows in {path} ({path.stat().st_size / 1e6:.0f} MB), "
              f"ready in {time.perf_counter() - start:.0f} s", flush=True)
        out = subprocess.run([sys.executable, __file__, "--fit-only", str(path), "--batch-rows",
                              str(args.batch_rows)], capture_output=True, text=True, check=True)
        figures = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"  fit: {figures['seconds']:.1f} s wall, {figures['rows_per_s'] / 1e6:.2f} M rows/s; "
              f"{figures['cpu_s']:.1f} CPU s, {figures['rows_per_cpu_s'] / 1e6:.2f} M rows per CPU-second "
              f"(two passes: single reads + read noise); {figures['cells']:,} (cell, time) groups; "
              f"peak RSS {figures['peak_rss_mb']:.0f} MB (after imports {figures['rss_after_imports_mb']:.0f} MB)",
              flush=True)


if __name__ == "__main__":
    main()
