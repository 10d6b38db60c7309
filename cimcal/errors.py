"""The one error family of cimcal.

Every error a user can cause (a bad file, a bad profile, an instrument that answered
wrongly, an unsafe request) is a :class:`CimcalError`. Each carries the place that caused
it (file, column, rows; or SCPI command and reply) and prints as one line. The CLI turns
them into that line on stderr and the exit code in :attr:`CimcalError.exit_code`.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "CimcalError",
    "DataError",
    "ProfileError",
    "InstrumentError",
    "LimitError",
    "ConfigError",
    "CheckpointError",
]


class CimcalError(Exception):
    """Base of every cimcal error; ``str(err)`` is one line that says what to do next."""

    exit_code: int = 2


def _format_rows(rows: Sequence[int] | None, limit: int = 5) -> str:
    if rows is None or len(rows) == 0:
        return ""
    shown = ", ".join(str(int(r)) for r in list(rows)[:limit])
    more = f", ... ({len(rows)} rows)" if len(rows) > limit else ""
    return f"row{'s' if len(rows) > 1 else ''} {shown}{more}"


class DataError(CimcalError):
    """A measurement table is unusable: names the file, the column and the first offending rows.

    Rows are 0-based data-row indices within the file (the CSV header is not counted).
    """

    def __init__(
        self,
        message: str,
        *,
        path: str | None = None,
        column: str | None = None,
        rows: Sequence[int] | None = None,
    ) -> None:
        self.path = None if path is None else str(path)
        self.column = column
        self.rows = None if rows is None else [int(r) for r in rows]
        self.reason = message
        where = []
        if self.path:
            where.append(self.path)
        if column:
            where.append(f"column '{column}'")
        row_text = _format_rows(self.rows)
        if row_text:
            where.append(row_text)
        super().__init__(f"{': '.join([', '.join(where)] if where else [])}{': ' if where else ''}{message}")


class ProfileError(CimcalError):
    """A chip profile (.cimprof) is missing, corrupt, tampered with or of an unknown format version."""

    def __init__(self, message: str, *, path: str | None = None) -> None:
        self.path = None if path is None else str(path)
        super().__init__(f"{self.path}: {message}" if self.path else message)


class InstrumentError(CimcalError):
    """An instrument refused a command, answered garbage, timed out or dropped the connection.

    Carries the SCPI command sent and the instrument's reply (or error-queue message).
    """

    def __init__(
        self,
        message: str,
        *,
        command: str | None = None,
        reply: str | None = None,
        resource: str | None = None,
    ) -> None:
        self.command = command
        self.reply = reply
        self.resource = resource
        parts = []
        if resource:
            parts.append(resource)
        if command is not None:
            parts.append(f"command {command!r}")
        text = f"{', '.join(parts)}: {message}" if parts else message
        if reply is not None:
            text += f" (instrument replied {reply!r})"
        super().__init__(text)


class LimitError(InstrumentError):
    """A request lies outside the instrument's configured safe operating limits; nothing was sent."""


class ConfigError(CimcalError):
    """A configuration value (CLI option, TOML preset, AnalogConfig field) is out of range or unknown."""


class CheckpointError(CimcalError):
    """A model checkpoint is missing, corrupt, tampered with or does not match the requested task."""
