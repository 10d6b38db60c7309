"""The `cimcal` entry point: version, help, one-line errors and exit codes."""

import subprocess
import sys

import cimcal
from cimcal.cli import main
from cimcal.errors import DataError


def test_version_prints_package_version(capsys) -> None:
    assert main(["--version"]) == 0
    assert cimcal.__version__ in capsys.readouterr().out


def test_help_lists_every_available_command(capsys) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("info", "fit", "validate", "report"):
        assert name in out


def test_unknown_command_is_a_usage_error(capsys) -> None:
    assert main(["no-such-command"]) == 2
    assert "no-such-command" in capsys.readouterr().err


def test_console_script_exit_code_and_one_line_error(tmp_path) -> None:
    missing = tmp_path / "nope.csv"
    proc = subprocess.run(
        [sys.executable, "-m", "cimcal", "info", str(missing)], capture_output=True, text=True
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "nope.csv" in lines[0]


def test_data_error_names_file_column_and_rows() -> None:
    err = DataError("negative conductance", path="a.csv", column="g_us", rows=[3, 7])
    assert str(err) == "a.csv, column 'g_us', rows 3, 7: negative conductance"


def test_an_oserror_without_a_path_keeps_its_traceback(monkeypatch) -> None:
    """Only errors on a named file become one line; anything else is a bug to be located."""
    import click
    import pytest

    from cimcal import cli as cli_module

    def boom(*_args, **_kwargs):
        raise OSError(98, "Address already in use")

    monkeypatch.setattr(click.Group, "main", boom)
    with pytest.raises(OSError, match="Address already in use"):
        cli_module.main(["info", "x"])
