"""Exact byte-level exchanges with the simulated chip's SCPI Dispatcher, framing and blocks."""

from __future__ import annotations

import numpy as np
import pytest

import cimcal
from cimcal.drivers.sim.scpi import (
    Block,
    Dispatcher,
    ScpiError,
    decode_block,
    encode_block,
    frame_end,
    parse_message,
)


def errors(d: Dispatcher) -> list[bytes]:
    """Drain the error queue through SYST:ERR? (including the final 0,"No error")."""
    out = []
    while True:
        reply = d.handle(b"SYST:ERR?\n")
        out.append(reply)
        if reply.startswith(b"0,"):
            return out


def block_reply(payload: bytes) -> bytes:
    return b"#" + str(len(str(len(payload)))).encode() + str(len(payload)).encode() + payload + b"\n"


# ---------------------------------------------------------------- exact exchanges
def test_idn_reply_is_exact(dispatcher):
    assert dispatcher.handle(b"*IDN?\n") == f"CIMCAL,SIMCHIP-RRAM,0,{cimcal.__version__}\n".encode()


@pytest.mark.parametrize(
    "message, reply",
    [
        (b"CHIP:ROWS?\n", b"32\n"),
        (b"chip:rows?\n", b"32\n"),
        (b":CHIP:COL?\n", b"16\n"),
        (b"CHIP:COLumns?\n", b"16\n"),
        (b"CHIP:ARRays?\n", b"2\n"),
        (b"CHIP:ARR?\n", b"2\n"),
        (b"CHIP:LEV?\n", b"8\n"),
        (b"ADC:BITS?\n", b"8\n"),
        (b"ADC:RANG?\n", b"0.0,1024.0\n"),
        (b"DAC:BITS?\n", b"8\n"),
        (b"DAC:RANGE?\n", b"0.0,0.2\n"),
        (b"LIM:VRE?\n", b"0.2\n"),
        (b"LIMIT:VPROG?\n", b"3.0\n"),
        (b"*OPC?\n", b"1\n"),
        (b"TEMP?\n", b"25.0\n"),
        (b"CHIP:ROWS?;CHIP:COL?\n", b"32;16\n"),
        (b"SYST:ERR?\n", b'0,"No error"\n'),
        (b"SYSTem:ERRor:NEXT?\n", b'0,"No error"\n'),
    ],
)
def test_queries_answer_exact_bytes(dispatcher, message, reply):
    assert dispatcher.handle(message) == reply
    assert errors(dispatcher) == [b'0,"No error"\n']


def test_level_targets_span_the_conductance_window(dispatcher):
    reply = dispatcher.handle(b"CHIP:LEV:TARG?\n")
    targets = [float(x) for x in reply.decode().strip().split(",")]
    assert targets == pytest.approx(np.linspace(1.0, 40.0, 8).tolist())


def test_commands_without_reply_return_none(dispatcher):
    for message in (b"*RST\n", b"*CLS\n", b"TEMP 40\n", b"CLOC:ADV 10\n", b"*WAI\n"):
        assert dispatcher.handle(message) is None
    assert dispatcher.handle(b"TEMP?\n") == b"40.0\n"
    assert errors(dispatcher) == [b'0,"No error"\n']


# ---------------------------------------------------------------- error queue
def test_errors_are_queued_in_order_with_standard_codes(dispatcher):
    bad = [
        b"FOO:BAR\n",  # unknown header
        b"READ:MAP? 9\n",  # array out of range
        b"READ:CELL? 0,1\n",  # missing parameter
        b"CHIP:ROWS? 1\n",  # parameter not allowed
        b"CLOC:ADV abc\n",  # non-numeric
        b"PROG:ARR 0,#3abc\n",  # bad block header
        b"PROG:ARR 0,#15abcde\n",  # wrong block size
        b"TEMP 500\n",  # out of range
        b"CHIP:COLU?\n",  # neither short nor long form
        b"READ:MAP? 0,,1\n",  # empty argument
    ]
    for message in bad:
        assert dispatcher.handle(message) is None  # a query that errors returns nothing
    codes = [int(r.split(b",")[0]) for r in errors(dispatcher)]
    assert codes == [-113, -222, -109, -108, -104, -160, -161, -222, -113, -102, 0]


def test_error_message_names_the_header_and_detail(dispatcher):
    dispatcher.handle(b"FOO:BAR\n")
    dispatcher.handle(b"READ:MAP? 9\n")
    assert dispatcher.handle(b"SYST:ERR?\n") == b'-113,"Undefined header;FOO:BAR"\n'
    assert dispatcher.handle(b"SYST:ERR?\n") == b'-222,"Data out of range;array must be in 0..1, got 9"\n'


def test_error_queue_overflow_keeps_oldest_and_ends_in_350(dispatcher):
    for _ in range(40):
        dispatcher.handle(b"NOPE\n")
    assert dispatcher.handle(b"SYST:ERR:COUN?\n") == b"32\n"
    replies = errors(dispatcher)
    assert len(replies) == 33
    assert all(r.startswith(b"-113,") for r in replies[:31])
    assert replies[31] == b'-350,"Queue overflow"\n'


def test_cls_clears_the_error_queue(dispatcher):
    dispatcher.handle(b"NOPE\n")
    dispatcher.handle(b"*CLS\n")
    assert dispatcher.handle(b"SYST:ERR?\n") == b'0,"No error"\n'


def test_compound_message_runs_the_good_parts(dispatcher):
    assert dispatcher.handle(b"CHIP:ROWS?;NOPE;CHIP:COL?\n") == b"32;16\n"
    assert [int(r.split(b",")[0]) for r in errors(dispatcher)] == [-113, 0]


# ---------------------------------------------------------------- blocks and framing
PAYLOADS = [b"", b"\n", b"abc\n\n#12;,\r\n", bytes(range(256)) * 3, b"\n" * 1000]


@pytest.mark.parametrize("payload", PAYLOADS)
def test_block_round_trip_keeps_newlines(payload):
    encoded = encode_block(payload)
    assert encoded == b"#" + str(len(str(len(payload)))).encode() + str(len(payload)).encode() + payload
    assert decode_block(encoded) == payload
    assert decode_block(encoded + b"\n") == payload


def test_decode_block_refuses_short_payload():
    with pytest.raises(ScpiError) as err:
        decode_block(b"#210abc\n")
    assert err.value.code == -161


@pytest.mark.parametrize("payload", PAYLOADS)
def test_frame_end_skips_block_payloads(payload):
    first = b"PROG:CELL 0," + encode_block(payload) + b"\n"
    stream = first + b"*IDN?\n"
    assert frame_end(stream) == len(first)
    assert frame_end(stream, len(first)) == len(stream)
    for cut in range(len(first)):  # every prefix is incomplete
        if frame_end(stream[:cut]) is not None:
            raise AssertionError(f"prefix of {cut} bytes framed as complete")


def test_frame_end_resyncs_after_malformed_block_header():
    assert frame_end(b"PROG:ARR 0,#x12\n*IDN?\n") == len(b"PROG:ARR 0,#x12\n")


def test_parse_message_yields_exact_block_payload():
    payload = b"\n;,#9\n"
    (cmd,) = parse_message(b"ADC:TEST? 0, 3 ," + encode_block(payload) + b"\n")
    assert cmd.header == "ADC:TEST?"
    assert cmd.args == ("0", "3", Block(payload))


def test_program_array_with_newline_bytes_in_the_level_map(make_chip):
    chip = make_chip("pcm")  # 16 levels: level 10 is the byte b"\n"
    d = Dispatcher(chip)
    levels = np.full((32, 16), 10, dtype=np.uint8)
    levels[::2] = 3
    assert b"\n" in levels.tobytes()
    assert d.handle(b"PROG:ARR 1," + encode_block(levels.tobytes()) + b"\n") is None
    assert errors(d) == [b'0,"No error"\n']
    result = np.frombuffer(decode_block(d.handle(b"PROG:RES? 1\n")), dtype="<i2").reshape(32, 16)
    assert np.all(result != 0)
    assert (result > 0).mean() > 0.9
    g = np.frombuffer(decode_block(d.handle(b"READ:MAP? 1\n")), dtype="<f4").reshape(32, 16)
    healthy = (chip.stuck_map(1) == 0) & (result > 0)
    target = chip.targets_us[levels]
    assert np.median(np.abs(g - target)[healthy]) < chip.config.tol_us


def test_program_cells_subset_and_last_duplicate_wins(dispatcher, chip):
    triples = np.array([[0, 0, 7], [1, 2, 3], [0, 0, 2]], dtype="<i4")
    assert dispatcher.handle(b"PROG:CELL 0," + encode_block(triples.tobytes()) + b"\n") is None
    result = np.frombuffer(decode_block(dispatcher.handle(b"PROG:RES? 0\n")), dtype="<i2").reshape(32, 16)
    assert np.count_nonzero(result) == 2
    assert chip._level[0, 0, 0] == 2
    times = np.frombuffer(decode_block(dispatcher.handle(b"PROG:TIME? 0\n")), dtype="<f8").reshape(32, 16)
    assert np.isfinite(times).sum() == 2
    assert times[1, 2] < times[0, 0] <= chip.clock_s  # programmed in the given order


def test_read_map_window_header_and_shape(dispatcher):
    reply = dispatcher.handle(b"READ:MAP? 0,4,12,2,10\n")
    assert reply.startswith(b"#3256") and reply.endswith(b"\n")
    values = np.frombuffer(decode_block(reply), dtype="<f4")
    assert values.shape == (64,)
    assert np.all(values >= 0)


def test_read_map_rejects_bad_window(dispatcher):
    assert dispatcher.handle(b"READ:MAP? 0,4,4,0,16\n") is None
    assert dispatcher.handle(b"READ:MAP? 0,0,1\n") is None
    assert [int(r.split(b",")[0]) for r in errors(dispatcher)] == [-222, -109, 0]


def test_mvm_and_adc_test_return_int16_blocks(dispatcher):
    inputs = np.full((3, 32), 0.1, dtype="<f4")
    reply = dispatcher.handle(b"MVM? 0,3," + encode_block(inputs.tobytes()) + b"\n")
    codes = np.frombuffer(decode_block(reply), dtype="<i2")
    assert codes.shape == (3 * 16,)
    assert codes.min() >= 0 and codes.max() <= 255
    ramp = np.array([-50.0, 0.0, 512.0, 5000.0], dtype="<f4")
    reply = dispatcher.handle(b"ADC:TEST? 0,3," + encode_block(ramp.tobytes()) + b"\n")
    codes = np.frombuffer(decode_block(reply), dtype="<i2")
    assert codes[0] == 0 and codes[-1] == 255  # saturation at both ends
    assert 240 <= codes[2] * 2 <= 272


def test_mvm_refuses_wrong_count_and_out_of_range_inputs(dispatcher):
    inputs = np.full((2, 32), 0.1, dtype="<f4")
    assert dispatcher.handle(b"MVM? 0,3," + encode_block(inputs.tobytes()) + b"\n") is None
    inputs[0, 0] = 0.5  # above the DAC range and the read-voltage limit
    assert dispatcher.handle(b"MVM? 0,2," + encode_block(inputs.tobytes()) + b"\n") is None
    assert dispatcher.handle(b"MVM? 0,2,0.1\n") is None
    assert [int(r.split(b",")[0]) for r in errors(dispatcher)] == [-161, -222, -104, 0]


def test_clock_advances_with_each_command_and_on_request(dispatcher):
    t0 = float(dispatcher.handle(b"CLOC?\n"))
    t1 = float(dispatcher.handle(b"CLOC?\n"))
    assert t1 > t0
    dispatcher.handle(b"CLOC:ADV 3600\n")
    assert float(dispatcher.handle(b"CLOC?\n")) == pytest.approx(t1 + 3600, abs=1e-3)


def test_reset_clears_program_results_but_keeps_cells(dispatcher, chip):
    dispatcher.handle(b"PROG:ARR 0," + encode_block(np.zeros(512, np.uint8).tobytes()) + b"\n")
    dispatcher.handle(b"TEMP 60\n")
    dispatcher.handle(b"*RST\n")
    assert dispatcher.handle(b"TEMP?\n") == b"25.0\n"
    result = np.frombuffer(decode_block(dispatcher.handle(b"PROG:RES? 0\n")), dtype="<i2")
    assert np.all(result == 0)
    assert np.all(np.isfinite(chip.program_time(0)))  # the cells remember when they were programmed


# ---------------------------------------------------------------- robustness (property-based)
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_TOKENS = [b"*IDN?", b"READ:MAP?", b"PROG:ARR", b"MVM?", b"ADC:TEST?", b"SYST:ERR?", b" ", b",", b";", b"0",
           b"1", b"-3", b"1e9", b"abc", b"#", b"#1", b"#14", b"#0", b"\r", b'"', b":", b"?", b"\xff", b"#2100"]


@settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.one_of(st.sampled_from(_TOKENS), st.binary(max_size=8)), max_size=12))
def test_arbitrary_messages_never_raise(dispatcher, parts):
    message = b"".join(parts) + b"\n"
    reply = dispatcher.handle(message)
    assert reply is None or reply.endswith(b"\n")
    while not dispatcher.handle(b"SYST:ERR?\n").startswith(b"0,"):
        pass


@settings(max_examples=100, deadline=None, database=None)
@given(st.lists(st.binary(max_size=40), min_size=1, max_size=5), st.data())
def test_framing_is_independent_of_how_the_stream_is_cut(payloads, data):
    messages = [b"ADC:TEST? 0,1," + encode_block(p) + b"\n" for p in payloads]
    stream = b"".join(messages)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    buf, framed = bytearray(), []
    for lo, hi in zip([0, *cuts], [*cuts, len(stream)]):
        buf += stream[lo:hi]
        while (end := frame_end(buf)) is not None:
            framed.append(bytes(buf[:end]))
            del buf[:end]
    assert framed == messages and not buf
