"""convert / to_digital on awkward module trees: shared modules, layers left digital, bad config types."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm, weight_norm

from cimcal.analog import AnalogConfig, AnalogLinear, analog_layers, convert, to_digital
from cimcal.errors import ConfigError


def test_a_shared_module_becomes_one_shared_analog_layer_and_back(fitted_profile):
    shared = nn.Linear(8, 8)
    model = nn.Sequential(shared, nn.ReLU(), shared)
    convert(model, fitted_profile, AnalogConfig(compile=False))
    assert isinstance(model[0], AnalogLinear) and model[2] is model[0]
    assert model[0].weight is shared.weight
    to_digital(model)
    assert type(model[0]) is nn.Linear and model[2] is model[0]
    assert model[0].weight is shared.weight


def test_a_module_shared_across_attributes_converts_every_reference(fitted_profile):
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(8, 8)
            self.b = self.a

    model = convert(Twice(), fitted_profile, AnalogConfig(compile=False))
    assert isinstance(model.b, AnalogLinear) and model.b is model.a


def test_linears_left_digital_are_named_in_warnings(fitted_profile):
    class MyLinear(nn.Linear):
        pass

    model = nn.Sequential(
        weight_norm(nn.Linear(8, 8)), spectral_norm(nn.Linear(8, 8)), MyLinear(8, 8),
        nn.TransformerEncoderLayer(8, 2, 16, batch_first=True),
    )
    with pytest.warns(UserWarning) as record:
        convert(model, fitted_profile, AnalogConfig(compile=False))
    messages = [str(w.message) for w in record]
    for where in ("'0' (ParametrizedLinear)", "'1' (ParametrizedLinear)", "'2' (MyLinear)",
                  "'3.self_attn' (MultiheadAttention)", "'3.self_attn.out_proj' (NonDynamicallyQuantizableLinear)"):
        assert sum(where in m for m in messages) == 1, (where, messages)
    assert all(m.startswith("convert: leaving ") and "\n" not in m for m in messages)
    # which layers convert is unchanged: only the encoder layer's two feed-forward Linears
    assert [name for name, m in model.named_modules() if isinstance(m, AnalogLinear)] == ["3.linear1", "3.linear2"]
    assert len(analog_layers(model)) == 2


def test_a_config_that_is_not_an_analog_config_is_a_config_error(fitted_profile):
    with pytest.raises(ConfigError, match="config must be an AnalogConfig.*got dict"):
        convert(nn.Linear(4, 4), fitted_profile, {"noise": "lut"})
    with pytest.raises(ConfigError, match="config must be an AnalogConfig"):
        AnalogLinear(4, 4, profile=fitted_profile, config={"noise": "lut"})
