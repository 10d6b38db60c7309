"""CIMTester byte-exact exchanges (PyMeasure expected_protocol): commands, blocks, errors, limits."""

from __future__ import annotations

import numpy as np
import pytest
from driver_fixtures import CONFIG_EXCHANGE, NO_ERROR
from pymeasure.test import expected_protocol

from cimcal.drivers.instrument import ieee_block, parse_ieee_block
from cimcal.drivers.limits import SafeLimits
from cimcal.drivers.tester import CIMTester
from cimcal.errors import InstrumentError, LimitError


def test_config_is_read_once_with_the_documented_queries():
    with expected_protocol(CIMTester, CONFIG_EXCHANGE) as tester:
        cfg = tester.config
        assert tester.config is cfg
    assert (cfg.arrays, cfg.rows, cfg.cols, cfg.levels) == (2, 2, 3, 4)
    assert cfg.targets_us == (1.0, 5.0, 9.0, 13.0)
    assert cfg.adc_range_ua == (0.0, 100.0) and cfg.dac_range_v == (0.0, 0.2) and cfg.v_read_max_v == 0.2


def test_read_map_parses_a_little_endian_float32_block():
    values = np.arange(6, dtype="<f4") * 1.5
    block = ieee_block(values.tobytes()) + b"\n"
    window = np.array([7.0, 8.0], dtype="<f4")
    with expected_protocol(CIMTester, CONFIG_EXCHANGE + [
        ("READ:MAP? 1", block),
        ("READ:MAP? 0,1,2,0,2", ieee_block(window.tobytes()) + b"\n"),
    ]) as tester:
        full = tester.read_map(1)
        part = tester.read_map(0, rows=(1, 2), cols=(0, 2))
    np.testing.assert_array_equal(full, values.reshape(2, 3))
    assert full.dtype == np.float32
    np.testing.assert_array_equal(part, [[7.0, 8.0]])


def test_program_array_sends_a_uint8_block_then_checks_the_error_queue():
    levels = np.array([[0, 1, 2], [3, 2, 1]])
    message = b"PROG:ARR 1,#16" + bytes([0, 1, 2, 3, 2, 1]) + b"\n"
    with expected_protocol(CIMTester, CONFIG_EXCHANGE + [(message, None), NO_ERROR]) as tester:
        tester.program_array(1, levels)


def test_program_cells_sends_int32_triples():
    triples = np.array([[0, 2, 3], [1, 0, 1]], dtype="<i4").tobytes()
    message = b"PROG:CELL 0," + ieee_block(triples) + b"\n"
    with expected_protocol(CIMTester, CONFIG_EXCHANGE + [(message, None), NO_ERROR]) as tester:
        tester.program_cells(0, [0, 1], [2, 0], [3, 1])


def test_mvm_and_adc_test_exchange_blocks_both_ways():
    inputs = np.array([[0.1, 0.0], [0.05, 0.2]], dtype="<f4")
    codes = np.array([[1, 2, 3], [4, 5, 6]], dtype="<i2")
    adc_in = np.array([0.0, 50.0, 100.0], dtype="<f4")
    adc_codes = np.array([0, 128, 255], dtype="<i2")
    with expected_protocol(CIMTester, CONFIG_EXCHANGE + [
        (b"MVM? 0,2," + ieee_block(inputs.tobytes()) + b"\n", ieee_block(codes.tobytes()) + b"\n"),
        (b"ADC:TEST? 1,2," + ieee_block(adc_in.tobytes()) + b"\n", ieee_block(adc_codes.tobytes()) + b"\n"),
    ]) as tester:
        out = tester.mvm(0, inputs)
        adc = tester.adc_test(1, 2, adc_in)
    np.testing.assert_array_equal(out, codes)
    np.testing.assert_array_equal(adc, adc_codes)


def test_program_result_and_time_blocks():
    pulses = np.array([3, 0, -1, 7, 2, 1], dtype="<i2")
    times = np.array([1.5, np.nan, 2.0, 2.5, 3.0, 3.5], dtype="<f8")
    with expected_protocol(CIMTester, CONFIG_EXCHANGE + [
        ("PROG:RES? 0", ieee_block(pulses.tobytes()) + b"\n"),
        ("PROG:TIME? 0", ieee_block(times.tobytes()) + b"\n"),
    ]) as tester:
        np.testing.assert_array_equal(tester.program_result(0), pulses.reshape(2, 3))
        np.testing.assert_array_equal(tester.program_time(0), times.reshape(2, 3))


def test_clock_temperature_and_cell_read():
    with expected_protocol(CIMTester, [
        ("CLOC?", "12.5"), ("CLOC:ADV 3600", None), NO_ERROR,
        ("TEMP 45", None), NO_ERROR, ("TEMP?", "45.0"),
        *CONFIG_EXCHANGE, ("READ:CELL? 1,1,2", "17.25"),
        ("*IDN?", "CIMCAL,SIMCHIP-RRAM,0,0.1.0"),
    ]) as tester:
        assert tester.clock() == 12.5
        tester.advance(3600)
        assert tester.temperature(45) == 45.0
        assert tester.read_cell(1, 1, 2) == 17.25
        assert tester.idn == "CIMCAL,SIMCHIP-RRAM,0,0.1.0"
        assert tester.idn == "CIMCAL,SIMCHIP-RRAM,0,0.1.0"  # cached: asked once


def test_error_queue_is_drained_and_raised_with_the_command():
    levels = np.zeros((2, 3), dtype=int)
    with expected_protocol(CIMTester, CONFIG_EXCHANGE + [
        (b"PROG:ARR 0,#16" + bytes(6) + b"\n", None),
        ("SYST:ERR?", '-222,"Data out of range;level 9"'),
        ("SYST:ERR?", '-350,"Queue overflow"'),
        NO_ERROR,
    ]) as tester:
        with pytest.raises(InstrumentError) as info:
            tester.program_array(0, levels)
    err = info.value
    assert err.command.startswith("PROG:ARR 0,")
    assert "-222,Data out of range;level 9" in err.reply and "-350" in err.reply


@pytest.mark.parametrize("action", [
    lambda t: t.mvm(0, np.full((1, 2), 0.25)),               # above the chip's 0.2 V read limit
    lambda t: t.adc_test(0, 0, [20_000.0]),                    # above adc_test_max_ua
    lambda t: t.read_map(2),                                   # no array 2
    lambda t: t.read_map(0, rows=(1, 3)),                      # window past the last row
    lambda t: t.program_array(0, np.full((2, 3), 4)),          # level 4 of 4 levels
    lambda t: t.program_cells(0, [0], [3], [1]),               # column 3 of 3
    lambda t: t.read_cell(0, 0, -1),
    lambda t: t.advance(-1.0),
    lambda t: setattr(t, "temperature_c", 150.0),              # above temp_max_c
])
def test_limits_refuse_before_anything_is_sent(action):
    # After the config queries the protocol is empty: any byte sent would fail the exchange.
    with expected_protocol(CIMTester, CONFIG_EXCHANGE) as tester:
        tester.config  # noqa: B018 - the geometry the checks use
        with pytest.raises(LimitError, match="nothing was sent|outside"):
            action(tester)


def test_configured_limits_are_stricter_than_the_chip():
    limits = SafeLimits(v_read_max_v=0.05)
    with expected_protocol(CIMTester, CONFIG_EXCHANGE, limits=limits) as tester:
        with pytest.raises(LimitError, match=r"\[0, 0.05\]"):
            tester.mvm(0, np.full((1, 2), 0.1))


def test_garbled_block_without_a_connection_to_reset_is_a_clear_error():
    with expected_protocol(CIMTester, CONFIG_EXCHANGE + [("READ:MAP? 0", b"XX")]) as tester:
        with pytest.raises(InstrumentError, match="garbled reply.*IEEE 488.2"):
            tester.read_map(0)


def test_ieee_block_round_trip_and_malformed_blocks():
    values = np.array([1.0, -2.5, 3.25], dtype="<f4")
    raw = ieee_block(values.tobytes())
    assert raw[:4] == b"#212"
    np.testing.assert_array_equal(parse_ieee_block(raw + b"\n", "f4"), values)
    from cimcal.drivers.instrument import GarbledReply

    for bad in (b"#0", b"#3012abc", b"#212" + bytes(8), b"212" + bytes(12)):
        with pytest.raises(GarbledReply):
            parse_ieee_block(bad, "f4")


def test_a_chip_programming_above_the_program_voltage_limit_is_refused():
    # the chip reports LIM:VPR? 3.0 V: with v_prog_max_v = 2 V no programming command may be sent
    with expected_protocol(CIMTester, CONFIG_EXCHANGE, limits=SafeLimits(v_prog_max_v=2.0)) as tester:
        with pytest.raises(LimitError, match=r"up to 3 V \(LIMit:VPRog\?\).*v_prog_max_v = 2 V"):
            tester.program_array(0, np.zeros((2, 3), dtype=int))
        with pytest.raises(LimitError, match="v_prog_max_v"):
            tester.program_cells(0, [0], [0], [1])
        with pytest.raises(LimitError, match="v_prog_max_v"):
            tester.check_program_voltage()


def test_mvm_inputs_outside_the_dac_range_are_refused():
    # DAC:RANG? is 0..0.2 V: -0.1 V passes the |V| <= 0.2 V read limit but the DAC cannot convert it
    with expected_protocol(CIMTester, CONFIG_EXCHANGE) as tester:
        with pytest.raises(LimitError, match=r"\[-0.1, 0.1\] V leave the DAC range \[0, 0.2\] V"):
            tester.mvm(0, np.array([[-0.1, 0.1]]))


def test_temperature_setter_names_property_command_and_limit():
    with expected_protocol(CIMTester, []) as tester:
        with pytest.raises(LimitError) as info:
            tester.temperature_c = 200
    text = str(info.value)
    assert "temperature_c 200 C" in text and "'TEMP'" in text and "temp_min_c/temp_max_c" in text


def test_temperature_setter_goes_through_the_error_check_and_retry_path(monkeypatch):
    import pyvisa

    with expected_protocol(CIMTester, [("TEMP 30", None), ("SYST:ERR?", '-222,"Data out of range"'),
                                       NO_ERROR]) as tester:
        with pytest.raises(InstrumentError, match="-222,Data out of range"):
            tester.temperature_c = 30

    with expected_protocol(CIMTester, []) as tester:
        def dead(*args, **kwargs):
            raise pyvisa.errors.VisaIOError(pyvisa.constants.StatusCode.error_connection_lost)

        monkeypatch.setattr(tester.adapter, "write", dead)
        with pytest.raises(InstrumentError, match=r"command 'TEMP 30'.*transport fault"):
            tester.temperature_c = 30


def test_geometry_refusals_do_not_advise_widening_limits():
    with expected_protocol(CIMTester, CONFIG_EXCHANGE) as tester:
        with pytest.raises(LimitError) as info:
            tester.read_cell(0, 5, 0)
    assert "--limits" not in str(info.value)


def _block(values: np.ndarray) -> bytes:
    return ieee_block(values.tobytes()) + b"\n"


ONE_INPUT = np.array([[0.1, 0.0]], dtype="<f4")


@pytest.mark.parametrize("command, request_bytes, reply, action", [
    ("PROG:RES?", b"PROG:RES? 0", np.arange(5, dtype="<i2"), lambda t: t.program_result(0)),
    ("PROG:TIME?", b"PROG:TIME? 0", np.arange(5, dtype="<f8"), lambda t: t.program_time(0)),
    ("READ:MAP?", b"READ:MAP? 0", np.arange(5, dtype="<f4"), lambda t: t.read_map(0)),
    ("MVM?", b"MVM? 0,1," + ieee_block(ONE_INPUT.tobytes()) + b"\n", np.arange(2, dtype="<i2"),
     lambda t: t.mvm(0, ONE_INPUT)),
    ("MVM:DIFF?", b"MVM:DIFF? 0,1,1,0," + ieee_block(ONE_INPUT.tobytes()) + b"\n", np.arange(2, dtype="<i2"),
     lambda t: t.mvm_differential(0, ONE_INPUT, 1.0, 0.0)),
    ("ADC:TEST?", b"ADC:TEST? 0,1," + ieee_block(np.array([1.0, 2.0], dtype="<f4").tobytes()) + b"\n",
     np.arange(3, dtype="<i2"), lambda t: t.adc_test(0, 1, [1.0, 2.0])),
], ids=["program_result", "program_time", "read_map", "mvm", "mvm_differential", "adc_test"])
def test_a_block_reply_of_the_wrong_size_names_the_command_and_the_counts(command, request_bytes, reply, action):
    expected = {"PROG:RES?": 6, "PROG:TIME?": 6, "READ:MAP?": 6, "MVM?": 3, "MVM:DIFF?": 1, "ADC:TEST?": 2}[command]
    with expected_protocol(CIMTester, CONFIG_EXCHANGE + [(request_bytes, _block(reply))]) as tester:
        with pytest.raises(InstrumentError) as info:
            action(tester)
    assert info.value.command == command
    assert f"{reply.size} values, expected {expected}" in str(info.value)


@pytest.mark.parametrize("command, attribute", [("ADC:RANG?", "adc_range_ua"), ("DAC:RANG?", "dac_range_v")])
@pytest.mark.parametrize("reply", ["100", "0,1,2"])
def test_a_range_reply_that_is_not_two_numbers_is_refused(command, attribute, reply):
    with expected_protocol(CIMTester, [(command, reply)]) as tester:
        with pytest.raises(InstrumentError) as info:
            getattr(tester, attribute)
    assert info.value.command == command and info.value.reply == reply
    assert "expected two numbers" in str(info.value)


def test_block_payload_bytes_equal_to_newline_are_kept():
    payload = np.array([10, 2570], dtype="<i2")  # bytes 0a 00 0a 0a: the last payload byte is 0x0A
    raw = ieee_block(payload.tobytes())
    np.testing.assert_array_equal(parse_ieee_block(raw, "i2"), payload)
    np.testing.assert_array_equal(parse_ieee_block(raw + b"\n", "i2"), payload)
    from cimcal.drivers.instrument import GarbledReply

    with pytest.raises(GarbledReply, match="announced 4 bytes but 6 follow"):
        parse_ieee_block(raw + b"\n\n", "i2")


def test_an_empty_mvm_batch_sends_nothing_and_returns_no_rows():
    # after the config queries the protocol is empty: any byte sent would fail the exchange
    with expected_protocol(CIMTester, CONFIG_EXCHANGE) as tester:
        codes = tester.mvm(0, np.zeros((0, 2)))
        diff = tester.mvm_differential(0, np.zeros((0, 2)), 1.0, 0.0)
    assert codes.shape == (0, 3) and codes.dtype == np.int16
    assert diff.shape == (0, 1) and diff.dtype == np.int16


@pytest.mark.parametrize("levels, targets, ok", [("1", "7.5", True), ("4", "1.0,5.0,9.0", False), ("2", "1,2,3", False)])
def test_level_targets_must_match_the_level_count(levels, targets, ok):
    exchange = [(q, levels if q == "CHIP:LEV?" else targets if q == "CHIP:LEV:TARG?" else r) for q, r in CONFIG_EXCHANGE]
    with expected_protocol(CIMTester, exchange[:5] if not ok else exchange) as tester:
        if ok:
            assert tester.config.targets_us == (7.5,) and tester.config.levels == 1
        else:
            with pytest.raises(InstrumentError) as info:
                tester.config
            assert info.value.command == "CHIP:LEV:TARG?" and f"for the {levels} levels" in str(info.value)
