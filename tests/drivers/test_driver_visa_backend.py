"""CIMTester on the in-process pyvisa backend (no socket): same dispatcher, deterministic and fast."""

from __future__ import annotations

import numpy as np
import pytest
from driver_fixtures import small_chip

from cimcal.data import read_table
from cimcal.drivers.campaigns import default_conductance_plan, run_conductance_campaign
from cimcal.drivers.tester import CIMTester
from cimcal.drivers.visa_backend import SimChipVisaLibrary
from cimcal.errors import InstrumentError


@pytest.fixture
def tester():
    chip = small_chip(seed=2)
    library = SimChipVisaLibrary.attach(chip)
    with CIMTester(library.resource_of(chip), visa_library=library, timeout_ms=2000) as tester:
        yield tester


def test_same_command_set_without_a_socket(tester):
    assert tester.idn == "CIMCAL,SIMCHIP-RRAM,2,0.1.0"
    levels = np.tile(np.arange(8), (64, 4))
    tester.program_array(0, levels)
    assert (tester.program_result(0) != 0).all()
    g_us = tester.read_map(0)
    targets = np.asarray(tester.config.targets_us)[levels]
    assert np.median(np.abs(g_us - targets)) < 1.0


def test_refused_query_fails_at_once_with_the_chips_message(tester):
    with pytest.raises(InstrumentError, match=r"READ:MAP\? 5.*-222,Data out of range"):
        tester.query("READ:MAP? 5", float)
    assert tester.clock() >= 0.0  # the session is still in step


def test_a_campaign_runs_on_the_backend(tester, tmp_path):
    plan = default_conductance_plan("readnoise", rows=(0, 8), cols=(0, 8), n_reads=6, reads_per_chunk=2)
    result = run_conductance_campaign(tester, str(tmp_path / "rn"), plan, progress=False)
    assert result.chunks_total == 3
    table = read_table(tmp_path / "rn", "conductance")
    assert len(table) == 64 * 6 and table.groupby(["row", "col"]).size().eq(6).all()
