"""Compiled kernels of the analog forward (numba): noisy weight pairs and ADC conversions, one pass each
(plus the input calibration and DAC in one pass, and the running calibration percentile in one call).

The forward's cost is random numbers and table gathers, not arithmetic. These kernels draw their random
bits inside the loop, from Philox2x32-10 (Salmon et al., SC'11, "Parallel random numbers: as easy as
1, 2, 3"; the counter-based generator of Random123, of JAX and of torch on CUDA), so no random tensor is
ever written to memory. Every element gets 16 random bits: a (rows, length) array is padded to rows of a
multiple of 4 elements, and group ``g`` of 4 consecutive elements shares the 64 output bits of
``philox(counter=(g mod 2**32, nonce + g div 2**32), key)``, 16 bits each; ``(key, nonce)`` are drawn from
the layer's ``torch.Generator`` once per layer call, whose kernel calls take sub-streams of it (:func:`substream`). :func:`philox_bits` computes the same bits with torch ops,
so the eager reference (``AnalogConfig(compile=False)``, non-CPU devices, float64) and the kernels agree
value for value.

The low byte of an element's 16 bits picks a knot (the active device's for a weight pair, the code
table's for an ADC conversion); the high byte picks the idle device's knot, or the ADC grid point.

Kernels are compiled on first use and cached on disk (numba's ``cache=True``; where no cache directory is
writable, compiled once per process); large calls run on numba's thread pool with torch's intra-op thread
count, small ones serially. Inputs are float32 CPU arrays (numpy views of torch tensors, no copy).
"""

from __future__ import annotations

import math
import sys
import threading
import types
import weakref
from typing import Any

import numba
import numpy as np
import torch
from numba import njit, prange
from numba.extending import intrinsic

# numba's OpenMP layer first (10-15 % faster MLP steps than numba's own workqueue pool, measured in paired runs);
# workqueue where no OpenMP runtime is found. Where numba's OpenMP pool resolves to the libgomp torch has
# loaded, kernels and torch ops share one set of threads, and starting the pool resets the runtime's thread
# count, which _Kernel puts back for torch. With torch 2.13's CPU wheel on Debian it does not: numba's omppool
# asks for libgomp.so.1.0.0 by file name and gets the system's copy beside torch's libgomp.so.1 (two runtimes,
# each with a spin-waiting worker; seen in /proc/self/maps). Calls are serialized by a lock (the workqueue pool
# is not re-entrant).
numba.config.THREADING_LAYER = "default"
numba.config.THREADING_LAYER_PRIORITY = ["omp", "workqueue", "tbb"]
_LOCK = threading.Lock()


def _cache_probe() -> int:
    return 0


def _disk_cache_available() -> bool:
    """Whether numba can cache compiled kernels on disk here (next to this file, or in a user cache dir)."""
    try:
        njit(cache=True)(_cache_probe)
    except RuntimeError:  # no writable cache location: compile in every process instead
        return False
    return True


_CACHE = _disk_cache_available()

__all__ = ["philox_bits", "draw_key", "substream", "kth_rank", "running_kth", "dac_quantize", "calibrated_dac", "sample_pairs", "AdcConverter", "KERNEL_DTYPES"]

KERNEL_DTYPES = (torch.float32,)

_M = np.uint64(0xD256D193)
_W = np.uint64(0x9E3779B9)
_MASK = np.uint64(0xFFFFFFFF)
_ROUNDS = 10


# ------------------------------------------------------------------------------------------- generator
@njit(inline="always", cache=_CACHE)
def _philox(c0: np.uint64, c1: np.uint64, key: np.uint64) -> np.uint64:
    """Philox2x32-10 of the counter (c0, c1) under ``key``: both output words as one 64-bit value (r1:r0)."""
    x0, x1, k = c0, c1, key
    for _ in range(_ROUNDS):
        p = _M * x0
        x0 = ((p >> np.uint64(32)) ^ k ^ x1) & _MASK
        x1 = p & _MASK
        k = (k + _W) & _MASK
    return (x1 << np.uint64(32)) | x0


@njit(cache=_CACHE)
def _philox_words(c0: np.ndarray, c1: np.ndarray, key: np.uint64) -> np.ndarray:
    """Philox2x32-10 of arrays of counters, as (r1:r0) 64-bit values: for the known-answer test."""
    out = np.empty(c0.size, np.uint64)
    for i in range(c0.size):
        out[i] = _philox(np.uint64(c0[i]), np.uint64(c1[i]), key)
    return out


def philox_bits(
    rows: int, length: int, key: int, nonce: int, device: torch.device | str | None = None, row0: int = 0
) -> torch.Tensor:
    """The kernels' 16 random bits of every element of a (rows, length) array, in torch (int64 values in
    [0, 2**16)): the eager reference of the kernels' generator (rows ``row0 .. row0 + rows - 1`` of the stream).

    Each row is padded to a multiple of 4 elements; group ``g`` of 4 consecutive (padded) elements takes the
    64 bits of ``philox(counter=(g mod 2**32, nonce + g div 2**32), key)``, lane ``l`` bits ``16 l .. 16 l + 15``.
    int64 products wrap modulo 2**64, which keeps the low 64 bits of the 32x32-bit product exact; the
    arithmetic shift is masked back to the high word.
    """
    padded = (length + 3) // 4 * 4
    g = torch.arange(row0 * padded // 4, (row0 + rows) * padded // 4, dtype=torch.int64, device=device)
    x0 = g & 0xFFFFFFFF
    x1 = (nonce + (g >> 32)) & 0xFFFFFFFF
    k = key
    for _ in range(_ROUNDS):
        p = x0 * 0xD256D193
        x0 = ((p >> 32) & 0xFFFFFFFF) ^ k ^ x1
        x1 = p & 0xFFFFFFFF
        k = (k + 0x9E3779B9) & 0xFFFFFFFF
    lanes = torch.stack([x0 & 0xFFFF, x0 >> 16, x1 & 0xFFFF, x1 >> 16], dim=1)
    return lanes.view(rows, padded)[:, :length]


def draw_key(generator: torch.Generator | None) -> tuple[int, int]:
    """(key, nonce) for one layer call: 64 fresh bits from ``generator`` (torch's default one if None)."""
    word = int(torch.randint(-(2**63), 2**63 - 1, (1,), dtype=torch.int64, generator=generator))
    word &= (1 << 64) - 1
    return word & 0xFFFFFFFF, word >> 32


def substream(stream: tuple[int, int], i: int) -> tuple[int, int]:
    """Sub-stream ``i`` (< 2**16) of a drawn (key, nonce): the nonce moved by ``i << 16``. A call's counters stay
    below ``2**32`` groups per nonce step unless it has over ``2**48`` elements, so the sub-streams of one draw
    (weights, then each chunk of ADC conversions) never share a counter."""
    if not 0 <= i < 1 << 16:
        raise ValueError(f"sub-stream index {i} outside 0..65535")
    key, nonce = stream
    return key, (nonce + (i << 16)) & 0xFFFFFFFF


class _Kernel:
    """A loop compiled twice: serial (a call costs ~3-5 us) and parallel over numba's pool (~10 us a call on
    the OpenMP layer, 60-100 us on the workqueue one; worth it from ~64k elements on). Called with the
    element count first."""

    PARALLEL_MIN = 1 << 16

    def __init__(self, fn: Any) -> None:
        serial = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__ + "_serial", fn.__defaults__, fn.__closure__)
        serial.__qualname__ = fn.__qualname__ + "_serial"  # its own on-disk cache entry
        self.serial = njit(cache=_CACHE, boundscheck=False)(serial)
        self.parallel = njit(parallel=True, cache=_CACHE, boundscheck=False)(fn)

    def __call__(self, n_elements: int, *args: Any) -> Any:
        if n_elements < self.PARALLEL_MIN:  # serial: no pool, no lock (the GIL is held throughout)
            return self.serial(*args)
        torch_threads = torch.get_num_threads()
        threads = min(torch_threads, numba.config.NUMBA_NUM_THREADS)
        if threads <= 1:
            return self.serial(*args)
        with _LOCK:
            if numba.get_num_threads() != threads:
                numba.set_num_threads(threads)
            result = self.parallel(*args)
            if torch.get_num_threads() != torch_threads:  # the OpenMP pool's start-up reset it
                torch.set_num_threads(torch_threads)
            return result


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().numpy() if t.requires_grad else t.numpy()  # detach() is a dispatched op: only when needed


_VIEWS: dict[int, tuple[Any, int, np.ndarray]] = {}
_VIEWS_MAX = 256


def _np_kept(t: torch.Tensor) -> np.ndarray:
    """:func:`_np` of a long-lived tensor (a layer's tables and calibration buffers, a cached sample plan), kept
    by identity: a ``.numpy()`` costs ~1.2 us and a layer call converts a dozen of these. A view is reused only
    while the tensor is alive and its data pointer unchanged (a storage moved by ``share_memory_`` or ``set_``
    gets a new view). A view keeps its tensor alive, so a full cache first drops the tensors nothing else holds
    (:func:`_prune_views`): the tables of discarded models are not kept."""
    key = id(t)
    hit = _VIEWS.get(key)
    ptr = t.data_ptr()
    if hit is not None and hit[0]() is t and hit[1] == ptr:
        return hit[2]
    view = _np(t)
    if len(_VIEWS) >= _VIEWS_MAX:
        _prune_views()
    _VIEWS[key] = (weakref.ref(t), ptr, view)
    return view


def _prune_views() -> None:
    """Drop the kept views whose tensor is gone or held by nothing but its view; if that frees too little, all."""
    for key, (ref, _, _) in list(_VIEWS.items()):
        t = ref()
        # references to a tensor only the cache holds: its view's base, ``t`` and getrefcount's argument
        if t is None or sys.getrefcount(t) <= 3:
            del _VIEWS[key]
        del t
    if len(_VIEWS) >= _VIEWS_MAX // 2:
        _VIEWS.clear()


# Index arithmetic is unsigned (np.uintp) throughout: numba then skips negative-index wraparound, which
# halves the cost of every gather. Non-finite inputs take index 0 and come out non-finite (``+ (v - v)``).
_U = np.uintp


# Work is split in blocks of ~16 k elements (rows are never split): a block's scratch arrays are allocated
# once (an allocation per row cost ~1 us, as much as sampling 300 elements).
_BLOCK_ELEMENTS = 1 << 14


# ------------------------------------------------------------------------------------------- calibration
@njit(cache=_CACHE)
def _top(flat, m, sign):  # noqa: ANN001
    """The m-th largest of ``sign * |flat|`` (NaN left out; ``m`` at most the number of other values): the m
    largest in a min-heap, one pass, O(n log m) for any order of the input (a sorted buffer was O(n m) for
    ascending input)."""
    heap = np.full(m, -np.inf, np.float32)
    for i in range(flat.size):
        v = sign * abs(flat[i])
        if v > heap[0]:  # False for NaN
            j = 0
            while True:  # sift v down from the root
                c = 2 * j + 1
                if c >= m:
                    break
                if c + 1 < m and heap[c + 1] < heap[c]:
                    c += 1
                if heap[c] >= v:
                    break
                heap[j] = heap[c]
                j = c
            heap[j] = v
    return heap[0]


@njit(cache=_CACHE)
def _abs_kth(flat, k):  # noqa: ANN001
    """The k-th smallest of ``|flat|``, NaN counting as larger than everything (torch's order): a heap selection
    from the nearer end (numba's np.partition took ~11 s to compile, a quarter of the kernels' first-use cost)."""
    n = flat.size
    m = n - k + 1  # rank from the top
    nans = 0
    for i in range(n):
        if flat[i] != flat[i]:
            nans += 1
    if nans >= m:
        return np.float32(np.nan)
    m -= nans  # the k-th smallest is the m-th largest of the values that are not NaN
    if m <= k:
        return _top(flat, m, np.float32(1.0))
    return -_top(flat, k, np.float32(-1.0))  # the k-th smallest: the k-th largest of -|flat|


@njit(cache=_CACHE)
def kth_rank(n, percentile):  # noqa: ANN001, ANN201
    """The 1-based rank of the ``percentile`` among ``n`` values (round half to even, within 1..n)."""
    return min(n, max(1, int(np.rint(percentile / 100.0 * n))))


@njit(cache=_CACHE)
def _running_kth(flat, starts, line, percentile, state, momentum, update):  # noqa: ANN001
    old = np.float64(state[0])
    if update or old <= 0.0:
        sample = np.empty(starts.size * line, np.float32)
        n = 0
        for b in range(starts.size):  # the finite |values| of the sample lines
            st = _U(starts[b])
            for c in range(_U(line)):
                v = abs(flat[st + c])
                if v < np.float32(np.inf):
                    sample[n] = v
                    n += 1
        if n > 0:
            new = np.float64(_abs_kth(sample[:n], kth_rank(n, percentile)))
            if new > 1e-12:  # an all-zero batch calibrates nothing
                state[0] = new if old <= 0.0 else old + momentum * (new - old)
    return state[0] if state[0] > 0.0 else np.float32(1e-12)


def running_kth(flat: torch.Tensor, starts: torch.Tensor, line: int, percentile: float, state: torch.Tensor,
                momentum: float, update: bool) -> float:
    """If ``update`` or ``state`` (a 0-dim float32 running value) is not yet positive: fold the ``percentile`` of
    the finite ``|x|`` of the lines ``flat[starts[b] : starts[b] + line]`` into it (the first value sets it, later
    ones move it by ``momentum``; a batch without a finite value above 1e-12 leaves it alone). Returns the running
    value, or 1e-12 while it is not positive. One call: gather, select, update."""
    return float(_running_kth(_np(flat).reshape(-1), _np_kept(starts), line, float(percentile), _np_kept(state).reshape(1),
                              momentum, update))


# ------------------------------------------------------------------------------------------- DAC
@_Kernel
def _dac(x, scale, q_max, step, out):  # noqa: ANN001
    n = x.size
    for b in prange((n + _BLOCK_ELEMENTS - 1) // _BLOCK_ELEMENTS):
        for i in range(_U(b * _BLOCK_ELEMENTS), _U(min(n, (b + 1) * _BLOCK_ELEMENTS))):
            v = min(max(x[i] / scale, np.float32(-1.0)), np.float32(1.0))
            out[i] = np.rint(v * q_max) * step


def dac_quantize(x: torch.Tensor, full_scale: float, bits: int) -> torch.Tensor:
    """:func:`cimcal.analog.converters.dac_quantize` in one pass (same values): ``x`` float32, contiguous."""
    q_max = float(2 ** (bits - 1) - 1)
    out = torch.empty_like(x)
    _dac(x.numel(), _np(x).reshape(-1), np.float32(full_scale), np.float32(q_max), np.float32(1.0 / q_max), out.numpy().reshape(-1))
    return out


@_Kernel
def _calibrated_dac(x, starts, line, percentile, state, momentum, update, q_max, step, out):  # noqa: ANN001
    scale = np.float32(_running_kth(x, starts, line, percentile, state, momentum, update))
    n = x.size
    for b in prange((n + _BLOCK_ELEMENTS - 1) // _BLOCK_ELEMENTS):
        for i in range(_U(b * _BLOCK_ELEMENTS), _U(min(n, (b + 1) * _BLOCK_ELEMENTS))):
            v = min(max(x[i] / scale, np.float32(-1.0)), np.float32(1.0))
            out[i] = np.rint(v * q_max) * step
    return scale


def calibrated_dac(
    x: torch.Tensor, starts: torch.Tensor, line: int, percentile: float, state: torch.Tensor, momentum: float,
    update: bool, bits: int,
) -> tuple[torch.Tensor, float]:
    """:func:`running_kth` on ``x`` (contiguous float32) into ``state``, then the DAC at the resulting full scale,
    in one call: (quantized x, full scale)."""
    q_max = float(2 ** (bits - 1) - 1)
    out = torch.empty_like(x)
    flat = _np(x).reshape(-1)
    scale = _calibrated_dac(
        x.numel(), flat, _np_kept(starts), line, float(percentile), _np_kept(state).reshape(1), momentum, update, np.float32(q_max),
        np.float32(1.0 / q_max), out.numpy().reshape(-1),
    )
    return out, float(scale)


# ------------------------------------------------------------------------------------------- weights
@njit(inline="always", cache=_CACHE)
def _block_rows(rows, length):  # noqa: ANN001
    """Rows per block (~16k elements, at least 1) and the number of blocks."""
    per = max(1, _BLOCK_ELEMENTS // max(1, length))
    return per, (rows + per - 1) // per


@njit(inline="always", cache=_CACHE)
def _fill_row_bits(words, row, nonce, key):  # noqa: ANN001
    """The 16-bit random values of one row (padded to 4), as 64-bit words into ``words`` (one per 4 elements):
    a loop with no loads, so it vectorizes."""
    groups = words.size
    g0 = np.uint64(row) * np.uint64(groups)
    for g in range(groups):
        c = g0 + np.uint64(g)
        words[g] = _philox(c & _MASK, (nonce + (c >> np.uint64(32))) & _MASK, key)


@njit(inline="always", cache=_CACHE)
def _words(length):  # noqa: ANN001
    """Scratch for one row's random bits as 64-bit words (``.view(np.uint16)``: one value per element)."""
    return np.empty((length + 3) // 4, np.uint64)


@njit(cache=_CACHE)
def _bits(rows, length, nonce, key):  # noqa: ANN001
    """The kernels' random bits of a (rows, length) array (uint16): for the tests against philox_bits."""
    out = np.empty((rows, length), np.uint16)
    words64 = _words(length)
    words = words64.view(np.uint16)
    for r in range(rows):
        _fill_row_bits(words64, r, nonce, key)
        out[r] = words[:length]
    return out


@njit(inline="always", cache=_CACHE)
def _fine(v, top):  # noqa: ANN001
    """Index of |v| on the |w| -> level lookup: floor(|v| * top + 0.5), 0 for NaN (as int32)."""
    f = min(abs(v) * top + np.float32(0.5), top)
    return np.int32(f) if f >= np.float32(0.0) else np.int32(0)


# Each row runs in phases: index arithmetic (vectorizes), then the table gathers alone in a tight loop (many
# loads in flight), then the arithmetic on the gathered values. Fused into one loop the same work costs ~3x.

_MAX_LEVEL_STEPS = 16


@njit(cache=_CACHE)
def _level_steps(level_of_fine):  # noqa: ANN001
    """``level_of_fine`` as its first level and the fine indices where it steps up by one (a jump of several
    levels repeats its index), if it never steps down and steps at most ``_MAX_LEVEL_STEPS`` times; else an
    empty array and -1 (the lookup is then a gather). The nearest-target map of sorted targets is such a
    staircase: a device's level is then the first level plus the count of steps at or below its fine index."""
    n = level_of_fine.size
    base = level_of_fine[0] if n > 0 else np.int32(0)
    count = 0
    for f in range(1, n):
        d = level_of_fine[f] - level_of_fine[f - 1]
        if d < 0:
            return np.empty(0, np.int32), np.int32(-1)
        count += d
    if count > _MAX_LEVEL_STEPS:
        return np.empty(0, np.int32), np.int32(-1)
    steps = np.empty(count, np.int32)
    k = 0
    for f in range(1, n):
        for _ in range(level_of_fine[f] - level_of_fine[f - 1]):
            steps[k] = f
            k += 1
    return steps, np.int32(base)


_SHORT_STAIRCASE = 8  # steps counted in one pass, compared in registers


@njit(cache=_CACHE)
def _level_plan(level_of_fine):  # noqa: ANN001
    """(steps, first level, the steps as float32 padded with NaN to ``_SHORT_STAIRCASE`` if there are no more,
    else empty): :func:`_level_steps` and what :func:`_row_levels` counts in one pass (NaN never compares true)."""
    steps, base = _level_steps(level_of_fine)
    short = np.empty(0, np.float32)
    if base >= 0 and steps.size <= _SHORT_STAIRCASE:
        short = np.full(_SHORT_STAIRCASE, np.nan, np.float32)
        for k in range(steps.size):
            short[k] = np.float32(steps[k])
    return steps, base, short


@njit(inline="always", cache=_CACHE)
def _row_levels(w, ui, s, cols, level_of_fine, fine, level, lv, position):  # noqa: ANN001
    """Level of the active device of each pair of row ``ui`` (scaled by ``s``); ``lv``: :func:`_level_plan`;
    ``fine`` (int32) and ``position`` (float32) are scratch rows."""
    top = np.float32(level_of_fine.size - 1)
    steps, base, short = lv
    if short.size == _SHORT_STAIRCASE:  # up to 8 steps: one pass, the count in int32 (numba's int64 sums halve
        # the vector width: 1.0 against 1.7 cycles a device for 7 steps in passes)
        for j in range(_U(cols)):
            x = abs(w[ui, j] * s) * top + np.float32(0.5)
            count = np.int32(base)
            for k in range(_SHORT_STAIRCASE):
                count = np.int32(count + np.int32(x >= short[k]))
            level[j] = count
    elif base >= 0:  # count the steps: one vectorized compare-and-add pass each, no gather
        # fine index >= step <=> |v| * top + 0.5 >= step (a whole step <= top; NaN compares False: the first
        # level, as _fine's index 0): the float compares need no integer index
        for j in range(_U(cols)):
            position[j] = abs(w[ui, j] * s) * top + np.float32(0.5)
            level[j] = base
        for k in range(steps.size):
            step = np.float32(steps[k])
            for j in range(_U(cols)):
                level[j] += np.int32(position[j] >= step)
    else:
        for j in range(_U(cols)):
            fine[j] = _fine(w[ui, j] * s, top)
        for j in range(_U(cols)):
            level[j] = level_of_fine[_U(fine[j])]


@intrinsic
def _float_of_bits(typingctx, bits):  # noqa: ANN001, ANN201
    """The float32 whose bit pattern is the uint32 ``bits`` (an LLVM bitcast)."""

    def codegen(context, builder, signature, args):  # noqa: ANN001, ANN202
        return builder.bitcast(args[0], context.get_value_type(numba.types.float32))

    return numba.types.float32(numba.types.uint32), codegen


@njit(inline="always", cache=_CACHE)
def _row_scale(w, ui, cols, w_max):  # noqa: ANN001
    """``max|w|`` of row ``ui`` (C-contiguous) into ``w_max[ui]`` (at least 1e-12; NaN if the row holds a NaN,
    as torch's ``amax``), returns its inverse. On the bit patterns: ``|v|`` is ``bits & 0x7FFFFFFF``, ordered as
    unsigned integers like the floats, and above ``0x7F800000`` (inf) only for NaN; an integer max vectorizes
    (a float max with NaN checks did not: 1.8 against 0.2 cycles an element)."""
    bits = w[ui].view(np.uint32)
    m = np.uint32(0)
    for j in range(_U(cols)):
        m = max(m, bits[j] & np.uint32(0x7FFFFFFF))
    if m > np.uint32(0x7F800000):
        w_max[ui] = np.float32(np.nan)
        return np.float32(np.nan)
    v = max(_float_of_bits(m), np.float32(1e-12))
    w_max[ui] = v
    return np.float32(1.0) / v


# _pairs_instance's compensation arguments (target, threshold, bounds, compensate) when not compensating
_NO_RULE = (np.zeros(2, np.float32), np.float32(0.0), np.zeros(4, np.int32), False)


@njit(inline="always", cache=_CACHE)
def _redraw(u):  # noqa: ANN001
    """mapping.redraw_byte: a device's byte mapped to another for its draw at a new level."""
    return (u * _U(157) + _U(101)) & _U(255)


@njit(inline="always", cache=_CACHE)
def _nearest_level(target, want):  # noqa: ANN001
    """Level whose target is nearest ``want`` (ties to the lower level, as torch's argmin)."""
    best = np.int32(0)
    gap = abs(want - target[0])
    for level in range(1, target.size):
        d = abs(want - target[level])
        if d < gap:
            best, gap = np.int32(level), d
    return best


@njit(inline="always", cache=_CACHE)
def _flag_candidates(words, bounds, flags, cols):  # noqa: ANN001
    """flags[j] = 1 where pair j's active knot lies outside ``bounds[0]..bounds[1]`` or its idle knot outside
    ``bounds[2]..bounds[3]``: the knots within hold no failed device at any level (the tables are sorted, so a
    level's failed knots are its first and last ones). Branch-free on the random bits alone; returns whether
    any is flagged."""
    # unsigned wrap-around: k outside lo..hi <=> (k - lo) mod 2**16 > hi - lo; in this form (uint16, the count
    # in its own loop) the loop vectorizes: 0.2 ns an element against 0.45 written with int32 compares
    lo_a, span_a = np.uint16(bounds[0]), np.uint16(bounds[1] - bounds[0])
    lo_i, span_i = np.uint16(bounds[2]), np.uint16(bounds[3] - bounds[2])
    for j in range(_U(cols)):
        r = words[j]
        off_a = np.uint16(np.uint16(r & np.uint16(255)) - lo_a) > span_a
        off_i = np.uint16(np.uint16(r >> np.uint16(8)) - lo_i) > span_i
        flags[j] = off_a or off_i
    n = 0
    for j in range(_U(cols)):
        n += flags[j]
    return n > 0


@njit(inline="always", cache=_CACHE)
def _move(v_active, v_idle, active_level, target, threshold):  # noqa: ANN001
    """mapping.compensate_pairs for one pair: (new active level, new idle level), -1 = stays. The common case
    (both devices within ``threshold`` of their targets) costs two compares."""
    e_active = v_active - target[active_level]
    e_idle = v_idle - target[0]
    if not max(abs(e_active), abs(e_idle)) > threshold:
        return np.int32(-1), np.int32(-1)
    if abs(e_active) >= abs(e_idle):
        new = _nearest_level(target, target[0] + e_active)
        return np.int32(-1), (new if new != 0 else np.int32(-1))
    new = _nearest_level(target, target[active_level] + e_idle)
    return (new if new != active_level else np.int32(-1)), np.int32(-1)


@njit(inline="always", cache=_CACHE)
def _gather_pairs(words, level, read_unit, g_active, g_idle, cols):  # noqa: ANN001
    """Both devices' reads of every pair of a row: the table gathers alone in a tight loop."""
    for j in range(_U(cols)):
        r = _U(words[j])
        g_active[j] = read_unit[_U(level[j]) * _U(256) + (r & _U(255))]
        g_idle[j] = read_unit[r >> _U(8)]


@njit(inline="always", cache=_CACHE)
def _write_pairs(w, ui, s, g_active, g_idle, out, cols):  # noqa: ANN001
    """Row ``ui`` of the output: sign * (G_active - G_idle); non-finite weights stay non-finite."""
    for j in range(_U(cols)):
        v = w[ui, j] * s
        d = g_active[j] - g_idle[j]
        out[ui, j] = (-d if v < np.float32(0.0) else d) + (v - v)


@njit(inline="always", cache=_CACHE)
def _pair_scratch(cols):  # noqa: ANN001
    """A block's scratch rows: random words (and their 16-bit view), fine indices, levels, both devices' reads."""
    words64 = _words(cols)
    return (words64, words64.view(np.uint16), np.empty(cols, np.int32), np.empty(cols, np.int32),
            np.empty(cols, np.float32), np.empty(cols, np.float32))


@njit(inline="always", cache=_CACHE)
def _row_reads(w, i, w_max, level_of_fine, lv, read_unit, key, nonce, scratch):  # noqa: ANN001
    """Row ``i``: its scale (returned), random bits, levels and both devices' reads of every pair (in scratch)."""
    words64, words, fine, level, g_active, g_idle = scratch
    cols = w.shape[1]
    s = _row_scale(w, _U(i), cols, w_max)
    _fill_row_bits(words64, i, nonce, key)
    _row_levels(w, _U(i), s, cols, level_of_fine, fine, level, lv, g_active)  # g_active: scratch until the gathers
    _gather_pairs(words, level, read_unit, g_active, g_idle, cols)
    return s


@_Kernel
def _pairs(w, level_of_fine, read_unit, key, nonce, out, w_max):  # noqa: ANN001
    rows, cols = out.shape
    lv = _level_plan(level_of_fine)
    per, blocks = _block_rows(rows, cols)
    for blk in prange(blocks):
        scratch = _pair_scratch(cols)
        g_active, g_idle = scratch[4], scratch[5]
        for i in range(blk * per, min(rows, (blk + 1) * per)):
            s = _row_reads(w, i, w_max, level_of_fine, lv, read_unit, key, nonce, scratch)
            _write_pairs(w, _U(i), s, g_active, g_idle, out, cols)


@_Kernel
def _pairs_compensated(w, level_of_fine, read_unit, key, nonce, out, w_max, target, threshold, bounds):  # noqa: ANN001
    """:func:`_pairs` with pair compensation (its own kernel: the plain one keeps its code)."""
    rows, cols = out.shape
    lv = _level_plan(level_of_fine)
    per, blocks = _block_rows(rows, cols)
    for blk in prange(blocks):
        scratch = _pair_scratch(cols)
        _, words, _, level, g_active, g_idle = scratch
        flags = np.empty(cols, np.uint8)
        for i in range(blk * per, min(rows, (blk + 1) * per)):
            s = _row_reads(w, i, w_max, level_of_fine, lv, read_unit, key, nonce, scratch)
            if _flag_candidates(words, bounds, flags, cols):
                for j in range(_U(cols)):
                    if flags[j]:
                        new_active, new_idle = _move(g_active[j], g_idle[j], level[j], target, threshold)
                        r = _U(words[j])
                        if new_active >= 0:
                            g_active[j] = read_unit[_U(new_active) * _U(256) + _redraw(r & _U(255))]
                        if new_idle >= 0:
                            g_idle[j] = read_unit[_U(new_idle) * _U(256) + _redraw(r >> _U(8))]
            _write_pairs(w, _U(i), s, g_active, g_idle, out, cols)


@_Kernel
def _pairs_instance(w, ranks, level_of_fine, programmed_unit, read_noise_unit, key, nonce, out, w_max, target,  # noqa: ANN001
                    threshold, bounds, compensate):
    rows, cols = out.shape
    lv = _level_plan(level_of_fine)
    per, blocks = _block_rows(rows, cols)
    for blk in prange(blocks):
        words64, fine, level = _words(cols), np.empty(cols, np.int32), np.empty(cols, np.int32)
        position = np.empty(cols, np.float32)
        words = words64.view(np.uint16)
        for i in range(blk * per, min(rows, (blk + 1) * per)):
            ui = _U(i)
            s = _row_scale(w, ui, cols, w_max)
            _fill_row_bits(words64, i, nonce, key)
            _row_levels(w, ui, s, cols, level_of_fine, fine, level, lv, position)
            for j in range(_U(cols)):
                r = _U(words[j])
                row = _U(level[j]) * _U(256)
                rank_active, rank_idle = _U(ranks[0, ui, j]), _U(ranks[1, ui, j])
                p_active = programmed_unit[row + rank_active]
                p_idle = programmed_unit[rank_idle]
                n_active = read_noise_unit[row + (r & _U(255))]
                n_idle = read_noise_unit[r >> _U(8)]
                if compensate and not (bounds[0] <= rank_active <= bounds[1] and bounds[2] <= rank_idle <= bounds[3]):
                    new_active, new_idle = _move(p_active, p_idle, level[j], target, threshold)
                    if new_active >= 0:
                        p_active = programmed_unit[_U(new_active) * _U(256) + _redraw(rank_active)]
                        n_active = read_noise_unit[_U(new_active) * _U(256) + (r & _U(255))]
                    if new_idle >= 0:
                        p_idle = programmed_unit[_U(new_idle) * _U(256) + _redraw(rank_idle)]
                        n_idle = read_noise_unit[_U(new_idle) * _U(256) + (r >> _U(8))]
                d = (p_active + n_active) - (p_idle + n_idle)
                v = w[ui, j] * s
                out[ui, j] = (-d if v < np.float32(0.0) else d) + (v - v)


def sample_pairs(
    w: torch.Tensor,
    level_of_fine: torch.Tensor,
    read_unit: torch.Tensor,
    key: int,
    nonce: int,
    ranks: torch.Tensor | None = None,
    programmed_unit: torch.Tensor | None = None,
    compensation: tuple[torch.Tensor, float, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Noisy unit weights ``sign * (G_active - G_idle)`` of every differential pair of ``w`` (C-contiguous
    (O, K)), each row scaled by its ``max|w|``: returns (noisy unit weights (O, K), ``w_max`` (O,)).

    One read each. With ``ranks`` ((2, O, K) uint8: a fixed instance's active and idle device), the devices
    keep their persistent programmed values (``programmed_unit``) and ``read_unit`` is the read-noise table.
    ``compensation`` = (the levels' targets, :func:`~cimcal.analog.mapping.compensation_threshold`,
    :func:`~cimcal.analog.mapping.compensation_bounds` of the judged table: ``read_unit``, or ``programmed_unit``
    with ``ranks``): pair compensation as :func:`cimcal.analog.mapping.compensate_pairs` (the same values as the
    eager :func:`~cimcal.analog.mapping.noisy_unit_weight` / :func:`~cimcal.analog.mapping.instance_unit_weight`);
    None: none.
    """
    out = torch.empty_like(w)
    w_max = torch.empty(w.shape[0], dtype=w.dtype)
    rule = () if compensation is None else (_np_kept(compensation[0]), np.float32(compensation[1]), _np_kept(compensation[2]))
    bits = (np.uint64(key), np.uint64(nonce), out.numpy(), w_max.numpy())
    if ranks is None:
        kernel = _pairs if compensation is None else _pairs_compensated
        kernel(w.numel(), _np(w), _np_kept(level_of_fine), _np_kept(read_unit), *bits, *rule)
    else:
        _pairs_instance(w.numel(), _np(w), _np(ranks), _np_kept(level_of_fine), _np_kept(programmed_unit), _np_kept(read_unit), *bits,
                        *(rule + (True,) if rule else _NO_RULE))
    return out, w_max


# ------------------------------------------------------------------------------------------- ADC
@njit(inline="always", cache=_CACHE)
def _table_index(p, bits, cb, grid_scale, grid_shift, interp, last):  # noqa: ANN001
    """Code-table index of one conversion: position on the grid, random grid point (below/above), knot.
    ``bits``: the conversion's 16 random bits (uint16), the high byte for the grid point, the low byte the knot.
    The bytes stay 16-bit: from ``np.int32(bits) >> 8`` numba makes an int64, whose conversion to float LLVM left
    scalar (``vcvtsi2ss``, even on an AVX-512 CPU): the index loop took 1.2-1.4 cycles an element instead of 0.5."""
    position = min(max(p * grid_scale + grid_shift, np.float32(0.0)), np.float32(last))
    below = np.int32(position) if position >= np.float32(0.0) else np.int32(0)  # truncation = floor (>= 0); NaN -> 0
    high = np.float32(bits >> np.uint16(8))
    threshold = (high + np.float32(0.5)) * interp + np.float32(128.0) * (np.float32(1.0) - interp)
    # the point above needs a fraction above threshold > 0, so below < position <= last: no clamp to last (a min
    # of numba's int64 sums, which kept the loop from vectorizing: 0.6 cycles a conversion)
    point = below + np.int32(threshold < (position - np.float32(below)) * np.float32(256.0))
    return cb + point * 256 + np.int32(bits & np.uint16(255))


STEP_LANES = 4  # step knots a word of an ADC step table holds (16-bit lanes): converters.step_table fills them
_LANE_TOP = np.uint64(0x8000800080008000)  # bit 15 of each of the 4 lanes
_LANE_ONE = np.uint64(0x0001000100010001)


@njit(inline="always", cache=_CACHE)
def _steps_below(ix, word):  # noqa: ANN001
    """How many of the 4 step knots in ``word`` (16-bit lanes, converters.step_table) are at most the knot of
    table index ``ix`` (its low byte): per lane, bit 15 of ``(knot | 0x8000) - t`` is set iff knot >= t (no
    borrow crosses a lane: t <= 256). Branch-free; the lanes' bits are summed by two shifted adds."""
    k = ((ix & _U(255)) | _U(0x8000)) * _LANE_ONE
    d = ((k - word) & _LANE_TOP) >> np.uint64(15)
    d += d >> np.uint64(32)
    d += d >> np.uint64(16)
    return np.int32(d & np.uint64(0xFFFF))


@njit(inline="always", cache=_CACHE)
def _adc_row(acc, psum, ua, accumulate, col_base, deq_gain, deq_offset, grid_scale, grid_shift, limit, interp, last,  # noqa: ANN001
             codes, steps, step_base, stepped, passes, want_passes, words, index, code):
    """Convert row ``ua`` of psum (its random bits in ``words``; ``index`` and ``code`` are scratch). Codes come
    from the step table ``steps`` / ``step_base`` if ``stepped``, else from the full table ``codes``."""
    _, n_out, inner = psum.shape
    row = n_out * inner
    if inner == 1:  # linear layers: flat loops (a nested loop of length 1 costs 3x)
        for j in range(_U(n_out)):
            index[j] = _table_index(psum[ua, j, 0], words[j], col_base[j], grid_scale, grid_shift, interp, last)
    else:
        for j in range(_U(n_out)):
            cb = col_base[j]
            for b in range(_U(inner)):
                q = j * _U(inner) + b
                index[q] = _table_index(psum[ua, j, b], words[q], cb, grid_scale, grid_shift, interp, last)
    if stepped:  # the step table: a row's first code plus its steps at or below the knot
        for q in range(_U(row)):
            ix = _U(index[q])
            r = ix >> _U(8)
            code[q] = np.float32(np.int32(step_base[r]) + _steps_below(ix, steps[r]))
    else:
        for q in range(_U(row)):
            code[q] = np.float32(codes[_U(index[q])])
    if inner == 1 and not want_passes:  # the training hot path: branch-free loops
        if accumulate:
            for j in range(_U(n_out)):
                p = psum[ua, j, 0]
                acc[ua, j, 0] += code[j] * deq_gain[j] + deq_offset[j] + (p - p)
        else:
            for j in range(_U(n_out)):
                p = psum[ua, j, 0]
                acc[ua, j, 0] = code[j] * deq_gain[j] + deq_offset[j] + (p - p)
        return
    for j in range(_U(n_out)):
        gain, offset = deq_gain[j], deq_offset[j]
        for b in range(_U(inner)):
            p = psum[ua, j, b]
            value = code[j * _U(inner) + b] * gain + offset + (p - p)
            if want_passes:
                passes[ua, j, b] = abs(p) <= limit
            acc[ua, j, b] = acc[ua, j, b] + value if accumulate else value


@_Kernel
def _adc(acc, psum, psum_flat, accumulate, row0, stats0, passes, col_base, col_gain, col_offset, row_scale, factor,  # noqa: ANN001
         grid_scale, grid_shift, limit, interp, n_points, codes, steps, step_base, stepped, key, nonce, want_passes, starts,
         line, stats, fold, fold_starts, fold_line, percentile, state, momentum):
    n, n_out, inner = psum.shape
    last = np.int32(n_points - 1)
    row = n_out * inner
    # before any conversion (acc may be psum itself): the calibration sample, then the per-output read-back
    for b in range(starts.size):
        st = _U(starts[b])
        for c in range(_U(line)):
            stats[stats0 + b * line + c] = psum_flat[st + c]
    deq_gain, deq_offset = np.empty(n_out, np.float32), np.empty(n_out, np.float32)
    for j in range(n_out):
        scale = row_scale[j] * factor
        deq_gain[j] = col_gain[j] * scale
        deq_offset[j] = col_offset[j] * scale
    per, blocks = _block_rows(n, row)
    for blk in prange(blocks):
        words64, index, code = _words(row), np.empty(row, np.int32), np.empty(row, np.float32)
        words = words64.view(np.uint16)
        for a in range(blk * per, min(n, (blk + 1) * per)):
            _fill_row_bits(words64, row0 + a, nonce, key)
            _adc_row(acc, psum, _U(a), accumulate, col_base, deq_gain, deq_offset, grid_scale, grid_shift, limit, interp,
                     last, codes, steps, step_base, stepped, passes, want_passes, words, index, code)
    if fold:  # the whole sample, into the running calibration value (running_kth)
        _running_kth(stats, fold_starts, fold_line, percentile, state, momentum, True)


_NO_STARTS = torch.empty(0, dtype=torch.int64)
_NO_STATS = torch.empty(0, dtype=torch.float32)
_NO_PASSES = np.empty((0, 0, 0), np.bool_)
_NO_STEPS = np.zeros(1, np.uint64)
_NO_STARTS_NP = np.zeros(1, np.int64)
_NO_STATE = np.zeros(1, np.float32)
# _adc's fold arguments (fold, fold_starts, fold_line, percentile, state, momentum) when not folding
_NO_FOLD = (False, _NO_STARTS_NP, 0, 0.0, _NO_STATE, 0.0)


class AdcConverter:
    """The ADC kernel bound to one layer call's constants (converted to numpy once, not once per tile).

    Per output column j: code table offset ``col_base[j]``, read-back ``code * g_j + o_j`` with
    ``s_j = row_scale[j] * factor``, ``g_j = col_gain[j] * s_j``, ``o_j = col_offset[j] * s_j``. ``sample``
    ``(starts, line, stats)``: each call first copies the lines ``psum.view(-1)[starts[b] : starts[b] + line]``
    into ``stats`` at the given offset (the calibration sample, taken before ``acc`` overwrites a psum converted
    in place). The conversion is :func:`cimcal.analog.converters.adc_convert_tile`'s, with Philox random bits.
    ``steps``: the same code table as a step table, (words, first codes) of
    :func:`cimcal.analog.converters.step_table`, read instead of ``codes`` (same values, a few percent of the bytes).
    """

    def __init__(
        self,
        col_base: torch.Tensor,
        col_gain: torch.Tensor,
        col_offset: torch.Tensor,
        row_scale: torch.Tensor,
        factor: float,
        grid_scale: float,
        grid_shift: float,
        limit: float,
        interpolate: bool,
        n_points: int,
        codes: torch.Tensor,
        key: int,
        nonce: int,
        want_passes: bool,
        sample: tuple[torch.Tensor, int, torch.Tensor] | None = None,
        steps: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> None:
        starts, line, stats = sample if sample is not None else (_NO_STARTS, 0, _NO_STATS)
        self.want_passes = want_passes
        codes_np = _np_kept(codes)
        if steps is None:  # codes stands in for the first codes: the same dtype, one compilation
            step_words, step_base = _NO_STEPS, codes_np
        else:
            step_words, step_base = _np_kept(steps[0]).view(np.uint64), _np_kept(steps[1])
        self._const = (
            _np_kept(col_base), _np_kept(col_gain), _np_kept(col_offset), _np(row_scale), np.float32(factor), np.float32(grid_scale),
            np.float32(grid_shift), np.float32(limit), np.float32(1.0 if interpolate else 0.0), n_points, codes_np,
            step_words, step_base, steps is not None, np.uint64(key), np.uint64(nonce), want_passes, _np_kept(starts), line, _np(stats),
        )

    def __call__(
        self, acc: torch.Tensor, psum: torch.Tensor, accumulate: bool, row0: int = 0, stats0: int = 0,
        calibrate: tuple[torch.Tensor, float, float, torch.Tensor, int] | None = None,
    ) -> torch.Tensor | None:
        """Convert ``psum`` (N, O, ...; C-contiguous) into ``acc`` (same shape; ``+=`` if ``accumulate``, else ``=``; ``acc`` may be
        ``psum`` itself); returns the bool mask of unsaturated conversions if asked. Row ``a`` of psum draws its
        random bits as row ``row0 + a`` of the (key, nonce) stream, so the tiles of one layer call share one key;
        the sample goes to ``stats[stats0:]``. ``calibrate`` = (running value: a 0-dim float32 tensor, percentile,
        momentum, starts, line): then fold the lines ``starts``/``line`` of the whole sample into it, as
        :func:`running_kth` with ``update=True`` (in the last tile's call, once the sample is complete)."""
        passes = torch.empty(psum.shape, dtype=torch.bool) if self.want_passes else None
        shape = (psum.shape[0], psum.shape[1], math.prod(psum.shape[2:]))  # (N, O, inner); N may be 0
        psum_np = _np(psum)
        if calibrate is None:
            fold = _NO_FOLD
        else:
            state, percentile, momentum, fold_starts, fold_line = calibrate
            fold = (True, _np_kept(fold_starts), fold_line, float(percentile), _np_kept(state).reshape(1), float(momentum))
        _adc(psum.numel(), _np(acc).reshape(shape), psum_np.reshape(shape), psum_np.reshape(-1), accumulate, row0, stats0,
             _NO_PASSES if passes is None else passes.numpy().reshape(shape), *self._const, *fold)
        return passes
