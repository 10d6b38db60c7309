"""The tiled crossbar forward: noisy weights, tile MVMs, ADC conversion of each tile's partial sums.

Pure functions over tensors; the layers own the tables (buffers) and call these. Everything here runs
under ``torch.no_grad`` inside the extended-STE Function (the differentiable baseline lives in
:mod:`cimcal.analog.gaussian`).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from cimcal.analog import kernels
from cimcal.analog.converters import adc_convert_tile, dac_quantize
from cimcal.analog.mapping import instance_unit_weight, noisy_unit_weight, read_back_unit_weight

__all__ = [
    "tile_slices", "conv_channel_tiles", "quantize_inputs", "calibrated_inputs", "sample_unit_weight", "tiled_adc_mvm",
    "subsample_abs_percentile", "running_percentile", "stats_sample", "sample_plan", "use_kernels",
    "row_abs_max", "read_back_weight",
]

_STATS_SAMPLES = 16384
_LINE = 16  # float32 entries per 64-byte cache line


def use_kernels(enabled: bool, *tensors: torch.Tensor) -> bool:
    """Whether the compiled kernels run: asked for, and every tensor float32 on the CPU (else the eager path)."""
    if not enabled:
        return False
    for t in tensors:  # a loop and ``is_cpu``: a generator and ``device.type`` cost ~1 us a call, every forward
        if not t.is_cpu or t.dtype not in kernels.KERNEL_DTYPES:
            return False
    return True


def _bytes(
    shape: torch.Size | tuple[int, ...], key: int, nonce: int, device: torch.device, row0: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """The eager path's random bytes (low, high) of each element: the kernels' 16 bits, rows = dim 0 (rows
    ``row0 ..`` of the stream)."""
    bits = kernels.philox_bits(shape[0], math.prod(shape[1:]), key, nonce, device, row0).reshape(shape)
    return bits & 255, bits >> 8


def row_abs_max(w: torch.Tensor) -> torch.Tensor:
    """``max|w|`` of each row of ``w`` (O, K), at least 1e-12: the per-output weight scale."""
    # amax + amin: 2x faster than abs().amax() and no weight-sized temporary (aminmax(dim=1) is 7x slower on CPU)
    return torch.maximum(w.amax(dim=1), -w.amin(dim=1)).clamp_min(1e-12)


def quantize_inputs(x: torch.Tensor, full_scale: float, bits: int, compiled: bool) -> torch.Tensor:
    """The input DAC (:func:`cimcal.analog.converters.dac_quantize`), in one compiled pass where possible."""
    if use_kernels(compiled, x) and x.is_contiguous():
        return kernels.dac_quantize(x, full_scale, bits)
    return dac_quantize(x, full_scale, bits)


def calibrated_inputs(
    x: torch.Tensor, state: torch.Tensor, percentile: float, momentum: float, update: bool, bits: int, compiled: bool
) -> tuple[torch.Tensor, float]:
    """(DAC codes of ``x``, full scale): :func:`running_percentile` into ``state``, then :func:`quantize_inputs`;
    one compiled call for contiguous float32 CPU tensors."""
    if use_kernels(compiled, x, state) and x.is_contiguous():
        starts, line = sample_plan(x.numel())
        return kernels.calibrated_dac(x, starts, line, percentile, state, momentum, update, bits)
    full_scale = running_percentile(state, x, percentile, momentum, update)
    return quantize_inputs(x, full_scale, bits, compiled), full_scale


def tile_slices(n_rows: int, tile_rows: int) -> list[slice]:
    """Row ranges of the tiles a length-``n_rows`` input is split into."""
    return [slice(start, min(start + tile_rows, n_rows)) for start in range(0, n_rows, tile_rows)]


_PLANS: dict[int, tuple[torch.Tensor, int]] = {}


def sample_plan(numel: int) -> tuple[torch.Tensor, int]:
    """Which entries of a flattened tensor of ``numel`` entries the calibration statistics read, as
    ``(starts, line)``: the runs ``[starts[b], starts[b] + line)`` (int64 starts; cached per size).

    Every entry (one run) while there are fewer than ``2 * _STATS_SAMPLES``; else about ``_STATS_SAMPLES`` entries
    in whole 64-byte cache lines of float32 (``line = 16``): window b of ``w`` lines contributes line
    ``b * w + o_b``, ``o_b`` scattered over the window by Knuth's multiplicative hash of b, so the lines land on
    every column of any row length. Whole lines, because the statistics run right after matmuls have evicted
    the data: a sample of single strided entries missed the cache once per entry (16 k misses, ~250 us here).
    """
    plan = _PLANS.get(numel)
    if plan is None:
        if numel < 2 * _STATS_SAMPLES:
            plan = (torch.zeros(1, dtype=torch.int64), numel)
        else:
            lines = numel // _LINE
            per_window = max(1, lines * _LINE // _STATS_SAMPLES)
            window = torch.arange(lines // per_window, dtype=torch.int64)
            offset = ((window * 2654435761) & 0xFFFFFFFF) * per_window >> 32
            plan = ((window * per_window + offset) * _LINE, _LINE)
        if len(_PLANS) > 256:
            _PLANS.clear()
        _PLANS[numel] = plan
    return plan


def stats_sample(values: torch.Tensor) -> torch.Tensor:
    """The entries of ``values`` that :func:`sample_plan` picks, as a flat copy (or view, when that is all)."""
    flat = values.reshape(-1)
    starts, line = sample_plan(flat.numel())
    if starts.numel() == 1:
        return flat[:line]
    # the index is built on the CPU, where the plan lives; a CPU index selects from a tensor on any device
    return flat[(starts[:, None] + torch.arange(line)).reshape(-1)]


def subsample_abs_percentile(values: torch.Tensor, percentile: float) -> float | None:
    """Percentile of the finite ``|values|`` over :func:`stats_sample` (the k-th smallest of them), or None if
    the sample holds no finite value."""
    sample = stats_sample(values).abs().float()
    sample = sample[sample < float("inf")]  # NaN and inf left out: one bad batch must not poison the running value
    n = sample.numel()
    if n == 0:
        return None
    k = int(kernels.kth_rank(n, float(percentile)))
    # the k-th smallest by a partial selection of the shorter side (faster than kthvalue for the high
    # percentiles used here; same value)
    if n - k + 1 <= k:
        return float(sample.topk(n - k + 1).values[-1])
    return float(sample.topk(k, largest=False).values[-1])


def running_percentile(state: torch.Tensor, values: torch.Tensor, percentile: float, momentum: float, update: bool) -> float:
    """The running calibration value in ``state`` (0-dim), after folding in this batch's ``percentile`` of the
    finite ``|values|`` (over :func:`stats_sample`) if ``update`` or ``state`` is not yet positive: the first value
    sets it, later ones move it by ``momentum`` (an exponential moving average). A batch without a finite value
    above 1e-12 (all NaN, all zero) leaves it alone; while it is not positive the value returned is 1e-12. One
    compiled call for float32 CPU tensors (gather, selection and update), else torch ops."""
    if use_kernels(True, values, state) and values.is_contiguous():
        flat = values.view(-1)
        starts, line = sample_plan(flat.numel())
        return kernels.running_kth(flat, starts, line, percentile, state, momentum, update)
    old = float(state)
    if update or old <= 0:
        new = subsample_abs_percentile(values, percentile)
        if new is not None and new > 1e-12:
            state.fill_(new if old <= 0 else old + momentum * (new - old))
    return float(state) if float(state) > 0 else 1e-12


def sample_unit_weight(
    w: torch.Tensor,
    tables: dict[str, torch.Tensor],
    ranks: torch.Tensor | None,
    stream: tuple[int, int],
    compiled: bool,
    compensate: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Noisy unit weights of every differential pair of ``w`` (O, K), each row scaled by its ``max|w|``:
    programmed conductance plus one read each (``ranks``: the fixed instance's (2, O, K) programming-error
    ranks), random bits from the Philox ``stream`` (key, nonce); ``compensate``: pair compensation
    (:func:`cimcal.analog.mapping.compensate_pairs`; needs the tables' ``target_unit``, ``threshold_unit`` and
    ``bounds_read`` / ``bounds_programmed``). Returns (noisy unit weights (O, K), ``w_max`` (O,)); one compiled
    pass where possible."""
    key, nonce = stream
    target = tables["target_unit"] if compensate else None
    if use_kernels(compiled, w):
        w = w.contiguous()
        rule = None
        if compensate:
            bounds = tables["bounds_read"] if ranks is None else tables["bounds_programmed"]
            rule = (target, float(tables["threshold_unit"]), bounds)
        if ranks is None:
            return kernels.sample_pairs(w, tables["level_of_fine"], tables["read_unit"], key, nonce, compensation=rule)
        return kernels.sample_pairs(
            w, tables["level_of_fine"], tables["read_noise_unit"], key, nonce, ranks, tables["programmed_unit"], rule
        )
    w_max = row_abs_max(w)
    u_active, u_idle = _bytes(w.shape, key, nonce, w.device)
    w_unit = w * (1.0 / w_max)[:, None]
    if ranks is None:
        return noisy_unit_weight(w_unit, u_active, u_idle, tables["level_of_fine"], tables["read_unit"], target), w_max
    noisy = instance_unit_weight(
        w_unit, ranks[0], ranks[1], u_active, u_idle, tables["level_of_fine"], tables["programmed_unit"],
        tables["read_noise_unit"], target,
    )
    return noisy, w_max


def read_back_weight(
    unit: torch.Tensor, level: torch.Tensor, sign: torch.Tensor, read_noise_unit: torch.Tensor, stream: tuple[int, int],
    noise_scale: float = 1.0, idle_level: torch.Tensor | None = None,
) -> torch.Tensor:
    """Read-back cells (``unit`` (O, K), see :meth:`AnalogLayer.use_programmed`) plus one forward's read noise times
    ``noise_scale`` (the active device's at ``level``, the idle one's at ``idle_level``, None: level 0), random bits
    from the Philox ``stream`` on the cells' device."""
    key, nonce = stream
    u_active, u_idle = _bytes(unit.shape, key, nonce, unit.device)
    return read_back_unit_weight(unit, level, sign, u_active, u_idle, read_noise_unit, noise_scale, idle_level)


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
    row_scale: torch.Tensor,
    scale: float,
    stream: tuple[int, int],
    compiled: bool,
    want_mask: bool,
    reuse_buffer: bool = False,
    calibrate: tuple[torch.Tensor, float, float] | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Sum over tiles of the ADC read-back of each tile's partial sums, times ``row_scale * scale`` per output.

    ``psum_tiles[t](out)`` computes tile t's partial sums, shape (N, O, ...) with the output (ADC column)
    index on dim 1 (linear: (N, O); conv: (N, O, H, W)), as a new tensor when ``out`` is None, else into
    ``out`` (passed only if ``reuse_buffer``: one buffer serves every tile after the first). One tile exists
    at a time besides the accumulator, which is the first tile's tensor converted in place. ``adc``: the code
    table ``codes`` (and its step table ``steps``, ``step_base`` or None: the kernel reads that instead, same
    values), the layer's per-output constants (:func:`cimcal.analog.converters.adc_columns`); or None for an
    ideal converter. The read-back goes straight to output units: the output scale (the layer's
    ``w_max`` (O,) times its input full scale) is folded into the per-output read-back constants. Random bits
    from the Philox ``stream`` (key, nonce): tile t's row a draws row ``t * N + a``. ``calibrate`` = (running value,
    percentile, momentum): fold the sample into the running value as :func:`running_percentile` does, inside the
    last tile's kernel call where it runs (one call less per layer). Returns (y, bool mask (T, N, O, ...) of the
    conversions whose gradient passes (not saturated) or None, the calibration sample of every tile's partial sums
    in one tensor (:func:`sample_plan`; None for an ideal converter, and None once ``calibrate`` folded it in)).
    """
    acc: torch.Tensor | None = None
    buffer: torch.Tensor | None = None
    stats: torch.Tensor | None = None

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
        # an ideal converter never saturates: every gradient passes
        return acc.mul_((row_scale * scale).view((-1,) + (1,) * (acc.dim() - 2))), mask, None
    x_lo, x_hi, grid_x0, grid_step, n_points, interpolate = adc_geometry
    half = 0.5 * (x_hi - x_lo)
    center = 0.5 * (x_hi + x_lo)
    grid_scale = half / (psum_scale * grid_step)
    grid_shift = (center - grid_x0) / grid_step
    # read-back per output straight to output units: ADC input range [x_lo, x_hi] <-> unit partial sums
    # [-psum_scale, psum_scale], times the output's scale
    factor = psum_scale / half * scale
    key, nonce = stream
    masks = []
    converter = None
    for t, psum_tile in enumerate(psum_tiles):
        psum = next_psum(psum_tile)
        n_out = psum.shape[1]
        first = acc is None
        if first:
            starts, line = sample_plan(psum.numel())
            per_tile = starts.numel() * line
            stats = psum.new_empty(len(psum_tiles) * per_tile)
            if use_kernels(compiled, psum, row_scale):
                steps = adc.get("steps")
                converter = kernels.AdcConverter(
                    adc["col_base"], adc["col_gain"], adc["col_offset"], row_scale, factor, grid_scale, grid_shift,
                    psum_scale, interpolate, n_points, adc["codes"], key, nonce, want_mask, (starts, line, stats),
                    None if steps is None else (steps, adc["step_base"]),
                )
        target = psum if first else acc
        row0 = t * psum.shape[0]
        if converter is not None and psum.is_contiguous() and target.is_contiguous():
            fold = None if calibrate is None or t < len(psum_tiles) - 1 else (*calibrate, *sample_plan(stats.numel()))
            passes = converter(target, psum, not first, row0, t * per_tile, fold)
            if fold is not None:
                stats = None  # folded into the running value
        else:
            stats[t * per_tile : (t + 1) * per_tile] = stats_sample(psum)
            out_scale = row_scale * factor
            knot, grid_byte = _bytes(psum.shape, key, nonce, psum.device, row0)
            view = (n_out,) + (1,) * (psum.dim() - 2)
            converted, saturated = adc_convert_tile(
                torch.zeros(()) if first else acc, psum, knot, grid_byte, adc["col_base"].view(view),
                (adc["col_gain"] * out_scale).view(view), (adc["col_offset"] * out_scale).view(view), torch.tensor(grid_scale),
                torch.tensor(grid_shift), torch.tensor(psum_scale), torch.tensor(1.0 if interpolate else 0.0), n_points,
                adc["codes"], want_mask,
            )
            target.copy_(converted)
            passes = None if saturated is None else ~saturated
        acc = target
        if want_mask:
            masks.append(passes)
        del psum
    return acc, (torch.stack(masks) if want_mask else None), stats
