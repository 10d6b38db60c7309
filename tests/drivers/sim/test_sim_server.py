"""The simulated chip over a real TCP socket: plain pyvisa clients, several clients, faults, shutdown."""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading

import numpy as np
import pytest

pyvisa = pytest.importorskip("pyvisa")
from pyvisa.errors import VisaIOError  # noqa: E402

import cimcal  # noqa: E402
from cimcal.drivers.sim.chip import SimChip  # noqa: E402
from cimcal.drivers.sim.faults import Faults  # noqa: E402
from cimcal.drivers.sim.scpi import encode_block  # noqa: E402
from cimcal.drivers.sim.server import SimServer, bind_warning  # noqa: E402
from cimcal.errors import ConfigError  # noqa: E402


@pytest.fixture(scope="module")
def rm():
    manager = pyvisa.ResourceManager("@py")
    yield manager
    manager.close()


def open_plain(rm, resource: str, timeout_ms: int = 5000):
    inst = rm.open_resource(resource, read_termination="\n", write_termination="\n", timeout=timeout_ms)
    return inst


def raw_exchange(port: int, message: bytes, n_expected: int | None = None, timeout_s: float = 5.0) -> bytes:
    """Send bytes on a bare socket; read until a newline (or n_expected bytes)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        sock.sendall(message)
        data = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return data
            data += chunk
            if (n_expected is not None and len(data) >= n_expected) or (n_expected is None and data.endswith(b"\n")):
                return data


def test_plain_pyvisa_client_reads_idn_and_a_map(rm, server):
    inst = open_plain(rm, server.resource)
    try:
        assert inst.query("*IDN?") == f"CIMCAL,SIMCHIP-RRAM,0,{cimcal.__version__}"
        levels = np.random.default_rng(0).integers(0, 8, 256 * 256).astype(np.uint8)
        inst.write_binary_values("PROG:ARR 0,", levels, datatype="B")
        assert inst.query("SYST:ERR?") == '0,"No error"'
        g = inst.query_binary_values("READ:MAP? 0", datatype="f", container=np.array)
        assert g.shape == (256 * 256,)
        assert b"\n" in g.astype("<f4").tobytes()  # the payload holds newline bytes: framing must be exact
        target = server.chip.targets_us[levels]
        assert np.median(np.abs(g - target)) < server.chip.config.tol_us
        result = inst.query_binary_values("PROG:RES? 0", datatype="h", container=np.array)
        assert np.all(result != 0)
        times = inst.query_binary_values("PROG:TIME? 0", datatype="d", container=np.array)
        assert np.all(np.isfinite(times))
        window = inst.query_binary_values("READ:MAP? 0,10,20,5,7", datatype="f", container=np.array)
        assert window.shape == (20,)
        assert float(inst.query("READ:CELL? 0,3,4")) > 0
    finally:
        inst.close()


def test_mvm_and_adc_test_over_pyvisa(rm, server):
    inst = open_plain(rm, server.resource)
    try:
        inputs = np.full((3, 256), 0.1, dtype=np.float32)
        inst.write_binary_values("MVM? 0,3,", inputs.ravel(), datatype="f")
        codes = inst.read_binary_values(datatype="h", container=np.array)
        assert codes.shape == (3 * 256,) and codes.min() >= 0 and codes.max() <= 255
        inst.write_binary_values("ADC:TEST? 1,7,", np.array([0.0, 512.0, 2000.0], np.float32), datatype="f")
        codes = inst.read_binary_values(datatype="h", container=np.array)
        assert codes[0] <= 3 and 110 < codes[1] < 145 and codes[2] == 255
    finally:
        inst.close()


def test_malformed_input_is_an_error_entry_not_a_crash(rm, server):
    inst = open_plain(rm, server.resource)
    try:
        inst.write("THIS IS NOT SCPI")
        inst.write("PROG:ARR 0,#5999")
        inst.write("MVM? 0,1,#14abcd")
        inst.write_raw(b"\x00\xff?\n")
        codes = [int(inst.query("SYST:ERR?").split(",")[0]) for _ in range(5)]
        assert codes == [-102, -160, -161, -102, 0]
        assert inst.query("*OPC?") == "1"
    finally:
        inst.close()


def test_client_vanishing_mid_block_leaves_the_server_serving(server, rm):
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(b"PROG:ARR 0,#565536" + b"\x01" * 1000)  # block cut short, then gone
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(b"READ:MAP? 0\n")  # reply bigger than the socket buffer, never read
    inst = open_plain(rm, server.resource)
    try:
        assert inst.query("CHIP:ROWS?") == "256"
    finally:
        inst.close()


def test_several_clients_at_once_keep_the_chip_consistent(rm, server):
    n_clients, n_queries = 4, 15
    failures: list[BaseException] = []
    clocks: dict[int, list[float]] = {}

    def client(k: int) -> None:
        try:
            inst = open_plain(rm, server.resource)
            try:
                seen = []
                for _ in range(n_queries):
                    window = inst.query_binary_values(f"READ:MAP? {k % 4},0,16,0,256", datatype="f",
                                                      container=np.array)
                    assert window.shape == (16 * 256,)
                    assert inst.query("CHIP:COL?") == "256"
                    seen.append(float(inst.query("CLOC?")))
                clocks[k] = seen
            finally:
                inst.close()
        except BaseException as err:  # collected and re-raised in the main thread
            failures.append(err)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(n_clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not failures, failures
    assert all(np.all(np.diff(v) > 0) for v in clocks.values())  # the shared clock only moves forward


def test_error_queues_are_per_connection(rm, server):
    a, b = open_plain(rm, server.resource), open_plain(rm, server.resource)
    try:
        a.write("NOPE")
        assert b.query("SYST:ERR?") == '0,"No error"'
        assert a.query("SYST:ERR?").startswith("-113,")
    finally:
        a.close()
        b.close()


# ---------------------------------------------------------------- faults
def test_drop_after_closes_once_then_a_new_connection_works(rm):
    with SimServer(SimChip.from_preset("rram", seed=0), faults="drop_after=2") as srv:
        inst = open_plain(rm, srv.resource, timeout_ms=500)
        assert inst.query("CHIP:ROWS?") == "256"
        assert inst.query("CHIP:COL?") == "256"
        with pytest.raises(VisaIOError):
            inst.query("CHIP:LEV?")
        inst.close()
        inst = open_plain(rm, srv.resource, timeout_ms=2000)
        assert inst.query("CHIP:LEV?") == "8"
        inst.close()


def test_repeat_drops_every_connection(rm):
    with SimServer(SimChip.from_preset("rram", seed=0), faults=Faults(drop_after=1, repeat=True)) as srv:
        for _ in range(2):
            inst = open_plain(rm, srv.resource, timeout_ms=300)
            assert inst.query("*OPC?") == "1"
            with pytest.raises(VisaIOError):
                inst.query("*OPC?")
            inst.close()


def test_delayed_reply_times_out_then_arrives_late(rm):
    with SimServer(SimChip.from_preset("rram", seed=0), faults="delay_s=1.0,delay_after=1") as srv:
        inst = open_plain(rm, srv.resource, timeout_ms=300)
        assert inst.query("*OPC?") == "1"
        with pytest.raises(VisaIOError) as err:
            inst.query("CHIP:ROWS?")
        assert err.value.error_code == pyvisa.constants.StatusCode.error_timeout
        inst.timeout = 3000
        assert inst.read() == "256"  # the late reply is still in the stream
        inst.close()


def test_garbled_reply_exact_bytes():
    with SimServer(SimChip.from_preset("rram", seed=0), faults="garble_after=0") as srv:
        reply = raw_exchange(srv.port, b"CHIP:ROWS?\n")
        assert reply == bytes(b ^ 0x55 for b in b"256") + b"\n"
        assert raw_exchange(srv.port, b"CHIP:ROWS?\n") == b"256\n"  # fires once


def test_truncated_block_is_shorter_than_its_header(rm):
    with SimServer(SimChip.from_preset("rram", seed=0), faults="truncate_after=0") as srv:
        reply = raw_exchange(srv.port, b"READ:MAP? 0,0,1,0,16\n", n_expected=36, timeout_s=2)
        assert reply.startswith(b"#264") and len(reply) == 36  # header says 64 bytes, 32 arrive

    with SimServer(SimChip.from_preset("rram", seed=0), faults="truncate_after=0") as srv:
        inst = open_plain(rm, srv.resource, timeout_ms=500)
        with pytest.raises(VisaIOError):
            inst.query_binary_values("READ:MAP? 0", datatype="f", container=np.array)
        inst.close()


def test_pushed_error_appears_in_the_queue(rm):
    faults = Faults.parse("push_error=-310:System error;injected,error_after=0")
    with SimServer(SimChip.from_preset("rram", seed=0), faults=faults) as srv:
        inst = open_plain(rm, srv.resource)
        assert inst.query("*OPC?") == "1"
        assert inst.query("SYST:ERR?") == '-310,"System error;injected"'
        assert inst.query("SYST:ERR?") == '0,"No error"'
        inst.close()


# ---------------------------------------------------------------- lifecycle
def test_stop_releases_the_port_and_closes_clients(rm):
    srv = SimServer(SimChip.from_preset("rram", seed=0)).start()
    port = srv.port
    assert srv.resource == f"TCPIP0::127.0.0.1::{port}::SOCKET"
    inst = open_plain(rm, srv.resource, timeout_ms=300)
    assert inst.query("*OPC?") == "1"
    srv.stop()
    with pytest.raises(VisaIOError):
        inst.query("*OPC?")
    inst.close()
    with socket.socket() as sock:  # the port is free again
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))


def test_an_ipv6_host_is_refused_because_visa_cannot_address_it():
    with pytest.raises(ConfigError, match=r"host '::1': IPv6 addresses cannot appear in a VISA resource name"):
        SimServer(SimChip.from_preset("rram", seed=0), host="::1")


def test_binding_beyond_loopback_warns(caplog):
    assert bind_warning("127.0.0.1") is None
    assert bind_warning("localhost") is None
    assert bind_warning("::1") is None
    assert "no authentication" in bind_warning("0.0.0.0")
    assert "no authentication" in bind_warning("192.168.1.20")
    with caplog.at_level(logging.WARNING, logger="cimcal.drivers.sim.server"):
        with SimServer(SimChip.from_preset("rram", seed=0)):
            pass
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def _start_subprocess_server(*extra: str) -> tuple[subprocess.Popen, str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "cimcal.drivers.sim.server", "--port", "0", "--preset", "pcm", "--seed", "7", *extra],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, env=env, text=True)
    line = proc.stderr.readline()
    match = re.search(r"(TCPIP0::\S+::SOCKET)", line)
    if not match:
        proc.kill()
        raise AssertionError(f"server did not announce its resource: {line!r}")
    return proc, match.group(1)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_subprocess_server_shuts_down_cleanly_on_signal(rm, sig):
    proc, resource = _start_subprocess_server()
    try:
        inst = open_plain(rm, resource)
        assert inst.query("*IDN?").startswith("CIMCAL,SIMCHIP-PCM,7,")
        assert inst.query("CHIP:LEV?") == "16"
        proc.send_signal(sig)
        assert proc.wait(timeout=20) == 0
        assert "stopped" in proc.stderr.read()
        inst.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_subprocess_server_takes_faults_from_the_command_line(rm):
    proc, resource = _start_subprocess_server("--faults", "garble_after=0")
    try:
        inst = open_plain(rm, resource)
        assert inst.query("CHIP:ROWS?") != "256"
        assert inst.query("CHIP:ROWS?") == "256"
        inst.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)


def test_large_map_reads_are_framed_exactly_many_times(rm, server):
    inst = open_plain(rm, server.resource)
    try:
        for _ in range(10):
            g = inst.query_binary_values("READ:MAP? 1", datatype="f", container=np.array)
            assert g.shape == (65536,)
        assert inst.query("*OPC?") == "1"  # nothing left over in the stream
    finally:
        inst.close()


def test_program_block_via_raw_socket_then_read_result(server):
    levels = np.full(256 * 256, 10 % 8, dtype=np.uint8)
    levels[::7] = 2
    message = b"PROG:ARR 2," + encode_block(levels.tobytes()) + b"\nPROG:RES? 2\n"
    reply = raw_exchange(server.port, message, n_expected=2 + 6 + 2 * 65536 + 1)
    assert reply.startswith(b"#6131072")
    result = np.frombuffer(reply[8:8 + 131072], dtype="<i2")
    assert np.all(result != 0)
