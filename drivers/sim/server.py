"""SCPI-over-TCP server for the simulated chip (what ``cimcal sim serve`` runs).

One thread per client connection (``socketserver.ThreadingTCPServer``); each connection has its
own :class:`~cimcal.drivers.sim.scpi.Dispatcher` (its own error queue) and all share one chip
behind a lock, so concurrent clients never corrupt its state. A client that disconnects mid
command only ends its own thread. Binds 127.0.0.1 by default: SCPI has no authentication, so
binding another address logs a warning.

Run standalone: ``python -m cimcal.drivers.sim.server --port 5025 --preset rram --seed 0``.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import signal
import socket
import socketserver
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

from cimcal.drivers.sim.chip import SimChip
from cimcal.drivers.sim.config import load_config_with_faults
from cimcal.drivers.sim.faults import FaultCounter, Faults, garble, truncate
from cimcal.drivers.sim.scpi import MAX_BLOCK_BYTES, Dispatcher, frame_end
from cimcal.errors import ConfigError

__all__ = ["SimServer", "build_chip", "serve", "main", "bind_warning"]

log = logging.getLogger(__name__)

_RECV_BYTES = 1 << 20
_MAX_PENDING_BYTES = MAX_BLOCK_BYTES + (1 << 20)  # an unframed message beyond this: drop the client


def bind_warning(host: str) -> str | None:
    """The warning to log when binding ``host`` exposes the chip beyond loopback, else None."""
    if host == "localhost":
        return None
    try:
        if ipaddress.ip_address(host).is_loopback:
            return None
    except ValueError:
        pass  # a host name: assume it is reachable from elsewhere
    return (f"binding the simulated chip to {host}: SCPI has no authentication, anyone who can reach "
            "this address can program the chip; bind 127.0.0.1 unless you mean it")


class _Handler(socketserver.BaseRequestHandler):
    server: _TCPServer

    def handle(self) -> None:
        owner = self.server.owner
        conn: socket.socket = self.request
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        owner._register(conn)
        try:
            self._serve(owner, conn)
        except OSError as err:  # client vanished mid-reply; only this connection ends
            log.debug("connection ended: %s", err)
        finally:
            owner._unregister(conn)

    def _serve(self, owner: SimServer, conn: socket.socket) -> None:
        dispatcher = Dispatcher(owner.chip)
        local = FaultCounter(owner.faults) if owner.faults.repeat else None
        buf = bytearray()
        while not owner._stopping.is_set():
            data = conn.recv(_RECV_BYTES)
            if not data:
                return
            buf += data
            while True:
                end = frame_end(buf)
                if end is None:
                    if len(buf) > _MAX_PENDING_BYTES:
                        log.warning("dropping a client: %d bytes without a message end", len(buf))
                        return
                    break
                message = bytes(buf[:end])
                del buf[:end]
                if not message.strip():
                    continue
                with owner._lock:
                    action = (local or owner._counter).next()
                    if action.drop:
                        log.info("fault: dropping connection")
                        conn.shutdown(socket.SHUT_RDWR)
                        return
                    reply = dispatcher.handle(message)
                    if action.push_error is not None:
                        dispatcher.push_error(*action.push_error)
                if reply is None:
                    continue
                if action.delay_s > 0 and owner._stopping.wait(action.delay_s):
                    return
                if action.garble:
                    reply = garble(reply)
                elif action.truncate:
                    reply = truncate(reply)
                conn.sendall(reply)


class _TCPServer(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True
    block_on_close = False

    def __init__(self, address: tuple[str, int], owner: SimServer) -> None:
        self.owner = owner
        super().__init__(address, _Handler)


class SimServer:
    """The simulated chip behind SCPI over TCP.

    >>> with SimServer(SimChip.from_preset("rram")) as server:  # doctest: +SKIP
    ...     rm.open_resource(server.resource)
    """

    def __init__(self, chip: SimChip, host: str = "127.0.0.1", port: int = 0,
                 faults: Faults | str | None = None) -> None:
        if ":" in host:  # VISA resource names separate fields with "::" and cannot carry an IPv6 address
            raise ConfigError(f"host {host!r}: IPv6 addresses cannot appear in a VISA resource name; "
                              "use an IPv4 address or a host name (e.g. 127.0.0.1)")
        self.chip = chip
        self.host = host
        self._requested_port = port
        self.faults = Faults.parse(faults) if isinstance(faults, str) or faults is None else faults
        self._counter = FaultCounter(self.faults)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._clients: set[socket.socket] = set()
        self._clients_lock = threading.Lock()
        self._server: _TCPServer | None = None
        self._thread: threading.Thread | None = None
        self._lifecycle = threading.Lock()

    # ------------------------------------------------------------ client bookkeeping
    def _register(self, conn: socket.socket) -> None:
        with self._clients_lock:
            self._clients.add(conn)

    def _unregister(self, conn: socket.socket) -> None:
        with self._clients_lock:
            self._clients.discard(conn)

    # ------------------------------------------------------------ lifecycle
    @property
    def port(self) -> int:
        """The bound TCP port (the requested one, or the ephemeral one chosen for port 0)."""
        if self._server is None:
            return self._requested_port
        return int(self._server.server_address[1])

    @property
    def resource(self) -> str:
        """VISA resource string, e.g. ``TCPIP0::127.0.0.1::5025::SOCKET``."""
        return f"TCPIP0::{self.host}::{self.port}::SOCKET"

    def start(self) -> SimServer:
        """Bind and serve in a background thread; returns self."""
        with self._lifecycle:
            if self._server is None:
                self._start()
        return self

    def _start(self) -> None:
        warning = bind_warning(self.host)
        if warning:
            log.warning(warning)
        self._stopping.clear()
        self._server = _TCPServer((self.host, self._requested_port), self)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"simchip-{self.port}", daemon=True)
        self._thread.start()
        log.info("simulated chip serving on %s", self.resource)
        if self.faults.active:
            log.warning("fault injection active on %s: %s", self.resource, self.faults)

    def stop(self) -> None:
        """Stop accepting, close every client connection and release the port (idempotent)."""
        with self._lifecycle:
            if self._server is not None:
                self._stop()

    def _stop(self) -> None:
        server = self._server
        if server is None:
            return
        self._stopping.set()
        server.shutdown()
        with self._clients_lock:
            clients = list(self._clients)
        for conn in clients:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None
        self._thread = None

    def serve_forever(self, on_ready: Callable[[SimServer], None] | None = None) -> None:
        """Serve until SIGINT or SIGTERM (main thread) or :meth:`stop`, then shut down cleanly.

        ``on_ready(server)`` is called once the port is bound and the signal handlers are in place
        (e.g. to announce the resource string).
        """
        done = threading.Event()

        def on_signal(signum: int, frame: FrameType | None) -> None:
            log.info("signal %d: shutting down", signum)
            done.set()

        in_main = threading.current_thread() is threading.main_thread()
        previous: dict[int, Any] = {}
        if in_main:
            for sig in (signal.SIGINT, signal.SIGTERM):
                previous[sig] = signal.signal(sig, on_signal)
        try:
            self.start()
            if on_ready is not None:
                on_ready(self)
            while not done.is_set() and not self._stopping.is_set():
                done.wait(0.2)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.stop()

    def __enter__(self) -> SimServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def build_chip(preset: str = "rram", config: str | os.PathLike[str] | None = None, seed: int = 0,
               faults: Faults | str | None = None) -> tuple[SimChip, Faults | str | None]:
    """The chip of a ``config`` file (else of ``preset``) and the faults to serve it with: ``faults`` if
    given, else the config file's ``[faults]`` table (if any)."""
    if config is None:
        return SimChip.from_preset(preset, seed=seed), faults
    chip_config, fault_table = load_config_with_faults(config)
    if faults is None and fault_table:
        faults = Faults.from_mapping(fault_table)
    return SimChip(chip_config, seed=seed), faults


def serve(host: str = "127.0.0.1", port: int = 5025, preset: str = "rram",
          config: str | os.PathLike[str] | None = None, seed: int = 0,
          faults: Faults | str | None = None) -> None:
    """Build a chip (``config`` file, else ``preset``) and serve it until SIGINT/SIGTERM.

    Faults from the argument override a ``[faults]`` table in the config file.
    """
    chip, faults = build_chip(preset, config, seed, faults)

    def announce(server: SimServer) -> None:
        print(f"simulated {chip.config.name} chip (seed {seed}) listening on {server.resource}; "
              "Ctrl-C to stop", file=sys.stderr, flush=True)

    SimServer(chip, host=host, port=port, faults=faults).serve_forever(on_ready=announce)
    print("simulated chip stopped", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    """``python -m cimcal.drivers.sim.server`` entry point."""
    parser = argparse.ArgumentParser(prog="python -m cimcal.drivers.sim.server", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5025)
    parser.add_argument("--preset", default="rram")
    parser.add_argument("--config", default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--faults", default=None)
    args = parser.parse_args(argv)
    from cimcal.errors import CimcalError

    try:
        serve(args.host, args.port, args.preset, args.config, args.seed, args.faults)
    except CimcalError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
