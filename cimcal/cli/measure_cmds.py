"""``cimcal measure levels|readnoise|drift|adc`` and ``cimcal sim serve``: parse, delegate, print."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from cimcal.errors import CimcalError, ConfigError, InstrumentError

__all__ = ["measure", "sim"]


def _span(text: str | None, name: str) -> tuple[int, int] | None:
    if text is None:
        return None
    start, sep, stop = text.partition(":")
    try:
        if not sep:
            raise ValueError
        return int(start), int(stop)
    except ValueError:
        raise ConfigError(f"--{name} must look like START:STOP (half-open), got {text!r}") from None


def _numbers(text: str | None, name: str, cast: type = float) -> tuple[Any, ...] | None:
    if text is None:
        return None
    try:
        return tuple(cast(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise ConfigError(f"--{name} must be a comma-separated list of numbers, got {text!r}") from None


def _connection_options(f):
    options = [
        click.option("--resource", default="sim", show_default=True,
                     help="VISA resource string, or 'sim' for the simulated chip served in-process."),
        click.option("-o", "--output", "output", required=True, type=click.Path(file_okay=False),
                     help="Output directory (Parquet part files + _manifest.json)."),
        click.option("--resume", is_flag=True, help="Continue the campaign already in the output directory."),
        click.option("--preset", default="rram", show_default=True, help="Simulated chip preset (sim only)."),
        click.option("--sim-config", type=click.Path(dir_okay=False, exists=True),
                     help="Simulated chip TOML config (sim only; overrides --preset; its [faults] table applies "
                     "unless --faults is given)."),
        click.option("--seed", default=0, show_default=True, type=int, help="Simulated chip seed (sim only)."),
        click.option("--faults", default=None, help="Simulated faults, e.g. 'drop_after=50' (sim only)."),
        click.option("--limits", "limits_text", default=None,
                     help="Safe limits, e.g. 'v_read_max_v=0.3,temp_max_c=85'."),
        click.option("--timeout-ms", default=10_000, show_default=True, type=int, help="VISA read timeout."),
        click.option("--visa-library", default="@py", show_default=True,
                     help="pyvisa backend: @py (pyvisa-py), '' (system VISA), FILE.yaml@sim."),
        click.option("--chip-id", default=None, help="chip_id column (default: model-serial of *IDN?)."),
        click.option("--array", default=0, show_default=True, type=int, help="Array (tile) index."),
        click.option("--temp-c", default=None, type=float, help="Set the chip temperature first (°C)."),
        click.option("--progress/--no-progress", default=None,
                     help="Progress bar on stderr (default: when stderr is a terminal)."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _open(opts: dict[str, Any]):
    from cimcal.drivers.campaigns import open_tester
    from cimcal.drivers.limits import SafeLimits

    if opts["resource"] != "sim" and opts["faults"]:
        raise ConfigError("--faults only applies to --resource sim")
    limits = SafeLimits.parse(opts["limits_text"]) if opts["limits_text"] else None
    return open_tester(opts["resource"], preset=opts["preset"], seed=opts["seed"], config=opts["sim_config"],
                       faults=opts["faults"], limits=limits, timeout_ms=opts["timeout_ms"],
                       visa_library=opts["visa_library"])


def _committed_chunks(output: str) -> int:
    import json

    try:
        return len(json.loads((Path(output) / "_manifest.json").read_text())["chunks"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


@contextlib.contextmanager
def _resume_hint(output: str) -> Iterator[None]:
    """On an interruption or instrument failure mid-campaign, say how to continue (data is kept).

    Only when chunks were committed: a run stopped before its first chunk has nothing to resume
    (rerunning the same command, without --resume, starts it afresh in the same directory).
    """
    try:
        yield
    except (KeyboardInterrupt, CimcalError) as exc:
        if isinstance(exc, KeyboardInterrupt) or isinstance(exc, InstrumentError):
            done = _committed_chunks(output)
            if done:
                click.echo(f"note: {done} committed chunk(s) are kept in {output}; rerun the same command with "
                           "--resume to continue", err=True)
        raise


def _progress(opts: dict[str, Any]) -> bool:
    return sys.stderr.isatty() if opts["progress"] is None else bool(opts["progress"])


def _report(result: Any, kind: str) -> None:
    how = "resumed, " if result.resumed else ""
    again = ", the chip had lost the pattern: re-programmed it" if result.resumed and result.reprogrammed else ""
    click.echo(f"{result.directory}: {kind} table, {result.rows_total} rows in {result.chunks_total} chunks "
               f"({how}{result.chunks_run} measured now{again})")


def _conductance_command(campaign: str, help_text: str) -> click.Command:
    @click.command(name=campaign, help=help_text)
    @_connection_options
    @click.option("--rows", default=None, help="Row window START:STOP (half-open).")
    @click.option("--cols", default=None, help="Column window START:STOP (half-open).")
    @click.option("--levels", "levels_text", default=None, help="Levels to program, e.g. '0,3,7' (default all).")
    @click.option("--reads", type=int, default=None, help="Reads per time point.")
    @click.option("--times", "times_text", default=None, help="Times since programming to read at, s ('1,10,100').")
    @click.option("--reads-per-chunk", type=int, default=None, help="Reads committed per part file.")
    @click.option("--pattern-seed", type=int, default=None, help="Seed of the level pattern.")
    @click.option("--wait", type=click.Choice(["auto", "advance", "real"]), default="auto", show_default=True,
                  help="Reach time points by CLOCk:ADVance (sim) or by waiting (real hardware; refused "
                  "on the simulated chip).")
    def command(**opts: Any) -> None:
        from cimcal.drivers.campaigns import default_conductance_plan, run_conductance_campaign

        plan = default_conductance_plan(
            campaign, array=opts["array"], rows=_span(opts["rows"], "rows"), cols=_span(opts["cols"], "cols"),
            levels=_numbers(opts["levels_text"], "levels", int), n_reads=opts["reads"],
            times_s=_numbers(opts["times_text"], "times"), reads_per_chunk=opts["reads_per_chunk"],
            pattern_seed=opts["pattern_seed"], temp_c=opts["temp_c"])
        with _resume_hint(opts["output"]), _open(opts) as (tester, provenance):
            result = run_conductance_campaign(tester, opts["output"], plan, resume=opts["resume"],
                                              wait=opts["wait"], progress=_progress(opts),
                                              provenance=provenance, chip_id=opts["chip_id"])
        _report(result, "conductance")

    return command


@click.group(help="Run a measurement campaign on a chip over VISA (resumable with --resume).")
def measure() -> None:
    """Measurement campaigns."""


measure.add_command(_conductance_command(
    "levels", "Program a balanced random level pattern over a window and read its maps. "
    "Defaults: the whole 256x256 array, 2 reads at t = 1 s, one read per part file."))
measure.add_command(_conductance_command(
    "readnoise", "Program a window once, then read the same cells many times. "
    "Defaults: 64x64 cells, 100 reads at t = 1 s, 10 reads per part file."))
measure.add_command(_conductance_command(
    "drift", "Program a window, then read it at a schedule of times since programming (--wait: "
    "CLOCk:ADVance on the simulated chip, real waiting on hardware). Defaults: 128x128 cells, "
    "t = 1, 10, 100, 1e3, 1e4, 1e5 s, 2 reads each, one time point per part file."))


@measure.command(name="adc", help="Sweep known inputs into each column's ADC (ADC:TEST?) -> ADC table. "
                 "Defaults: columns 0-31, 256 inputs over the ADC range +-5 %, 16 repeats, 8 columns per part file.")
@_connection_options
@click.option("--cols", default=None, help="Columns START:STOP (half-open).")
@click.option("--points", type=int, default=None, help="Input points across the ADC range (+margin).")
@click.option("--repeats", type=int, default=None, help="Conversions of each input.")
@click.option("--margin", type=float, default=None, help="Fraction of the range swept beyond each end.")
@click.option("--cols-per-chunk", type=int, default=None, help="Columns committed per part file.")
def adc(**opts: Any) -> None:
    from cimcal.drivers.campaign_adc import AdcPlan, run_adc_campaign

    fields = dict(array=opts["array"], cols=_span(opts["cols"], "cols"), n_points=opts["points"],
                  n_repeats=opts["repeats"], margin=opts["margin"], cols_per_chunk=opts["cols_per_chunk"],
                  temp_c=opts["temp_c"])
    plan = AdcPlan(**{k: v for k, v in fields.items() if v is not None})
    with _resume_hint(opts["output"]), _open(opts) as (tester, provenance):
        result = run_adc_campaign(tester, opts["output"], plan, resume=opts["resume"], progress=_progress(opts),
                                  provenance=provenance, chip_id=opts["chip_id"])
    _report(result, "ADC")


@click.group(help="The simulated chip.")
def sim() -> None:
    """Simulated chip commands."""


@sim.command(name="serve", help="Serve the simulated chip over SCPI/TCP (Ctrl-C or SIGTERM stops it).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind (loopback by default).")
@click.option("--port", default=5025, show_default=True, type=int, help="TCP port (0 = any free port).")
@click.option("--preset", default="rram", show_default=True, help="Chip preset (rram, rram-inl, pcm).")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, exists=True), help="Chip TOML config.")
@click.option("--seed", default=0, show_default=True, type=int, help="Chip seed.")
@click.option("--faults", default=None, help="Fault injection, e.g. 'drop_after=5,delay_s=2'.")
def serve(host: str, port: int, preset: str, config_path: str | None, seed: int, faults: str | None) -> None:
    from cimcal.drivers.sim.server import serve as serve_chip

    if host not in ("127.0.0.1", "localhost", "::1"):
        click.echo(f"warning: binding {host}: SCPI has no authentication, anyone who reaches this port "
                   "controls the simulated chip", err=True)
    serve_chip(host=host, port=port, preset=preset, config=config_path, seed=seed, faults=faults)
