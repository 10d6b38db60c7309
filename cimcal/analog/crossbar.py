"""The tiled crossbar forward: noisy weights, tile MVMs, ADC conversion of each tile's partial sums.

Pure functions over tensors; the layers own the tables (buffers) and call these. Everything here runs
under ``torch.no_grad`` inside the extended-STE Function, except :func:`gaussian_tiled_mvm`, the
differentiable baseline.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from cimcal.analog.converters import N_KNOTS, adc_convert_tile
from cimcal.analog.fused import fused
from cimcal.analog.mapping import instance_unit_weight, noisy_unit_weight

__all__ = [
    "random_bytes", "tile_slices", "conv_channel_tiles", "sample_unit_weight", "tiled_adc_mvm", "subsample_abs_percentile",
]

_STATS_SAMPLES = 16384


def random_bytes(n: int, generator: torch.Generator | None) -> torch.Tensor:
    """``n`` uniform random uint8 values, drawn 8 at a time as full-range 64-bit words (fewest generator
    calls; the consumers index with int32/uint8, never with int64 index tensors)."""
    words = torch.randint(-(2**63), 2**63 - 1, ((n + 7) // 8,), dtype=torch.int64, generator=generator)
    return words.view(torch.uint8)[:n]


def tile_slices(n_rows: int, tile_rows: int) -> list[slice]:
    """Row ranges of the tiles a length-``n_rows`` input is split into."""
    return [slice(start, min(start + tile_rows, n_rows)) for start in range(0, n_rows, tile_rows)]


def subsample_abs_percentile(values: torch.Tensor, percentile: float) -> torch.Tensor:
    """Percentile of ``|values|`` over a strided subsample of at most ~16k entries (cheap, 0-dim)."""
    flat = values.reshape(-1)
    step = max(1, flat.numel() // _STATS_SAMPLES) | 1  # odd stride: visits every column over time
    sample = flat[::step].abs().float()
    k = min(sample.numel(), max(1, int(round(percentile / 100.0 * sample.numel()))))
    return sample.kthvalue(k).values


def sample_unit_weight(
    w_unit: torch.Tensor,
    tables: dict[str, torch.Tensor],
    ranks: torch.Tensor | None,
    generator: torch.Generator | None,
    compile_chain: bool,
) -> torch.Tensor:
    """Noisy unit weights of every differential pair: programmed conductance plus one read each."""
    n = w_unit.numel()
    u = random_bytes(2 * n, generator).view(2, *w_unit.shape)
    if ranks is None:
        chain = fused(noisy_unit_weight, compile_chain)
        return chain(w_unit, u[0], u[1], tables["level_of_fine"], tables["read_unit"])
    chain = fused(instance_unit_weight, compile_chain)
    return chain(
        w_unit, ranks[0], ranks[1], u[0], u[1], tables["level_of_fine"], tables["programmed_unit"], tables["read_noise_unit"]
    )


def conv_channel_tiles(in_channels: int, kernel_cells: int, tile_rows: int) -> list[slice]:
    """Input-channel groups of a conv mapped onto tiles: whole kernel patches, at most ``tile_rows`` rows each
    (one channel per tile if a single patch is larger than a tile)."""
    per_tile = max(1, tile_rows // kernel_cells)
    return [slice(c, min(c + per_tile, in_channels)) for c in range(0, in_channels, per_tile)]


def tiled_adc_mvm(
    psum_tiles: list[Callable[[], torch.Tensor]],
    out_shape: tuple[int, ...],
    column_dim: int,
    adc: dict[str, torch.Tensor] | None,
    adc_geometry: tuple[float, float, float, float, int, bool] | None,
    psum_scale: float,
    generator: torch.Generator | None,
    compile_chain: bool,
    want_mask: bool,
) -> tuple[torch.Tensor, torch.Tensor | None, list[torch.Tensor]]:
    """Sum over tiles of the ADC read-back of each tile's partial sums, in unit space.

    ``psum_tiles[t]()`` computes tile t's partial sums, shape ``out_shape`` with the output (ADC column)
    index on ``column_dim`` (linear: (N, O), dim 1; conv: (N, O, H, W), dim 1); one tile exists at a time.
    Returns (y_unit, bool mask (T, *out_shape) of the conversions whose gradient passes (not saturated) or
    None, each tile's partial sums subsampled for calibration statistics).
    """
    n_out = out_shape[column_dim]
    view = [1] * len(out_shape)
    view[column_dim] = n_out
    acc = torch.zeros(out_shape)
    stats: list[torch.Tensor] = []
    if adc is None:
        for psum_tile in psum_tiles:
            acc += psum_tile()
        mask = torch.ones(len(psum_tiles), *out_shape, dtype=torch.bool) if want_mask else None
        return acc, mask, stats  # an ideal converter never saturates: every gradient passes
    x_lo, x_hi, grid_x0, grid_step, n_points, interpolate = adc_geometry
    half = 0.5 * (x_hi - x_lo)
    center = 0.5 * (x_hi + x_lo)
    n_cols = adc["deq_gain"].numel()
    col = torch.arange(n_out) % n_cols
    col_base = (col * (n_points * N_KNOTS)).to(torch.int32).view(view)
    to_unit = psum_scale / half  # ADC input range [x_lo, x_hi] <-> partial sums [-psum_scale, psum_scale]
    deq_gain = (adc["deq_gain"][col] * to_unit).view(view)
    deq_offset = ((adc["deq_offset"][col] - center) * to_unit).view(view)
    grid_scale = torch.tensor(half / (psum_scale * grid_step))
    grid_shift = torch.tensor((center - grid_x0) / grid_step)
    limit = torch.tensor(psum_scale)
    interp = torch.tensor(1.0 if interpolate else 0.0)
    chain = fused(adc_convert_tile, compile_chain)
    masks = []
    for psum_tile in psum_tiles:
        psum = psum_tile()
        stats.append(psum.reshape(-1)[:: max(1, psum.numel() // _STATS_SAMPLES) | 1])
        u = random_bytes(2 * psum.numel(), generator).view(torch.int16).view(out_shape)
        acc, saturated = chain(
            acc, psum, u, col_base, deq_gain, deq_offset, grid_scale, grid_shift, limit, interp, n_points, adc["codes"],
            want_mask,
        )
        if want_mask:
            masks.append(~saturated)
        del psum, u, saturated
    return acc, (torch.stack(masks) if want_mask else None), stats
