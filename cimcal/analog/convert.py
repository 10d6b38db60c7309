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

from cimcal.analog.config import AnalogConfig, resolve_config
from cimcal.analog.layers import AnalogConv2d, AnalogLayer, AnalogLinear, conv_unsupported_reason

__all__ = ["convert", "to_digital", "analog_layers", "calibrate", "new_instance"]


def convert(
    model: nn.Module, profile: Any, config: AnalogConfig | None = None, *, generator: torch.Generator | None = None
) -> nn.Module:
    """Replace every nn.Linear / nn.Conv2d in ``model`` by an analog layer bound to ``profile``.

    Conv2d layers a crossbar cannot run (groups > 1, non-zero padding modes, 'same' padding) stay digital
    with a warning, as do subclasses of nn.Linear / nn.Conv2d (parametrized layers included) and
    nn.MultiheadAttention's input projection. A module referenced twice (shared weights) becomes one analog
    layer referenced twice. Returns ``model`` (modified in place; a bare Linear/Conv2d is returned as a new module).
    """
    config = resolve_config(config)
    left_digital: list[str] = []
    converted = _convert(model, "", profile, config, generator, {}, left_digital)
    for message in left_digital:
        warnings.warn(f"convert: {message}", UserWarning, stacklevel=2)
    return converted


def _convert(
    module: nn.Module, name: str, profile: Any, config: AnalogConfig, generator: torch.Generator | None,
    memo: dict[int, tuple[nn.Module, nn.Module]], left_digital: list[str],
) -> nn.Module:
    """``module`` converted; ``memo`` maps id(original) -> (original, replacement) so shared modules stay shared."""
    if id(module) in memo:
        return memo[id(module)][1]
    if isinstance(module, AnalogLayer):
        module.set_profile(profile, config)
        if generator is not None:
            module.generator = generator
        result = module
    else:
        result = _swap(module, name, profile, config, generator, left_digital)
        if result is None:
            result = module
            for child_name, child in list(module._modules.items()):
                if child is not None:
                    path = f"{name}.{child_name}" if name else child_name
                    setattr(module, child_name, _convert(child, path, profile, config, generator, memo, left_digital))
    memo[id(module)] = (module, result)
    return result


def _swap(
    module: nn.Module, name: str, profile: Any, config: AnalogConfig, generator: torch.Generator | None,
    left_digital: list[str],
) -> nn.Module | None:
    where = f"{name!r} ({type(module).__name__})" if name else type(module).__name__
    if type(module) is nn.Linear:
        return AnalogLinear.from_digital(module, profile, config, generator)
    if type(module) is nn.Conv2d:
        reason = conv_unsupported_reason(module)
        if reason is None:
            return AnalogConv2d.from_digital(module, profile, config, generator)
        left_digital.append(f"leaving Conv2d {where} digital: {reason}")
    elif isinstance(module, (nn.Linear, nn.Conv2d)):
        left_digital.append(
            f"leaving {where} digital: only exact nn.Linear / nn.Conv2d convert, not subclasses or parametrized layers"
        )
    elif isinstance(module, nn.MultiheadAttention):
        left_digital.append(
            f"leaving {where} input projection digital: it is a bare parameter, not an nn.Linear"
        )
    return None


def to_digital(model: nn.Module) -> nn.Module:
    """Replace every analog layer by the plain nn.Linear / nn.Conv2d sharing its parameters (in place).

    A layer referenced twice becomes one digital layer referenced twice."""
    return _to_digital(model, {})


def _to_digital(model: nn.Module, memo: dict[int, tuple[nn.Module, nn.Module]]) -> nn.Module:
    if id(model) in memo:
        return memo[id(model)][1]
    if isinstance(model, AnalogLinear):
        layer = nn.Linear.__new__(nn.Linear)
        nn.Module.__init__(layer)
        layer.in_features, layer.out_features = model.in_features, model.out_features
        layer.weight, layer.bias = model.weight, model.bias
        layer.train(model.training)
    elif isinstance(model, AnalogConv2d):
        layer = nn.Conv2d.__new__(nn.Conv2d)
        nn.Module.__init__(layer)
        for name in ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "transposed",
                     "output_padding", "groups", "padding_mode", "_reversed_padding_repeated_twice"):
            setattr(layer, name, getattr(model, name))
        layer.weight, layer.bias = model.weight, model.bias
        layer.train(model.training)
    else:
        layer = model
        for name, child in list(model._modules.items()):
            if child is not None:
                setattr(model, name, _to_digital(child, memo))
    memo[id(model)] = (model, layer)
    return layer


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
