"""``cimcal info``: what measurement tables hold (thin: parse, call cimcal.data.summarize, print)."""

from __future__ import annotations

import json
import sys

import click

from cimcal.cli.options import column_map_option

__all__ = ["info", "format_summary"]

_UNITS = {"g_us": "uS", "g_target_us": "uS", "t_s": "s", "temp_c": "degC", "v_read_v": "V"}


def _number(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _values(values: list | None, truncated: bool = False, unit: str = "") -> str:
    """Compact list: runs of consecutive integers as ranges, long lists elided."""
    if values is None:
        return "-"
    if not values:
        return "none"
    count = f"{len(values)}{'+' if truncated else ''}"
    if all(isinstance(v, int) for v in values) and values == list(range(values[0], values[-1] + 1)):
        text = str(values[0]) if len(values) == 1 else f"{values[0]}-{values[-1]}"
    elif len(values) <= 10:
        text = ", ".join(_number(v) for v in values)
    else:
        text = ", ".join(_number(v) for v in values[:4]) + ", ..., " + ", ".join(_number(v) for v in values[-2:])
    text += f" {unit}" if unit else ""
    return text if len(values) == 1 else f"{text} ({count} values)"


def format_summary(summary: dict) -> str:
    """The human-readable ``cimcal info`` text for a :func:`cimcal.data.summarize` dict."""
    sources = summary["sources"]
    lines = [f"{summary['kind']} table: {summary['rows']:,} rows from {len(sources)} source{'s' * (len(sources) != 1)}"]
    for source in sources[:10]:
        lines.append(f"  {source['path']}  {source['rows']:,} rows")
    if len(sources) > 10:
        lines.append(f"  ... and {len(sources) - 10} more")
    lines.append(f"columns      {', '.join(summary['columns'])}")
    if summary["ignored_columns"]:
        lines.append(f"ignored      {', '.join(summary['ignored_columns'])} (not in the contract; see --map)")
    keys = ["chips", "arrays", "levels", "time_points_s"] if summary["kind"] == "conductance" else [
        "chips", "arrays", "cols", "repeats"
    ]
    for key in keys:
        label = "time points" if key == "time_points_s" else key
        unit = "s" if key == "time_points_s" else ""
        text = _values(summary.get(key), summary.get(f"{key}_truncated", False), unit)
        groups = summary.get("time_point_groups_s") if key == "time_points_s" else None
        if groups and (summary.get(f"{key}_truncated") or len(groups) < len(summary[key])):
            # per-cell timestamps: show the time points they form, as the fit will group them
            spans = ", ".join(
                _number(lo) if lo == hi else f"{_number(lo)}..{_number(hi)}" for lo, hi in groups[:8]
            )
            more = f", ... ({len(groups)} in all)" if len(groups) > 8 else ""
            text = f"{len(groups)} ({spans}{more} s), from {text}"
        lines.append(f"{label:<12} {text}")
    lines.append("ranges")
    for name, (low, high) in summary["ranges"].items():
        unit = _UNITS.get(name, "")
        lines.append(f"  {name:<12} {_number(low)} .. {_number(high)}{' ' + unit if unit else ''}")
    return "\n".join(lines)


@click.command("info")
@click.argument("paths", nargs=-1, required=True, metavar="PATH...")
@click.option(
    "--kind",
    type=click.Choice(["conductance", "adc", "auto"]),
    default="auto",
    show_default=True,
    help="Table kind; auto decides from the columns.",
)
@column_map_option
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def info(paths: tuple[str, ...], kind: str, column_map: dict[str, str], as_json: bool) -> None:
    """Summarise measurement tables: rows, chips, arrays, levels, columns, time points, ranges.

    PATH is a CSV or Parquet file or a directory (hive partitions allowed); several are read
    as one table. Reads in bounded batches, so any size works.
    """
    from cimcal.data import summarize

    summary = summarize(list(paths), kind, column_map or None, progress=sys.stderr.isatty())
    click.echo(json.dumps(summary, indent=2) if as_json else format_summary(summary))
