"""The torch.compile'd sampling chains give the same results as the eager fallback (slow: compiles)."""

from __future__ import annotations

import pytest
import torch

from cimcal.analog import AnalogConfig, AnalogLinear


@pytest.mark.slow
@pytest.mark.parametrize("resample", ["every_forward", "fixed_instance"])
def test_compiled_forward_equals_eager(fitted_profile, resample):
    torch.manual_seed(0)
    x = torch.rand(16, 300)
    outputs = []
    for compiled in (False, True):
        layer = AnalogLinear(300, 20, profile=fitted_profile, config=AnalogConfig(compile=compiled, tile_rows=128, resample=resample),
                             generator=torch.Generator().manual_seed(7))
        with torch.no_grad():
            layer.weight.copy_(torch.linspace(-1, 1, 6000).view(20, 300))
            layer.bias.zero_()
        layer.new_instance(torch.Generator().manual_seed(8))
        layer.generator = torch.Generator().manual_seed(9)
        outputs.append(layer(x))
    assert torch.allclose(outputs[0], outputs[1], rtol=1e-5, atol=1e-5)
