"""Keithley 2450 (PyMeasure's driver + cimcal limits): exact exchanges, limits, a pyvisa-sim definition."""

from __future__ import annotations

from importlib import resources

import numpy as np
import pytest
from pymeasure.test import expected_protocol

from cimcal.drivers.limits import SafeLimits
from cimcal.drivers.smu import K4200Probe, Keithley2450
from cimcal.errors import InstrumentError, LimitError

NO_ERROR = ("SYST:ERR?", '0,"No error"')
LIMITS = SafeLimits(v_read_max_v=0.3, i_compliance_max_a=1e-4)

MEASURE_G = [
    (":SOUR:FUNC VOLT", None), (":SOUR:FUNC?", "VOLT"), (":SOUR:VOLT:RANG:AUTO 1", None),
    (":SOUR:VOLT:ILIM 0.0001", None), NO_ERROR,
    (":SENS:FUNC 'CURR';:SENS:CURR:NPLC 1.000000;", None), (":SENS:CURR:RANG:AUTO 1;", None), NO_ERROR,
    (":SOUR:VOLT:LEV 0.2", None), ("OUTPUT ON", None),
    (":READ?", "2.0E-06"), (":READ?", "2.2E-06"),
    (":SOUR:VOLT:LEV 0", None), ("OUTPUT OFF", None),
]


def test_conductance_is_current_over_voltage_with_the_exact_exchange():
    with expected_protocol(Keithley2450, MEASURE_G, limits=LIMITS) as smu:
        g_s = smu.measure_conductance_s(0.2, n_reads=2)
    np.testing.assert_allclose(g_s, [1.0e-5, 1.1e-5])


@pytest.mark.parametrize("action", [
    lambda k: setattr(k, "compliance_current", 0.5),     # PyMeasure would clamp to 0.5 and send it
    lambda k: setattr(k, "source_voltage", 5.0),        # above v_prog_max_v (sourcing = a program pulse)
    lambda k: setattr(k, "current_range", 1.0),
    lambda k: setattr(k, "current_nplc", 100),
    lambda k: k.measure_conductance_s(0.5),
    lambda k: k.measure_conductance_s(0.1, compliance_a=1e-2),
    lambda k: k.ramp_to_voltage(3.5),
    lambda k: k.measure_conductance_s(1.0),               # a read: bounded by v_read_max_v, not v_prog_max_v
])
def test_unsafe_settings_raise_and_send_nothing(action):
    with expected_protocol(Keithley2450, [], limits=LIMITS) as smu:
        with pytest.raises(LimitError, match="nothing was sent"):
            action(smu)


def test_safe_setting_is_sent_and_error_checked_as_pymeasure_declares():
    with expected_protocol(Keithley2450, [(":SOUR:VOLT:ILIM 5e-05", None)], limits=LIMITS) as smu:
        smu.compliance_current = 5e-5


def test_instrument_errors_raise_instead_of_being_logged():
    with expected_protocol(Keithley2450, [
        ("SYST:ERR?", '-113,"Undefined header"'), NO_ERROR,
    ]) as smu:
        with pytest.raises(InstrumentError, match="-113,Undefined header"):
            smu.check_errors()


def test_pyvisa_sim_definition_measures_ten_microsiemens():
    yaml_path = resources.files("cimcal.drivers").joinpath("keithley2450.yaml")
    smu = Keithley2450("GPIB0::24::INSTR", visa_library=f"{yaml_path}@sim", limits=LIMITS)
    try:
        assert smu.idn.startswith("KEITHLEY INSTRUMENTS,MODEL 2450")
        np.testing.assert_allclose(smu.measure_conductance_s(0.2, n_reads=3), 1e-5)
        assert smu.source_voltage == 0.0 and smu.compliance_current == pytest.approx(1e-4)
        smu.write("*BOGUS")
        with pytest.raises(InstrumentError, match="-113"):
            smu.check_errors()
    finally:
        smu.close()


def test_keithley_4200_probe_uses_pymeasure_kxci_commands():
    from pymeasure.instruments.keithley import Keithley4200

    with expected_protocol(Keithley4200, [
        ("*OPT?", "SMU1,SMU2"), ("ID", "KI4200A,KXCI,1.0"),
        ("US;DV1,0,0.1,0.0001", None), (None, "ACK"),
        ("US;TI1", "NAI+1.000000E-06"), ("US;TI1", "NAI+1.100000E-06"),
        ("US;DV1,0,0,0.0001", None), (None, "ACK"),
    ]) as k4200:
        probe = K4200Probe(k4200, 1, limits=LIMITS)
        np.testing.assert_allclose(probe.measure_conductance_s(0.1, n_reads=2), [1e-5, 1.1e-5])
        with pytest.raises(LimitError):
            probe.measure_conductance_s(1.0)


def test_device_campaign_with_the_simulated_2450_writes_a_conductance_table(tmp_path):
    from cimcal.data import read_metadata, read_table
    from cimcal.drivers.campaign_smu import DevicePlan, run_device_campaign

    yaml_path = resources.files("cimcal.drivers").joinpath("keithley2450.yaml")
    smu = Keithley2450("GPIB0::24::INSTR", visa_library=f"{yaml_path}@sim", limits=LIMITS)
    try:
        plan = DevicePlan(v_read_v=0.2, n_reads=10, reads_per_chunk=4, row=3, col=5, level=2)
        result = run_device_campaign(smu, str(tmp_path / "dev"), plan)
    finally:
        smu.close()
    assert result.chunks_total == 3 and result.rows_total == 10
    table = read_table(tmp_path / "dev", "conductance")
    np.testing.assert_allclose(table["g_us"], 10.0)
    assert list(table["read_idx"]) == list(range(10)) and set(table["v_read_v"]) == {0.2}
    assert read_metadata(tmp_path / "dev" / "part-00000.parquet")["instrument_idn"].startswith("KEITHLEY")


def test_b1500_probe_uses_pymeasure_flex_commands():
    from pymeasure.instruments.agilent.agilentB1500 import SMU, AgilentB1500

    from cimcal.drivers.smu import B1500Probe

    no_error = ("ERRX?", '0,"No Error."')
    with expected_protocol(AgilentB1500, [
        ("*IDN?", "Agilent Technologies,B1500A,0,A.06.00"),
        ("CN 1", None), ("DV 1, 0, 0.1, 0.0001", None), no_error, no_error,
        ("TI 1", "NAI+1.000000E-06"), ("TI 1", "NAI+1.200000E-06"),
        ("DZ 1", None), no_error,
        ("CN 1", None), ("DV 1, 0, 0.1, 0.0001", None), ("ERRX?", '305,"Excess current in HRSMU."'),
        ("DZ 1", None), no_error,                 # the error after DV still grounds the channel
    ]) as b1500:
        b1500.add_child(SMU, 1, collection="smus", prefix="smu", smu_type="HRSMU", name="SMU1", slot=1)
        probe = B1500Probe(b1500, b1500.smus[1], limits=LIMITS)
        np.testing.assert_allclose(probe.measure_conductance_s(0.1, n_reads=2), [1e-5, 1.2e-5])
        with pytest.raises(InstrumentError, match="305") as info:
            probe.measure_conductance_s(0.1)
        assert info.value.resource is None  # the VISA resource (none for a test adapter), never the *IDN?
        with pytest.raises(LimitError):
            probe.measure_conductance_s(0.4)


def test_sourcing_is_bounded_by_the_program_limit_and_reading_by_the_read_limit():
    # 1 V is a program pulse (within v_prog_max_v = 3 V) but not a read (v_read_max_v = 0.3 V)
    with expected_protocol(Keithley2450, [(":SOUR:VOLT:LEV 1", None)], limits=LIMITS) as smu:
        smu.source_voltage = 1.0
        with pytest.raises(LimitError, match=r"v_read_v 1 V .*\[0, 0.3\] V.*v_read_max_v"):
            smu.measure_conductance_s(1.0)


def test_setter_limit_error_names_property_command_and_limit():
    with expected_protocol(Keithley2450, [], limits=LIMITS) as smu:
        with pytest.raises(LimitError) as info:
            smu.compliance_current = 0.5
    text = str(info.value)
    assert "compliance_current 0.5 A" in text and "':SOUR:VOLT:ILIM'" in text and "i_compliance_max_a" in text


def test_setter_transport_fault_is_an_instrument_error_not_a_raw_visa_error(monkeypatch):
    import pyvisa

    with expected_protocol(Keithley2450, [], limits=LIMITS) as smu:
        def dead(*args, **kwargs):
            raise pyvisa.errors.VisaIOError(pyvisa.constants.StatusCode.error_connection_lost)

        monkeypatch.setattr(smu.adapter, "write", dead)
        with pytest.raises(InstrumentError, match=r"command ':SOUR:VOLT:LEV 0.1'.*transport fault"):
            smu.source_voltage = 0.1


def test_keithley_4200_grounds_the_channel_when_a_read_fails():
    from pymeasure.instruments.keithley import Keithley4200

    with expected_protocol(Keithley4200, [
        ("*OPT?", "SMU1,SMU2"), ("ID", "KI4200A,KXCI,1.0"),
        ("US;DV1,0,0.1,0.0001", None), (None, "ACK"),
        ("US;TI1", "NAI+1.000000E-06"), ("US;TI1", "garbage"),        # the second read fails ...
        ("US;DV1,0,0,0.0001", None), (None, "ACK"),                    # ... and the bias still goes to 0 V
    ]) as k4200:
        probe = K4200Probe(k4200, 1, limits=LIMITS)
        with pytest.raises(InstrumentError, match="DV/TI"):
            probe.measure_conductance_s(0.1, n_reads=2)


def test_device_campaign_resume_refuses_another_instrument(tmp_path):
    from cimcal.drivers.campaign_smu import DevicePlan, run_device_campaign
    from cimcal.errors import ConfigError

    class Probe:
        resource_name = "GPIB0::24::INSTR"
        limits = LIMITS

        def __init__(self, idn: str, fail_after: int | None = None) -> None:
            self.idn, self.calls, self.fail_after = idn, 0, fail_after

        def measure_conductance_s(self, v_read_v: float, n_reads: int = 1) -> np.ndarray:
            self.calls += 1
            if self.fail_after is not None and self.calls > self.fail_after:
                raise InstrumentError("gone")
            return np.full(n_reads, 1e-5)

        def close(self) -> None:
            pass

    plan = DevicePlan(v_read_v=0.2, n_reads=4, reads_per_chunk=2)
    with pytest.raises(InstrumentError):
        run_device_campaign(Probe("KEITHLEY,2450,1", fail_after=1), str(tmp_path / "d"), plan)
    with pytest.raises(ConfigError, match="measured on 'KEITHLEY,2450,1'"):
        run_device_campaign(Probe("KEITHLEY,2450,2"), str(tmp_path / "d"), plan, resume=True)
    result = run_device_campaign(Probe("KEITHLEY,2450,1"), str(tmp_path / "d"), plan, resume=True)
    assert result.chunks_run == 1
