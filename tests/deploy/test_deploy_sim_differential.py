"""MVM:DIFFerential? (added to the simulated chip for deployment): exact exchange, physics, errors."""

from __future__ import annotations

import numpy as np
import pytest


def _block(payload: bytes) -> bytes:
    n = str(len(payload)).encode()
    return b"#" + str(len(n)).encode() + n + payload


def test_differential_read_out_converts_gain_times_pair_difference_once(sim_chip):
    from cimcal.drivers.sim.scpi import Dispatcher

    chip = sim_chip
    chip.program_cells(0, [0, 0, 1, 1], [0, 128, 1, 129], [7, 0, 0, 7])  # +W on pair 0, -W on pair 1
    g = chip.true_conductance_us(0)
    volts = np.zeros((1, 256), dtype="<f4")
    volts[0, :2] = 0.1
    dispatcher = Dispatcher(chip)
    reply = dispatcher.handle(b"MVM:DIFF? 0,1,64,512," + _block(volts.tobytes()) + b"\n")
    assert reply[:5] == b"#3256" and reply.endswith(b"\n") and len(reply) == 5 + 256 + 1
    codes = np.frombuffer(reply[5:-1], dtype="<i2")
    lsb = 1024.0 / 256
    v = chip.quantize_inputs(volts.astype(np.float64))[0]
    for pair, sign in ((0, 1.0), (1, -1.0)):
        diff_ua = float(v @ (g[:, pair] - g[:, pair + 128]))  # every row driven, unprogrammed cells included
        assert sign * v[pair] * (g[pair, pair] - g[pair, pair + 128]) > 3.0  # a 39 µS swing at 0.1 V
        expected = (512.0 + 64 * diff_ua) / lsb
        assert abs(codes[pair] - expected) < 6  # ADC gain/offset/INL errors of a few LSB
    assert dispatcher.handle(b"SYST:ERR?\n") == b'0,"No error"\n'


@pytest.mark.parametrize("args, code", [(b"0,1,0,512,", b"-222"), (b"0,1,4,5000,", b"-222"), (b"0,1,4,", b"-109")])
def test_differential_read_out_refuses_bad_arguments_through_the_error_queue(sim_chip, args, code):
    from cimcal.drivers.sim.scpi import Dispatcher

    dispatcher = Dispatcher(sim_chip)
    assert dispatcher.handle(b"MVM:DIFF? " + args + _block(np.zeros(256, "<f4").tobytes()) + b"\n") is None
    assert dispatcher.handle(b"SYST:ERR?\n").startswith(code)


def test_tester_checks_limits_before_sending(served):
    from cimcal.errors import LimitError

    _, tester, _ = served
    with pytest.raises(LimitError):
        tester.mvm_differential(0, np.full((1, 256), 0.3, dtype=np.float32), 1.0, 512.0)
    with pytest.raises(LimitError):
        tester.mvm_differential(0, np.zeros((1, 256), dtype=np.float32), 5000.0, 512.0)
    assert tester.mvm_differential(0, np.zeros((2, 256), dtype=np.float32), 1.0, 512.0).shape == (2, 128)
