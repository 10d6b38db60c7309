"""The extended straight-through estimator as torch.autograd Functions.

Forward runs the non-differentiable chip simulation (``sim.simulate_mvm``, under ``torch.no_grad``);
backward is the gradient of the *clean* op: ``grad_x = g W``, ``grad_W = g^T x`` (and the conv analogues).
Only ``x`` and ``W`` are saved (or ``x`` and the forward's noisy ``W`` when ``grad_x_weight="noisy"``),
plus, with ``adc_grad="saturation_mask"``, a bit-packed mask (1 bit per ADC conversion) of the
conversions whose gradient passes. The noisy intermediates (conductances, partial sums, codes) are freed
at the end of forward.

``sim`` is any object with ``tile_rows: int``, ``simulate_mvm(x2d, w2d)`` and
``simulate_conv(x, w, stride, padding, dilation)``, each returning ``(y, packed_mask | None, noisy_w | None)``
(the mask bit-packed in (tile, batch row, output) order for linear layers, (tile, N, O, H, W) for convs): an analog layer, or
:class:`IdealTiles` (no noise, no converters: the clean path that gradcheck exercises).

The Functions use the ``forward(ctx, ...)`` form: with a separate ``setup_context`` an ``apply`` cost
~85 us instead of ~17 us on this CPU (torch binds the inputs to the signature on every call), a tenth of a
small layer's whole analog forward.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from cimcal.analog.converters import pack_bits, unpack_bits
from cimcal.analog.crossbar import conv_channel_tiles, tile_slices

__all__ = ["AnalogLinearFunction", "AnalogConv2dFunction", "IdealTiles", "RoundSTE"]

_EMPTY = torch.empty(0)


class IdealTiles:
    """A noise-free simulator with the layers' tiling: forward = the exact op (for gradcheck and tests)."""

    def __init__(self, tile_rows: int = 256, saturation_mask: bool = False) -> None:
        self.tile_rows = tile_rows
        self.saturation_mask = saturation_mask

    def simulate_mvm(self, x2d: torch.Tensor, w2d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, None]:
        y = x2d.new_zeros(x2d.shape[0], w2d.shape[0])
        for rows in tile_slices(x2d.shape[1], self.tile_rows):
            y += x2d[:, rows] @ w2d[:, rows].T
        mask = None
        if self.saturation_mask:
            n_tiles = len(tile_slices(x2d.shape[1], self.tile_rows))
            mask = pack_bits(torch.ones(n_tiles, x2d.shape[0], w2d.shape[0], dtype=torch.bool))
        return y, mask, None

    def simulate_conv(
        self, x: torch.Tensor, weight: torch.Tensor, stride: Any, padding: Any, dilation: Any
    ) -> tuple[torch.Tensor, torch.Tensor | None, None]:
        groups = conv_channel_tiles(weight.shape[1], weight.shape[2] * weight.shape[3], self.tile_rows)
        y = sum(F.conv2d(x[:, cs], weight[:, cs], None, stride, padding, dilation) for cs in groups)
        mask = pack_bits(torch.ones(len(groups), *y.shape, dtype=torch.bool)) if self.saturation_mask else None
        return y, mask, None


def _outputs(y: torch.Tensor, mask: torch.Tensor | None, noisy_w: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
    return y, (_EMPTY if mask is None else mask), (_EMPTY if noisy_w is None else noisy_w)


def _masked_tile_grads(
    g2d: torch.Tensor, x2d: torch.Tensor, w2d: torch.Tensor, packed: torch.Tensor, tile_rows: int, need_x: bool, need_w: bool
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Per-tile STE with the ADC saturation mask: tile t only gets g where its conversion did not saturate."""
    slices = tile_slices(w2d.shape[1], tile_rows)
    passes = unpack_bits(packed, (len(slices), g2d.shape[0], g2d.shape[1]))
    grad_x = torch.empty_like(x2d) if need_x else None
    grad_w = torch.empty_like(w2d) if need_w else None
    for t, rows in enumerate(slices):
        g_t = g2d * passes[t]
        if need_x:
            grad_x[:, rows] = g_t @ w2d[:, rows]
        if need_w:
            grad_w[:, rows] = g_t.T @ x2d[:, rows]
    return grad_x, grad_w


def _save_for_ste(ctx: Any, x: torch.Tensor, weight: torch.Tensor, sim: Any, output: tuple[torch.Tensor, ...]) -> None:
    """Save only what the clean-op gradient needs: x, W (or the noisy W when asked for) and the packed mask."""
    _, mask, noisy_w = output
    ctx.tile_rows = sim.tile_rows
    ctx.set_materialize_grads(False)
    ctx.mark_non_differentiable(mask, noisy_w)
    ctx.save_for_backward(x, noisy_w if noisy_w.numel() else weight, mask if mask.numel() else None)


class AnalogLinearFunction(torch.autograd.Function):
    """``y = sim(x W^T) + b`` forward; clean-linear gradients backward. x (N, K), W (O, K), b (O,) or None ->
    (y, mask, noisy_w). The bias is digital (added after the ADC), so its gradient is always ``g.sum(0)``; it is
    added inside the Function to spare autograd an add node per layer."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, sim: Any, bias: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
        with torch.no_grad():
            output = _outputs(*sim.simulate_mvm(x, weight))
            if bias is not None:
                output[0].add_(bias)
        _save_for_ste(ctx, x, weight, sim, output)
        return output

    @staticmethod
    def backward(ctx: Any, grad_y: torch.Tensor | None, *_unused: Any) -> tuple[torch.Tensor | None, ...]:
        if grad_y is None:
            return None, None, None, None
        x, weight, packed = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[3]
        grad_b = grad_y.sum(0) if need_b else None
        if packed is not None:
            grad_x, grad_w = _masked_tile_grads(grad_y, x, weight, packed, ctx.tile_rows, need_x, need_w)
            return grad_x, grad_w, None, grad_b
        grad_x = grad_y.mm(weight) if need_x else None
        grad_w = grad_y.t().mm(x) if need_w else None
        return grad_x, grad_w, None, grad_b


class AnalogConv2dFunction(torch.autograd.Function):
    """Conv2d on tiles of whole kernel patches (input-channel groups); clean-conv gradients backward (groups=1).
    The digital bias (or None) is added inside, its gradient ``g.sum((0, 2, 3))``, as in the linear Function."""

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        weight: torch.Tensor,
        sim: Any,
        stride: tuple[int, int],
        padding: tuple[int, int],
        dilation: tuple[int, int],
        bias: torch.Tensor | None,
    ) -> tuple[torch.Tensor, ...]:
        with torch.no_grad():
            output = _outputs(*sim.simulate_conv(x, weight, stride, padding, dilation))
            if bias is not None:
                output[0].add_(bias.view(1, -1, 1, 1))
        ctx.conv = (stride, padding, dilation)
        _save_for_ste(ctx, x, weight, sim, output)
        return output

    @staticmethod
    def backward(ctx: Any, grad_y: torch.Tensor | None, *_unused: Any) -> tuple[torch.Tensor | None, ...]:
        if grad_y is None:
            return (None,) * 7
        x, weight, packed = ctx.saved_tensors
        stride, padding, dilation = ctx.conv
        need_x, need_w, need_b = ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[6]
        if packed is None:  # the clean conv's backward: one call for all three gradients
            grad_x, grad_w, grad_b = torch.ops.aten.convolution_backward(
                grad_y, x, weight, [weight.shape[0]] if need_b else None, stride, padding, dilation, False, [0, 0], 1,
                [need_x, need_w, need_b],
            )
            return grad_x, grad_w, None, None, None, None, grad_b
        groups = conv_channel_tiles(weight.shape[1], weight.shape[2] * weight.shape[3], ctx.tile_rows)
        passes = unpack_bits(packed, (len(groups), *grad_y.shape))
        grad_x = torch.empty_like(x) if need_x else None
        grad_w = torch.empty_like(weight) if need_w else None
        for t, cs in enumerate(groups):  # per tile: only the unsaturated conversions pass their gradient
            g_t = grad_y * passes[t]
            if need_x:
                grad_x[:, cs] = torch.nn.grad.conv2d_input(x[:, cs].shape, weight[:, cs], g_t, stride, padding, dilation)
            if need_w:
                grad_w[:, cs] = torch.nn.grad.conv2d_weight(x[:, cs], weight[:, cs].shape, g_t, stride, padding, dilation)
        return grad_x, grad_w, None, None, None, None, (grad_y.sum((0, 2, 3)) if need_b else None)


class RoundSTE(torch.autograd.Function):
    """``round`` forward, identity backward: the straight-through only where the function jumps (torchao _Round)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        return torch.round(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return grad
