"""convert / to_digital: swap nn.Linear and nn.Conv2d for their analog versions in any model, and back.

Both work in place on the module tree and return the model. The new modules reuse the very same
Parameter objects, so parameter names, ``state_dict`` keys and an optimizer built before the swap all stay
valid. ``convert`` on an already converted model rebinds its analog layers to the new profile/config
(e.g. a different ``t_s`` or a fleet of chips); their calibration buffers are kept.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from cimcal.analog.config import AnalogConfig
from cimcal.analog.layers import AnalogConv2d, AnalogLayer, AnalogLinear, conv_unsupported_reason

__all__ = ["convert", "to_digital", "analog_layers", "calibrate", "new_instance"]


def convert(
    model: nn.Module, profile: Any, config: AnalogConfig | None = None, *, generator: torch.Generator | None = None
) -> nn.Module:
    """Replace every nn.Linear / nn.Conv2d in ``model`` by an analog layer bound to ``profile``.

    Conv2d layers a crossbar cannot run (groups > 1, non-zero padding modes, 'same' padding) stay digital
    with a warning. Returns ``model`` (modified in place; a bare Linear/Conv2d is returned as a new module).
    """
    config = (config or AnalogConfig()).validate()
    if isinstance(model, AnalogLayer):
        model.set_profile(profile, config)
        if generator is not None:
            model.generator = generator
        return model
    swapped = _swap(model, profile, config, generator)
    if swapped is not None:
        return swapped
    for name, child in list(model.named_children()):
        setattr(model, name, convert(child, profile, config, generator=generator))
    return model


def _swap(module: nn.Module, profile: Any, config: AnalogConfig, generator: torch.Generator | None) -> nn.Module | None:
    if type(module) is nn.Linear:
        return AnalogLinear.from_digital(module, profile, config, generator)
    if type(module) is nn.Conv2d:
        reason = conv_unsupported_reason(module)
        if reason is not None:
            warnings.warn(f"convert: leaving a Conv2d digital: {reason}", UserWarning, stacklevel=3)
            return module
        return AnalogConv2d.from_digital(module, profile, config, generator)
    return None


def to_digital(model: nn.Module) -> nn.Module:
    """Replace every analog layer by the plain nn.Linear / nn.Conv2d sharing its parameters (in place)."""
    if isinstance(model, AnalogLinear):
        layer = nn.Linear.__new__(nn.Linear)
        nn.Module.__init__(layer)
        layer.in_features, layer.out_features = model.in_features, model.out_features
        layer.weight, layer.bias = model.weight, model.bias
        layer.train(model.training)
        return layer
    if isinstance(model, AnalogConv2d):
        layer = nn.Conv2d.__new__(nn.Conv2d)
        nn.Module.__init__(layer)
        for name in ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "transposed",
                     "output_padding", "groups", "padding_mode", "_reversed_padding_repeated_twice"):
            setattr(layer, name, getattr(model, name))
        layer.weight, layer.bias = model.weight, model.bias
        layer.train(model.training)
        return layer
    for name, child in list(model.named_children()):
        setattr(model, name, to_digital(child))
    return model


def analog_layers(model: nn.Module) -> list[AnalogLayer]:
    """Every analog layer of ``model``, in module order."""
    return [m for m in model.modules() if isinstance(m, AnalogLayer)]


@torch.no_grad()
def calibrate(model: nn.Module, batches: Iterable[Any]) -> nn.Module:
    """Run ``model`` over ``batches`` (tensors or tuples whose first item is the input) to set the running
    DAC/ADC calibration buffers, without touching the training/eval mode of anything else. Returns model."""
    layers = analog_layers(model)
    for layer in layers:
        layer.calibrating = True
    try:
        for batch in batches:
            model(batch[0] if isinstance(batch, (tuple, list)) else batch)
    finally:
        for layer in layers:
            layer.calibrating = False
    return model


def new_instance(model: nn.Module, generator: torch.Generator | None = None) -> nn.Module:
    """Draw a new chip instance (per-cell programming error) for every analog layer. Returns model."""
    for layer in analog_layers(model):
        if layer.config.resample == "fixed_instance":
            layer.new_instance(generator)
    return model
