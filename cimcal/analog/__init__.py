"""Analog layers trained through the extended straight-through estimator.

Forward: a non-differentiable, lookup-table simulation of the chip (DAC, weight -> conductance pairs with
programming error, read noise and drift, tiled MVM, per-column ADC). Backward: the clean op's gradient.
See docs/analog.md for the reasoning, the options and where it breaks down.
"""

from cimcal.analog.config import AnalogConfig
from cimcal.analog.convert import analog_layers, calibrate, convert, new_instance, to_digital
from cimcal.analog.functions import AnalogConv2dFunction, AnalogLinearFunction, IdealTiles
from cimcal.analog.layers import AnalogConv2d, AnalogLayer, AnalogLinear

__all__ = [
    "AnalogConfig",
    "AnalogLayer",
    "AnalogLinear",
    "AnalogConv2d",
    "AnalogLinearFunction",
    "AnalogConv2dFunction",
    "IdealTiles",
    "convert",
    "to_digital",
    "calibrate",
    "new_instance",
    "analog_layers",
]
