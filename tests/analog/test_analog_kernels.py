"""The compiled kernels: the Philox generator against its published answers, kernels == eager reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from cimcal.analog import AnalogConfig, AnalogConv2d, AnalogLinear, kernels

# Random123's kat_vectors for Philox2x32-10: (counter word 0, counter word 1, key) -> (out 0, out 1)
KAT = [
    ((0x00000000, 0x00000000, 0x00000000), (0xFF1DAE59, 0x6CD10DF2)),
    ((0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF), (0x2C3F628B, 0xAB4FD7AD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E), (0xDD7CE038, 0xF62A4C12)),
]


@pytest.mark.parametrize(("inputs", "expected"), KAT)
def test_philox_matches_the_published_known_answers(inputs, expected):
    c0, c1, key = inputs
    word = int(kernels._philox_words(np.array([c0], np.uint64), np.array([c1], np.uint64), np.uint64(key))[0])
    assert (word & 0xFFFFFFFF, word >> 32) == expected
    if c0 == 0:  # the torch reference: group 0 of a call whose nonce is c1; lanes are 16-bit slices of r1:r0
        lanes = kernels.philox_bits(1, 4, key, c1)[0].tolist()
        assert sum(v << (16 * i) for i, v in enumerate(lanes)) == word


@pytest.mark.parametrize(("rows", "length"), [(3, 5), (7, 1), (2, 1030)])
def test_torch_reference_equals_the_kernel_bits(rows, length):
    key, nonce = 0x13198A2E, 0xFFFFFFF0  # the nonce wraps when the group counter passes 2**32 - 16
    ref = kernels.philox_bits(rows, length, key, nonce).numpy()
    assert np.array_equal(ref, kernels._bits(rows, length, np.uint64(nonce), np.uint64(key)).astype(np.int64))
    # rows further down the stream (one key shared by a layer call's tiles) are the same rows of a longer draw
    assert np.array_equal(kernels.philox_bits(rows - 1, length, key, nonce, row0=1).numpy(), ref[1:])


def test_random_bytes_are_uniform_and_independent():
    bits = kernels.philox_bits(512, 512, *kernels.draw_key(torch.Generator().manual_seed(0))).reshape(-1)
    low, high = (bits & 255).numpy(), (bits >> 8).numpy()
    for byte in (low, high):
        assert stats.chisquare(np.bincount(byte, minlength=256)).pvalue > 1e-3
    table = np.histogram2d(low, high, bins=16)[0]
    assert stats.chi2_contingency(table).pvalue > 1e-3  # the two bytes of one element are independent
    lanes = bits.view(-1, 4).numpy()
    neighbours = np.histogram2d(lanes[:, 0] & 255, lanes[:, 1] & 255, bins=16)[0]
    assert stats.chi2_contingency(neighbours).pvalue > 1e-3  # nor are two elements of one Philox group


def _pair(layer_cls, fitted_profile, resample, compiled, tile_rows):
    torch.manual_seed(0)
    if layer_cls is AnalogLinear:
        layer = AnalogLinear(300, 20, profile=fitted_profile,
                             config=AnalogConfig(compile=compiled, tile_rows=tile_rows, resample=resample, adc_grad="saturation_mask"))
        weight = torch.linspace(-1, 1, 6000).view(20, 300)
        x = torch.rand(16, 300)
    else:
        layer = AnalogConv2d(12, 6, 3, padding=1, profile=fitted_profile,
                             config=AnalogConfig(compile=compiled, tile_rows=tile_rows, resample=resample, adc_grad="saturation_mask"))
        weight = torch.linspace(-1, 1, 6 * 12 * 9).view(6, 12, 3, 3)
        x = torch.rand(5, 12, 7, 7)
    with torch.no_grad():
        layer.weight.copy_(weight)
        layer.bias.zero_()
    layer.new_instance(torch.Generator().manual_seed(8))
    layer.generator = torch.Generator().manual_seed(9)
    return layer, x


@pytest.mark.parametrize("layer_cls", [AnalogLinear, AnalogConv2d])
@pytest.mark.parametrize("resample", ["every_forward", "fixed_instance"])
def test_kernels_equal_the_eager_reference(fitted_profile, layer_cls, resample):
    outputs = []
    for compiled in (False, True):
        layer, x = _pair(layer_cls, fitted_profile, resample, compiled, tile_rows=64)
        x.requires_grad_(True)
        y = layer(x)
        y.square().sum().backward()
        outputs.append((y.detach(), x.grad, layer.weight.grad))
    (y0, gx0, gw0), (y1, gx1, gw1) = outputs
    assert torch.allclose(y0, y1, rtol=1e-5, atol=1e-5)
    assert torch.allclose(gx0, gx1, rtol=1e-4, atol=1e-5) and torch.allclose(gw0, gw1, rtol=1e-4, atol=1e-5)


def test_a_parallel_kernel_call_keeps_torchs_thread_count(monkeypatch):
    """numba's OpenMP pool can share torch's runtime, and starting it resets the runtime's thread count:
    the kernel call puts torch's setting back (the reset is simulated: this machine has too few cores)."""
    before = torch.get_num_threads()
    kernel = kernels._pairs
    real_parallel = kernel.parallel

    def resetting_parallel(*args):
        real_parallel(*args)
        torch.set_num_threads(1)  # what an OpenMP pool start-up with another thread count does

    monkeypatch.setattr(kernel, "parallel", resetting_parallel)
    try:
        torch.set_num_threads(2)
        w = torch.rand(512, 512)
        out, _ = kernels.sample_pairs(w, torch.zeros(1024, dtype=torch.int32), torch.rand(2048), 1, 2)
        assert out.shape == (512, 512) and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_large_calls_run_in_blocks_and_equal_the_eager_reference(fitted_profile):
    """Calls above the parallel threshold on two threads, several rows per scratch block: same values as the
    torch path, NaN and infinite partial sums included."""
    from cimcal.analog.converters import adc_columns
    from cimcal.analog.crossbar import row_abs_max, sample_unit_weight, tiled_adc_mvm
    from cimcal.analog.layers import profile_tables

    assert 700 * 150 >= kernels._Kernel.PARALLEL_MIN
    torch.set_num_threads(2)  # the autouse fixture restores it; 2 threads run the kernels' parallel versions
    cond, adc = profile_tables(fitted_profile, None)
    tables = {name: getattr(cond, name) for name in ("level_of_fine", "read_unit", "programmed_unit", "read_noise_unit")}
    w = torch.randn(700, 400, generator=torch.Generator().manual_seed(3))
    w[5, 7] = float("nan")  # a NaN row: NaN scale, as torch's amax
    w[9] = 0.0  # an all-zero row: the 1e-12 floor
    ranks = torch.randint(0, 256, (2, 700, 400), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    for instance in (None, ranks):
        weights = [sample_unit_weight(w, tables, instance, kernels.draw_key(torch.Generator().manual_seed(4)), compiled)
                   for compiled in (False, True)]
        assert torch.equal(weights[0][0].nan_to_num(7.0), weights[1][0].nan_to_num(7.0))
        assert torch.equal(weights[0][1].nan_to_num(7.0), weights[1][1].nan_to_num(7.0))
    assert torch.equal(weights[1][1].nan_to_num(7.0), row_abs_max(w).nan_to_num(7.0))
    assert bool(weights[1][0][5].isnan().all()) and not bool(weights[1][0][6].isnan().any())

    psum = torch.randn(300, 700, generator=torch.Generator().manual_seed(5)) * 0.5
    psum[3, :3] = torch.tensor([float("nan"), float("inf"), -float("inf")])  # saturated, read back as NaN
    codes = {"codes": adc.codes} | adc_columns(adc, psum.shape[1])
    geometry = (adc.x_lo, adc.x_hi, adc.grid_x0, adc.grid_step, adc.n_points, adc.interpolate)
    out_scale = torch.rand(psum.shape[1], generator=torch.Generator().manual_seed(7)) + 0.5
    converted = [
        tiled_adc_mvm([lambda out=None: psum.clone(), lambda out=None: psum.flip(0) if out is None else out.copy_(psum.flip(0))],
                      codes, geometry, 1.0, out_scale, 0.7, (12345, 0xFFFF0000), compiled, want_mask=True,
                      reuse_buffer=True)
        for compiled in (False, True)
    ]
    (y0, mask0, stats0), (y1, mask1, stats1) = converted
    assert bool(y1[3, :3].isnan().all()) and bool(y1[296, :3].isnan().all()) and int(y1.isnan().sum()) == 6
    assert torch.equal(y0.isnan(), y1.isnan())
    assert torch.allclose(y0.nan_to_num(7.0), y1.nan_to_num(7.0), rtol=1e-6, atol=1e-6)
    assert torch.equal(mask0, mask1) and not bool(mask1[0, 3, :3].any() or mask1[1, 296, :3].any())  # saturated
    assert torch.equal(stats0.nan_to_num(7.0), stats1.nan_to_num(7.0))  # the same calibration sample


def test_dac_kernel_equals_the_torch_quantizer():
    from cimcal.analog.converters import dac_quantize

    x = torch.randn(400, 300, generator=torch.Generator().manual_seed(0)) * 2
    x[0, :5] = torch.tensor([float("nan"), float("inf"), -float("inf"), 0.0, -0.0])
    for full_scale, bits in ((2.0, 8), (0.37, 4), (1.7, 2)):
        q_max = 2 ** (bits - 1) - 1
        halfway = (torch.arange(-q_max, q_max).float() + 0.5) / q_max * full_scale  # round half to even in both
        for values in (x, halfway):
            ref, got = dac_quantize(values, full_scale, bits), kernels.dac_quantize(values, full_scale, bits)
            assert torch.equal(ref.nan_to_num(7.0), got.nan_to_num(7.0))
            assert torch.equal(ref.isnan(), got.isnan())


@pytest.mark.parametrize("percentile", [0.0, 50.0, 99.0, 99.9, 100.0])
@pytest.mark.parametrize("nan_share", [0.0, 0.0005, 0.5])
def test_running_percentile_kernel_equals_kthvalue(percentile, nan_share):
    """Both branches (a min-heap of the top m for high percentiles, a partition otherwise) equal kthvalue over the sample's
    finite values (NaN and inf left out); the first batch sets the running value, later ones move it by the
    momentum; the torch path agrees."""
    from cimcal.analog.crossbar import running_percentile, stats_sample

    gen = torch.Generator().manual_seed(1)
    for n in (7, 5000, 300_000, 1_000_003):
        values = torch.randn(n, generator=gen)
        values[torch.rand(n, generator=gen) < nan_share] = float("nan")
        values[torch.rand(n, generator=gen) < nan_share / 2] = float("inf")
        sample = stats_sample(values).abs()
        sample = sample[sample.isfinite()]
        k = min(sample.numel(), max(1, int(round(percentile / 100.0 * sample.numel()))))
        expected = sample.kthvalue(k).values
        for given in (values, values.double()):  # the kernel, and the torch path (float64 is not a kernel dtype)
            state = torch.zeros((), dtype=given.dtype)
            got = torch.tensor(running_percentile(state, given, percentile, 0.25, update=False), dtype=torch.float32)
            assert torch.equal(got, expected)
            state.fill_(2.0)
            assert running_percentile(state, given, percentile, 0.25, update=False) == 2.0  # set: left alone
            moved = running_percentile(state, given, percentile, 0.25, update=True)
            assert moved == pytest.approx(2.0 + 0.25 * (float(expected) - 2.0), rel=1e-6)


@pytest.mark.parametrize("order", ["random", "ascending", "descending", "ties"])
def test_the_top_m_selection_equals_kthvalue_for_any_input_order(order):
    """The heap branch (up to 4096 values from the top) against kthvalue, on the orders that cost a sorted buffer
    its worst case, with ties and NaN (which counts as larger than everything)."""
    gen = torch.Generator().manual_seed(3)
    for n, m in ((70_000, 66), (20_000, 4096), (5000, 1), (300, 300)):
        values = torch.randn(n, generator=gen)
        if order == "ties":
            values = values.round(decimals=1)
        elif order != "random":
            values = values.abs().sort(descending=order == "descending").values
        values[torch.randperm(n, generator=gen)[:3]] = float("nan")
        k = n - m + 1
        got = kernels._abs_kth(values.numpy(), k)
        expected = values.abs().kthvalue(k).values
        assert torch.equal(torch.tensor(got).nan_to_num(7.0), expected.nan_to_num(7.0)), (n, m)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])  # the kernel and the torch path
def test_a_batch_without_finite_values_leaves_the_running_value_alone(dtype):
    """One NaN (or all-zero) batch must not poison the calibration for every later batch."""
    from cimcal.analog.crossbar import running_percentile

    for bad in (torch.full((4096,), float("nan"), dtype=dtype), torch.zeros(4096, dtype=dtype)):
        state = torch.zeros((), dtype=dtype)
        assert running_percentile(state, bad, 99.0, 0.25, update=True) == pytest.approx(1e-12)
        assert float(state) == 0.0  # still uncalibrated: the next good batch sets it
        good = torch.linspace(-1, 1, 4096, dtype=dtype)
        assert running_percentile(state, good, 100.0, 0.25, update=True) == 1.0
        assert running_percentile(state, bad, 99.0, 0.25, update=True) == 1.0  # set: a bad batch leaves it


def test_the_statistics_sample_spreads_whole_cache_lines_over_the_tensor():
    from cimcal.analog.crossbar import _STATS_SAMPLES, stats_sample

    small = torch.arange(2 * _STATS_SAMPLES - 1, dtype=torch.float32)
    assert torch.equal(stats_sample(small), small)  # everything while it is small
    for rows, cols in ((256, 1000), (256, 1024), (512, 784), (37, 4096)):
        values = torch.arange(rows * cols, dtype=torch.float32).view(rows, cols)
        sample = stats_sample(values).view(-1, 16)
        assert abs(sample.numel() - _STATS_SAMPLES) <= _STATS_SAMPLES // 2
        starts = sample[:, 0]
        assert torch.equal(sample, starts[:, None] + torch.arange(16.0))  # whole lines of consecutive entries
        assert bool((starts % 16 == 0).all()) and bool((starts.diff() > 0).all())
        assert float(starts[0]) < values.numel() / 64 and float(starts[-1]) > values.numel() * 63 / 64  # all over
        covered = torch.zeros(cols, dtype=torch.bool)
        covered[(sample.long() % cols).reshape(-1)] = True
        assert float(covered.float().mean()) > 0.95, (rows, cols)  # nearly every column, whatever the row length


@pytest.mark.parametrize("n", [300, 70_000])  # serial and parallel kernel
def test_calibrated_dac_equals_the_running_percentile_then_the_dac(n):
    from cimcal.analog.converters import dac_quantize
    from cimcal.analog.crossbar import calibrated_inputs, running_percentile

    torch.set_num_threads(2)  # the autouse fixture restores it; the parallel kernel from 2**16 elements on
    x = torch.randn(n // 100, 100, generator=torch.Generator().manual_seed(3)) * 3
    for start, update in ((0.0, False), (2.0, True), (2.0, False)):
        state_k, state_t = torch.tensor(start), torch.tensor(start)
        xq, full_scale = calibrated_inputs(x, state_k, 99.0, 0.1, update, 6, compiled=True)
        expected_scale = running_percentile(state_t, x.double(), 99.0, 0.1, update)  # the torch path
        assert full_scale == pytest.approx(expected_scale, rel=1e-6) and float(state_k) == float(state_t)
        assert torch.equal(xq, dac_quantize(x, full_scale, 6))


def test_the_statistics_sample_indexes_tensors_on_any_device():
    """The plan's index lives on the CPU; the sample of a tensor elsewhere (here: meta) keeps its device."""
    from cimcal.analog.crossbar import stats_sample

    sample = stats_sample(torch.empty(300, 1000, device="meta"))
    assert sample.device.type == "meta" and sample.numel() == stats_sample(torch.zeros(300, 1000)).numel()


def test_sub_streams_of_one_draw_are_distinct_and_bounded():
    stream = (123, 0xFFFF0000)
    nonces = {kernels.substream(stream, i)[1] for i in range(1 << 16)}
    assert len(nonces) == 1 << 16 and all(kernels.substream(stream, i)[0] == 123 for i in (0, 65535))
    for bad in (-1, 1 << 16):
        with pytest.raises(ValueError, match="sub-stream index"):
            kernels.substream(stream, bad)


@pytest.mark.parametrize("compiled", [False, True])
def test_a_nan_batch_does_not_break_the_layers_calibration(fitted_profile, compiled):
    from cimcal.analog import AnalogConfig, AnalogLinear

    layer = AnalogLinear(64, 32, profile=fitted_profile, config=AnalogConfig(compile=compiled),
                         generator=torch.Generator().manual_seed(0)).train()
    x = torch.rand(16, 64, generator=torch.Generator().manual_seed(1))
    layer(x)
    scales = (float(layer.input_range_), float(layer.psum_scale_))
    bad = x.clone()
    bad[3, 5] = float("nan")  # one bad element: a NaN row of partial sums
    assert bool(layer(bad)[3].isnan().all())
    assert all(v > 0 and v == v for v in (float(layer.input_range_), float(layer.psum_scale_)))
    assert float(layer.input_range_) == pytest.approx(scales[0], rel=0.5)
    assert bool(layer(x).isfinite().all())  # later batches are unharmed


def _narrow_codes(codes: torch.Tensor, n_rows: int) -> torch.Tensor:
    """A code table whose rows span at most 4 codes (each row clamped above its first code + 4: still sorted)."""
    rows = codes.view(n_rows, 256).to(torch.int32)
    return torch.minimum(rows, rows[:, :1] + 4).to(codes.dtype).reshape(-1)


def test_the_step_table_holds_the_same_codes():
    """Steps of one code, a jump of several codes at one knot, steps at the first and last knots, a constant row,
    a row spanning exactly 4 codes, int16 codes: every knot decodes to the full table's code. Unsorted rows and
    rows spanning 5 codes get no step table."""
    from cimcal.analog.converters import step_table

    rows = torch.zeros(6, 256, dtype=torch.int32)
    rows[0] = 7
    rows[1, 1:] = 1
    rows[1, 255] = 4  # +1 at knot 1, +3 at knot 255
    rows[2] = 200
    rows[2, 100:] = 202  # a missing code: +2 at one knot
    rows[2, 180:] = 203
    rows[3] = 30 + (torch.arange(256) >= 64).int() + (torch.arange(256) >= 128).int() + (torch.arange(256) >= 192).int()
    rows[4] = 251 + torch.arange(256) // 52  # 251 .. 255: spans 4
    rows[5] = 1000
    rows[5, 17:] = 1001
    for dtype, picked in ((torch.uint8, rows[:5]), (torch.int16, rows)):
        codes = picked.to(dtype).reshape(-1)
        words, base = step_table(codes, picked.shape[0])
        assert words.dtype == torch.int64 and base.dtype == dtype
        knots = torch.arange(256)
        lanes = [(words[:, None] >> (16 * i)) & 0xFFFF for i in range(4)]
        decoded = base[:, None].to(torch.int64) + sum((knots[None, :] >= t).to(torch.int64) for t in lanes)
        assert torch.equal(decoded, picked.to(torch.int64))
    wide = rows[:1].clone()
    wide[0, 128:] = 12  # spans 5 codes
    assert step_table(wide.to(torch.uint8).reshape(-1), 1) is None
    unsorted = rows[3:4].flip(1)
    assert step_table(unsorted.to(torch.uint8).reshape(-1), 1) is None


def test_only_large_tables_get_a_step_table():
    from cimcal.analog.converters import STEP_TABLE_MIN_BYTES, _steps_of

    def table(n_bytes: int) -> torch.Tensor:
        rows = n_bytes // 256
        return (torch.arange(256).repeat(rows, 1) // 128).to(torch.uint8).reshape(-1)  # each row spans 1 code

    small, large = table(STEP_TABLE_MIN_BYTES), table(STEP_TABLE_MIN_BYTES + 256)
    assert _steps_of(small, small.numel() // 256) == {"steps": None, "step_base": None}
    steps = _steps_of(large, large.numel() // 256)
    assert steps["steps"].numel() == large.numel() // 256


@pytest.mark.parametrize("threads", [1, 2])
def test_the_step_table_kernel_equals_the_full_table(fitted_profile, threads):
    """The ADC kernel reading the step table gives the full table's values bit for bit (serial and parallel calls,
    NaN and infinite partial sums included), and both equal the eager reference."""
    from cimcal.analog.converters import adc_columns, step_table
    from cimcal.analog.crossbar import tiled_adc_mvm
    from cimcal.analog.layers import profile_tables

    torch.set_num_threads(threads)  # the autouse fixture restores it
    _, adc = profile_tables(fitted_profile, None)
    n_rows = adc.cols.numel() * adc.n_points
    codes = _narrow_codes(adc.codes, n_rows)
    steps, base = step_table(codes, n_rows)
    psum = torch.randn(300, 700, generator=torch.Generator().manual_seed(5)) * 0.6
    psum[3, :3] = torch.tensor([float("nan"), float("inf"), -float("inf")])
    geometry = (adc.x_lo, adc.x_hi, adc.grid_x0, adc.grid_step, adc.n_points, adc.interpolate)
    out_scale = torch.rand(psum.shape[1], generator=torch.Generator().manual_seed(7)) + 0.5
    columns = adc_columns(adc, psum.shape[1])
    results = []
    for compiled, table in ((False, {"steps": None}), (True, {"steps": None}), (True, {"steps": steps, "step_base": base})):
        tiles = [lambda out=None: psum.clone(), lambda out=None: psum.flip(0) if out is None else out.copy_(psum.flip(0))]
        results.append(tiled_adc_mvm(tiles, {"codes": codes, **table, **columns}, geometry, 1.0, out_scale, 0.7,
                                     (12345, 0xFFFF0000), compiled, want_mask=True, reuse_buffer=True))
    (y_eager, mask_eager, _), (y_full, mask_full, _), (y_steps, mask_steps, _) = results
    assert torch.equal(y_full.nan_to_num(7.0), y_steps.nan_to_num(7.0)) and torch.equal(mask_full, mask_steps)
    assert torch.equal(y_steps.isnan(), y_eager.isnan())
    assert torch.allclose(y_eager.nan_to_num(7.0), y_steps.nan_to_num(7.0), rtol=1e-6, atol=1e-6)


def test_layers_convert_through_their_step_table(fitted_profile):
    """A layer bound to a step table (as set_profile binds one for a large table) gives the same outputs as a twin
    reading the full table."""
    from cimcal.analog.converters import step_table

    outputs = []
    for stepped in ("full", "steps", "steps, first codes + 1"):
        layer, x = _pair(AnalogLinear, fitted_profile, "every_forward", True, tile_rows=64)
        n_rows = layer.adc_codes.numel() // 256
        layer.adc_codes = _narrow_codes(layer.adc_codes, n_rows)
        if stepped != "full":
            layer.adc_steps, layer.adc_step_base = step_table(layer.adc_codes, n_rows)
            if stepped.endswith("+ 1"):  # the step table is what the layer reads
                layer.adc_step_base = layer.adc_step_base + 1
        outputs.append(layer(x).detach())
    assert torch.equal(outputs[0], outputs[1]) and not torch.equal(outputs[0], outputs[2])


@pytest.mark.parametrize("layer_cls", [AnalogLinear, AnalogConv2d])
def test_the_folded_calibration_equals_the_separate_update(fitted_profile, layer_cls):
    """The compiled path folds the partial-sum calibration into the last tile's conversion call; the eager path
    updates it in a call of its own. Over several training batches the running values agree exactly, and they
    move (momentum), so the fold ran every batch; in eval mode they stay."""
    scales = []
    for compiled in (False, True):
        layer, x = _pair(layer_cls, fitted_profile, "every_forward", compiled, tile_rows=64)
        seen = []
        for batch in range(4):
            layer(x * (1.0 + 0.5 * batch))
            seen.append(float(layer.psum_scale_))
        layer.eval()
        layer(x * 3.0)
        assert float(layer.psum_scale_) == seen[-1]
        scales.append(seen)
    assert scales[0] == scales[1]
    assert len(set(scales[1])) == 4


def _level_maps() -> dict[str, torch.Tensor]:
    fine = torch.arange(1024)
    return {
        "staircase": (fine * 8 // 1024).to(torch.int32),
        "skips a level, starts at 1": torch.where(fine < 300, 1, torch.where(fine < 700, 3, 7)).to(torch.int32),
        "steps down": torch.where((fine > 400) & (fine < 500), 2, fine * 4 // 1024).to(torch.int32),
        "8 steps": (fine * 9 // 1024).to(torch.int32),
        "12 steps": (fine * 13 // 1024).to(torch.int32),
        "17 steps": (fine * 18 // 1024).to(torch.int32),
    }


@pytest.mark.parametrize("name", list(_level_maps()))
def test_pair_levels_by_counting_steps_equal_the_lookup(name):
    """The pair kernels find a device's level by counting the lookup's steps below its fine index (a staircase of
    at most 16 steps; up to 8 in one pass) or by the lookup itself (otherwise): all give the eager path's weights
    bit for bit."""
    from cimcal.analog.crossbar import sample_unit_weight

    level_of_fine = _level_maps()[name]
    n_levels = int(level_of_fine.max()) + 1
    steps, base = kernels._level_steps(level_of_fine.numpy())
    staircase = name in ("staircase", "skips a level, starts at 1", "8 steps", "12 steps")
    assert (base >= 0) == staircase
    one_pass = kernels._level_plan(level_of_fine.numpy())[2].size > 0
    assert one_pass == (staircase and steps.size <= 8)
    if staircase:  # the staircase decodes to the lookup
        counted = base + (torch.arange(1024)[:, None] >= torch.from_numpy(steps)[None, :]).sum(dim=1)
        assert torch.equal(counted.to(torch.int32), level_of_fine)
    read_unit = torch.rand(n_levels * 256, generator=torch.Generator().manual_seed(0)) + torch.arange(n_levels).repeat_interleave(256)
    tables = {"level_of_fine": level_of_fine, "read_unit": read_unit}
    w = torch.randn(64, 300, generator=torch.Generator().manual_seed(1))
    # row 0 (max |w| = 1): weights within a few ulps of every step's edge, |w| * 1023 + 0.5 exactly the step
    # among them (a compare off by its equality changes these levels only)
    edges = (torch.arange(1, 1024, dtype=torch.float64) - 0.5) / 1023
    near = [edges.float()]
    for direction in (1.0, -1.0):
        value = edges.float()
        for _ in range(3):
            value = torch.nextafter(value, torch.full_like(value, direction))
            near.append(value)
    near = torch.cat(near)
    exact = near[near * 1023 + 0.5 == (near * 1023 + 0.5).floor()]
    assert exact.numel() > 500  # the ties exist
    w[0] = torch.cat([torch.ones(1), exact[:149], -exact[-150:]])
    got = [sample_unit_weight(w, tables, None, (77, 5), compiled) for compiled in (False, True)]
    assert torch.equal(got[0][0], got[1][0]) and torch.equal(got[0][1], got[1][1])


@pytest.mark.parametrize("last_contiguous", [True, False])
def test_the_fold_in_a_parallel_call_equals_running_percentile(fitted_profile, last_contiguous):
    """Large tiles (parallel kernel calls, a subsampled calibration sample of a subsampled sample): the running value
    folded in the last tile's call equals running_percentile over the sample. A last tile that takes the eager path
    (not contiguous) cannot fold: the sample comes back and the running value is untouched, for the layer to
    update; never both, never neither."""
    from cimcal.analog.converters import adc_columns
    from cimcal.analog.crossbar import running_percentile, tiled_adc_mvm
    from cimcal.analog.layers import profile_tables

    torch.set_num_threads(2)  # the autouse fixture restores it
    _, adc = profile_tables(fitted_profile, None)
    psum = torch.randn(300, 700, generator=torch.Generator().manual_seed(5)) * 0.6
    assert psum.numel() >= kernels._Kernel.PARALLEL_MIN
    geometry = (adc.x_lo, adc.x_hi, adc.grid_x0, adc.grid_step, adc.n_points, adc.interpolate)
    tables = {"codes": adc.codes, "steps": None} | adc_columns(adc, psum.shape[1])
    last = psum.flip(0) if last_contiguous else psum.flip(0).T.contiguous().T  # same values, column-major
    tiles = [lambda out=None: psum.clone(), lambda out=None: last.clone() if last_contiguous else last]
    scale = torch.rand(700, generator=torch.Generator().manual_seed(7)) + 0.5
    states, results = [], []
    for calibrate in (True, False):
        state = torch.tensor(0.3)
        results.append(tiled_adc_mvm(tiles, tables, geometry, 1.0, scale, 0.7, (1, 2), True, want_mask=False,
                                     reuse_buffer=False, calibrate=(state, 99.5, 0.25) if calibrate else None))
        states.append(state)
    (y_folded, _, left), (y, _, stats) = results
    assert stats.numel() >= 2 * 16384  # the sample itself is subsampled again
    assert torch.equal(y_folded, y)
    untouched = float(torch.tensor(0.3))
    running_percentile(states[1], stats, 99.5, 0.25, True)
    if last_contiguous:
        assert left is None and float(states[0]) == float(states[1]) != untouched
    else:
        assert torch.equal(left, stats) and float(states[0]) == untouched


def test_kept_numpy_views_follow_their_tensor_and_free_discarded_ones(fitted_profile):
    """The kernels' kept views of long-lived tensors: one view per tensor while its storage stays put, a new one
    when the storage moves (``set_``), writes through the view reach the tensor, and a full cache lets go of the
    tensors nothing else holds (a discarded layer's tables are freed, a live layer's still run)."""
    import gc
    import weakref

    state = torch.zeros(())
    view = kernels._np_kept(state)
    assert kernels._np_kept(state) is view  # kept
    view.reshape(1)[0] = 2.5
    assert float(state) == 2.5  # a view of the tensor's memory
    state.set_(torch.full((), 7.0))  # the storage moves: the old view must not be used
    assert float(kernels._np_kept(state)) == 7.0

    layer = AnalogLinear(300, 20, profile=fitted_profile, generator=torch.Generator().manual_seed(0))
    layer(torch.rand(8, 300))
    freed = weakref.ref(layer.adc_col_base)  # a per-layer table, converted by every layer call
    assert any(entry[0]() is layer.adc_col_base for entry in kernels._VIEWS.values())
    del layer
    gc.collect()
    live = AnalogLinear(300, 20, profile=fitted_profile, generator=torch.Generator().manual_seed(1))
    held = [torch.zeros(1) for _ in range(kernels._VIEWS_MAX + 5)]
    for keep in held:  # fill the cache past its limit with tensors that stay alive
        kernels._np_kept(keep)
    gc.collect()
    assert freed() is None  # the discarded layer's table went with its cache entry
    assert len(kernels._VIEWS) <= kernels._VIEWS_MAX
    assert live(torch.rand(8, 300)).shape == (8, 20)
