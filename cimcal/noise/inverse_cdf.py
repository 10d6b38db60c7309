"""Fast sampling from inverse-CDF tables: compact random words, one flat gather, optional fusion.

Both LUT models sample the same way: draw one random 32-bit word per value (half as many
int64 draws, viewed as int32 pairs), split it into the knot (or bin) index and an interpolation
fraction, add a per-row offset into one flat table and gather. The elementwise chain is fused
by ``torch.compile`` for large tensors (set ``CIMCAL_COMPILE=0`` to never compile, ``=1`` to
always compile); any compilation failure falls back to the eager kernel, which gives the same
values for the same random words.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable

import torch

__all__ = ["random_words", "interpolated_gather", "adc_gather", "alias_gather", "alias_tables", "COMPILE_MIN_NUMEL"]

# Below this many values the eager kernel is fast enough and compilation is not worth it.
COMPILE_MIN_NUMEL = 1 << 21
_compiled: dict[str, Callable | None] = {}


def random_words(n: int, generator: torch.Generator | None) -> torch.Tensor:
    """``n`` independent uniform 32-bit words (int32 view of ceil(n/2) full-range int64 draws)."""
    half = (n + 1) // 2
    words = torch.randint(-(2**63), 2**63 - 1, (half,), generator=generator, dtype=torch.int64)
    return words.view(torch.int32)[:n]


def _interp_kernel(
    words: torch.Tensor,
    level: torch.Tensor,
    row_offset: torch.Tensor,
    base: torch.Tensor,
    slope: torch.Tensor,
    scale: float,
    shift: float,
) -> torch.Tensor:
    # pos in [0, K-1): knot interval index j and fraction f; the scale is shrunk by 2**-20 so that
    # float32 rounding can never produce j = K-1 (a bias of 1e-6 in probability, documented).
    pos = words.to(torch.float32) * scale + shift
    j = pos.to(torch.int32)
    f = pos - j.to(torch.float32)
    idx = (j + row_offset[level]).long()
    return base[idx] + f * slope[idx]


def _adc_kernel(
    words: torch.Tensor,
    x: torch.Tensor,
    col: torch.Tensor,
    col_offset_table: torch.Tensor,
    table: torch.Tensor,
    x0: float,
    inv_width: float,
    n_bins: int,
    n_knots: int,
) -> torch.Tensor:
    # low 16 bits: dither between the two nearest bin centres (linear interpolation as a mixture);
    # high 16 bits: the knot of that bin's inverse CDF over codes.
    w = words.to(torch.int64)
    col_offset = col_offset_table[col]
    v = (w & 0xFFFF).to(torch.float32) * (1.0 / 65536.0)
    knot = ((w >> 16) & 0xFFFF) * n_knots >> 16
    pos = (x.to(torch.float32) - x0) * inv_width - 0.5 + v
    b = torch.floor(pos).clamp(0, n_bins - 1).to(torch.int64)
    idx = col_offset + b * n_knots + knot
    return table[idx]


def _alias_kernel(
    words: torch.Tensor,
    x: torch.Tensor,
    col: torch.Tensor,
    col_row: torch.Tensor,
    base: torch.Tensor,
    alias: torch.Tensor,
    x0: float,
    inv_width: float,
    n_bins: int,
    w_bits: int,
    d_bits: int,
) -> torch.Tensor:
    # bits 0-15: alias coin; next w_bits: the window slot; next d_bits: the dither between the two
    # nearest bin centres (linear interpolation of the distributions as a mixture).
    v = words & 0xFFFF
    j = (words >> 16) & ((1 << w_bits) - 1)
    d = ((words >> (16 + w_bits)) & ((1 << d_bits) - 1)).to(torch.float32)
    pos = (x.to(torch.float32) - x0) * inv_width + (d + 0.5) * (1.0 / (1 << d_bits)) - 0.5
    b = pos.clamp(0.0, n_bins - 1.0).to(torch.int32)  # clamp first: NaN-free, truncation = floor
    row = col_row[col] + b
    entry = alias[(row * (1 << w_bits) + j).long()]
    offset = torch.where(v < (entry >> 8), j, entry & 0xFF)
    return (base[row.long()] + offset).long()


def alias_tables(code_table: torch.Tensor, max_window: int = 64) -> tuple[torch.Tensor, torch.Tensor, int] | None:
    """Walker/Vose alias tables for the code distributions that an inverse-CDF code table encodes.

    ``code_table`` (rows, K): each row's K knot codes, every knot equally likely. Returns
    (base code per row (int32), packed entries (rows * W, int32: threshold << 8 | alias), w_bits)
    with W = 2**w_bits >= the widest row's code span; None if a row spans more than ``max_window``
    codes. The alias sampler draws exactly the inverse-CDF table's distribution (to 2**-16).
    """
    table = code_table.to(torch.int64)
    rows, k = table.shape
    base = table[:, 0]
    span = int((table[:, -1] - base).max()) + 1
    w_bits = max(0, math.ceil(math.log2(span)))
    width = 1 << w_bits
    if width > max_window:
        return None
    offsets = table - base[:, None]
    counts = torch.zeros(rows * width, dtype=torch.float64)
    counts.index_add_(0, (torch.arange(rows)[:, None] * width + offsets).reshape(-1),
                      torch.ones(rows * k, dtype=torch.float64))
    q = counts.view(rows, width) * (width / k)
    prob = torch.ones(rows, width, dtype=torch.float64)
    alias = torch.arange(width).expand(rows, width).clone()
    done = torch.zeros(rows, width, dtype=torch.bool)
    all_rows = torch.arange(rows)
    for _ in range(width):
        small = (q < 1.0) & ~done
        large = (q >= 1.0) & ~done
        act = small.any(1) & large.any(1)
        if not bool(act.any()):
            break
        r = all_rows[act]
        s_idx = small[act].to(torch.int8).argmax(1)
        l_idx = large[act].to(torch.int8).argmax(1)
        q_s = q[r, s_idx]
        prob[r, s_idx] = q_s
        alias[r, s_idx] = l_idx
        q[r, l_idx] -= 1.0 - q_s
        done[r, s_idx] = True
    threshold = torch.round(prob.clamp(0.0, 1.0) * 65536).to(torch.int64)
    packed = (threshold << 8 | alias).to(torch.int32).reshape(-1)
    return base.to(torch.int32), packed, w_bits


def _want_compile(numel: int) -> bool:
    flag = os.environ.get("CIMCAL_COMPILE", "")
    if flag == "0":
        return False
    return flag == "1" or numel >= COMPILE_MIN_NUMEL


def _run(name: str, eager: Callable, numel: int, *args):
    if _want_compile(numel):
        fn = _compiled.get(name, False)
        if fn is False:
            try:
                fn = torch.compile(eager, dynamic=True)
            except Exception:  # pragma: no cover - compile unavailable
                fn = None
            _compiled[name] = fn
        if fn is not None:
            try:
                return fn(*args)
            except Exception:  # pragma: no cover - e.g. no C++ compiler: remember and fall back
                _compiled[name] = None
    return eager(*args)


def interpolated_gather(
    level: torch.Tensor,
    row_offset: torch.Tensor,
    base: torch.Tensor,
    slope: torch.Tensor,
    n_intervals: int,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """Sample piecewise-linear inverse CDFs, one value per element of ``level`` (same shape).

    ``base`` and ``slope`` are flat float32 tables of ``rows * n_intervals`` entries (knot value and
    difference to the next knot); ``row_offset[level]`` is the element's ``row * n_intervals``.
    """
    n = level.numel()
    words = random_words(n, generator).view(level.shape)
    scale = n_intervals * (1.0 - 2.0**-20) / 2.0**32
    shift = n_intervals * (1.0 - 2.0**-20) / 2.0
    return _run("interp", _interp_kernel, n, words, level, row_offset, base, slope, scale, shift)


def alias_gather(
    x: torch.Tensor,
    col: torch.Tensor,
    col_row: torch.Tensor,
    base: torch.Tensor,
    alias: torch.Tensor,
    x0: float,
    inv_width: float,
    n_bins: int,
    w_bits: int,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """Sample codes with alias tables (see :func:`alias_tables`); ``col_row[col]`` = column index * bins."""
    shape = torch.broadcast_shapes(x.shape, col.shape)
    n = math.prod(shape)
    words = random_words(n, generator).view(shape)
    d_bits = 16 - w_bits
    return _run("alias", _alias_kernel, n, words, x, col, col_row, base, alias, x0, inv_width, n_bins, w_bits, d_bits)


def adc_gather(
    x: torch.Tensor,
    col: torch.Tensor,
    col_offset_table: torch.Tensor,
    table: torch.Tensor,
    x0: float,
    inv_width: float,
    n_bins: int,
    n_knots: int,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """Sample codes from a flat (cols * bins * knots) code table, one per element of x broadcast with col.

    ``col_offset_table[col]`` is the column's ``index * bins * knots``.
    """
    shape = torch.broadcast_shapes(x.shape, col.shape)
    n = math.prod(shape)
    words = random_words(n, generator).view(shape)
    return _run("adc", _adc_kernel, n, words, x, col, col_offset_table, table, x0, inv_width, n_bins, n_knots)
