"""The on-disk state of a campaign: Parquet part files plus an atomically replaced manifest.

Layout of an output directory::

    OUT/_manifest.json         the campaign: options, provenance, chip state, committed chunks
    OUT/part-00000.parquet     one file per committed chunk (cimcal.data.write_table, with metadata)
    OUT/.staging/              a chunk being written (ignored by readers: hidden directory)

A chunk is committed in three steps: its part file is written to ``.staging``, fsynced and renamed
into ``OUT``; then the manifest listing it is written to a temporary file, fsynced and renamed over
``manifest.json`` (and the directory fsynced). Whatever instant the process dies at (Ctrl-C,
kill -9, a dead connection), the manifest names exactly the part files that are complete; a part
file the manifest does not list is an orphan of the interrupted chunk and is deleted on resume, so
the chunk is redone: no row is lost and none is written twice.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pandas as pd

from cimcal.errors import ConfigError

__all__ = ["CampaignStore", "MANIFEST_NAME", "MANIFEST_FORMAT"]

MANIFEST_NAME = "_manifest.json"  # "_" prefix: pyarrow.dataset discovery skips it
MANIFEST_FORMAT = "cimcal-campaign/1"


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # e.g. platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class CampaignStore:
    """A campaign's output directory: create or resume, commit chunks, keep chip state.

    A directory whose manifest lists no committed chunk (a run refused or killed before its first
    chunk) holds nothing worth keeping: opening it again, with or without ``resume``, is allowed
    (with ``resume`` and the same options its chip state is kept; otherwise it starts afresh).

    Use :meth:`create` for a fresh run and :meth:`resume` to continue one; both return a store
    whose :attr:`manifest` is the committed truth.
    """

    def __init__(self, directory: Path, manifest: dict[str, Any]) -> None:
        self.directory = directory
        self.manifest = manifest

    # ----- opening -------------------------------------------------------------------------
    @classmethod
    def open(cls, directory: str | os.PathLike, *, campaign: str, kind: str, options: dict[str, Any],
             resume: bool) -> "CampaignStore":
        """Create ``directory`` for a new campaign, or (``resume=True``) continue the one in it."""
        path = Path(directory)
        manifest_path = path / MANIFEST_NAME
        if manifest_path.exists():
            store = cls(path, cls._load(manifest_path))
            if store.n_committed == 0 and not (resume and store._same(campaign, options)):
                # a run refused or stopped before its first chunk: nothing to keep, start afresh
                store._drop_orphans()
                manifest_path.unlink()
                return cls.open(path, campaign=campaign, kind=kind, options=options, resume=False)
            if not resume:
                raise ConfigError(f"{path} already holds a campaign ({MANIFEST_NAME}) with {store.n_committed} "
                                  "committed chunk(s); pass --resume to continue it or choose another output "
                                  "directory")
            store._check_same(campaign, options)
            store._drop_orphans()
            return store
        if path.exists() and any(p for p in path.iterdir() if p.name != ".staging"):
            raise ConfigError(f"{path} exists, is not empty and has no {MANIFEST_NAME}; choose an empty or "
                              "new output directory")
        path.mkdir(parents=True, exist_ok=True)
        manifest = {
            "format": MANIFEST_FORMAT, "campaign": campaign, "kind": kind, "options": options,
            "created": _now(), "updated": _now(), "complete": False,
            "provenance": {}, "chip_state": {}, "chunks": [],
        }
        store = cls(path, manifest)
        store._write_manifest()
        return store

    @staticmethod
    def _load(manifest_path: Path) -> dict[str, Any]:
        try:
            manifest = json.loads(manifest_path.read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{manifest_path}: unreadable campaign manifest ({exc})") from exc
        if manifest.get("format") != MANIFEST_FORMAT:
            raise ConfigError(f"{manifest_path}: unknown manifest format {manifest.get('format')!r}, "
                              f"expected {MANIFEST_FORMAT!r}")
        return manifest

    def _same(self, campaign: str, options: dict[str, Any]) -> bool:
        return self.manifest["campaign"] == campaign and self.manifest["options"] == options

    def _check_same(self, campaign: str, options: dict[str, Any]) -> None:
        path = self.directory / MANIFEST_NAME
        if self.manifest["campaign"] != campaign:
            raise ConfigError(f"{path}: holds a {self.manifest['campaign']!r} campaign, not {campaign!r}")
        recorded = self.manifest["options"]
        changed = sorted(k for k in set(recorded) | set(options) if recorded.get(k) != options.get(k))
        if changed:
            diffs = ", ".join(f"{k}: {recorded.get(k)!r} -> {options.get(k)!r}" for k in changed)
            raise ConfigError(f"{path}: --resume needs the same campaign options; changed {diffs}")

    def _drop_orphans(self) -> None:
        committed = {c["file"] for c in self.manifest["chunks"]}
        for part in self.directory.glob("part-*"):
            if part.name not in committed:
                part.unlink()
        shutil.rmtree(self.directory / ".staging", ignore_errors=True)

    # ----- state -------------------------------------------------------------------------
    @property
    def n_committed(self) -> int:
        return len(self.manifest["chunks"])

    @property
    def complete(self) -> bool:
        return bool(self.manifest["complete"])

    def update(self, section: str, **values: Any) -> None:
        """Set keys of ``provenance`` or ``chip_state`` and write the manifest atomically."""
        self.manifest[section].update(values)
        self._write_manifest()

    def commit_chunk(self, index: int, table: pd.DataFrame, kind: str, metadata: dict[str, Any],
                     *, started: str) -> Path:
        """Write chunk ``index`` as a part file, fsync it, then record it in the manifest."""
        from cimcal.data import write_table  # the data layer writes tables with provenance metadata

        if index != self.n_committed:
            raise ConfigError(f"chunk {index} committed out of order (expected {self.n_committed})")
        name = f"part-{index:05d}.parquet"
        staging = self.directory / ".staging"
        staging.mkdir(exist_ok=True)
        tmp = staging / name
        write_table(table, tmp, kind, metadata=metadata)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        final = self.directory / name
        os.replace(tmp, final)
        _fsync_dir(self.directory)
        self.manifest["chunks"].append({
            "index": index, "file": name, "rows": int(len(table)), "sha256": _sha256(final),
            "started": started, "finished": _now(),
        })
        self._write_manifest()
        return final

    def finish(self) -> None:
        """Mark the campaign complete and remove the staging directory."""
        self.manifest["complete"] = True
        self._write_manifest()
        shutil.rmtree(self.directory / ".staging", ignore_errors=True)

    def part_files(self) -> list[Path]:
        return [self.directory / c["file"] for c in self.manifest["chunks"]]

    def _write_manifest(self) -> None:
        self.manifest["updated"] = _now()
        tmp = self.directory / (MANIFEST_NAME + ".tmp")
        with open(tmp, "w") as fh:
            json.dump(self.manifest, fh, indent=1, sort_keys=False, default=str)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.directory / MANIFEST_NAME)
        _fsync_dir(self.directory)
