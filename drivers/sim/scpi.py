"""SCPI for the simulated chip: message framing, parsing, IEEE 488.2 blocks and the Dispatcher.

A message is ASCII ``HEADER[ arg[,arg...]][;HEADER ...]`` ended by ``\\n``; an argument may be a
definite-length block ``#<d><len><len bytes>`` whose payload may hold any byte (``\\n`` too).
:func:`frame_end` finds where a message ends in a byte stream without looking inside blocks.
:class:`Dispatcher` executes one message against a :class:`~cimcal.drivers.sim.chip.SimChip`;
errors go to its error queue (``SYST:ERR?``) and a query that errors returns nothing, as on a
real SCPI instrument. See ``docs/scpi.md`` for the command reference.
"""

from __future__ import annotations

import logging
import re
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

import cimcal
from cimcal.drivers.sim.chip import SimChip
from cimcal.errors import ConfigError

__all__ = [
    "ScpiError",
    "Block",
    "Command",
    "Dispatcher",
    "encode_block",
    "decode_block",
    "frame_end",
    "parse_message",
    "ERROR_MESSAGES",
    "MAX_BLOCK_BYTES",
]

log = logging.getLogger(__name__)

MAX_BLOCK_BYTES = 256 * 1024 * 1024
ERROR_QUEUE_SIZE = 32

ERROR_MESSAGES = {
    0: "No error",
    -100: "Command error",
    -102: "Syntax error",
    -104: "Data type error",
    -108: "Parameter not allowed",
    -109: "Missing parameter",
    -113: "Undefined header",
    -160: "Block data error",
    -161: "Invalid block data",
    -200: "Execution error",
    -222: "Data out of range",
    -223: "Too much data",
    -350: "Queue overflow",
}


class ScpiError(Exception):
    """A SCPI error: standard ``code`` and a detail appended to the standard message."""

    def __init__(self, code: int, detail: str = "") -> None:
        self.code = code
        self.detail = detail
        base = ERROR_MESSAGES.get(code, "Error")
        super().__init__(f"{base};{detail}" if detail else base)


@dataclass(frozen=True)
class Block:
    """An IEEE 488.2 definite-length block argument (raw payload bytes)."""

    payload: bytes


@dataclass(frozen=True)
class Command:
    """One parsed command: the header as sent, and its arguments (ASCII tokens or blocks)."""

    header: str
    args: tuple[str | Block, ...]

    @property
    def is_query(self) -> bool:
        return self.header.endswith("?")


def encode_block(payload: bytes) -> bytes:
    """``#<d><len><payload>`` (no terminator)."""
    length = str(len(payload)).encode()
    if len(length) > 9:
        raise ValueError("block payload too large for a definite-length block")
    return b"#" + str(len(length)).encode() + length + payload


def _block_header(buf: bytes | bytearray, i: int) -> tuple[int, int] | None:
    """At ``buf[i] == '#'``: (payload start, payload length), None if incomplete; raises if malformed."""
    if i + 1 >= len(buf):
        return None
    d = buf[i + 1] - 48
    if d == 0:
        raise ScpiError(-160, "indefinite-length blocks (#0) are not supported")
    if not 1 <= d <= 9:
        raise ScpiError(-160, "block header must be #<digit 1-9><length>")
    digits = bytes(buf[i + 2:i + 2 + d])
    if digits and not digits.isdigit():
        raise ScpiError(-160, f"block length {digits!r} is not a number")
    if len(digits) < d:
        return None
    length = int(digits)
    if length > MAX_BLOCK_BYTES:
        raise ScpiError(-223, f"block of {length} bytes exceeds {MAX_BLOCK_BYTES}")
    return i + 2 + d, length


def decode_block(data: bytes) -> bytes:
    """Payload of ``#<d><len><payload>[\\n]``; exact: the payload may contain ``\\n``."""
    if not data.startswith(b"#"):
        raise ScpiError(-160, "block must start with '#'")
    head = _block_header(data, 0)
    if head is None:
        raise ScpiError(-160, "block header incomplete")
    start, length = head
    end = start + length
    if end > len(data) or data[end:] not in (b"", b"\n", b"\r\n"):
        raise ScpiError(-161, f"block header says {length} bytes, got {len(data) - start}")
    return bytes(data[start:end])


_SPECIAL = re.compile(rb'[\n#"]')


def frame_end(buf: bytes | bytearray, start: int = 0) -> int | None:
    """Index just past the ``\\n`` ending the message that starts at ``start``; None if incomplete.

    Blocks are skipped by their declared length. A malformed block header ends the message at
    the next ``\\n`` (the parser then reports it).
    """
    i = start
    while True:
        m = _SPECIAL.search(buf, i)
        if m is None:
            return None
        j = m.start()
        ch = buf[j]
        if ch == 0x0A:
            return j + 1
        if ch == 0x22:  # quoted string: skip to the closing quote
            k = buf.find(b'"', j + 1)
            if k < 0:
                nl = buf.find(b"\n", j + 1)
                return None if nl < 0 else nl + 1
            i = k + 1
            continue
        try:
            head = _block_header(buf, j)
        except ScpiError:
            nl = buf.find(b"\n", j)
            return None if nl < 0 else nl + 1
        if head is None:
            return None
        payload_start, length = head
        if payload_start + length > len(buf):
            return None
        i = payload_start + length


_HEADER = re.compile(r"^:?(\*[A-Za-z]+\??|[A-Za-z][A-Za-z0-9]*(:[A-Za-z][A-Za-z0-9]*)*\??)$")


def _split_args(body: bytes, i: int, n: int) -> tuple[list[str | Block], int]:
    """Arguments from ``body[i:n]`` up to ``;`` (outside blocks/strings); returns (args, index after)."""
    args: list[str | Block] = []
    expecting = True  # an argument is expected (start, or after a comma)
    while i < n:
        ch = body[i]
        if ch in b" \t\r":
            i += 1
            continue
        if ch == 0x3B:  # ';'
            break
        if ch == 0x2C:  # ','
            if expecting:
                raise ScpiError(-102, "empty argument")
            expecting = True
            i += 1
            continue
        if not expecting:
            raise ScpiError(-102, "missing ',' between arguments")
        if ch == 0x23:  # '#'
            head = _block_header(body, i)
            if head is None:
                raise ScpiError(-160, "block header incomplete")
            start, length = head
            if start + length > n:
                raise ScpiError(-161, f"block header says {length} bytes, got {n - start}")
            args.append(Block(bytes(body[start:start + length])))
            i = start + length
        elif ch == 0x22:
            k = body.find(b'"', i + 1, n)
            if k < 0:
                raise ScpiError(-102, "unterminated string")
            args.append(body[i:k + 1].decode("ascii", "replace"))
            i = k + 1
        else:
            k = i
            while k < n and body[k] not in b",; \t\r":
                k += 1
            args.append(body[i:k].decode("ascii", "replace"))
            i = k
        expecting = False
    if args and expecting:
        raise ScpiError(-102, "trailing ','")
    return args, i


def parse_message(message: bytes) -> list[Command]:
    """Parse one message (with or without its ``\\n``) into commands; raises ScpiError."""
    n = len(message)
    if n and message[n - 1] == 0x0A:
        n -= 1
    commands: list[Command] = []
    i = 0
    while i < n:
        while i < n and message[i] in b" \t\r":
            i += 1
        if i >= n:
            break
        k = i
        while k < n and message[k] not in b" \t\r;":
            k += 1
        header = message[i:k].decode("ascii", "replace")
        if not _HEADER.match(header):
            raise ScpiError(-102, f"bad header {header!r}")
        args, i = _split_args(message, k, n)
        commands.append(Command(header.lstrip(":"), tuple(args)))
        if i < n and message[i] == 0x3B:
            i += 1
    return commands


# ---------------------------------------------------------------------- command table
def _keyword_forms(keyword: str) -> tuple[str, str]:
    """SCPI mnemonic ``ARRays`` -> ("ARR", "ARRAYS")."""
    short = "".join(ch for ch in keyword if ch.isupper() or ch.isdigit() or ch == "*")
    return short, keyword.upper()


def _pattern(spec: str) -> tuple[tuple[tuple[str, str], ...], bool]:
    query = spec.endswith("?")
    parts = spec.rstrip("?").split(":")
    return tuple(_keyword_forms(p) for p in parts), query


Handler = Callable[["Dispatcher", tuple], bytes | None]


def _ints(args: tuple, n_min: int, n_max: int | None = None) -> list[int]:
    n_max = n_min if n_max is None else n_max
    _count(args, n_min, n_max)
    return [_int(a) for a in args]


def _count(args: tuple, n_min: int, n_max: int) -> None:
    if len(args) < n_min:
        raise ScpiError(-109, f"expected {n_min} argument{'s' if n_min != 1 else ''}, got {len(args)}")
    if len(args) > n_max:
        raise ScpiError(-108, f"expected at most {n_max} argument{'s' if n_max != 1 else ''}, got {len(args)}")


def _int(arg: str | Block) -> int:
    value = _float(arg)
    if not value.is_integer():
        raise ScpiError(-104, f"expected an integer, got {arg!r}")
    return int(value)


def _float(arg: str | Block) -> float:
    if isinstance(arg, Block):
        raise ScpiError(-104, "expected a number, got a block")
    try:
        value = float(arg)
    except ValueError:
        raise ScpiError(-104, f"expected a number, got {arg!r}") from None
    if not np.isfinite(value):
        raise ScpiError(-222, f"value must be finite, got {arg!r}")
    return value


def _block(arg: str | Block, dtype: str, what: str) -> np.ndarray:
    if not isinstance(arg, Block):
        raise ScpiError(-104, f"{what} must be a binary block, got {arg!r}")
    itemsize = np.dtype(dtype).itemsize
    if len(arg.payload) % itemsize:
        raise ScpiError(-161, f"{what}: {len(arg.payload)} bytes is not a multiple of {itemsize}")
    return np.frombuffer(arg.payload, dtype=np.dtype(dtype).newbyteorder("<"))


def _reply_block(values: np.ndarray, dtype: str) -> bytes:
    return encode_block(np.ascontiguousarray(values, dtype=np.dtype(dtype).newbyteorder("<")).tobytes()) + b"\n"


def _reply(text: str) -> bytes:
    return text.encode("ascii", "replace") + b"\n"


def _fmt(x: float) -> str:
    return repr(float(x))


class Dispatcher:
    """Executes SCPI messages against one chip; keeps an error queue (one per client session).

    ``handle(message_bytes) -> reply bytes | None``. Not thread-safe by itself: the server holds
    a lock around the chip.
    """

    def __init__(self, chip: SimChip, *, preset: str | None = None) -> None:
        self.chip = chip
        self.preset = (preset or chip.config.name).upper()
        self.errors: deque[tuple[int, str]] = deque()

    # ------------------------------------------------------------- error queue
    def push_error(self, code: int, message: str) -> None:
        """Append an error; a full queue keeps its oldest entries and ends in -350 (SCPI 21.8)."""
        if len(self.errors) >= ERROR_QUEUE_SIZE:
            self.errors[-1] = (-350, ERROR_MESSAGES[-350])
        else:
            self.errors.append((code, message))

    def _pop_error(self) -> str:
        code, message = self.errors.popleft() if self.errors else (0, ERROR_MESSAGES[0])
        return f'{code},"{message.replace(chr(34), chr(39))}"'

    # ------------------------------------------------------------- dispatch
    def handle(self, message: bytes) -> bytes | None:
        """Run one message (``b"...\\n"``); the reply (joined by ``;`` for several queries) or None."""
        try:
            commands = parse_message(message)
        except ScpiError as err:
            self.push_error(err.code, str(err))
            return None
        replies: list[bytes] = []
        for command in commands:
            try:
                handler = self._lookup(command.header)
                self.chip.note_command()
                out = handler(self, command.args)
            except ScpiError as err:
                self.push_error(err.code, f"{err};{command.header}" if err.code == -113 else str(err))
                continue
            except ConfigError as err:
                self.push_error(-222, f"{ERROR_MESSAGES[-222]};{err}")
                continue
            except Exception as err:  # a bug must cost one error entry, never the server
                log.exception("internal error executing %s", command.header)
                self.push_error(-200, f"{ERROR_MESSAGES[-200]};internal error: {type(err).__name__}")
                continue
            if out is not None:
                replies.append(out[:-1] if out.endswith(b"\n") else out)
        if not replies:
            return None
        return b";".join(replies) + b"\n"

    def _lookup(self, header: str) -> Handler:
        upper = header.upper()
        query = upper.endswith("?")
        parts = upper.rstrip("?").split(":")
        if parts[-1] == "NEXT" and parts[:-1] and parts[-2] in ("ERR", "ERROR"):
            parts = parts[:-1]  # SYSTem:ERRor[:NEXT]?
        for (keywords, is_query), handler in _TABLE:
            if is_query == query and len(keywords) == len(parts) and all(
                    p in forms for p, forms in zip(parts, keywords)):
                return handler
        raise ScpiError(-113, "")

    # ------------------------------------------------------------- common commands
    def _idn(self, args: tuple) -> bytes:
        _count(args, 0, 0)
        return _reply(f"CIMCAL,SIMCHIP-{self.preset},{self.chip.seed},{cimcal.__version__}")

    def _rst(self, args: tuple) -> None:
        _count(args, 0, 0)
        self.chip.reset()

    def _cls(self, args: tuple) -> None:
        _count(args, 0, 0)
        self.errors.clear()

    def _opc_q(self, args: tuple) -> bytes:
        _count(args, 0, 0)
        return _reply("1")

    def _noop(self, args: tuple) -> None:
        _count(args, 0, 0)

    def _zero_q(self, args: tuple) -> bytes:
        _count(args, 0, 0)
        return _reply("0")

    def _err_q(self, args: tuple) -> bytes:
        _count(args, 0, 0)
        return _reply(self._pop_error())

    def _err_count_q(self, args: tuple) -> bytes:
        _count(args, 0, 0)
        return _reply(str(len(self.errors)))

    # ------------------------------------------------------------- configuration
    def _targets_q(self, args: tuple) -> bytes:
        _count(args, 0, 0)
        return _reply(",".join(_fmt(g) for g in self.chip.targets_us))

    # ------------------------------------------------------------- programming
    def _prog_array(self, args: tuple) -> None:
        _count(args, 2, 2)
        a = _int(args[0])
        levels = _block(args[1], "u1", "level map")
        cfg = self.chip.config
        if levels.size != cfg.rows * cfg.cols:
            raise ScpiError(-161, f"level map must hold {cfg.rows}*{cfg.cols}={cfg.rows * cfg.cols} bytes, "
                                  f"got {levels.size}")
        self.chip.program_array(a, levels.reshape(cfg.rows, cfg.cols))

    def _prog_cells(self, args: tuple) -> None:
        _count(args, 2, 2)
        a = _int(args[0])
        triples = _block(args[1], "i4", "cell triples")
        if triples.size % 3:
            raise ScpiError(-161, f"cell block must hold (row, col, level) int32 triples, got {triples.size} ints")
        triples = triples.reshape(-1, 3)
        self.chip.program_cells(a, triples[:, 0], triples[:, 1], triples[:, 2])

    def _prog_result_q(self, args: tuple) -> bytes:
        (a,) = _ints(args, 1)
        return _reply_block(self.chip.program_result(a), "i2")

    def _prog_time_q(self, args: tuple) -> bytes:
        (a,) = _ints(args, 1)
        return _reply_block(self.chip.program_time(a), "f8")

    # ------------------------------------------------------------- reads
    def _read_map_q(self, args: tuple) -> bytes:
        if len(args) not in (1, 5):
            if len(args) > 5:
                raise ScpiError(-108, f"expected 1 or 5 arguments, got {len(args)}")
            raise ScpiError(-109, f"expected 1 or 5 arguments (a[,r0,r1,c0,c1]), got {len(args)}")
        values = [_int(x) for x in args]
        a = values[0]
        window = values[1:] if len(values) == 5 else [0, self.chip.rows, 0, self.chip.cols]
        return _reply_block(self.chip.read_map(a, *window), "f4")

    def _read_cell_q(self, args: tuple) -> bytes:
        a, r, c = _ints(args, 3)
        return _reply(_fmt(self.chip.read_cell(a, r, c)))

    # ------------------------------------------------------------- MVM and ADC
    def _mvm_q(self, args: tuple) -> bytes:
        _count(args, 3, 3)
        a, n = _int(args[0]), _int(args[1])
        return _reply_block(self.chip.mvm(a, self._input_vectors(n, args[2])), "i2")

    def _input_vectors(self, n: int, block_arg: object) -> np.ndarray:
        """The input block of an MVM query (``n`` vectors) as an (n, rows) float32 array."""
        inputs = _block(block_arg, "f4", "input block")
        rows = self.chip.rows
        if n < 1:
            raise ScpiError(-222, f"n must be >= 1, got {n}")
        if inputs.size != n * rows:
            raise ScpiError(-161, f"input block must hold n*rows={n}*{rows} float32, got {inputs.size}")
        return inputs.reshape(n, rows)

    def _mvm_diff_q(self, args: tuple) -> bytes:
        _count(args, 5, 5)
        a, n = _int(args[0]), _int(args[1])
        gain, offset_ua = _float(args[2]), _float(args[3])
        inputs = self._input_vectors(n, args[4])
        return _reply_block(self.chip.mvm_differential(a, inputs, gain, offset_ua), "i2")

    def _adc_test_q(self, args: tuple) -> bytes:
        _count(args, 3, 3)
        a, col = _int(args[0]), _int(args[1])
        inputs = _block(args[2], "f4", "input block")
        return _reply_block(self.chip.adc_test(a, col, inputs), "i2")

    # ------------------------------------------------------------- clock and temperature
    def _clock_q(self, args: tuple) -> bytes:
        _count(args, 0, 0)
        return _reply(_fmt(self.chip.clock_s))

    def _clock_advance(self, args: tuple) -> None:
        _count(args, 1, 1)
        self.chip.advance(_float(args[0]))

    def _temp(self, args: tuple) -> None:
        _count(args, 1, 1)
        self.chip.temperature_c = _float(args[0])

    def _temp_q(self, args: tuple) -> bytes:
        _count(args, 0, 0)
        return _reply(_fmt(self.chip.temperature_c))


def _config_int(name: str) -> Handler:
    """Handler answering an integer config field."""
    def handler(self: Dispatcher, args: tuple) -> bytes:
        _count(args, 0, 0)
        return _reply(str(int(getattr(self.chip.config, name))))
    return handler

def _config_pair(lo: str, hi: str) -> Handler:
    def handler(self: Dispatcher, args: tuple) -> bytes:
        _count(args, 0, 0)
        cfg = self.chip.config
        return _reply(f"{_fmt(getattr(cfg, lo))},{_fmt(getattr(cfg, hi))}")
    return handler

def _config_float(name: str) -> Handler:
    def handler(self: Dispatcher, args: tuple) -> bytes:
        _count(args, 0, 0)
        return _reply(_fmt(getattr(self.chip.config, name)))
    return handler

_SPECS: list[tuple[str, Handler]] = [
    ("*IDN?", Dispatcher._idn),
    ("*RST", Dispatcher._rst),
    ("*CLS", Dispatcher._cls),
    ("*OPC?", Dispatcher._opc_q),
    ("*OPC", Dispatcher._noop),
    ("*WAI", Dispatcher._noop),
    ("*TST?", Dispatcher._zero_q),
    ("*ESR?", Dispatcher._zero_q),
    ("*STB?", Dispatcher._zero_q),
    ("SYSTem:ERRor?", Dispatcher._err_q),
    ("SYSTem:ERRor:COUNt?", Dispatcher._err_count_q),
    ("CHIP:ARRays?", _config_int("n_arrays")),
    ("CHIP:ROWS?", _config_int("rows")),
    ("CHIP:COLumns?", _config_int("cols")),
    ("CHIP:LEVels?", _config_int("n_levels")),
    ("CHIP:LEVels:TARGets?", Dispatcher._targets_q),
    ("ADC:BITS?", _config_int("adc_bits")),
    ("ADC:RANGe?", _config_pair("adc_min_ua", "adc_max_ua")),
    ("DAC:BITS?", _config_int("dac_bits")),
    ("DAC:RANGe?", _config_pair("dac_min_v", "dac_max_v")),
    ("LIMit:VREad?", _config_float("v_read_max_v")),
    ("LIMit:VPRog?", _config_float("v_prog_max_v")),
    ("PROGram:ARRay", Dispatcher._prog_array),
    ("PROGram:CELLs", Dispatcher._prog_cells),
    ("PROGram:RESult?", Dispatcher._prog_result_q),
    ("PROGram:TIME?", Dispatcher._prog_time_q),
    ("READ:MAP?", Dispatcher._read_map_q),
    ("READ:CELL?", Dispatcher._read_cell_q),
    ("MVM?", Dispatcher._mvm_q),
    ("MVM:DIFFerential?", Dispatcher._mvm_diff_q),
    ("ADC:TEST?", Dispatcher._adc_test_q),
    ("CLOCk?", Dispatcher._clock_q),
    ("CLOCk:ADVance", Dispatcher._clock_advance),
    ("TEMPerature", Dispatcher._temp),
    ("TEMPerature?", Dispatcher._temp_q),
]

_TABLE = [(_pattern(spec), handler) for spec, handler in _SPECS]
