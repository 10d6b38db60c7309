"""The public surface of cimcal.analog and its import boundary."""

from __future__ import annotations

import subprocess
import sys

import cimcal.analog


def test_public_names_are_pinned():
    assert sorted(cimcal.analog.__all__) == sorted([
        "AnalogConfig", "AnalogLayer", "AnalogLinear", "AnalogConv2d", "AnalogLinearFunction",
        "AnalogConv2dFunction", "IdealTiles", "convert", "to_digital", "calibrate", "new_instance", "analog_layers",
    ])
    assert all(hasattr(cimcal.analog, name) for name in cimcal.analog.__all__)


def test_importing_analog_loads_no_instrument_code():
    code = "import sys, cimcal.analog; print(any(m == 'pyvisa' or m.startswith('cimcal.drivers') for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
