"""The tiled crossbar forward: noisy weights, tile MVMs, ADC conversion of each tile's partial sums.

Pure functions over tensors; the layers own the tables (buffers) and call these. Everything here runs
under ``torch.no_grad`` inside the extended-STE Function, except :func:`gaussian_tiled_mvm`, the
differentiable baseline.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from cimcal.analog import kernels
from cimcal.analog.converters import adc_convert_tile, dac_quantize
from cimcal.analog.mapping import instance_unit_weight, noisy_unit_weight

__all__ = [
    "tile_slices", "conv_channel_tiles", "quantize_inputs", "sample_unit_weight", "tiled_adc_mvm",
    "subsample_abs_percentile", "use_kernels",
]

_STATS_SAMPLES = 16384


def use_kernels(enabled: bool, *tensors: torch.Tensor) -> bool:
    """Whether the compiled kernels run: asked for, and every tensor float32 on the CPU (else the eager path)."""
    return enabled and all(t.device.type == "cpu" and t.dtype in kernels.KERNEL_DTYPES for t in tensors)


def _bytes(shape: torch.Size | tuple[int, ...], key: int, nonce: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The eager path's random bytes (low, high) of each element: the kernels' 16 bits, rows = dim 0."""
    bits = kernels.philox_bits(shape[0], math.prod(shape[1:]), key, nonce, device).reshape(shape)
    return bits & 255, bits >> 8


def quantize_inputs(x: torch.Tensor, full_scale: float, bits: int, compiled: bool) -> torch.Tensor:
    """The input DAC (:func:`cimcal.analog.converters.dac_quantize`), in one compiled pass where possible."""
    if use_kernels(compiled, x) and x.is_contiguous():
        return kernels.dac_quantize(x, full_scale, bits)
    return dac_quantize(x, full_scale, bits)


def tile_slices(n_rows: int, tile_rows: int) -> list[slice]:
    """Row ranges of the tiles a length-``n_rows`` input is split into."""
    return [slice(start, min(start + tile_rows, n_rows)) for start in range(0, n_rows, tile_rows)]


def subsample_abs_percentile(values: torch.Tensor, percentile: float) -> torch.Tensor:
    """Percentile of ``|values|`` over a strided subsample of at most ~16k entries (cheap, 0-dim): the k-th
    smallest, NaN ordered last as in ``torch.kthvalue``; one compiled pass over the strided entries for
    float32 CPU tensors."""
    flat = values.reshape(-1)
    step = max(1, flat.numel() // _STATS_SAMPLES) | 1  # odd stride: visits every column over time
    n = (flat.numel() + step - 1) // step
    k = min(n, max(1, int(round(percentile / 100.0 * n))))
    if use_kernels(True, flat):
        return torch.tensor(kernels.abs_kth_strided(flat, step, k))
    sample = flat[::step].abs().float()
    # the k-th smallest by a partial selection of the shorter side (faster than kthvalue for the high
    # percentiles used here; same value, NaN ordered last)
    if n - k + 1 <= k:
        return sample.topk(n - k + 1).values[-1]
    return sample.topk(k, largest=False).values[-1]


def sample_unit_weight(
    w: torch.Tensor,
    cols: slice,
    inv_scale: torch.Tensor,
    tables: dict[str, torch.Tensor],
    ranks: torch.Tensor | None,
    generator: torch.Generator | None,
    compiled: bool,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Noisy unit weights of every differential pair of the tile ``w[:, cols] * inv_scale[:, None]``:
    programmed conductance plus one read each (``ranks``: the fixed instance's (2, O, K) programming-error
    ranks). Written into ``out`` when given."""
    key, nonce = kernels.draw_key(generator)
    if use_kernels(compiled, w) and w.is_contiguous():
        if ranks is None:
            return kernels.sample_pairs(w, cols, inv_scale, tables["level_of_fine"], tables["read_unit"], key, nonce, out)
        return kernels.sample_pairs_instance(
            w, cols, inv_scale, ranks, tables["level_of_fine"], tables["programmed_unit"], tables["read_noise_unit"],
            key, nonce, out,
        )
    w_tile = w[:, cols]
    u_active, u_idle = _bytes(w_tile.shape, key, nonce, w.device)
    w_unit = w_tile * inv_scale[:, None]
    if ranks is None:
        noisy = noisy_unit_weight(w_unit, u_active, u_idle, tables["level_of_fine"], tables["read_unit"])
    else:
        noisy = instance_unit_weight(
            w_unit, ranks[0, :, cols], ranks[1, :, cols], u_active, u_idle, tables["level_of_fine"],
            tables["programmed_unit"], tables["read_noise_unit"],
        )
    return noisy if out is None else out.copy_(noisy)


def conv_channel_tiles(in_channels: int, kernel_cells: int, tile_rows: int) -> list[slice]:
    """Input-channel groups of a conv mapped onto tiles: whole kernel patches, at most ``tile_rows`` rows each
    (one channel per tile if a single patch is larger than a tile)."""
    per_tile = max(1, tile_rows // kernel_cells)
    return [slice(c, min(c + per_tile, in_channels)) for c in range(0, in_channels, per_tile)]


def tiled_adc_mvm(
    psum_tiles: list[Callable[..., torch.Tensor]],
    adc: dict[str, torch.Tensor] | None,
    adc_geometry: tuple[float, float, float, float, int, bool] | None,
    psum_scale: float,
    generator: torch.Generator | None,
    compiled: bool,
    want_mask: bool,
    reuse_buffer: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None, list[torch.Tensor]]:
    """Sum over tiles of the ADC read-back of each tile's partial sums, in unit space.

    ``psum_tiles[t](out)`` computes tile t's partial sums, shape (N, O, ...) with the output (ADC column)
    index on dim 1 (linear: (N, O); conv: (N, O, H, W)), as a new tensor when ``out`` is None, else into
    ``out`` (passed only if ``reuse_buffer``: one buffer serves every tile after the first). One tile exists
    at a time besides the accumulator, which is the first tile's tensor converted in place. ``adc``: the code
    table ``codes`` and the layer's per-output constants (:func:`cimcal.analog.converters.adc_columns`), or
    None for an ideal converter. Returns (y_unit,
    bool mask (T, N, O, ...) of the conversions whose gradient passes (not saturated) or None, each tile's
    partial sums subsampled for calibration statistics).
    """
    stats: list[torch.Tensor] = []
    acc: torch.Tensor | None = None
    buffer: torch.Tensor | None = None

    def next_psum(psum_tile: Callable[..., torch.Tensor]) -> torch.Tensor:
        nonlocal buffer
        if acc is None or not reuse_buffer:
            return psum_tile(None)
        if buffer is None:
            buffer = torch.empty_like(acc)
        return psum_tile(buffer)

    if adc is None:
        for psum_tile in psum_tiles:
            psum = next_psum(psum_tile)
            acc = psum if acc is None else acc.add_(psum)
        mask = torch.ones(len(psum_tiles), *acc.shape, dtype=torch.bool) if want_mask else None
        return acc, mask, stats  # an ideal converter never saturates: every gradient passes
    x_lo, x_hi, grid_x0, grid_step, n_points, interpolate = adc_geometry
    half = 0.5 * (x_hi - x_lo)
    center = 0.5 * (x_hi + x_lo)
    grid_scale = half / (psum_scale * grid_step)
    grid_shift = (center - grid_x0) / grid_step
    to_unit = psum_scale / half  # ADC input range [x_lo, x_hi] <-> partial sums [-psum_scale, psum_scale]
    masks = []
    for psum_tile in psum_tiles:
        psum = next_psum(psum_tile)
        n_out = psum.shape[1]
        first = acc is None
        if first:  # per-output read-back straight to unit partial sums, once
            col_base = adc["col_base"]
            deq_gain = adc["col_gain"] * to_unit
            deq_offset = adc["col_offset"] * to_unit
        stats.append(psum.reshape(-1)[:: max(1, psum.numel() // _STATS_SAMPLES) | 1].clone())
        target = psum if first else acc
        key, nonce = kernels.draw_key(generator)
        if use_kernels(compiled, psum):
            flat = (psum.shape[0], n_out, -1)
            passes = kernels.adc_convert(
                target.view(flat), psum.view(flat), not first, col_base, deq_gain, deq_offset, grid_scale, grid_shift,
                psum_scale, interpolate, n_points, adc["codes"], key, nonce, want_mask,
            )
            passes = None if passes is None else passes.view(psum.shape)
        else:
            knot, grid_byte = _bytes(psum.shape, key, nonce, psum.device)
            view = (n_out,) + (1,) * (psum.dim() - 2)
            converted, saturated = adc_convert_tile(
                torch.zeros(()) if first else acc, psum, knot, grid_byte, col_base.view(view), deq_gain.view(view),
                deq_offset.view(view), torch.tensor(grid_scale), torch.tensor(grid_shift), torch.tensor(psum_scale),
                torch.tensor(1.0 if interpolate else 0.0), n_points, adc["codes"], want_mask,
            )
            target.copy_(converted)
            passes = None if saturated is None else ~saturated
        acc = target
        if want_mask:
            masks.append(passes)
        del psum
    return acc, (torch.stack(masks) if want_mask else None), stats
