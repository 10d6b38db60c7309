"""Resumable programming: a small JSON state file recording which array holds which slot.

Keyed by the checkpoint's sha256, the profile's sha256 and the chip's ``*IDN?``; a state file for another
checkpoint, profile or chip is ignored (everything is programmed afresh). Per array it records the slot
(key and cell-list digest), for every programming chunk the chip finished the sha256 of the chip's own
``PROG:TIME?`` stamps of that chunk's cells, and, once pair compensation ran, the cells it moved
(``moves``: cell index -> level). On a rerun a chunk is skipped only if the chip still reports exactly
those stamps (so nothing reprogrammed it since), no cell of it reads ``PROG:RES?`` = 0 and its cells are
not older than the profile's drift data (:class:`~cimcal.deploy_chip.ChipRunner` reprograms them and says
so). The chip stays the source of truth; the file only says what to compare against. A file that is not
valid JSON or not of this structure counts as absent.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["DeployState", "stamp_digest"]

STATE_VERSION = 1


def stamp_digest(times_s: np.ndarray, results: np.ndarray) -> str:
    """sha256 of programming time stamps (float64) and pulse counts (int16) of a set of cells."""
    h = hashlib.sha256(np.ascontiguousarray(times_s, dtype="<f8").tobytes())
    h.update(np.ascontiguousarray(results, dtype="<i2").tobytes())
    return h.hexdigest()


def _well_formed(data: Any) -> bool:
    """True if ``data`` has the structure :meth:`DeployState.save` writes."""
    if not isinstance(data, dict) or not isinstance(data.get("arrays"), dict) or not {"version", "key"} <= data.keys():
        return False
    return all(
        isinstance(record, dict) and isinstance(record.get("slot"), str) and isinstance(record.get("digest"), str)
        and isinstance(record.get("chunks"), dict) and all(isinstance(v, str) for v in record["chunks"].values())
        for record in data["arrays"].values()
    )


class DeployState:
    """The state file of one (checkpoint, chip) pair; ``path=None`` keeps it in memory only."""

    def __init__(self, path: str | os.PathLike | None, key: str) -> None:
        self.path = None if path is None else Path(path)
        self.key = key
        self.arrays: dict[str, dict[str, Any]] = {}
        self.resumed = False
        if self.path is not None and self.path.is_file():
            try:
                data = json.loads(self.path.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError):
                data = {}
            # a file of another shape (edited, or not a state file) counts as absent, like bad JSON
            if _well_formed(data) and data["version"] == STATE_VERSION and data["key"] == key:
                self.arrays = data["arrays"]
                self.resumed = bool(self.arrays)

    def holds(self, array: int, slot_key: str, digest: str) -> dict[str, Any] | None:
        """The record of ``array`` if it was (being) programmed with this slot, else None."""
        record = self.arrays.get(str(array))
        if record and record.get("slot") == slot_key and record.get("digest") == digest:
            return record
        return None

    def start(self, array: int, slot_key: str, digest: str) -> dict[str, Any]:
        """A new programming of ``array`` with a slot: forget what it held before."""
        record = {"slot": slot_key, "digest": digest, "chunks": {}}
        self.arrays[str(array)] = record
        self.save()
        return record

    def chunk_done(self, array: int, chunk: int, stamp: str) -> None:
        self.arrays[str(array)]["chunks"][str(chunk)] = stamp
        self.save()

    def compensated(self, array: int, moves: dict[str, int] | None, stamps: dict[str, str]) -> None:
        """Pair compensation of ``array``'s slot done: the moved cells (cell index -> chip level; None: the slot is
        as planned, without compensation) and every chunk's stamps after it."""
        record = self.arrays[str(array)]
        if moves is None:
            record.pop("moves", None)
        else:
            record["moves"] = moves
        record["chunks"].update(stamps)
        self.save()

    def save(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps({"version": STATE_VERSION, "key": self.key, "arrays": self.arrays}, indent=1),
                       encoding="utf-8")
        os.replace(tmp, self.path)
