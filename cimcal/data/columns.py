"""Resolve a source's own column names onto the contract: ``--map``, unit aliases, selection.

Pure bookkeeping on names, done once per source before any row is read, so a dump that can
never work (a required column missing, two columns claiming the same name) fails at once.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from cimcal.data.schema import UNIT_ALIASES, TableKind, UnitAlias
from cimcal.errors import ConfigError, DataError

__all__ = ["ColumnPlan", "check_column_map", "check_selection", "plan_columns", "suggest_name"]


@dataclass(frozen=True)
class ColumnPlan:
    """How one source's raw columns become canonical ones.

    ``read`` are the raw columns to read from the file; ``rename`` maps raw names to names
    after ``--map``; ``direct`` are canonical columns present as such, ``converted`` the
    canonical columns computed from a unit alias; ``constants`` canonical columns whose single
    value comes from a hive partition or the file's metadata (raw text, validated later).
    """

    read: tuple[str, ...]
    rename: dict[str, str]
    direct: tuple[str, ...]
    converted: dict[str, UnitAlias]
    constants: dict[str, object] = field(default_factory=dict)
    ignored: tuple[str, ...] = ()

    @property
    def produced(self) -> tuple[str, ...]:
        """Canonical columns this source yields (any order)."""
        return (*self.direct, *self.converted, *self.constants)


def check_column_map(column_map: Mapping[str, str] | None) -> dict[str, str]:
    """Return ``column_map`` as a plain ``{old: new}`` dict, or raise :class:`ConfigError`."""
    if column_map is None:
        return {}
    if not isinstance(column_map, Mapping):
        raise ConfigError(f"column_map must be a mapping {{old: new}}, got {type(column_map).__name__}")
    mapping: dict[str, str] = {}
    for old, new in column_map.items():
        if not isinstance(old, str) or not isinstance(new, str) or not old or not new:
            raise ConfigError(f"column_map entries must be non-empty names, got {old!r}: {new!r}")
        mapping[old] = new
    targets = list(mapping.values())
    for new in set(targets):
        olds = [old for old, target in mapping.items() if target == new]
        if len(olds) > 1:
            raise ConfigError(f"column_map sends several columns to {new!r} ({', '.join(olds)}); keep one")
    return mapping


def check_selection(columns: Iterable[str] | None, kind: TableKind) -> tuple[str, ...] | None:
    """Validate a ``columns=`` selection against the contract of ``kind``."""
    if columns is None:
        return None
    if isinstance(columns, str):
        columns = [columns]
    selected = tuple(dict.fromkeys(columns))
    if not selected:
        raise ConfigError("columns= must name at least one column (or be None for all)")
    unknown = [c for c in selected if c not in kind.columns]
    if unknown:
        raise ConfigError(
            f"unknown {kind.name} column(s) {', '.join(map(repr, unknown))} in columns=; "
            f"expected some of {', '.join(kind.columns)}"
        )
    return selected


def suggest_name(missing: str, available: Iterable[str]) -> str | None:
    lowered = {name.lower(): name for name in available}
    hits = difflib.get_close_matches(missing.lower(), list(lowered), n=1, cutoff=0.6)
    return lowered[hits[0]] if hits else None


def _missing_message(kind: TableKind, missing: list[str], present: list[str], unused_map: list[str]) -> str:
    names = ", ".join(repr(m) for m in missing)
    shown = ", ".join(present[:20]) + (f", ... ({len(present)} columns)" if len(present) > 20 else "")
    text = f"missing required {kind.name} column{'s' if len(missing) > 1 else ''} {names}"
    text += f"; the source has: {shown or 'no columns'}"
    hints = []
    for name in missing:
        guess = suggest_name(name, present)
        if guess is not None:
            hints.append(f"--map {guess}={name}")
    if hints:
        text += f"; rename with {' '.join(hints)}"
    else:
        text += "; rename your columns with --map OLD=NEW"
    if len(present) == 1 and any(sep in present[0] for sep in (";", "\t", "|")):
        text += "; the header looks like one column: cimcal reads comma-separated CSV"
    if "g_us" in missing:
        text += " (g_us may also come from g_s, g_ms, g_ns, r_ohm or r_kohm)"
    if unused_map:
        text += f"; --map names not in this source: {', '.join(unused_map)}"
    return text


def plan_columns(
    raw_names: list[str],
    kind: TableKind,
    column_map: Mapping[str, str],
    *,
    path: str,
    partition: Mapping[str, object] | None = None,
    metadata_chip_id: str | None = None,
    selected: tuple[str, ...] | None = None,
) -> ColumnPlan:
    """Plan how the raw columns of one source (plus partition keys and metadata) become canonical.

    Raises :class:`DataError` naming ``path`` for duplicate names, ambiguous unit columns and
    missing required columns.
    """
    seen: set[str] = set()
    for name in raw_names:
        if name in seen:
            raise DataError("duplicate column name; every column needs its own name", path=path, column=name)
        seen.add(name)
    # Surrounding spaces in a header ("row, col, level, g_us") are not part of the name.
    mapped = {
        name: column_map[name] if name in column_map else column_map.get(name.strip(), name.strip())
        for name in raw_names
    }
    owners: dict[str, str] = {}
    for raw, new in mapped.items():
        if new in owners:
            raise DataError(
                f"two columns end up named {new!r} ({owners[new]!r} and {raw!r}); fix --map",
                path=path,
                column=new,
            )
        owners[new] = raw

    # Partition keys (and the metadata chip id) fill contract columns the file does not hold.
    constants: dict[str, object] = {}
    for key, value in (partition or {}).items():
        new = column_map.get(key, key)
        if new in kind.columns and new not in owners:
            constants[new] = value
    if metadata_chip_id is not None and "chip_id" not in owners and "chip_id" not in constants:
        constants["chip_id"] = metadata_chip_id

    direct: list[str] = []
    converted: dict[str, UnitAlias] = {}
    for name in kind.columns:
        if name in owners:
            direct.append(name)
            continue
        aliases = [alias for alias in UNIT_ALIASES.get(name, ()) if alias.name in owners]
        if len(aliases) > 1:
            raise DataError(
                f"several columns could give {name!r} ({', '.join(a.name for a in aliases)}); "
                f"keep one, or --map one of them to {name}",
                path=path,
                column=aliases[0].name,
            )
        if aliases:
            converted[name] = aliases[0]

    available = set(direct) | set(converted) | set(constants)
    missing = [name for name in kind.required_names if name not in available]
    if missing:
        stripped = {name.strip() for name in seen}
        known = seen | stripped | set(partition or {})
        unused = [old for old in column_map if old not in known]
        present = [*raw_names, *(partition or {})]
        raise DataError(_missing_message(kind, missing, present, unused), path=path, column=missing[0])

    if selected is not None:
        absent = [name for name in selected if name not in available]
        if absent:
            raise DataError(
                f"requested column{'s' if len(absent) > 1 else ''} {', '.join(map(repr, absent))} "
                "not in this source",
                path=path,
                column=absent[0],
            )
        keep = set(selected)
        direct = [name for name in direct if name in keep]
        converted = {name: alias for name, alias in converted.items() if name in keep}
        constants = {name: value for name, value in constants.items() if name in keep}

    wanted = set(direct) | {alias.name for alias in converted.values()}
    read = tuple(raw for raw in raw_names if mapped[raw] in wanted and mapped[raw] not in constants)
    rename = {raw: mapped[raw] for raw in read if mapped[raw] != raw}
    used = set(read)
    ignored = tuple(raw for raw in raw_names if raw not in used)
    return ColumnPlan(
        read=read,
        rename=rename,
        direct=tuple(direct),
        converted=converted,
        constants=constants,
        ignored=ignored,
    )
