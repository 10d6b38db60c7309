"""Shared by the driver and campaign tests: a small simulated chip and the exchanges behind CIMTester.config.

(A uniquely named module, not conftest: tests/drivers/sim/ has its own conftest.py.)
"""

from __future__ import annotations

import dataclasses

from cimcal.drivers.sim.chip import SimChip
from cimcal.drivers.sim.config import load_preset

# What CIMTester.config asks, in order, and a tiny chip's answers (2 arrays of 2 x 3, 4 levels).
CONFIG_EXCHANGE = [
    ("CHIP:ARR?", "2"), ("CHIP:ROWS?", "2"), ("CHIP:COL?", "3"), ("CHIP:LEV?", "4"),
    ("CHIP:LEV:TARG?", "1.0,5.0,9.0,13.0"), ("ADC:BITS?", "8"), ("ADC:RANG?", "0,100"),
    ("DAC:BITS?", "8"), ("DAC:RANG?", "0,0.2"), ("LIM:VRE?", "0.2"), ("LIM:VPR?", "3.0"),
]
NO_ERROR = ("SYST:ERR?", '0,"No error"')


def small_chip(seed: int = 0, **overrides: object) -> SimChip:
    """A 2 x 64 x 32 RRAM-physics chip: fast campaigns, same SCPI as the full chip."""
    config = dataclasses.replace(load_preset("rram"), n_arrays=2, rows=64, cols=32, **overrides)
    return SimChip(config, seed=seed)
