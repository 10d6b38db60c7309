"""The simulated chip as an in-process pyvisa backend: no socket, same SCPI dispatcher.

For fast, deterministic unit tests. ``SimChipVisaLibrary`` is a pyvisa ``VisaLibraryBase`` (built on
pyvisa-sim's library and session attribute handling) whose TCPIP SOCKET sessions talk straight to a
:class:`~cimcal.drivers.sim.scpi.Dispatcher` (one per session, like the server's per-connection error
queue)::

    library = SimChipVisaLibrary.attach(chip)             # -> "TCPIP0::simchip-1::5025::SOCKET"
    tester = CIMTester(library.resource_of(chip), visa_library=library)

A query the chip refuses has no reply, and the read times out *at once* (nothing can arrive later),
so error paths are as fast as the happy ones. Integration tests, the benchmark and
``--resource sim`` still use the real loopback socket (:class:`~cimcal.drivers.sim.server.SimServer`).
"""

from __future__ import annotations

import itertools
import threading
from typing import Any

from pyvisa import constants, rname
from pyvisa_sim.highlevel import SimVisaLibrary
from pyvisa_sim.sessions.session import MessageBasedSession

from cimcal.drivers.sim.chip import SimChip
from cimcal.drivers.sim.scpi import Dispatcher, frame_end

__all__ = ["SimChipVisaLibrary"]

_TERMCHAR_READ = constants.StatusCode.success_termination_character_read
_MAX_COUNT = constants.StatusCode.success_max_count_read


class _ChipSession(MessageBasedSession):
    """A TCPIP SOCKET session whose device is a SCPI dispatcher; reads move whole chunks."""

    session_type = (constants.InterfaceType.tcpip, "SOCKET")

    def after_parsing(self) -> None:
        self.attrs[constants.ResourceAttribute.interface_number] = int(self.parsed.board)
        self.attrs[constants.ResourceAttribute.tcpip_address] = self.parsed.host_address
        self.attrs[constants.ResourceAttribute.tcpip_port] = int(self.parsed.port)

    def bind(self, chip: SimChip, lock: threading.Lock) -> None:
        self.dispatcher = Dispatcher(chip)
        self.lock = lock
        self.inbox = bytearray()
        self.outbox = bytearray()

    def write(self, data: bytes) -> tuple[int, constants.StatusCode]:
        self.inbox += data
        while (end := frame_end(self.inbox)) is not None:
            message = bytes(self.inbox[:end])
            del self.inbox[:end]
            if message.strip():
                with self.lock:
                    reply = self.dispatcher.handle(message)
                if reply:
                    self.outbox += reply
        return len(data), constants.StatusCode.success

    def read(self, count: int) -> tuple[bytes, constants.StatusCode]:
        if not self.outbox:
            return b"", constants.StatusCode.error_timeout  # nothing will ever arrive
        n = min(count, len(self.outbox))
        status = _MAX_COUNT
        if self.get_attribute(constants.ResourceAttribute.termchar_enabled)[0]:
            termchar = self.get_attribute(constants.ResourceAttribute.termchar)[0]
            at = self.outbox.find(bytes([termchar]), 0, n)
            if at >= 0:
                n, status = at + 1, _TERMCHAR_READ
        out = bytes(self.outbox[:n])
        del self.outbox[:n]
        return out, status


class SimChipVisaLibrary(SimVisaLibrary):
    """pyvisa backend serving attached simulated chips by resource name (one library per process)."""

    _numbers = itertools.count(1)

    def _init(self) -> None:
        self.sessions = {}
        self.chips: dict[str, tuple[SimChip, threading.Lock]] = {}

    @classmethod
    def attach(cls, chip: SimChip, resource: str | None = None) -> "SimChipVisaLibrary":
        """Make ``chip`` reachable as ``resource`` (default ``TCPIP0::simchip-<n>::5025::SOCKET``)."""
        library = cls()
        name = resource or f"TCPIP0::simchip-{next(cls._numbers)}::5025::SOCKET"
        library.chips[str(rname.parse_resource_name(name))] = (chip, threading.Lock())
        return library

    def resource_of(self, chip: SimChip) -> str:
        """The resource name ``chip`` was attached under."""
        for name, (attached, _) in self.chips.items():
            if attached is chip:
                return name
        raise KeyError("chip is not attached to this library")

    def open(self, session: Any, resource_name: str, access_mode: Any = constants.AccessModes.no_lock,
             open_timeout: Any = constants.VI_TMO_IMMEDIATE) -> tuple[Any, constants.StatusCode]:
        try:
            parsed = rname.parse_resource_name(resource_name)
        except rname.InvalidResourceName:
            return 0, constants.StatusCode.error_invalid_resource_name
        if str(parsed) not in self.chips or (parsed.interface_type_const, parsed.resource_class) != \
                _ChipSession.session_type:
            return 0, constants.StatusCode.error_resource_not_found
        sess = _ChipSession(session, resource_name, parsed)
        sess.bind(*self.chips[str(parsed)])
        return self._register(sess), constants.StatusCode.success

    def list_resources(self, session: Any, query: str = "?*::INSTR") -> tuple[str, ...]:
        return tuple(rname.filter(tuple(self.chips), query))
