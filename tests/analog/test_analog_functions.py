"""The extended-STE Functions: clean gradients, gradcheck, what is saved for backward."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cimcal.analog import AnalogConfig, AnalogConv2d, AnalogConv2dFunction, AnalogLinear, AnalogLinearFunction, IdealTiles


def _same(a, b):
    """The same memory and shape (autograd may save a view of the very tensor)."""
    return a.data_ptr() == b.data_ptr() and a.shape == b.shape


def _saved(fn):
    """Run fn() and return the tensors autograd packs for backward."""
    packed = []

    def pack(t):
        packed.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, packed


@pytest.mark.parametrize("noise", ["lut", "none"])
def test_linear_backward_is_exactly_the_clean_gradient(standin_profile, noise):
    torch.manual_seed(0)
    layer = AnalogLinear(300, 20, profile=standin_profile, config=AnalogConfig(noise=noise, compile=False, tile_rows=128))
    x = torch.randn(16, 300, requires_grad=True)
    g = torch.randn(16, 20)
    layer(x).backward(g)
    x_ref = x.detach().clone().requires_grad_(True)
    w_ref = layer.weight.detach().clone().requires_grad_(True)
    F.linear(x_ref, w_ref).backward(g)
    assert torch.equal(x.grad, x_ref.grad)
    assert torch.equal(layer.weight.grad, w_ref.grad)
    assert torch.equal(layer.bias.grad, g.sum(0))


def test_conv_backward_is_exactly_the_clean_gradient(standin_profile):
    torch.manual_seed(0)
    layer = AnalogConv2d(3, 5, 3, padding=1, stride=2, profile=standin_profile, config=AnalogConfig(compile=False, tile_rows=16))
    x = torch.randn(2, 3, 9, 9, requires_grad=True)
    y = layer(x)
    g = torch.randn_like(y)
    y.backward(g)
    x_ref = x.detach().clone().requires_grad_(True)
    w_ref = layer.weight.detach().clone().requires_grad_(True)
    F.conv2d(x_ref, w_ref, None, 2, 1).backward(g)
    assert torch.equal(x.grad, x_ref.grad)
    assert torch.equal(layer.weight.grad, w_ref.grad)


@pytest.mark.parametrize("mask", [False, True])
def test_gradcheck_linear_clean_path(mask):
    x = torch.randn(5, 7, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 7, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(4, dtype=torch.float64, requires_grad=True)
    sim = IdealTiles(tile_rows=3, saturation_mask=mask)
    assert torch.autograd.gradcheck(lambda a, b, c: AnalogLinearFunction.apply(a, b, sim, c)[0], (x, w, bias))
    assert torch.autograd.gradcheck(lambda a, b: AnalogLinearFunction.apply(a, b, sim, None)[0], (x, w))


@pytest.mark.parametrize("mask", [False, True])
def test_gradcheck_conv_clean_path(mask):
    x = torch.randn(1, 2, 4, 3, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, 2, 2, 2, dtype=torch.float64, requires_grad=True)
    sim = IdealTiles(tile_rows=3, saturation_mask=mask)
    bias = torch.randn(2, dtype=torch.float64, requires_grad=True)
    fn = lambda a, b, c: AnalogConv2dFunction.apply(a, b, sim, (2, 1), (1, 0), (1, 1), c)[0]  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, w, bias))
    assert torch.autograd.gradcheck(lambda a, b: fn(a, b, None), (x, w))
    assert torch.allclose(fn(x, w, bias), F.conv2d(x, w, bias, (2, 1), (1, 0)))


def test_linear_saves_only_x_and_w(standin_profile):
    layer = AnalogLinear(40, 6, bias=False, profile=standin_profile, config=AnalogConfig(compile=False, tile_rows=16))
    x = torch.randn(8, 40, requires_grad=True)
    _, packed = _saved(lambda: layer(x))
    assert len(packed) == 2
    assert _same(packed[0], x)
    assert _same(packed[1], layer.weight)


def test_conv_saves_only_x_and_w(standin_profile):
    layer = AnalogConv2d(2, 4, 3, bias=False, profile=standin_profile, config=AnalogConfig(compile=False))
    x = torch.randn(2, 2, 6, 6, requires_grad=True)
    _, packed = _saved(lambda: layer(x))
    assert len(packed) == 2 and _same(packed[0], x) and _same(packed[1], layer.weight)


def test_saturation_mask_is_bit_packed_and_zeroes_saturated_gradients(standin_profile):
    config = AnalogConfig(compile=False, tile_rows=16, adc_grad="saturation_mask", psum_percentile=50.0)
    layer = AnalogLinear(40, 6, bias=False, profile=standin_profile, config=config)
    x = torch.randn(8, 40, requires_grad=True)
    y, packed = _saved(lambda: layer(x))
    assert len(packed) == 3 and _same(packed[0], x) and _same(packed[1], layer.weight)
    mask = packed[2]
    assert mask.dtype == torch.uint8 and mask.numel() == (3 * 8 * 6 + 7) // 8  # 3 tiles, 1 bit per conversion
    y.sum().backward()
    passes = torch.cat([torch.bitwise_and(mask[:, None], torch.tensor([1 << i for i in range(8)], dtype=torch.uint8)) != 0], 1)
    passes = passes.reshape(-1)[: 3 * 8 * 6].reshape(3, 8, 6)
    assert 0 < int(passes.sum()) < passes.numel()  # median scaling: about half the conversions saturate
    g = torch.ones(8, 6)
    expected = torch.cat([(g * passes[t]).T @ x.detach()[:, 16 * t : 16 * (t + 1)] for t in range(3)], dim=1)
    assert torch.allclose(layer.weight.grad, expected)


def test_noisy_grad_x_weight_saves_the_forward_noisy_weight(standin_profile):
    config = AnalogConfig(compile=False, grad_x_weight="noisy")
    layer = AnalogLinear(40, 6, bias=False, profile=standin_profile, config=config)
    x = torch.randn(8, 40, requires_grad=True)
    y, packed = _saved(lambda: layer(x))
    assert len(packed) == 2 and _same(packed[0], x)
    noisy_w = packed[1]
    assert noisy_w.shape == layer.weight.shape and not torch.equal(noisy_w, layer.weight.detach())
    g = torch.randn(8, 6)
    y.backward(g)
    assert torch.allclose(x.grad, g @ noisy_w)
    assert torch.allclose(layer.weight.grad, g.T @ x.detach())
