"""The thin cimcal layer on PyMeasure's :class:`~pymeasure.instruments.Instrument`.

PyMeasure provides the declarative ``control``/``measurement`` descriptors, the VISA adapter and
``expected_protocol`` testing; this layer adds what a calibration campaign needs on top:

- an error check after commands that *raises* :class:`InstrumentError` naming the command and the
  instrument's message, with the error-queue dialect overridable per instrument family
  (SCPI ``SYST:ERR?`` drained until code 0, Keysight B1500 ``ERRX?``, Keithley 4200A KXCI ``ACK``,
  TSP ``errorqueue``);
- reconnect-and-retry for idempotent queries after a dropped connection, a timeout or a garbled
  reply (non-idempotent commands reconnect but raise: the caller decides);
- IEEE 488.2 definite-length binary blocks (little-endian) for maps and vectors;
- ``*IDN?`` recorded for provenance, context-manager close, any VISA resource string;
- one lock per instrument: pyvisa-py has no locking for SOCKET sessions, so every
  write/read/error-check transaction runs under :attr:`CimcalInstrument.lock`.
"""

from __future__ import annotations

import contextlib
import inspect
import re
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import numpy as np
import pyvisa
from pymeasure.adapters import VISAAdapter
from pymeasure.instruments import Instrument

from cimcal.errors import InstrumentError

__all__ = [
    "CimcalInstrument",
    "ErrorDialect",
    "ScpiErrorQueue",
    "B1500ErrorQueue",
    "KxciAck",
    "TspErrorQueue",
    "GarbledReply",
    "ieee_block",
    "parse_ieee_block",
    "guarded_control",
]

T = TypeVar("T")


class GarbledReply(Exception):
    """A reply that cannot be parsed; treated like a transport fault (reconnect, maybe retry)."""

    def __init__(self, message: str, reply: bytes | str | None = None) -> None:
        super().__init__(message)
        self.reply = reply


# Faults after which the session's byte stream is in an unknown state: reconnect. A text read that
# cannot be decoded has picked up foreign bytes (typically a late binary block): the same.
_TRANSPORT_FAULTS = (pyvisa.errors.VisaIOError, pyvisa.errors.InvalidSession, OSError, GarbledReply,
                     UnicodeDecodeError)


def ieee_block(payload: bytes) -> bytes:
    """Wrap ``payload`` as an IEEE 488.2 definite-length block ``#<d><len><bytes>``."""
    length = str(len(payload))
    if len(length) > 9:
        raise InstrumentError(f"binary block of {len(payload)} bytes exceeds the IEEE 488.2 limit")
    return b"#" + str(len(length)).encode() + length.encode() + payload


def parse_ieee_block(raw: bytes, dtype: str | np.dtype) -> np.ndarray:
    """Parse one complete ``#<d><len><bytes>[\\n]`` block into a little-endian numpy array."""
    if len(raw) < 2 or raw[:1] != b"#" or not raw[1:2].isdigit() or raw[1:2] == b"0":
        raise GarbledReply("reply is not an IEEE 488.2 definite-length block", raw[:40])
    n_digits = int(raw[1:2])
    length_text = raw[2 : 2 + n_digits]
    if len(length_text) != n_digits or not length_text.isdigit():
        raise GarbledReply("malformed IEEE 488.2 block length", raw[:40])
    # exactly the announced bytes (payload bytes may be 0x0A), then at most the line terminator
    start = 2 + n_digits
    payload, rest = raw[start : start + int(length_text)], raw[start + int(length_text) :]
    if len(payload) != int(length_text) or rest not in (b"", b"\n"):
        raise GarbledReply(f"block announced {int(length_text)} bytes but {len(raw) - start} follow its header",
                           raw[:40])
    return _decode(payload, dtype)


def _decode(payload: bytes, dtype: str | np.dtype) -> np.ndarray:
    dt = np.dtype(dtype).newbyteorder("<")
    if len(payload) % dt.itemsize:
        raise GarbledReply(f"block of {len(payload)} bytes is not a whole number of {dt.name} values")
    return np.frombuffer(payload, dtype=dt).astype(dt.newbyteorder("="), copy=True)


def _resource_name_problem(resource: str) -> str | None:
    """Why ``resource`` is not a valid VISA resource name (pyvisa's reason), or None if it parses."""
    try:
        pyvisa.rname.parse_resource_name(resource)
    except pyvisa.rname.InvalidResourceName as exc:
        return str(exc)
    return None


class ErrorDialect:
    """How an instrument family reports errors after a command; subclasses override :meth:`check`."""

    def check(self, inst: "CimcalInstrument", command: str) -> None:
        """Raise :class:`InstrumentError` if ``command`` left an error; called under the lock."""


_SCPI_ERROR = re.compile(r'^\s*([+-]?\d+)\s*,\s*"?(.*?)"?\s*$')


class ScpiErrorQueue(ErrorDialect):
    """SCPI ``SYST:ERR?``: read the queue until code 0; raise with every message found."""

    query = "SYST:ERR?"
    max_entries = 64

    def next_error(self, inst: "CimcalInstrument") -> tuple[int, str]:
        reply = inst._raw_query(self.query).strip()
        match = _SCPI_ERROR.match(reply)
        if not match:
            raise GarbledReply(f"unparseable {self.query} reply", reply)
        return int(match.group(1)), match.group(2)

    def drain(self, inst: "CimcalInstrument") -> list[tuple[int, str]]:
        errors = []
        for _ in range(self.max_entries):
            code, message = self.next_error(inst)
            if code == 0:
                return errors
            errors.append((code, message))
        return errors

    def check(self, inst: "CimcalInstrument", command: str) -> None:
        errors = self.drain(inst)
        if errors:
            text = "; ".join(f"{code},{message}" for code, message in errors)
            raise InstrumentError(f"instrument reported error {text}", command=command,
                                  reply=text, resource=inst.resource_name)


class B1500ErrorQueue(ScpiErrorQueue):
    """Keysight B1500 FLEX: ``ERRX?`` returns ``code,"message"`` until ``0,"No Error."``."""

    query = "ERRX?"


class TspErrorQueue(ErrorDialect):
    """Keithley TSP (2450 in TSP mode, 26xx): ``errorqueue.count`` then ``errorqueue.next()``."""

    def check(self, inst: "CimcalInstrument", command: str) -> None:
        count = int(float(inst._raw_query("print(errorqueue.count)")))
        messages = []
        for _ in range(count):
            fields = inst._raw_query("print(errorqueue.next())").split("\t")
            messages.append(",".join(f.strip() for f in fields[:2]))
        if messages:
            text = "; ".join(messages)
            raise InstrumentError(f"instrument reported error {text}", command=command,
                                  reply=text, resource=inst.resource_name)


class KxciAck(ErrorDialect):
    """Keithley 4200A KXCI: every command is answered ``ACK``; anything else is the error."""

    def check(self, inst: "CimcalInstrument", command: str) -> None:
        reply = inst.read().strip()
        if reply != "ACK":
            raise InstrumentError("instrument did not acknowledge", command=command, reply=reply,
                                  resource=inst.resource_name)


def _set_command(base: property) -> str:
    """The SCPI template of a PyMeasure ``control`` (its setter's ``set_command`` default)."""
    try:
        template = inspect.signature(base.fset).parameters["set_command"].default
    except (KeyError, TypeError, ValueError):
        return "<property set>"
    return str(template).split(" %", 1)[0] if template else "<property set>"


def guarded_control(base: property, name: str, check: Callable[[Any, str, str, float], None] | None = None,
                    doc_suffix: str = "") -> property:
    """Re-declare a PyMeasure ``control`` so that setting it is safe and fault-handled.

    The setter first runs ``check(instrument, name, command, value)`` (raise :class:`LimitError`
    naming the property, the SCPI command and the SafeLimits field) and then sends through
    :meth:`CimcalInstrument._transact`: under the lock, error-checked, and a transport fault
    reconnects and retries (setting a value twice is harmless) or becomes :class:`InstrumentError`,
    never a raw ``VisaIOError``. The getter is PyMeasure's (its query already goes through ``ask``).
    """
    command = _set_command(base)

    def fset(self: "CimcalInstrument", value: Any) -> None:
        if check is not None:
            check(self, name, command, value)
        self._transact(f"{command} {value:g}" if isinstance(value, (int, float)) else command,
                       lambda: base.fset(self, value), idempotent=True)

    return property(base.fget, fset, doc=(base.__doc__ or "").strip() + doc_suffix)


class CimcalInstrument(Instrument):
    """PyMeasure instrument with raising error checks, retries, binary blocks and a lock.

    Parameters
    ----------
    adapter : a VISA resource string (``"TCPIP0::127.0.0.1::5025::SOCKET"``, ``"GPIB0::24::INSTR"``,
        ...) or a PyMeasure adapter (``ProtocolAdapter`` in tests).
    name : instrument name for logs.
    timeout_ms : VISA timeout of one read.
    retries : extra attempts for idempotent queries after a transport fault.
    visa_library : pyvisa backend: ``"@py"`` = pyvisa-py (default), ``""`` = the system VISA (NI, Keysight),
        ``"file.yaml@sim"`` = pyvisa-sim, or a ``VisaLibraryBase`` instance (e.g. the in-process sim).
    kwargs : further VISA resource attributes (read_termination, ...).
    """

    error_dialect: ErrorDialect = ScpiErrorQueue()
    idn_command = "*IDN?"
    strict_values = False
    read_termination = "\n"
    write_termination = "\n"

    def __init__(
        self,
        adapter: Any,
        name: str = "cimcal instrument",
        *,
        timeout_ms: int = 5000,
        retries: int = 2,
        visa_library: Any = "@py",
        **kwargs: Any,
    ) -> None:
        kwargs.pop("includeSCPI", None)  # PyMeasure's SCPIMixin passes it along a cooperative MRO
        self.lock = threading.RLock()
        self.retries = int(retries)
        self._idn: str | None = None
        self._closed = False
        self.resource_name = adapter if isinstance(adapter, str) else getattr(adapter, "resource_name", None)
        if isinstance(adapter, str):
            kwargs.setdefault("read_termination", self.read_termination)
            kwargs.setdefault("write_termination", self.write_termination)
            kwargs["timeout"] = timeout_ms
            self._open_kwargs = dict(kwargs)
            try:
                adapter = VISAAdapter(adapter, visa_library=visa_library, **kwargs)
            except (pyvisa.errors.Error, OSError, ValueError) as exc:
                # the name is checked only now (a system VISA may know aliases outside the standard syntax), and
                # its parse error is added to the open error, not put in its place
                problem = _resource_name_problem(self.resource_name)
                message = f"cannot open VISA resource: {exc}"
                if problem is not None:
                    message = f"invalid VISA resource name ({problem}); opening it failed: {exc}"
                raise InstrumentError(message, resource=self.resource_name) from exc
        else:
            self._open_kwargs = {}
        super().__init__(adapter, name, includeSCPI=False)

    # ----- transport -----------------------------------------------------------------------
    # Each low-level operation holds the instrument's lock; whole transactions (write, read, error
    # check, retries) hold it in _transact, so threads sharing one instrument never interleave.
    def write(self, command: str, **kwargs: Any) -> None:
        with self.lock:
            self._require_open(command)
            super().write(command, **kwargs)

    def write_bytes(self, content: bytes, **kwargs: Any) -> None:
        with self.lock:
            self._require_open()
            super().write_bytes(content, **kwargs)

    def read(self, **kwargs: Any) -> str:
        with self.lock:
            self._require_open()
            return super().read(**kwargs)

    def read_bytes(self, count: int, **kwargs: Any) -> bytes:
        with self.lock:
            self._require_open()
            return super().read_bytes(count, **kwargs)

    def _require_open(self, command: str | None = None) -> None:
        # without this a closed session would look like a dropped one and _reconnect would reopen it
        if self._closed:
            raise InstrumentError("instrument is closed; open a new one to send commands", command=command,
                                  resource=self.resource_name)

    def _raw_query(self, command: str) -> str:
        self.write(command)
        return self.read()

    def ask(self, command: str, query_delay: float | None = None) -> str:
        """PyMeasure's query hook (used by ``measurement``/``control`` getters): locked and retried."""
        return self.query(command)

    def values(self, command: str, separator: str = ",", cast: Callable[[str], Any] = float,
               preprocess_reply: Callable[[str], str] | None = None, maxsplit: int = -1,
               **kwargs: Any) -> list[Any]:
        """PyMeasure's list-of-values hook, locked and retried.

        With ``strict_values`` (instruments whose replies are all numeric) an uncastable item is a
        garbled reply (reconnect, retry); otherwise PyMeasure's lenient rule keeps it as a string
        (its ``map_values`` properties rely on that).
        """

        def item_value(item: str) -> Any:
            try:
                return bool(float(item)) if cast is bool else cast(item)
            except (ValueError, TypeError):
                if self.strict_values:
                    raise
                return item

        def parse(reply: str) -> list[Any]:
            text = reply.strip()
            if callable(preprocess_reply):
                text = preprocess_reply(text)
            return [item_value(item) for item in text.split(separator, maxsplit=maxsplit)]

        return self.query(command, parse)

    def query(self, command: str, parse: Callable[[str], T] = str, *, idempotent: bool = True) -> T:
        """Send ``command``, read one line and ``parse`` it (a parse failure counts as a garbled reply)."""

        def once() -> T:
            reply = self._raw_query(command)
            try:
                return parse(reply)
            except (ValueError, TypeError, IndexError) as exc:
                raise GarbledReply(f"cannot parse reply: {exc}", reply) from exc

        return self._transact(command, once, idempotent=idempotent)

    def command(self, command: str, *, idempotent: bool = False) -> None:
        """Send a command that has no reply, then run the dialect's error check."""

        def once() -> None:
            self.write(command)
            self.error_dialect.check(self, command)

        self._transact(command, once, idempotent=idempotent)

    def raise_errors(self, context: str) -> None:
        """Run the dialect's error check now (e.g. after a batch of queries); ``context`` names the work."""
        self._transact(context, lambda: self.error_dialect.check(self, context), idempotent=True)

    def query_block(self, command: str, dtype: str | np.dtype, *, idempotent: bool = True) -> np.ndarray:
        """Send ``command`` and read an IEEE 488.2 block reply of little-endian ``dtype`` values."""
        return self._transact(command, lambda: self._write_read_block(command, dtype),
                              idempotent=idempotent)

    def command_with_block(self, prefix: str, values: np.ndarray, dtype: str | np.dtype,
                           *, query_dtype: str | np.dtype | None = None,
                           idempotent: bool = False) -> np.ndarray | None:
        """Send ``<prefix><block>\\n``; read a block reply if ``query_dtype`` else error-check."""
        payload = np.ascontiguousarray(values, dtype=np.dtype(dtype).newbyteorder("<")).tobytes()
        message = prefix.encode() + ieee_block(payload)
        shown = f"{prefix}<block {len(payload)} bytes>"
        if query_dtype is not None:
            return self._transact(shown, lambda: self._write_read_block(message, query_dtype),
                                  idempotent=idempotent)

        def once() -> None:
            self.write_bytes(message + self.write_termination.encode())
            self.error_dialect.check(self, shown)

        self._transact(shown, once, idempotent=idempotent)
        return None

    def _write_read_block(self, message: str | bytes, dtype: str | np.dtype) -> np.ndarray:
        if isinstance(message, str):
            self.write(message)
        else:
            self.write_bytes(message + self.write_termination.encode())
        with self._termchar_off():
            head = self.read_bytes(2)
            if head[:1] != b"#" or not head[1:2].isdigit() or head[1:2] == b"0":
                raise GarbledReply("reply is not an IEEE 488.2 definite-length block", head)
            try:
                length_text = self.read_bytes(int(head[1:2]))
                if not length_text.isdigit():
                    raise GarbledReply("malformed IEEE 488.2 block length", head + length_text)
                payload = self.read_bytes(int(length_text)) if int(length_text) else b""
                end = self.read_bytes(1)
            except pyvisa.errors.VisaIOError as exc:
                if exc.error_code != pyvisa.constants.StatusCode.error_timeout:
                    raise
                # the rest of the block may still arrive: reconnect rather than ask SYST:ERR? on this stream
                raise GarbledReply(f"binary block cut short: {exc}", head) from exc
        if end != b"\n":
            raise GarbledReply("block not followed by the line terminator", end)
        return _decode(payload, dtype)

    @contextlib.contextmanager
    def _termchar_off(self) -> Iterator[None]:
        """Read a counted block with the VISA termination character disabled.

        With it enabled pyvisa-py ends every low-level read at each 0x0A byte of the binary
        payload (about one in 256 bytes of float data): ~15x slower for a 256 x 256 map.
        """
        connection = getattr(self.adapter, "connection", None)
        if not isinstance(self.adapter, VISAAdapter) or not hasattr(connection, "read_termination"):
            yield
            return
        saved = connection.read_termination
        connection.read_termination = None
        try:
            yield
        finally:
            try:
                connection.read_termination = saved
            except Exception:  # noqa: BLE001 - a dead session is replaced by _reconnect anyway
                pass

    def _transact(self, command: str, once: Callable[[], T], *, idempotent: bool) -> T:
        attempts = 1 + (self.retries if idempotent else 0)
        with self.lock:
            for attempt in range(attempts):
                try:
                    return once()
                except _TRANSPORT_FAULTS as exc:
                    fault = exc
                    if isinstance(exc, pyvisa.errors.VisaIOError) and \
                            exc.error_code == pyvisa.constants.StatusCode.error_timeout:
                        # A refused query times out without a reply: the error queue (kept per
                        # session by many instruments) says why, so ask before reconnecting.
                        self._raise_queued_error(command)
                    if not self._reconnect():
                        break
            reply = getattr(fault, "reply", None)
            what = "transport fault" if not isinstance(fault, GarbledReply) else "garbled reply"
            advice = (f"gave up after {attempts} attempt(s)" if idempotent else
                      "not retried (the command changes chip state; check and resume)")
            raise InstrumentError(f"{what}: {fault}; {advice}", command=command,
                                  reply=None if reply is None else repr(reply)[:80],
                                  resource=self.resource_name) from fault

    def _raise_queued_error(self, command: str) -> None:
        """Raise the instrument's queued error for ``command`` if the session still answers."""
        if not isinstance(self.error_dialect, ScpiErrorQueue):
            return
        try:
            errors = self.error_dialect.drain(self)
        except _TRANSPORT_FAULTS:
            return  # the session is not usable (late or broken reply): the caller reconnects
        if errors:
            text = "; ".join(f"{code},{message}" for code, message in errors)
            raise InstrumentError(f"instrument reported error {text}", command=command, reply=text,
                                  resource=self.resource_name)

    def _reconnect(self) -> bool:
        """Close and reopen the VISA session (a fresh socket drops stale bytes). False if impossible."""
        if not isinstance(self.adapter, VISAAdapter) or not isinstance(self.resource_name, str):
            return False
        try:
            self.adapter.connection.close()
        except Exception:  # noqa: BLE001 - the session may already be dead
            pass
        last: Exception | None = None
        for attempt in range(4):
            try:
                self.adapter.connection = self.adapter.manager.open_resource(self.resource_name,
                                                                             **self._open_kwargs)
                return True
            except (pyvisa.errors.Error, OSError) as exc:
                last = exc
                time.sleep(0.05 * 2**attempt)
        raise InstrumentError(f"connection lost and reconnecting failed: {last}", resource=self.resource_name)

    # ----- provenance and lifetime ---------------------------------------------------------------
    @property
    def idn(self) -> str:
        """The instrument's identification (``*IDN?``), queried once and kept for provenance."""
        if self._idn is None:
            self._idn = self.query(self.idn_command).strip()
        return self._idn

    def provenance(self) -> dict[str, Any]:
        """What to record with every table measured through this instrument."""
        return {"instrument_idn": self.idn, "resource": self.resource_name}

    def close(self) -> None:
        """Close the VISA session (safe to call twice); later commands raise InstrumentError."""
        with self.lock:
            self._closed = True
            try:
                self.adapter.close()
            except Exception:  # noqa: BLE001 - closing a dead session must not mask the real error
                pass

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.close()
