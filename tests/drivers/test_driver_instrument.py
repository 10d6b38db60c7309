"""The cimcal layer on PyMeasure: error dialects, strict values, limits parsing, import boundary."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from pymeasure.instruments import Instrument
from pymeasure.test import expected_protocol

from cimcal.drivers.instrument import B1500ErrorQueue, CimcalInstrument, KxciAck, TspErrorQueue
from cimcal.drivers.limits import SafeLimits
from cimcal.errors import ConfigError, InstrumentError


class ScpiBox(CimcalInstrument):
    level = Instrument.control("LEV?", "LEV %d", "An integer setting.", cast=int)


class B1500Box(CimcalInstrument):
    error_dialect = B1500ErrorQueue()


class TspBox(CimcalInstrument):
    error_dialect = TspErrorQueue()


class KxciBox(CimcalInstrument):
    error_dialect = KxciAck()


def test_scpi_command_drains_the_queue_until_code_zero():
    with expected_protocol(ScpiBox, [("OUTP ON", None), ("SYST:ERR?", '+0,"No error"')]) as box:
        box.command("OUTP ON")
    with expected_protocol(ScpiBox, [
        ("OUTP ON", None), ("SYST:ERR?", '-221,"Settings conflict"'), ("SYST:ERR?", '0,"No error"'),
    ]) as box:
        with pytest.raises(InstrumentError, match=r"command 'OUTP ON'.*-221,Settings conflict"):
            box.command("OUTP ON")


def test_b1500_dialect_reads_errx():
    with expected_protocol(B1500Box, [
        ("DV 1,0,0.1", None), ("ERRX?", '305,"Excess current in HPSMU."'), ("ERRX?", '0,"No Error."'),
    ]) as box:
        with pytest.raises(InstrumentError, match="305,Excess current in HPSMU."):
            box.command("DV 1,0,0.1")


def test_tsp_dialect_reads_the_errorqueue():
    with expected_protocol(TspBox, [
        ("smu.source.levelv = 9", None), ("print(errorqueue.count)", "1.00000e+00"),
        ("print(errorqueue.next())", "-222\tParameter data out of range\t2\t0"),
    ]) as box:
        with pytest.raises(InstrumentError, match="-222,Parameter data out of range"):
            box.command("smu.source.levelv = 9")


def test_kxci_dialect_needs_ack():
    with expected_protocol(KxciBox, [("DV1,0,0.1,1e-3", None), (None, "ACK")]) as box:
        box.command("DV1,0,0.1,1e-3")
    with expected_protocol(KxciBox, [("XX", None), (None, "ERROR 4")]) as box:
        with pytest.raises(InstrumentError, match="did not acknowledge.*ERROR 4"):
            box.command("XX")


@pytest.mark.parametrize("resource", ["bogus", "TCPIP0::::1::5025::SOCKET"])
def test_a_malformed_resource_name_says_so_with_pyvisas_reason(resource):
    with pytest.raises(InstrumentError) as info:
        ScpiBox(resource)
    text = str(info.value)
    assert text.startswith(f"{resource}: invalid VISA resource name (Could not parse")
    assert "; opening it failed: " in text  # the open error is kept (a system VISA alias may fail for another reason)
    assert info.value.__cause__ is not None


def test_pymeasure_descriptors_go_through_the_locked_query():
    with expected_protocol(ScpiBox, [("LEV?", "7"), ("LEV 3", None), ("*IDN?", "ACME,BOX,1,2")]) as box:
        assert box.level == 7
        box.level = 3
        assert box.provenance()["instrument_idn"] == "ACME,BOX,1,2"


def test_safe_limits_parse_and_reject_unknown_names():
    limits = SafeLimits.parse("v_read_max_v=0.1, temp_max_c=85")
    assert limits.v_read_max_v == 0.1 and limits.temp_max_c == 85 and limits.v_prog_max_v == 3.0
    with pytest.raises(ConfigError, match="unknown safe limit"):
        SafeLimits.parse("v_max=1")
    with pytest.raises(ConfigError, match="must be a number"):
        SafeLimits.parse("v_read_max_v=high")


def test_drivers_and_campaigns_never_import_torch():
    code = ("import sys, json, cimcal.drivers.campaigns, cimcal.drivers.campaign_smu, cimcal.drivers.smu, "
            "cimcal.cli.measure_cmds; print(json.dumps(sorted(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert "torch" not in set(json.loads(out.strip().splitlines()[-1]))


def test_public_names_are_pinned():
    import cimcal.drivers as drivers

    assert set(drivers.__all__) == {
        "CimcalInstrument", "CIMTester", "TesterConfig", "SafeLimits", "Keithley2450", "B1500Probe",
        "K4200Probe", "ConductanceProbe", "CampaignStore", "ConductancePlan", "AdcPlan", "DevicePlan",
        "default_conductance_plan", "run_conductance_campaign", "run_adc_campaign", "run_device_campaign",
        "open_tester",
    }
    for name in drivers.__all__:
        assert getattr(drivers, name) is not None
