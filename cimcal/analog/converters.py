"""Input DAC and output ADC: quantization, the compact per-column ADC code table, dequantization.

ADC model. A partial sum ``p`` (unit space: unit inputs times unit weights summed over a tile) is scaled
by the layer's calibrated ``psum_scale`` onto the ADC's measured input range ``[x_lo, x_hi]``:
``a = center + p / psum_scale * half_range``. The code is drawn from the profile's per-column LUT. For speed
we tabulate that LUT once, through its public ``sample`` API, as ``codes[c, b, k]``: for physical column
``c`` and grid point ``b``, the ``n_knots`` quantiles of the codes the LUT gives at that input. The grid is
the LUT's own input bin centres when they are uniform and at most 4 per LSB, else ``4 * n_codes + 1`` points a quarter LSB apart;
as in the LUT's own sampler the code distribution is interpolated linearly between grid points (a
mixture): the point below or above is picked with probabilities given by the input's position between them.
A conversion draws two random bytes (grid choice, knot), then does one gather
(:mod:`cimcal.analog.kernels` fuses all of it into one compiled pass). Codes are read back into input units with a per-column linear fit of the mean
transfer curve (a digital offset/gain calibration, as a deployment would do); the ADC's INL, missing codes
and noise remain as error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from cimcal.analog.kernels import STEP_LANES  # the lanes the ADC kernel reads
from cimcal.errors import ProfileError

__all__ = [
    "AdcTables", "build_adc_tables", "step_table", "adc_columns", "dac_quantize", "adc_convert_tile", "pack_bits", "unpack_bits",
]

N_KNOTS = 256
STEP_TABLE_MIN_BYTES = 1 << 20  # full tables up to a core's L2 cache stay: a gather from them is cheaper
_MAX_TABLE_SAMPLES = 1 << 21
_POINTS_PER_CODE = 4  # at most 4 grid points per LSB, linear interpolation between them


@dataclass(frozen=True)
class AdcTables:
    """Compact ADC tables. ``codes`` is (C, P, K) uint8 (int16 when n_codes > 256), flattened.

    x_lo, x_hi: measured input range (inputs outside saturate). Grid point p sits at input
    ``grid_x0 + p * grid_step`` (p = 0..n_points-1); ``interpolate`` says whether a conversion mixes the two
    neighbouring points linearly (always, in practice).
    deq_offset, deq_gain (C,): input ~= deq_offset + deq_gain * code (fit of the mean transfer curve).
    sigma_lsb (C,): per-column noise (the gaussian baseline). cols: physical column ids.
    steps, step_base: the same table as a step table (:func:`step_table`) for tables over
    ``STEP_TABLE_MIN_BYTES`` whose rows span at most ``STEP_LANES`` codes, else None.
    """

    x_lo: float
    x_hi: float
    n_codes: int
    grid_x0: float
    grid_step: float
    n_points: int
    interpolate: bool
    cols: torch.Tensor
    codes: torch.Tensor
    deq_offset: torch.Tensor
    deq_gain: torch.Tensor
    sigma_lsb: torch.Tensor
    steps: torch.Tensor | None = None
    step_base: torch.Tensor | None = None


def _grid(adc: Any, x_lo: float, x_hi: float, n_codes: int) -> tuple[torch.Tensor, bool]:
    """Input grid: the LUT's own bin centres when its bins are uniform and at most ``_POINTS_PER_CODE`` per
    code, else ``_POINTS_PER_CODE`` points per LSB (finer bins are resampled: the table stays small and
    cache-resident, e.g. 256 KB for 4 columns of a 6-bit ADC).

    Both interpolate linearly between neighbouring points (as a mixture), as the LUT's own sampler does.
    """
    edges = getattr(adc, "input_edges_", None)
    if edges is not None:
        edges = torch.as_tensor(edges, dtype=torch.float64).reshape(-1)
        widths = edges.diff()
        uniform = widths.numel() >= 2 and bool((widths > 0).all()) and bool(torch.allclose(widths, widths.mean(), rtol=1e-3))
        if uniform and widths.numel() <= _POINTS_PER_CODE * n_codes:
            return (0.5 * (edges[:-1] + edges[1:])), True
    return torch.linspace(x_lo, x_hi, _POINTS_PER_CODE * n_codes + 1, dtype=torch.float64), True


def build_adc_tables(adc: Any, generator: torch.Generator | None = None) -> AdcTables:
    """Tabulate a fitted ADCLUT into the compact per-column code table used by the forward pass."""
    cols = torch.as_tensor(adc.cols_).long().reshape(-1)
    n_codes = int(adc.n_codes_)
    x_lo, x_hi = (float(v) for v in adc.input_range_)
    if not (x_hi > x_lo) or n_codes < 2:
        raise ProfileError(f"ADC model has an empty input range ({x_lo}, {x_hi}) or {n_codes} codes")
    grid_x, interpolate = _grid(adc, x_lo, x_hi, n_codes)
    n_cols, n_points = cols.numel(), grid_x.numel()
    per_point = max(N_KNOTS, min(2048, _MAX_TABLE_SAMPLES // max(1, n_cols * n_points)))
    tables = []
    probs = (torch.arange(N_KNOTS, dtype=torch.float64) + 0.5) / N_KNOTS
    for col in cols.tolist():
        x = grid_x.float()[:, None].expand(n_points, per_point).contiguous()
        codes = torch.as_tensor(adc.sample(x, torch.full_like(x, col, dtype=torch.long), generator=generator))
        codes = codes.reshape(n_points, per_point).double()
        tables.append(torch.quantile(codes, probs, dim=1, interpolation="nearest").T)  # (P, K) integer codes
    dtype = torch.uint8 if n_codes <= 256 else torch.int16
    codes = torch.stack(tables).round().clamp(0, n_codes - 1).to(dtype).contiguous().view(-1)

    # Digital read-back: per-column least-squares line input = offset + gain * code over the unsaturated range.
    grid = torch.linspace(x_lo, x_hi, 4 * n_codes + 1, dtype=torch.float32)[1:-1]
    offsets, gains = [], []
    for col in cols.tolist():
        mean = torch.as_tensor(adc.mean_code(grid, torch.full_like(grid, col, dtype=torch.long))).double()
        keep = (mean > 0.5) & (mean < n_codes - 1.5)
        gain, offset = (x_hi - x_lo) / n_codes, x_lo + 0.5 * (x_hi - x_lo) / n_codes  # ideal fallback
        if int(keep.sum()) >= 4:
            design = torch.stack([torch.ones_like(mean[keep]), mean[keep]], dim=1)
            solution = torch.linalg.lstsq(design, grid.double()[keep, None]).solution.squeeze(1)
            if float(solution[1]) > 0:
                offset, gain = float(solution[0]), float(solution[1])
        offsets.append(offset)
        gains.append(gain)
    sigma = getattr(adc, "sigma_lsb_", None)
    sigma = torch.zeros(n_cols) if sigma is None else torch.as_tensor(sigma, dtype=torch.float32).reshape(-1)
    if sigma.numel() != n_cols:
        sigma = sigma.mean().expand(n_cols).clone()
    return AdcTables(
        x_lo=x_lo,
        x_hi=x_hi,
        n_codes=n_codes,
        grid_x0=float(grid_x[0]),
        grid_step=float(grid_x[1] - grid_x[0]),
        n_points=n_points,
        interpolate=interpolate,
        cols=cols,
        codes=codes,
        deq_offset=torch.tensor(offsets, dtype=torch.float32),
        deq_gain=torch.tensor(gains, dtype=torch.float32),
        sigma_lsb=sigma.float().contiguous(),
        **_steps_of(codes, n_cols * n_points),
    )


def _steps_of(codes: torch.Tensor, n_rows: int) -> dict[str, torch.Tensor | None]:
    """AdcTables' step-table fields: a step table where the full table outgrows ``STEP_TABLE_MIN_BYTES`` (measured:
    MLP training step with the demo chip's 8 MiB table, 1.76-1.81x clean against 1.69x with its step table; with
    the 0.5 MiB table of the benchmark chip the step lookup's arithmetic cost more than the cache misses it saves)."""
    steps = step_table(codes, n_rows) if codes.nbytes > STEP_TABLE_MIN_BYTES else None
    return {"steps": None, "step_base": None} if steps is None else {"steps": steps[0], "step_base": steps[1]}


def step_table(codes: torch.Tensor, n_rows: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The code table (``n_rows`` rows of ``N_KNOTS`` codes, flattened) as a step table, or None when a row is not
    sorted or spans more than ``STEP_LANES`` codes.

    Each grid point's code distribution spans only a few codes (2-5 on the chips measured), so a row is its first
    code ``b`` plus the knots where it steps up: ``code(k) = b + #{j : t_j <= k}``, ``t_j`` the first knot at least
    ``j`` codes above ``b`` (256 when there is none; a jump of several codes repeats its knot). The ``t_j`` of a row
    fill the 16-bit lanes of one 64-bit word. Returns (words (n_rows,) int64, bit patterns of uint64; first codes
    (n_rows,) in the codes' dtype). 128 columns x 256 grid points of an 8-bit ADC take 288 KB instead of 8 MiB, which
    stays in the cores' caches; a conversion reads a word and a first code (:class:`cimcal.analog.kernels.AdcConverter`).
    """
    if n_rows == 0:
        return None
    table = codes.reshape(n_rows, N_KNOTS)
    rows = table.to(torch.int32)
    if bool((rows.diff(dim=1) < 0).any()):
        return None
    rise = rows - rows[:, :1]
    if int(rise[:, -1].max()) > STEP_LANES:
        return None
    words = torch.zeros(n_rows, dtype=torch.int64)
    for lane in range(STEP_LANES):
        # the first knot at least lane + 1 codes above the first: in a sorted row, the number of knots below
        # that (256: never); lanes < 2**9, so no carries
        words |= (rise < lane + 1).sum(dim=1, dtype=torch.int64) << (16 * lane)
    return words, table[:, 0].contiguous()


def adc_columns(adc: AdcTables, n_out: int) -> dict[str, torch.Tensor]:
    """Per-output constants of a layer with ``n_out`` outputs (output j is served by column ``j mod C``):
    ``col_base`` int32 offset of its column in ``codes``; ``col_gain``, ``col_offset`` the read-back
    ``input ~= col_offset + center + col_gain * code`` (offset relative to the input range's centre)."""
    col = torch.arange(n_out) % adc.deq_gain.numel()
    return {
        "col_base": (col * (adc.n_points * N_KNOTS)).to(torch.int32),
        "col_gain": adc.deq_gain[col],
        "col_offset": adc.deq_offset[col] - 0.5 * (adc.x_hi + adc.x_lo),
    }


def dac_quantize(x: torch.Tensor, full_scale: torch.Tensor | float, bits: int) -> torch.Tensor:
    """Signed DAC: clip ``x / full_scale`` to [-1, 1] and round to ``2**(bits-1) - 1`` steps per side."""
    q_max = float(2 ** (bits - 1) - 1)
    return torch.round(torch.clamp(x / full_scale, -1.0, 1.0) * q_max) * (1.0 / q_max)


def adc_convert_tile(
    acc: torch.Tensor,
    psum: torch.Tensor,
    knot: torch.Tensor,
    grid_byte: torch.Tensor,
    col_base: torch.Tensor,
    deq_gain: torch.Tensor,
    deq_offset: torch.Tensor,
    grid_scale: torch.Tensor,
    grid_shift: torch.Tensor,
    psum_scale: torch.Tensor,
    interpolate: torch.Tensor,
    n_points: int,
    codes: torch.Tensor,
    want_saturated: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Convert one tile's partial sums and accumulate: returns (acc + read-back, saturated or None).

    The eager reference of :class:`cimcal.analog.kernels.AdcConverter` (same arithmetic, same values for the
    same random bytes). psum (N, O, ...) unit partial sums; ``psum * grid_scale + grid_shift`` is the
    position on the input grid and ``|psum| > psum_scale`` is outside the ADC's measured range (saturated;
    computed only if ``want_saturated``). ``knot`` and ``grid_byte`` (integer tensors shaped like psum, values
    0-255) are the random bytes: the knot, and the choice of the grid point below or above (linear weights if
    ``interpolate`` is 1, the nearest if 0). col_base (O, 1, ...) int32 offsets of each output's column in
    ``codes``; deq_* map a code straight back to unit partial-sum space.
    """
    saturated = ~(psum.abs() <= psum_scale) if want_saturated else None  # NaN counts as saturated
    # a NaN partial sum converts at grid point 0 and reads back NaN, as in the kernel
    position = (psum * grid_scale + grid_shift).clamp(0, n_points - 1).nan_to_num(0.0)
    below = position.floor()
    threshold = (grid_byte.to(torch.float32) + 0.5) * interpolate + 128.0 * (1.0 - interpolate)
    point = (below + (threshold < (position - below) * 256.0).to(torch.float32)).clamp(max=n_points - 1)
    index = col_base.long() + point.long() * N_KNOTS + knot.long()
    code = codes[index].to(torch.float32)
    return acc + (code * deq_gain + deq_offset + (psum - psum)), saturated


def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """Pack a bool tensor along its flattened last axis into uint8 (8 flags per byte)."""
    flat = mask.reshape(-1)
    pad = (-flat.numel()) % 8
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    weights = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8)
    return (flat.view(-1, 8).to(torch.uint8) * weights).sum(dim=1, dtype=torch.uint8)


def unpack_bits(packed: torch.Tensor, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
    """Inverse of :func:`pack_bits`."""
    weights = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8)
    bits = (packed[:, None] & weights) != 0
    n = 1
    for s in shape:
        n *= int(s)
    return bits.reshape(-1)[:n].reshape(shape)
