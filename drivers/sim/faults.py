"""Fault injection for the simulated chip's server: dropped connections, late, garbled, truncated replies.

``X_after = N`` means the fault hits command number N+1 (the first N commands are served
normally; commands are counted per server, or per connection when ``repeat`` is true). Each fault
fires once per server (or once per connection with ``repeat``), except ``delay_s`` without
``delay_after``, which delays every reply (a slow instrument).

- ``drop_after``: the connection is closed on receiving that command, which is not executed.
- ``delay_s`` / ``delay_after``: the reply is sent ``delay_s`` seconds late (beyond a client timeout).
- ``garble_after``: the reply's bytes are scrambled (XOR 0x55, no ``\\n`` inside), then ``\\n``.
- ``truncate_after``: only the first half of the reply is sent (a block: its whole header and half
  its payload, so it is shorter than the header says), without terminator; the connection stays open.
- ``push_error = (code, message)``: pushed into the error queue after command ``error_after + 1``.

Text form (CLI ``--faults``): ``"drop_after=5,delay_s=2,delay_after=3,push_error=-300:Device fault"``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from cimcal.errors import ConfigError

__all__ = ["Faults", "FaultAction", "FaultCounter", "garble", "truncate"]


@dataclass(frozen=True)
class Faults:
    """Which faults to inject; all off by default."""

    drop_after: int | None = None
    delay_s: float = 0.0
    delay_after: int | None = None
    garble_after: int | None = None
    truncate_after: int | None = None
    push_error: tuple[int, str] | None = None
    error_after: int = 0
    repeat: bool = False

    def __post_init__(self) -> None:
        for name in ("drop_after", "delay_after", "garble_after", "truncate_after"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 0):
                raise ConfigError(f"faults: {name} must be an integer >= 0, got {value!r}")
        if not (isinstance(self.delay_s, (int, float)) and 0 <= self.delay_s <= 3600):
            raise ConfigError(f"faults: delay_s must be in 0..3600 s, got {self.delay_s!r}")
        if not isinstance(self.error_after, int) or self.error_after < 0:
            raise ConfigError(f"faults: error_after must be an integer >= 0, got {self.error_after!r}")
        if self.push_error is not None:
            code, message = self.push_error
            if not isinstance(code, int) or not isinstance(message, str):
                raise ConfigError(f"faults: push_error must be (int code, str message), got {self.push_error!r}")

    @property
    def active(self) -> bool:
        return self != Faults(repeat=self.repeat, error_after=self.error_after)

    @classmethod
    def from_mapping(cls, table: dict[str, Any]) -> Faults:
        """From a config ``[faults]`` table; ``push_error`` as ``[code, "message"]`` or ``"code:message"``."""
        known = {f.name for f in dataclasses.fields(cls)}
        values: dict[str, Any] = {}
        for key, value in table.items():
            if key not in known:
                raise ConfigError(f"faults: unknown key {key!r}; known: {', '.join(sorted(known))}")
            if key == "push_error":
                value = _parse_error(value)
            elif key == "delay_s":
                value = float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value
            values[key] = value
        return cls(**values)

    @classmethod
    def parse(cls, text: str | None) -> Faults:
        """From ``"drop_after=5,delay_s=2,push_error=-300:Device fault"`` (empty -> no faults)."""
        if not text or not text.strip():
            return cls()
        table: dict[str, Any] = {}
        for item in text.split(","):
            key, sep, raw = item.partition("=")
            key, raw = key.strip(), raw.strip()
            if not sep or not key:
                raise ConfigError(f"faults: expected key=value, got {item.strip()!r}")
            if key == "push_error":
                table[key] = raw
            elif key == "repeat":
                if raw.lower() not in ("true", "false", "1", "0"):
                    raise ConfigError(f"faults: repeat must be true or false, got {raw!r}")
                table[key] = raw.lower() in ("true", "1")
            elif key == "delay_s":
                try:
                    table[key] = float(raw)
                except ValueError:
                    raise ConfigError(f"faults: delay_s must be a number, got {raw!r}") from None
            else:
                try:
                    table[key] = None if raw.lower() == "none" else int(raw)
                except ValueError:
                    raise ConfigError(f"faults: {key} must be an integer, got {raw!r}") from None
        return cls.from_mapping(table)


def _parse_error(value: Any) -> tuple[int, str]:
    if isinstance(value, str):
        code, sep, message = value.partition(":")
        try:
            return int(code), (message if sep else "Injected fault")
        except ValueError:
            raise ConfigError(f"faults: push_error must be 'code:message', got {value!r}") from None
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return int(value[0]), str(value[1])
    raise ConfigError(f"faults: push_error must be 'code:message' or [code, message], got {value!r}")


@dataclass(frozen=True)
class FaultAction:
    """What to do to one command."""

    drop: bool = False
    delay_s: float = 0.0
    garble: bool = False
    truncate: bool = False
    push_error: tuple[int, str] | None = None


class FaultCounter:
    """Counts commands and decides each one's FaultAction (caller serializes access)."""

    def __init__(self, faults: Faults) -> None:
        self.faults = faults
        self.served = 0

    def next(self) -> FaultAction:
        f, n = self.faults, self.served
        self.served += 1
        if f.delay_after is None:
            delay = f.delay_s
        else:
            delay = f.delay_s if n == f.delay_after else 0.0
        return FaultAction(
            drop=n == f.drop_after,
            delay_s=delay,
            garble=n == f.garble_after,
            truncate=n == f.truncate_after,
            push_error=f.push_error if n == f.error_after else None,
        )


def garble(reply: bytes) -> bytes:
    """Scramble a reply: every byte XOR 0x55 (no ``\\n`` left inside), then the terminator."""
    body = reply[:-1] if reply.endswith(b"\n") else reply
    scrambled = bytes(b ^ 0x55 for b in body).replace(b"\n", b"?")
    return scrambled + b"\n"


def truncate(reply: bytes) -> bytes:
    """The first half of a reply, no terminator; a block keeps its header and half its payload."""
    body = reply[:-1] if reply.endswith(b"\n") else reply
    if body[:1] == b"#" and body[1:2].isdigit() and body[1:2] != b"0":
        head = 2 + int(body[1:2])  # keep the whole header, cut the payload in half
        if len(body) >= head and body[2:head].isdigit():
            return body[: head + (len(body) - head) // 2]
    return body[: max(1, len(body) // 2)]
