"""What a source argument names: files, directories, hive partitions, in-memory frames.

``sources`` is one path / DataFrame or a list of them. A directory stands for every CSV and
Parquet file below it (sorted; names starting with "." or "_" skipped, as pyarrow does); the
``key=value`` directories of a hive-partitioned dataset become columns of the files below
them. Each file is its own source: error messages and row offsets refer to it.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

import pandas as pd

from cimcal.errors import DataError

__all__ = [
    "Source",
    "SourceFile",
    "CSV_SUFFIXES",
    "PARQUET_SUFFIXES",
    "as_source_list",
    "expand_sources",
    "file_format",
    "sha256_file",
    "describe_sources",
]

Source = Union[str, os.PathLike, pd.DataFrame]

CSV_SUFFIXES = (".csv", ".csv.gz", ".csv.bz2", ".csv.zst")
PARQUET_SUFFIXES = (".parquet", ".pq", ".parq")
_CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class SourceFile:
    """One readable unit: a CSV file, a Parquet file or an in-memory DataFrame."""

    name: str
    format: str  # "csv" | "parquet" | "dataframe"
    path: Path | None = None
    frame: pd.DataFrame | None = field(default=None, repr=False, compare=False)
    partition: dict[str, object] = field(default_factory=dict)


_SOURCE_TYPES = (str, os.PathLike, pd.DataFrame)


def as_source_list(sources: Source | Sequence[Source]) -> list[Source]:
    """Normalize one source or a sequence of sources into a list."""
    if isinstance(sources, (*_SOURCE_TYPES, SourceFile)):
        return [sources]
    if isinstance(sources, (list, tuple)):
        for item in sources:
            if not isinstance(item, (*_SOURCE_TYPES, SourceFile)):
                raise DataError(
                    f"a source must be a path or a pandas DataFrame, got {type(item).__name__}"
                )
        if not sources:
            raise DataError("no sources given; pass a CSV/Parquet path, a directory or a DataFrame")
        return list(sources)
    raise DataError(f"a source must be a path or a pandas DataFrame, got {type(sources).__name__}")


def file_format(path: Path) -> str | None:
    """``"csv"``, ``"parquet"`` or None from the file name's suffix."""
    name = path.name.lower()
    if name.endswith(CSV_SUFFIXES):
        return "csv"
    if name.endswith(PARQUET_SUFFIXES):
        return "parquet"
    return None


def _unsupported(path: Path) -> DataError:
    suffix = "".join(path.suffixes[-2:]) or "(no suffix)"
    return DataError(
        f"unsupported file type {suffix}; cimcal reads {', '.join(CSV_SUFFIXES)}, "
        f"{', '.join(PARQUET_SUFFIXES)} files, or a directory of them",
        path=str(path),
    )


def _hidden(relative: Path) -> bool:
    return any(part.startswith((".", "_")) for part in relative.parts)


def _partition_keys(relative: Path) -> dict[str, object]:
    """Hive ``key=value`` directories above a file (relative path), parsed by pyarrow (URI-decoded)."""
    names = [part.split("=", 1)[0] for part in relative.parent.parts if "=" in part]
    if not names:
        return {}
    import pyarrow as pa
    import pyarrow.dataset as ds

    schema = pa.schema([(name, pa.string()) for name in dict.fromkeys(names)])
    expression = ds.partitioning(schema, flavor="hive").parse("/" + relative.as_posix())
    return dict(ds.get_partition_keys(expression))


def _expand_directory(root: Path) -> list[SourceFile]:
    from pyarrow import fs

    infos = fs.LocalFileSystem().get_file_info(fs.FileSelector(str(root), recursive=True))
    files: list[SourceFile] = []
    for info in sorted(infos, key=lambda item: item.path):
        if info.type != fs.FileType.File:
            continue
        path = Path(info.path)
        relative = path.relative_to(root)
        if _hidden(relative):
            continue
        fmt = file_format(path)
        if fmt is None:
            raise _unsupported(path)
        files.append(SourceFile(str(path), fmt, path, partition=_partition_keys(relative)))
    if not files:
        raise DataError("empty input: no CSV or Parquet files in this directory", path=str(root))
    return files


def expand_sources(sources: Source | Sequence[Source]) -> list[SourceFile]:
    """Every file (or DataFrame) the sources stand for, in order.

    A :class:`SourceFile` from an earlier call passes through unchanged (with its hive
    partition values), so one file of a dataset can be read on its own, e.g. by a Dask task.
    """
    expanded: list[SourceFile] = []
    n_frames = 0
    for item in as_source_list(sources):
        if isinstance(item, SourceFile):
            expanded.append(item)
            continue
        if isinstance(item, pd.DataFrame):
            expanded.append(SourceFile(f"<DataFrame {n_frames}>", "dataframe", frame=item))
            n_frames += 1
            continue
        path = Path(os.fspath(item))
        if path.is_dir():
            expanded.extend(_expand_directory(path))
        elif path.is_file():
            fmt = file_format(path)
            if fmt is None:
                raise _unsupported(path)
            expanded.append(SourceFile(str(path), fmt, path))
        elif path.exists():
            raise DataError("not a regular file or directory", path=str(path))
        else:
            raise DataError("no such file or directory", path=str(path))
    seen: dict[Path, str] = {}
    for source in expanded:  # a file named twice (or a folder and a file in it) would count its rows twice
        if source.path is not None:
            key = Path(os.path.normpath(os.path.abspath(source.path)))  # symlinks kept: linked files are distinct
            if key in seen:
                raise DataError(f"named twice among the sources (first as {seen[key]}): its rows would count twice",
                                path=source.name)
            seen[key] = source.name
    return expanded


def sha256_file(path: str | os.PathLike, chunk_bytes: int = _CHUNK_BYTES) -> str:
    """SHA-256 of a file's bytes, streamed in chunks (bounded memory for any size)."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            while block := handle.read(chunk_bytes):
                digest.update(block)
    except OSError as err:
        raise DataError(f"cannot read file: {err.strerror or err}", path=str(path)) from err
    return digest.hexdigest()


def _sha256_frame(frame: pd.DataFrame) -> str:
    """Content hash of a DataFrame: its column names and pandas' per-row value hashes."""
    digest = hashlib.sha256()
    digest.update("\x1f".join(map(str, frame.columns)).encode())
    try:
        digest.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    except TypeError:  # unhashable cells (lists, dicts): fall back to their text
        digest.update(frame.astype(str).to_csv(index=False).encode())
    return digest.hexdigest()


def describe_sources(sources: Source | Sequence[Source]) -> list[dict]:
    """Provenance of every file the sources stand for.

    One dict per file: ``path``, ``sha256`` (streamed), ``rows`` (data rows), ``format``
    ("csv", "parquet" or "dataframe"), ``size_bytes`` (None for a DataFrame) and
    ``partition`` (hive ``key=value`` pairs above the file; empty for plain files).
    """
    from cimcal.data.formats import count_rows

    described = []
    for source in expand_sources(sources):
        if source.frame is not None:
            described.append(
                {
                    "path": source.name,
                    "sha256": _sha256_frame(source.frame),
                    "rows": int(len(source.frame)),
                    "format": "dataframe",
                    "size_bytes": None,
                    "partition": {},
                }
            )
            continue
        described.append(
            {
                "path": source.name,
                "sha256": sha256_file(source.path),
                "rows": count_rows(source),
                "format": source.format,
                "size_bytes": source.path.stat().st_size,
                "partition": {key: value for key, value in source.partition.items()},
            }
        )
    return described
