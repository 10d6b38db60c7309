"""The extended STE's gradient points where the expected gradient of the noisy loss points.

Small regression problem on a fitted chip profile: loss(W) = mean((chip(x; W) - y*)^2). The expected
gradient of E_noise[loss] is estimated by central finite differences with common random numbers (each
noise draw m uses generator seed m at W + h e_i and W - h e_i) over many draws; the STE gradient is
averaged over the same draws. At realistic noise their cosine is large; docs/analog.md explains where it
breaks down (heavy ADC saturation, noise comparable to the signal, very coarse converters).
"""

from __future__ import annotations

import torch

from cimcal.analog import AnalogConfig, AnalogLinear, calibrate


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.reshape(1, -1), b.reshape(1, -1)).squeeze())


def _setup(profile, psum_percentile: float = 99.9):
    torch.manual_seed(0)
    n_in, n_out = 16, 2
    layer = AnalogLinear(n_in, n_out, bias=False, profile=profile,
                         config=AnalogConfig(compile=False, tile_rows=8, psum_percentile=psum_percentile))
    x = torch.rand(128, n_in)
    teacher = torch.randn(n_out, n_in)
    with torch.no_grad():
        layer.weight.copy_(teacher + 0.6 * torch.randn(n_out, n_in))
    target = x @ teacher.T
    calibrate(layer, [x])
    layer.eval()  # calibration frozen: the finite differences see only the weights move
    return layer, x, target


def _loss(layer, x, target, weight, seed):
    layer.generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        y = layer.simulate_mvm(x, weight)[0]
    return float(((y - target) ** 2).mean())


def _gradients(layer, x, target, draws: int, h: float):
    ste = torch.zeros_like(layer.weight)
    for seed in range(draws):
        layer.generator = torch.Generator().manual_seed(seed)
        layer.weight.grad = None
        ((layer(x) - target) ** 2).mean().backward()
        ste += layer.weight.grad / draws
    w0 = layer.weight.detach().clone()
    fd = torch.zeros_like(w0)
    for i in range(w0.numel()):
        step = torch.zeros_like(w0).view(-1)
        step[i] = h
        step = step.view_as(w0)
        diffs = [_loss(layer, x, target, w0 + step, s) - _loss(layer, x, target, w0 - step, s) for s in range(draws)]
        fd.view(-1)[i] = sum(diffs) / (2 * h * draws)
    return ste, fd


def test_ste_gradient_aligns_with_the_expected_noisy_gradient(fitted_profile):
    layer, x, target = _setup(fitted_profile)
    # h about one conductance level in weight units: the expected loss is a staircase smoothed by the noise,
    # and the STE estimates the gradient of its smooth trend (at h = level/3, the cosine drops to ~0.8).
    ste, fd = _gradients(layer, x, target, draws=16, h=0.3)
    cosine = _cosine(ste, fd)
    assert cosine > 0.8, cosine
