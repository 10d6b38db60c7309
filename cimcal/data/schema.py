"""The two measurement table kinds and their column contract.

Tables are tidy and long: one row per read (conductance) or per conversion (ADC). Units live
in column names. See docs/data-format.md for the user-facing description.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = [
    "SCHEMA_VERSION",
    "Column",
    "TableKind",
    "UnitAlias",
    "CONDUCTANCE",
    "ADC",
    "KINDS",
    "UNIT_ALIASES",
    "kind_of",
]

SCHEMA_VERSION = "1"

# Reads belong to one time point when their t_s lie within 0.1 of each other in log1p(t_s) (about 10 % in
# time): campaigns and lab tools timestamp each cell, so one nominal time point spreads over a second or
# more. A new time point starts at a gap wider than this. `cimcal info`, the fit and validation share it.
TIME_POINT_GAP_LOG1P = 0.1


def time_point_groups(t_s: Sequence[float]) -> list[tuple[float, float]]:
    """Cluster ``t_s`` values into time points; ``(min t_s, max t_s)`` of each, in increasing time."""
    import numpy as np

    values = np.unique(np.asarray(t_s, dtype=float))
    if values.size == 0:
        return []
    starts = np.flatnonzero(np.diff(np.log1p(values)) > TIME_POINT_GAP_LOG1P) + 1
    return [(float(g[0]), float(g[-1])) for g in np.split(values, starts)]


@dataclass(frozen=True)
class Column:
    """One column of the contract: its name, its kind of value and what it means."""

    name: str
    dtype: str  # "int" (integer, >= 0 unless noted), "float", or "str"
    doc: str
    nonnegative: bool = False
    unit: str = ""  # SI-style unit symbol written to the Parquet metadata ("uS", "s", ...); "" = none


@dataclass(frozen=True)
class TableKind:
    """A table kind: its required and optional columns.

    ``key`` names the columns that identify one measurement of one chip, and ``repeat`` the
    column numbering repeated measurements of the same thing. When a table has ``repeat`` but
    no ``chip_id``, a key that occurs twice means two chips were pasted together (see
    docs/data-format.md, "Mixed chips").
    """

    name: str
    required: tuple[Column, ...]
    optional: tuple[Column, ...] = field(default_factory=tuple)
    key: tuple[str, ...] = field(default_factory=tuple)
    repeat: str | None = None

    @property
    def columns(self) -> dict[str, Column]:
        return {c.name: c for c in (*self.required, *self.optional)}

    @property
    def required_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.required)


CONDUCTANCE = TableKind(
    name="conductance",
    required=(
        Column("row", "int", "cell row within the array", nonnegative=True),
        Column("col", "int", "cell column within the array", nonnegative=True),
        Column("level", "int", "target level index the cell was programmed to", nonnegative=True),
        Column("g_us", "float", "measured conductance, microsiemens", nonnegative=True, unit="uS"),
    ),
    optional=(
        Column("chip_id", "str", "chip identifier; required when a dump mixes chips"),
        Column("array", "int", "array (tile) index on the chip", nonnegative=True),
        Column(
            "g_target_us", "float", "target conductance of the level, microsiemens", nonnegative=True, unit="uS"
        ),
        Column("t_s", "float", "seconds since the cell was programmed", nonnegative=True, unit="s"),
        Column("read_idx", "int", "index of the repeated read of the same cell", nonnegative=True),
        Column("temp_c", "float", "chip temperature, degrees Celsius", unit="degC"),
        Column("v_read_v", "float", "read voltage, volts", unit="V"),
    ),
    key=("array", "row", "col", "level", "t_s", "read_idx"),
    repeat="read_idx",
)

ADC = TableKind(
    name="adc",
    required=(
        Column("input", "float", "ideal pre-ADC value, in the units the tester reports"),
        Column("code", "int", "output code", nonnegative=True),
    ),
    optional=(
        # `col` is part of the contract for per-column models; without it the ADC model is pooled.
        Column("col", "int", "physical ADC column", nonnegative=True),
        Column("chip_id", "str", "chip identifier; required when a dump mixes chips"),
        Column("array", "int", "array (tile) index on the chip", nonnegative=True),
        Column("repeat", "int", "index of the repeated conversion of the same input", nonnegative=True),
        Column("temp_c", "float", "chip temperature, degrees Celsius", unit="degC"),
    ),
    key=("array", "col", "input", "repeat"),
    repeat="repeat",
)

KINDS = {"conductance": CONDUCTANCE, "adc": ADC}




@dataclass(frozen=True)
class UnitAlias:
    """A foreign column that converts into a canonical one.

    ``canonical = factor * value`` for conductances, ``canonical = factor / value`` for
    resistances (``inverse=True``): 1 / (R in ohm) siemens = 1e6 / R microsiemens.
    """

    name: str
    factor: float
    inverse: bool = False


# Canonical column -> the foreign columns it may be computed from, in no order of preference:
# a table holding the canonical column uses it and ignores these; a table holding several of
# these (and not the canonical column) is ambiguous and rejected.
UNIT_ALIASES: dict[str, tuple[UnitAlias, ...]] = {
    "g_us": (
        UnitAlias("g_s", 1e6),
        UnitAlias("g_ms", 1e3),
        UnitAlias("g_ns", 1e-3),
        UnitAlias("r_ohm", 1e6, inverse=True),
        UnitAlias("r_kohm", 1e3, inverse=True),
    ),
    "g_target_us": (
        UnitAlias("g_target_s", 1e6),
        UnitAlias("g_target_ms", 1e3),
        UnitAlias("g_target_ns", 1e-3),
        UnitAlias("r_target_ohm", 1e6, inverse=True),
        UnitAlias("r_target_kohm", 1e3, inverse=True),
    ),
}


def kind_of(name: str | TableKind) -> TableKind:
    """Return the :class:`TableKind` named ``name`` ("conductance" or "adc")."""
    if isinstance(name, TableKind):
        return name
    try:
        return KINDS[name]
    except KeyError:
        from cimcal.errors import ConfigError

        raise ConfigError(f"unknown table kind {name!r}; expected one of {sorted(KINDS)}") from None
