"""The two measurement table kinds and their column contract.

Tables are tidy and long: one row per read (conductance) or per conversion (ADC). Units live
in column names. See docs/data-format.md for the user-facing description.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["SCHEMA_VERSION", "Column", "TableKind", "CONDUCTANCE", "ADC", "KINDS", "kind_of"]

SCHEMA_VERSION = "1"


@dataclass(frozen=True)
class Column:
    """One column of the contract: its name, its kind of value and what it means."""

    name: str
    dtype: str  # "int" (integer, >= 0 unless noted), "float", or "str"
    doc: str
    nonnegative: bool = False


@dataclass(frozen=True)
class TableKind:
    name: str
    required: tuple[Column, ...]
    optional: tuple[Column, ...] = field(default_factory=tuple)

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
        Column("g_us", "float", "measured conductance, microsiemens", nonnegative=True),
    ),
    optional=(
        Column("chip_id", "str", "chip identifier; required when a dump mixes chips"),
        Column("array", "int", "array (tile) index on the chip", nonnegative=True),
        Column("g_target_us", "float", "target conductance of the level, microsiemens", nonnegative=True),
        Column("t_s", "float", "seconds since the cell was programmed", nonnegative=True),
        Column("read_idx", "int", "index of the repeated read of the same cell", nonnegative=True),
        Column("temp_c", "float", "chip temperature, degrees Celsius"),
        Column("v_read_v", "float", "read voltage, volts"),
    ),
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
        Column("temp_c", "float", "chip temperature, degrees Celsius"),
    ),
)

KINDS = {"conductance": CONDUCTANCE, "adc": ADC}


def kind_of(name: str | TableKind) -> TableKind:
    """Return the :class:`TableKind` named ``name`` ("conductance" or "adc")."""
    if isinstance(name, TableKind):
        return name
    try:
        return KINDS[name]
    except KeyError:
        from cimcal.errors import ConfigError

        raise ConfigError(f"unknown table kind {name!r}; expected one of {sorted(KINDS)}") from None
