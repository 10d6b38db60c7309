"""The differentiable Gaussian noise-aware-training baseline, in the same mapping, tiles and converters.

Standard NAT as the paper compares against: quantization with a straight-through round only where the
function jumps (DAC, level mapping, ADC), Gaussian weight noise with the profile's per-level mean and
sigma (both devices of the pair), Gaussian output noise with each column's ``sigma_lsb_`` before the ADC,
and autograd through all of it (so autograd keeps every intermediate it needs for backward).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from cimcal.analog.crossbar import stats_sample
from cimcal.analog.functions import RoundSTE
from cimcal.analog.mapping import levels_and_sign

__all__ = ["gaussian_unit_weight", "gaussian_tiled_mvm"]


def gaussian_unit_weight(
    w_unit: torch.Tensor, tables: dict[str, torch.Tensor], generator: torch.Generator | None
) -> torch.Tensor:
    """Level-quantized (straight-through) unit weight plus Gaussian noise of both devices of each pair."""
    with torch.no_grad():
        level, sign = levels_and_sign(w_unit, tables["level_of_fine"])  # the LUT path's rule, the same levels
        mean_unit, sigma_unit = tables["mean_unit"].to(w_unit.dtype), tables["sigma_unit"].to(w_unit.dtype)
        w_mean = sign * (mean_unit[level] - mean_unit[0])
        sigma = torch.sqrt(sigma_unit[level] ** 2 + sigma_unit[0] ** 2)
        noise = torch.randn(w_unit.shape, generator=generator, dtype=w_unit.dtype) * sigma
    return w_unit + (w_mean - w_unit).detach() + noise


def gaussian_tiled_mvm(
    psum_tiles: list[Callable[[], torch.Tensor]],
    out_shape: tuple[int, ...],
    adc: dict[str, torch.Tensor] | None,
    n_codes: int | None,
    psum_scale: float,
    generator: torch.Generator | None,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Differentiable tiled MVM: per tile, Gaussian ADC noise, clamp, straight-through rounding.

    ``psum_tiles[t]()`` is tile t's (differentiable) partial sums, output (ADC column) index on dim 1.
    Returns (y_unit, subsampled detached partial sums for calibration).
    """
    total = None
    stats = []
    if adc is not None:
        lsb = 2.0 * psum_scale / n_codes  # ADC range [x_lo, x_hi] is mapped onto [-psum_scale, psum_scale]
        col = torch.arange(out_shape[1]) % adc["sigma_lsb"].numel()
        view = [1] * len(out_shape)
        view[1] = out_shape[1]
        sigma = (adc["sigma_lsb"][col] * lsb).view(view)
    for psum_tile in psum_tiles:
        psum = psum_tile()
        if adc is not None:
            stats.append(stats_sample(psum.detach()).reshape(-1))
            noise = torch.randn(psum.shape, generator=generator, dtype=psum.dtype) * sigma.to(psum.dtype)
            clipped = torch.clamp(psum + noise, -psum_scale, psum_scale * (1.0 - 1e-6))
            code = RoundSTE.apply((clipped + psum_scale) / lsb - 0.5)
            psum = (code + 0.5) * lsb - psum_scale
        total = psum if total is None else total + psum
    return total, stats
