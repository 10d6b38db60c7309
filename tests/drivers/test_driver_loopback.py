"""CIMTester over the real stack: pyvisa + pyvisa-py TCPIP SOCKET + loopback + the simulated chip.

Every injected fault ends either in a successful retry (idempotent queries) or in a clear
InstrumentError naming the command, and the tester stays usable afterwards.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
import pyvisa

from cimcal.drivers.tester import CIMTester
from cimcal.errors import InstrumentError, LimitError

N_CONFIG = 11  # queries behind CIMTester.config: the faulty command below is number N_CONFIG + 1


def _tester(server, **kwargs) -> CIMTester:
    tester = CIMTester(server.resource, **kwargs)
    tester.config  # noqa: B018 - 11 commands: the fault counters below start after them
    return tester


def test_program_and_read_back_through_binary_blocks(served_chip):
    with _tester(served_chip) as tester:
        assert tester.idn.startswith("CIMCAL,SIMCHIP-")
        cfg = tester.config
        assert (cfg.arrays, cfg.rows, cfg.cols) == (2, 64, 32)
        rng = np.random.default_rng(1)
        levels = rng.integers(0, cfg.levels, size=(cfg.rows, cfg.cols))
        tester.program_array(1, levels)
        pulses = tester.program_result(1)
        assert pulses.shape == (64, 32) and (pulses != 0).all()
        assert np.isfinite(tester.program_time(1)).all()
        g_us = tester.read_map(1)
        targets = np.asarray(cfg.targets_us)[levels]
        ok = pulses > 0
        assert np.median(np.abs(g_us[ok] - targets[ok])) < 1.0  # program-and-verify tolerance
        window = tester.read_map(1, rows=(10, 20), cols=(3, 7))
        assert window.shape == (10, 4)
        np.testing.assert_allclose(window, g_us[10:20, 3:7], atol=3.0)  # same cells, new read noise
        codes = tester.mvm(1, np.full((3, cfg.rows), 0.1))
        assert codes.shape == (3, cfg.cols) and codes.dtype == np.int16


def test_a_plain_pyvisa_client_reads_a_map(served_chip):
    rm = pyvisa.ResourceManager("@py")
    inst = rm.open_resource(served_chip.resource, read_termination="\n", write_termination="\n")
    try:
        assert inst.query("*IDN?").startswith("CIMCAL,")
        values = inst.query_binary_values("READ:MAP? 0,0,4,0,8", datatype="f", is_big_endian=False,
                                          container=np.array)
        assert values.shape == (32,)
    finally:
        inst.close()
        rm.close()


@pytest.mark.parametrize("fault", ["drop_after", "garble_after", "truncate_after"])
def test_idempotent_read_survives_a_transport_fault(serve_with_faults, fault):
    server = serve_with_faults(f"{fault}={N_CONFIG}")
    with _tester(server, timeout_ms=400) as tester:
        session = tester.adapter.connection
        g_us = tester.read_map(0)
        assert g_us.shape == (64, 32) and np.isfinite(g_us).all()
        assert tester.adapter.connection is not session  # it reconnected
        assert tester.read_map(0, rows=(0, 2), cols=(0, 2)).shape == (2, 2)


def test_late_reply_times_out_then_the_retry_succeeds(serve_with_faults):
    server = serve_with_faults(f"delay_s=1.0,delay_after={N_CONFIG}")
    with _tester(server, timeout_ms=300) as tester:
        assert tester.clock() >= 0.0
        assert tester.read_map(0).shape == (64, 32)


@pytest.mark.parametrize("retries", [0, 2])
def test_a_late_binary_block_is_not_read_as_the_error_queue_reply(serve_with_faults, retries):
    # READ:MAP? times out; its block then arrives where the SYST:ERR? text reply is awaited
    server = serve_with_faults(f"delay_s=0.7,delay_after={N_CONFIG}")
    with _tester(server, timeout_ms=500, retries=retries) as tester:
        session = tester.adapter.connection
        if retries:
            assert tester.read_map(0).shape == (64, 32)
        else:
            with pytest.raises(InstrumentError, match=r"command 'READ:MAP\? 0'.*transport fault.*gave up after 1"):
                tester.read_map(0)
        assert tester.adapter.connection is not session  # it reconnected: the late bytes are gone
        assert tester.clock() >= 0.0
        assert tester.read_map(0, rows=(0, 1), cols=(0, 2)).shape == (1, 2)


def test_an_instrument_that_never_answers_in_time_is_a_clear_error(serve_with_faults):
    server = serve_with_faults("delay_s=0.6,repeat=true")
    tester = CIMTester(server.resource, timeout_ms=200, retries=1)
    with pytest.raises(InstrumentError, match=r"CHIP:ARR\?.*gave up after 2 attempt"):
        tester.config  # noqa: B018
    tester.close()


def test_pushed_error_is_raised_with_the_command(serve_with_faults):
    server = serve_with_faults(f"push_error=-300:Device fault,error_after={N_CONFIG}")
    with _tester(server) as tester:
        with pytest.raises(InstrumentError, match="-300,Device fault") as info:
            tester.advance(5.0)
        assert info.value.command.startswith("CLOC:ADV")
        tester.advance(5.0)  # queue drained: the next command is clean


def test_state_changing_command_is_not_retried_but_the_tester_recovers(serve_with_faults):
    server = serve_with_faults(f"drop_after={N_CONFIG}")
    with _tester(server, timeout_ms=1000) as tester:
        with pytest.raises(InstrumentError, match="not retried") as info:
            tester.program_cells(0, [0, 1], [0, 1], [3, 4])
        assert info.value.command.startswith("PROG:CELL 0,")
        assert (tester.program_result(0)[:2, :2] == 0).all()  # the dropped command never ran
        tester.program_cells(0, [0, 1], [0, 1], [3, 4])
        assert (np.diag(tester.program_result(0)[:2, :2]) != 0).all()


def test_unsafe_requests_send_nothing_on_the_wire(served_chip):
    with _tester(served_chip) as tester:
        sent = []
        tester.adapter.write = lambda *a, **k: sent.append(a)  # type: ignore[method-assign]
        tester.adapter.write_bytes = lambda *a, **k: sent.append(a)  # type: ignore[method-assign]
        with pytest.raises(LimitError):
            tester.mvm(0, np.full((1, 64), 1.5))
        with pytest.raises(LimitError):
            tester.temperature(300.0)
        with pytest.raises(LimitError):
            tester.program_array(0, np.full((64, 32), 99))
        assert sent == []


def test_threads_sharing_one_tester_are_serialized(served_chip):
    with _tester(served_chip) as tester:
        shapes, errors = [], []

        def work(window: tuple[int, int]) -> None:
            try:
                for _ in range(10):
                    shapes.append(tester.read_map(0, rows=window, cols=(0, 32)).shape)
                    tester.clock()
            except Exception as exc:  # noqa: BLE001 - collected and asserted below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=((i, i + 1 + i),)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert sorted(set(shapes)) == [(1, 32), (2, 32), (3, 32), (4, 32)]


def test_property_setter_rides_out_a_dropped_connection(serve_with_faults):
    # the connection drops at TEMP: the setter reconnects and sets again (it used to raise a raw VisaIOError)
    server = serve_with_faults(f"drop_after={N_CONFIG}")
    with _tester(server, timeout_ms=400) as tester:
        session = tester.adapter.connection
        tester.temperature_c = 30.0
        assert tester.adapter.connection is not session
        assert tester.temperature_c == 30.0


def test_a_closed_tester_refuses_commands_instead_of_reconnecting(served_chip):
    tester = _tester(served_chip)
    tester.clock()
    session = tester.adapter.connection
    tester.close()
    with pytest.raises(InstrumentError, match=r"command 'CLOC\?': instrument is closed"):
        tester.clock()
    with pytest.raises(InstrumentError, match="instrument is closed"):
        tester.read_map(0)
    assert tester.adapter.connection is session  # no session was reopened behind the caller's back
    tester.close()  # still safe to call twice
