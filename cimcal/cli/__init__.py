"""The ``cimcal`` command: thin, parses and delegates, formats errors.

Subcommands live in small modules beside this one and are imported only when invoked, so
``cimcal --help`` stays fast and the core never loads the hardware layer unless asked.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys

import click

from cimcal import __version__
from cimcal.errors import CimcalError

# name -> "module:attribute" of a click.Command
_COMMANDS = {
    "info": ("cimcal.cli.data_cmds:info", "Summarise measurement tables (rows, chips, levels, ranges)."),
    "fit": ("cimcal.cli.profile_cmds:fit", "Fit a chip profile from conductance and/or ADC tables."),
    "validate": ("cimcal.cli.profile_cmds:validate", "Check a profile against held-out measurements (KS / TV)."),
    "report": ("cimcal.cli.profile_cmds:report", "Write a self-contained HTML report of a profile."),
    "measure": ("cimcal.cli.measure_cmds:measure", "Run a measurement campaign on a chip over VISA."),
    "sim": ("cimcal.cli.measure_cmds:sim", "The simulated chip (serve it over SCPI on loopback)."),
    "train": ("cimcal.cli.train_cmds:train", "Train a model against chip profiles (clean, gaussian, ste)."),
    "evaluate": ("cimcal.cli.train_cmds:evaluate", "Monte-Carlo evaluate a checkpoint over chip instances."),
    "deploy": ("cimcal.cli.deploy_cmds:deploy", "Program a trained model onto a chip and measure it."),
    "demo": ("cimcal.cli.deploy_cmds:demo", "The whole loop on the embedded simulated chip."),
}


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return [name for name in _COMMANDS if self._available(name)]

    @staticmethod
    def _available(name: str) -> bool:
        module = _COMMANDS[name][0].split(":")[0]
        return importlib.util.find_spec(module) is not None

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in _COMMANDS or not self._available(name):
            return None
        module, attr = _COMMANDS[name][0].split(":")
        return getattr(importlib.import_module(module), attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, _COMMANDS[name][1]) for name in self.list_commands(ctx)]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="cimcal")
@click.option("--debug", is_flag=True, help="Show full tracebacks instead of one-line errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """cimcal: measure analog CIM chips, fit their noise, train against it, deploy."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the CLI, print cimcal errors as one line, return the exit code."""
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    try:
        # Outside standalone mode click returns what the command returned, or the code of ctx.exit(code).
        result = cli.main(args=args, prog_name="cimcal", standalone_mode=False)
    except CimcalError as err:
        if debug:
            raise
        click.echo(f"error: {err}", err=True)
        return err.exit_code
    except OSError as err:  # a file the command had to write or read, named by the error
        if debug or not err.filename:
            raise
        click.echo(f"error: {err.filename}: {err.strerror or err}", err=True)
        return 2
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 130
    except click.ClickException as err:
        err.show()
        return err.exit_code
    except click.exceptions.Exit as err:
        return err.exit_code
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        return 130
    return result if isinstance(result, int) else 0




def run() -> None:
    """Console-script entry point."""
    sys.exit(main())
