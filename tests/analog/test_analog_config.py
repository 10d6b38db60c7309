"""AnalogConfig validation and JSON round trip."""

from __future__ import annotations

import json

import pytest

from cimcal.analog import AnalogConfig
from cimcal.errors import ConfigError


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"noise": "lookup"}, "AnalogConfig.noise must be one of 'lut', 'gaussian', 'none', got 'lookup'"),
        ({"tile_rows": 0}, "AnalogConfig.tile_rows must be an integer in [1, 1048576], got 0"),
        ({"dac_bits": 1}, "AnalogConfig.dac_bits must be an integer"),
        ({"resample": "sometimes"}, "AnalogConfig.resample must be one of"),
        ({"adc_grad": "mask"}, "AnalogConfig.adc_grad must be one of"),
        ({"grad_x_weight": "dirty"}, "AnalogConfig.grad_x_weight must be one of"),
        ({"t_s": -1.0}, "AnalogConfig.t_s must be None or a finite number >= 0"),
        ({"input_range": 0.0}, "AnalogConfig.input_range must be None"),
        ({"psum_percentile": 0.0}, "AnalogConfig.psum_percentile must be in (0, 100]"),
        ({"calib_momentum": 2.0}, "AnalogConfig.calib_momentum must be in (0, 1]"),
    ],
)
def test_bad_field_raises_config_error_naming_it(changes, message):
    with pytest.raises(ConfigError) as err:
        AnalogConfig(**changes).validate()
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_config_round_trips_through_json():
    config = AnalogConfig(noise="gaussian", resample="fixed_instance", t_s=60.0, tile_rows=64, adc_grad="saturation_mask")
    assert AnalogConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_unknown_key_is_refused():
    with pytest.raises(ConfigError, match="no field 'tiles'"):
        AnalogConfig.from_dict({"tiles": 3})


def test_numpy_scalars_are_accepted_and_stored_as_plain_numbers():
    import numpy as np

    config = AnalogConfig(tile_rows=np.int64(64), dac_bits=np.int32(6), t_s=np.float32(10.0),
                          input_range=np.float64(2.5), calib_momentum=np.float32(0.5)).validate()
    assert config == AnalogConfig(tile_rows=64, dac_bits=6, t_s=10.0, input_range=2.5, calib_momentum=0.5)
    assert type(config.tile_rows) is int and type(config.t_s) is float
    assert AnalogConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


@pytest.mark.parametrize("changes", [{"tile_rows": True}, {"tile_rows": 2.0}, {"t_s": True}, {"dac_bits": "8"}])
def test_bools_floats_and_strings_are_not_integers(changes):
    with pytest.raises(ConfigError, match=f"AnalogConfig.{next(iter(changes))} must be"):
        AnalogConfig(**changes).validate()
