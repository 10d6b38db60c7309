"""Small canonical tables and file writers shared by the data-layer tests."""


from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq


def make_conductance(n_cells: int = 24, reads: int = 2, t_s=(1.0, 10.0), seed: int = 0, chip_id=None) -> pd.DataFrame:
    """One row per read: n_cells cells on a 4-column array, several reads and times."""
    rng = np.random.default_rng(seed)
    cells = np.arange(n_cells)
    level = cells % 4
    rows = []
    for t in t_s:
        for read in range(reads):
            rows.append(
                pd.DataFrame(
                    {
                        "row": cells // 4,
                        "col": cells % 4,
                        "level": level,
                        "g_us": 5.0 + 10.0 * level + rng.normal(0, 0.5, n_cells).clip(-4, 4),
                        "t_s": np.full(n_cells, t),
                        "read_idx": np.full(n_cells, read),
                    }
                )
            )
    table = pd.concat(rows, ignore_index=True)
    if chip_id is not None:
        table.insert(4, "chip_id", chip_id)
    return table


def make_adc(n_inputs: int = 16, cols: int = 2, repeats: int = 2) -> pd.DataFrame:
    inputs = np.linspace(0.0, 10.0, n_inputs)
    parts = []
    for col in range(cols):
        for rep in range(repeats):
            parts.append(
                pd.DataFrame(
                    {"col": col, "input": inputs, "code": np.clip(np.round(inputs * 6.3) + rep % 2, 0, 63).astype(int),
                     "repeat": rep}
                )
            )
    return pd.concat(parts, ignore_index=True)


def write_parquet(df: pd.DataFrame, path: Path, metadata: dict | None = None, **kwargs) -> Path:
    table = pa.Table.from_pandas(df, preserve_index=False)
    if metadata:
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), **metadata})
    pq.write_table(table, path, **kwargs)
    return path


def write_csv(df: pd.DataFrame, path: Path) -> Path:
    df.to_csv(path, index=False)
    return path


