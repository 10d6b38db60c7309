"""Click options shared by several ``cimcal`` subcommands."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import click

from cimcal.errors import ConfigError

__all__ = ["parse_column_map", "column_map_option"]

F = TypeVar("F", bound=Callable[..., Any])


def parse_column_map(items: Iterable[str]) -> dict[str, str]:
    """``["G=g_us", "Row=row"]`` -> ``{"G": "g_us", "Row": "row"}``; ConfigError on bad items.

    Each item is ``OLD=NEW`` (split at the first ``=``; surrounding spaces ignored). One old
    name may not be mapped twice, and two old names may not land on the same new one.
    """
    mapping: dict[str, str] = {}
    for item in items:
        old, sep, new = str(item).partition("=")
        old, new = old.strip(), new.strip()
        if not sep or not old or not new:
            raise ConfigError(f"--map {item!r}: expected OLD=NEW, e.g. --map G=g_us")
        if old in mapping and mapping[old] != new:
            raise ConfigError(f"--map maps {old!r} twice ({mapping[old]!r} and {new!r}); keep one")
        mapping[old] = new
    targets: dict[str, str] = {}
    for old, new in mapping.items():
        if new in targets:
            raise ConfigError(f"--map sends both {targets[new]!r} and {old!r} to {new!r}; keep one")
        targets[new] = old
    return mapping


def _parse_callback(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> dict[str, str]:
    return parse_column_map(value)


def column_map_option(command: F) -> F:
    """Add ``--map OLD=NEW`` (repeatable); the command receives ``column_map: dict[str, str]``."""
    return click.option(
        "--map",
        "column_map",
        multiple=True,
        metavar="OLD=NEW",
        callback=_parse_callback,
        help="Rename a column of the input tables before reading, e.g. --map G=g_us (repeatable). "
        "Unit columns g_s, g_ms, g_ns, r_ohm, r_kohm convert to g_us by themselves.",
    )(command)
