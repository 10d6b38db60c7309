"""Analog layers against a fitted profile: statistics, tiling, chip instances, convert round trips."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

import cimcal.analog.crossbar as crossbar
from cimcal.analog import kernels
from cimcal.analog import AnalogConfig, AnalogConv2d, AnalogLinear, calibrate, convert, to_digital
from cimcal.analog.converters import adc_convert_tile
from cimcal.analog.layers import profile_tables
from cimcal.errors import ConfigError


def _noisy_weight(layer: AnalogLinear, x: torch.Tensor) -> torch.Tensor:
    """The noisy weight one forward used (grad_x_weight='noisy' returns it)."""
    with torch.no_grad():
        return layer.simulate_mvm(x, layer.weight)[2]


def test_sampled_pair_conductances_match_the_profile_ks(fitted_profile):
    lut = fitted_profile.conductance
    layer = AnalogLinear(200, 100, bias=False, profile=fitted_profile,
                         config=AnalogConfig(compile=False, grad_x_weight="noisy"), generator=torch.Generator().manual_seed(1))
    top = int(lut.levels_.max())
    with torch.no_grad():
        layer.weight.fill_(1.0)  # every pair: active device at the top level, idle device at the lowest
    w = _noisy_weight(layer, torch.rand(4, 200)).reshape(-1)
    g_min, g_max = layer.g_range_us
    n = w.numel()
    gen = torch.Generator().manual_seed(2)
    hi = lut.sample(torch.full((n,), top), generator=gen)
    lo = lut.sample(torch.full((n,), int(lut.levels_.min())), generator=gen)
    reference = (hi - lo) / (g_max - g_min)
    result = stats.ks_2samp(w.numpy(), reference.numpy())
    assert result.statistic < 0.02, result


def test_fixed_instance_keeps_programming_error_and_new_instance_redraws(fitted_profile):
    config = AnalogConfig(compile=False, grad_x_weight="noisy", resample="fixed_instance")
    layer = AnalogLinear(64, 64, bias=False, profile=fitted_profile, config=config, generator=torch.Generator().manual_seed(3))
    x = torch.rand(4, 64)
    target = layer.weight.detach()
    first, second = _noisy_weight(layer, x) - target, _noisy_weight(layer, x) - target
    assert not torch.equal(first, second)  # read noise is fresh at every forward
    same_chip = np.corrcoef(first.reshape(-1), second.reshape(-1))[0, 1]
    layer.new_instance(torch.Generator().manual_seed(4))
    other_chip = np.corrcoef(first.reshape(-1), (_noisy_weight(layer, x) - target).reshape(-1))[0, 1]
    assert same_chip > 0.8 and other_chip < same_chip - 0.3, (same_chip, other_chip)
    every = AnalogLinear(64, 64, bias=False, profile=fitted_profile,
                         config=config.replace(resample="every_forward"), generator=torch.Generator().manual_seed(3))
    every.weight = layer.weight
    a, b = _noisy_weight(every, x) - target, _noisy_weight(every, x) - target
    assert np.corrcoef(a.reshape(-1), b.reshape(-1))[0, 1] < same_chip - 0.3


@pytest.mark.parametrize("compiled", [True, False])
def test_adc_codes_match_the_profile_per_column(fitted_profile, compiled):
    adc = fitted_profile.adc
    tables = profile_tables(fitted_profile, None)[1]
    n = 20000
    gen = torch.Generator().manual_seed(5)
    half, center = 0.5 * (tables.x_hi - tables.x_lo), 0.5 * (tables.x_hi + tables.x_lo)
    geometry = (1.0 / tables.grid_step, (center - tables.grid_x0) / tables.grid_step, half, tables.interpolate)
    for c, col in enumerate(tables.cols.tolist()):
        for frac in (0.1, 0.37, 0.52, 0.83):
            a = tables.x_lo + frac * (tables.x_hi - tables.x_lo)
            # unit partial sums with psum_scale = half range (psum = a - center), one column, read back as codes
            psum = torch.full((1, 1, n), a - center)
            col_base = torch.tensor([c * tables.n_points * 256], dtype=torch.int32)
            key, nonce = kernels.draw_key(gen)
            if compiled:
                codes = torch.empty_like(psum)
                convert = kernels.AdcConverter(col_base, torch.ones(1), torch.zeros(1), torch.ones(1), 1.0, *geometry[:3],
                                               geometry[3], tables.n_points, tables.codes, key, nonce, True)
                passes = convert(codes, psum, False)
                saturated = ~passes
            else:
                bits = kernels.philox_bits(1, n, key, nonce).view(1, 1, n)
                codes, saturated = adc_convert_tile(
                    torch.zeros(()), psum, bits & 255, bits >> 8, col_base.view(1, 1), torch.ones(1, 1), torch.zeros(1, 1),
                    *(torch.tensor(float(v)) for v in geometry), tables.n_points, tables.codes,
                )
            ours = torch.bincount(codes.long().reshape(-1), minlength=adc.n_codes_).double() / n
            ref_codes = adc.sample(torch.full((n,), a), torch.full((n,), col), generator=gen)
            ref = torch.bincount(ref_codes.long(), minlength=adc.n_codes_).double() / n
            tv = 0.5 * (ours - ref).abs().sum()
            assert tv < 0.05, (col, frac, float(tv))
            assert not saturated.any()


def test_inputs_beyond_tile_rows_are_split_into_tiles(fitted_profile, monkeypatch):
    calls = []

    def spy(acc, psum, *rest):
        calls.append(psum.clone())
        return adc_convert_tile(acc, psum, *rest)

    monkeypatch.setattr(crossbar, "adc_convert_tile", spy)
    layer = AnalogLinear(300, 8, profile=fitted_profile, config=AnalogConfig(compile=False, tile_rows=128, noise="lut"))
    layer(torch.rand(5, 300))
    assert len(calls) == 3  # rows 0-127, 128-255, 256-299: one ADC conversion per tile
    assert all(p.shape == (5, 8) for p in calls)
    calls.clear()
    layer.set_profile(fitted_profile, layer.config.replace(tile_rows=300))
    layer(torch.rand(5, 300))
    assert len(calls) == 1


@pytest.mark.parametrize("compiled", [False, True])
def test_an_empty_batch_passes_through_both_layers(fitted_profile, compiled):
    for layer, shape in ((AnalogConv2d(3, 5, 3, profile=fitted_profile, config=AnalogConfig(compile=compiled)), (3, 8, 8)),
                         (AnalogLinear(20, 7, profile=fitted_profile, config=AnalogConfig(compile=compiled)), (20,))):
        layer(torch.rand((4,) + shape))  # calibrates
        x = torch.rand((0,) + shape, requires_grad=True)
        y = layer(x)
        assert y.shape == (0,) + layer(torch.rand((2,) + shape)).shape[1:]
        y.sum().backward()
        assert x.grad.shape == x.shape and layer.weight.grad is not None


def test_noise_none_is_the_clean_op(fitted_profile):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 10))
    x = torch.rand(3, 1, 6, 6)
    reference = model(x)
    convert(model, fitted_profile, AnalogConfig(noise="none"))
    assert isinstance(model[0], AnalogConv2d) and isinstance(model[3], AnalogLinear)
    assert torch.equal(model(x), reference)


@pytest.mark.parametrize("noise", ["lut", "gaussian"])
def test_noisy_forward_tracks_the_clean_output(fitted_profile, noise):
    """Correlation of noisy and clean outputs over five noise draws (one draw can land a stuck cell on a large
    weight: over 300 draws the lut forward's correlation had median 0.95 and 1st percentile 0.84)."""
    corrs = []
    for seed in range(5):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 36, 10))
        x = torch.rand(64, 1, 6, 6)
        clean = model(x).detach()
        convert(model, fitted_profile, AnalogConfig(noise=noise, compile=False), generator=torch.Generator().manual_seed(seed))
        calibrate(model, [x])
        model.eval()
        noisy = model(x)
        noisy.sum().backward()
        corrs.append(np.corrcoef(noisy.detach().reshape(-1), clean.reshape(-1))[0, 1])
        assert model[0].weight.grad is not None and torch.isfinite(model[0].weight.grad).all()
    assert 0.9 < np.median(corrs) < 1.0 and min(corrs) > 0.6, corrs


def test_convert_and_to_digital_round_trip_state_dict(fitted_profile):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 16, 10), nn.Linear(10, 3, bias=False))
    original = {k: v.clone() for k, v in model.state_dict().items()}
    params = list(model.parameters())
    analog = convert(model, fitted_profile, AnalogConfig(compile=False))
    assert list(analog.parameters()) == params  # same Parameter objects: optimizers keep working
    analog(torch.rand(2, 1, 6, 6))
    state = analog.state_dict()
    assert {k for k in state if not k.endswith(("input_range_", "psum_scale_"))} == set(original)
    fresh = convert(nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 16, 10), nn.Linear(10, 3, bias=False)),
                    fitted_profile, AnalogConfig(compile=False))
    fresh.load_state_dict(original)  # a digital state_dict loads strictly into an analog model
    digital = to_digital(analog)
    assert type(digital[0]) is nn.Conv2d and type(digital[3]) is nn.Linear
    assert digital.state_dict().keys() == original.keys()
    assert all(torch.equal(digital.state_dict()[k], v) for k, v in original.items())


def test_convert_leaves_grouped_conv_digital_with_a_warning(fitted_profile):
    model = nn.Sequential(nn.Conv2d(4, 4, 3, groups=2))
    with pytest.warns(UserWarning, match="groups=2"):
        convert(model, fitted_profile)
    assert type(model[0]) is nn.Conv2d


def test_noisy_mode_without_profile_and_bad_drift_time_are_config_errors(fitted_profile):
    with pytest.raises(ConfigError, match="needs a ChipProfile"):
        AnalogLinear(4, 4, config=AnalogConfig(noise="lut"))
    with pytest.raises(ConfigError, match="outside the profile's measured drift times"):
        AnalogLinear(4, 4, profile=fitted_profile, config=AnalogConfig(t_s=1e9))


def test_drift_time_changes_the_sampled_conductances(fitted_profile):
    early = profile_tables(fitted_profile, 1.0)[0]
    late = profile_tables(fitted_profile, 1000.0)[0]
    assert float(late.read_unit.view(-1, 256)[-1].median()) < float(early.read_unit.view(-1, 256)[-1].median())


def _small_layers(profile, config):
    torch.manual_seed(0)
    return ((convert(nn.Linear(16, 8), profile, config), (4, 16)),
            (convert(nn.Conv2d(2, 4, 3), profile, config), (2, 2, 6, 6)))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("noise", ["lut", "gaussian"])
def test_half_and_bfloat16_layers_run_forward_and_backward(fitted_profile, dtype, noise):
    for layer, shape in _small_layers(fitted_profile, AnalogConfig(noise=noise)):
        layer.to(dtype)
        with torch.no_grad():
            layer.weight[0].fill_(1.0)  # |w| / max|w| = 1 exactly: the last fine index (bfloat16 rounded it past the end)
        x = torch.randn(shape).to(dtype).requires_grad_()
        y = layer(x)
        y.float().sum().backward()
        assert y.dtype == dtype and bool(torch.isfinite(y).all())
        assert layer.weight.grad.dtype == dtype and bool(torch.isfinite(layer.weight.grad).all())
        assert bool(torch.isfinite(x.grad).all())


@pytest.mark.parametrize("noise", ["lut", "gaussian"])
def test_autocast_runs_the_simulation_in_float32(fitted_profile, noise):
    for layer, shape in _small_layers(fitted_profile, AnalogConfig(noise=noise, compile=False)):
        layer(torch.randn(shape))  # calibrates
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = layer(torch.randn(shape))
        y.sum().backward()
        assert y.dtype == torch.float32 and bool(torch.isfinite(y).all())
        assert layer.weight.grad.dtype == torch.float32 and bool(torch.isfinite(layer.weight.grad).all())


@pytest.mark.parametrize("compiled", [True, False])
def test_torch_compile_graph_breaks_around_analog_layers(fitted_profile, compiled):
    torch.manual_seed(0)
    model = convert(nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 16, 3)),
                    fitted_profile, AnalogConfig(compile=compiled))
    x = torch.rand(2, 1, 6, 6)
    eager = model(x)
    y = torch.compile(model, backend="eager")(x)
    y.sum().backward()
    assert y.shape == eager.shape and bool(torch.isfinite(y).all())
    assert model[0].weight.grad is not None


class _StuckOnTail:
    """Two levels (1 and 40 µS, sd 0.5) with 0.3 % of cells stuck on at 46 µS: a tail that does not fill one of
    256 equally likely knots (0.39 %), yet most of the lowest level's mean squared error."""

    levels_ = torch.arange(2)
    g_target_us_ = torch.tensor([1.0, 40.0])

    def sample_programmed(self, level, t_s=None, generator=None):
        g = self.g_target_us_[level.long()] + 0.5 * torch.randn(level.shape, generator=generator)
        stuck = torch.rand(level.shape, generator=generator) < 0.003
        return torch.where(stuck, torch.full_like(g, 46.0), g)

    def sample_read_noise(self, level, generator=None):
        return 0.2 * torch.randn(level.shape, generator=generator)

    def sample(self, level, t_s=None, generator=None):
        return self.sample_programmed(level, t_s, generator) + self.sample_read_noise(level, generator)

    def mean_us(self, level, t_s=None):
        return self.g_target_us_[level.long()] + 0.003 * (46.0 - self.g_target_us_[level.long()])

    def sigma_us(self, level, t_s=None):
        return torch.full(level.shape, 0.5)


def test_layer_tables_keep_the_mean_and_energy_of_a_rare_stuck_tail():
    from cimcal.analog.mapping import build_conductance_tables

    lut = _StuckOnTail()
    tables = build_conductance_tables(lut, None, torch.Generator().manual_seed(0))
    span = 39.0
    reference = lut.sample_programmed(torch.zeros(2_000_000), generator=torch.Generator().manual_seed(1)).double()
    ref_mse = float((reference - 1.0).square().mean())  # ~0.003 * 45^2 + 0.25 = 6.3 µS²
    for name in ("programmed_unit", "read_unit"):
        knots = getattr(tables, name).view(2, 256)[0].double() * span + 1.0  # the lowest level, in µS
        extra = 0.0 if name == "programmed_unit" else 0.04  # the read noise's variance
        assert float(knots.mean()) == pytest.approx(float(reference.mean()), abs=0.02), name
        assert float((knots - 1.0).square().mean()) == pytest.approx(ref_mse + extra, rel=0.1), name
        assert bool((knots.diff() >= -1e-6).all()), name  # still an inverse CDF: ranks keep their order
    # the check has power: quantiles at (k + 0.5) / 256, as the tables were built before, round the tail to a
    # whole knot (here 0.39 % at 46 µS: 28 % too much energy; below 0.2 % stuck, none at all)
    midpoint = torch.quantile(reference[:1_000_000].float(), (torch.arange(256) + 0.5) / 256).double()
    assert abs(float((midpoint - 1.0).square().mean()) / ref_mse - 1.0) > 0.2


def test_layer_tables_carry_the_stuck_cell_energy_of_a_simulated_chip():
    """Fit a profile from reads of a simulated rram chip (0.4 % stuck-on, 0.6 % stuck-off cells) and build the
    layers' tables from it: each level's mean squared programming error, in unit-weight space, is that of the
    cell means the profile was fit on (the stuck cells dominate it). With 256 linearly interpolated profile
    knots the lowest level kept half of it; a quantile table rounds such a tail to whole knots."""
    import pandas as pd

    from cimcal import fit_profile
    from cimcal.analog.mapping import build_conductance_tables
    from cimcal.drivers.sim.chip import SimChip

    chip = SimChip.from_preset("rram", seed=0)
    levels = np.random.default_rng(0).integers(0, chip.n_levels, (chip.rows, chip.cols))
    chip.program_array(0, levels)
    reads = [chip.read_map(0) for _ in range(2)]
    rows, cols = np.indices(levels.shape)
    table = pd.concat([pd.DataFrame({"row": rows.ravel(), "col": cols.ravel(), "level": levels.ravel(),
                                     "g_us": g.ravel(), "read_idx": i}) for i, g in enumerate(reads)])
    profile = fit_profile(conductance=table)
    tables = build_conductance_tables(profile.conductance, None, torch.Generator().manual_seed(0))
    cell_means = (reads[0] + reads[1]) / 2
    span = tables.g_max_us - tables.g_min_us
    targets = tables.target_unit.double() * span + tables.g_min_us
    knots = tables.programmed_unit.view(chip.n_levels, 256).double() * span + tables.g_min_us
    for level in range(chip.n_levels):
        data = torch.as_tensor(cell_means[levels == level], dtype=torch.float64)
        expected = float((data - targets[level]).square().mean())
        got = float((knots[level] - targets[level]).square().mean())
        assert got == pytest.approx(expected, rel=0.1), (level, got, expected)


def test_use_programmed_simulates_given_cells_plus_fresh_read_noise(fitted_profile):
    config = AnalogConfig(compile=False, grad_x_weight="noisy", resample="fixed_instance")
    layer = AnalogLinear(64, 32, bias=False, profile=fitted_profile, config=config, generator=torch.Generator().manual_seed(5))
    w_max = layer.weight.detach().abs().amax(dim=1, keepdim=True)
    cells = torch.rand(32, 64, generator=torch.Generator().manual_seed(6)) * 2 - 1  # any read-back unit weights
    layer.use_programmed(cells)
    x = torch.rand(4, 64)
    first, second = _noisy_weight(layer, x) / w_max, _noisy_weight(layer, x) / w_max
    noise = layer.lut_read_noise_unit.view(-1, 256)
    sigma = float(torch.sqrt(noise[0].var() + noise.var(dim=1).mean()))  # idle device + an average active one
    for drawn in (first, second):  # the given cells, plus read noise of about the profile's size
        assert float((drawn - cells).mean().abs()) < 0.2 * sigma
        assert 0.5 * sigma < float((drawn - cells).std()) < 2.0 * sigma
    assert not torch.equal(first, second)  # read noise is fresh at every forward
    with pytest.raises(ConfigError, match="shape"):
        layer.use_programmed(torch.zeros(3, 3))
    gaussian = AnalogLinear(64, 32, bias=False, profile=fitted_profile, config=config.replace(noise="gaussian"))
    with pytest.raises(ConfigError, match="noise='lut'"):  # its forward never draws cells: it would be ignored
        gaussian.use_programmed(cells)
    layer.new_instance(torch.Generator().manual_seed(7))  # back to drawn instances
    assert float((_noisy_weight(layer, x) / w_max - cells).abs().mean()) > 0.2


def test_read_back_cells_that_average_several_reads_get_the_rest_of_one_reads_noise(fitted_profile):
    """Cells read back as the mean of n reads keep 1/n of a read's noise variance: a forward adds the same draws
    scaled by sqrt(1 - 1/n), so it sees one read's variance in all (noise-free cells: all of it; a single read
    back: nothing)."""
    config = AnalogConfig(compile=False, grad_x_weight="noisy", resample="fixed_instance")
    layer = AnalogLinear(64, 32, bias=False, profile=fitted_profile, config=config)
    w_max = layer.weight.detach().abs().amax(dim=1, keepdim=True)
    cells = torch.rand(32, 64, generator=torch.Generator().manual_seed(6)) * 2 - 1
    x = torch.rand(4, 64)
    added = {}
    for kept in (0.0, 0.25, 1.0):
        layer.use_programmed(cells, noise_kept=kept)
        layer.generator = torch.Generator().manual_seed(9)  # the same draws each time
        added[kept] = _noisy_weight(layer, x) / w_max - cells
    assert float(added[1.0].abs().max()) < 1e-6 and float(added[0.0].std()) > 1e-3
    assert torch.allclose(added[0.25], added[0.0] * 0.75 ** 0.5, atol=1e-6)
    layer.use_programmed(cells, noise_kept=np.float32(0.25))  # any real number in [0, 1]
    for bad in (-0.1, 1.5, True, "0.5", float("nan")):
        with pytest.raises(ConfigError, match="noise_kept must be a number in"):
            layer.use_programmed(cells, noise_kept=bad)


def test_read_back_devices_get_read_noise_of_the_level_they_sit_at(fitted_profile):
    """Given both devices of each pair, a device that sits at another level than the plan's (a compensated pair,
    a device stuck high) reads with that level's noise: KS against draws from the profile's knots. Given only the
    pairs' difference, the idle device reads as the lowest level's."""
    config = AnalogConfig(compile=False, grad_x_weight="noisy", resample="fixed_instance")
    layer = AnalogLinear(64, 32, bias=False, profile=fitted_profile, config=config, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        layer.weight.fill_(1.0)  # every pair planned: active device (G+) at the top level, idle device at the lowest
    targets = layer.lut_target_unit
    top = targets.numel() - 1
    devices = torch.empty(2, 32, 64)
    devices[0] = targets[top]
    devices[1, :, :32] = targets[0]
    devices[1, :, 32:] = targets[top] - 0.3 * (targets[top] - targets[top - 1])  # sits nearest the top level
    knots = layer.lut_read_noise_unit.view(-1, 256).double().numpy()
    rng = np.random.default_rng(0)

    def reference(active: int, idle: int) -> np.ndarray:  # n_active - n_idle, knots picked uniformly
        return knots[active][rng.integers(0, 256, 20000)] - knots[idle][rng.integers(0, 256, 20000)]

    def added(**given) -> tuple[np.ndarray, np.ndarray]:
        layer.use_programmed(**given)
        layer.generator = torch.Generator().manual_seed(4)
        draws = [(_noisy_weight(layer, torch.rand(2, 64)) - (devices[0] - devices[1])).double() for _ in range(5)]
        noise = torch.stack(draws)  # w_max is 1: unit space
        return noise[:, :, :32].flatten().numpy(), noise[:, :, 32:].flatten().numpy()

    at_lowest, moved = added(unit_weight=None, devices=devices)
    assert stats.ks_2samp(at_lowest, reference(top, 0)).pvalue > 0.01
    assert stats.ks_2samp(moved, reference(top, top)).pvalue > 0.01
    assert stats.ks_2samp(moved, reference(top, 0)).pvalue < 1e-6  # the planned level's noise is another distribution
    _, moved_as_planned = added(unit_weight=devices[0] - devices[1])
    assert stats.ks_2samp(moved_as_planned, reference(top, 0)).pvalue > 0.01
    with pytest.raises(ConfigError, match="not both"):
        layer.use_programmed(devices[0] - devices[1], devices=devices)
    with pytest.raises(ConfigError, match=r"expected \(2, 32, 64\)"):
        layer.use_programmed(None, devices=devices[:, :, :10])


def test_read_back_devices_each_read_at_their_own_level_whatever_the_sign(fitted_profile):
    """Exact: with every level's read noise a constant of its own, a forward adds c(level nearest G+) - c(level
    nearest G-) to each pair, for weights of both signs and both devices anywhere."""
    config = AnalogConfig(compile=False, grad_x_weight="noisy", resample="fixed_instance")
    layer = AnalogLinear(48, 16, bias=False, profile=fitted_profile, config=config, generator=torch.Generator().manual_seed(3))
    targets = layer.lut_target_unit
    constant = torch.arange(1, targets.numel() + 1, dtype=torch.float32) * 0.01  # level L reads with noise c[L]
    layer.lut_read_noise_unit = constant.repeat_interleave(256)
    devices = torch.rand(2, 16, 48, generator=torch.Generator().manual_seed(8))  # off any plan
    layer.use_programmed(devices=devices)
    w_max = layer.weight.detach().abs().amax(dim=1, keepdim=True)
    assert (layer.weight < 0).any() and (layer.weight > 0).any()
    added = _noisy_weight(layer, torch.rand(2, 48)) / w_max - (devices[0] - devices[1])
    nearest = (devices[..., None] - targets).abs().argmin(dim=-1)  # (2, O, K): each device's level
    assert torch.allclose(added, constant[nearest[0]] - constant[nearest[1]], atol=1e-5)


def test_nearest_levels_ties_to_the_lower_level_and_nan_to_the_lowest():
    from cimcal.analog.mapping import nearest_levels

    targets = torch.tensor([0.0, 0.25, 0.5, 1.0])
    g = torch.tensor([-0.5, 0.0, 0.1249, 0.125, 0.1251, 0.74, 0.75, 0.76, 2.0, float("nan")])
    assert nearest_levels(g, targets).tolist() == [0, 0, 0, 0, 1, 2, 2, 3, 3, 0]


def test_slice_knots_of_a_two_point_level_keep_mean_variance_and_order():
    from cimcal.analog.mapping import slice_knots

    low = 192 * 1024 + 819  # the slice that straddles the mean has its mean below it and its spread above
    x = torch.cat([torch.full((low,), -1.0), torch.full((256 * 1024 - low,), 1.0)]).view(1, -1)
    knots = slice_knots(x)[0]
    assert bool((knots.diff() >= 0).all())
    assert float(knots.mean()) == pytest.approx(float(x.double().mean()), abs=1e-9)
    assert float(knots.var(unbiased=False)) == pytest.approx(float(x.double().var(unbiased=False)), rel=1e-3)


def test_read_back_cells_take_read_noise_as_a_drawn_instance_does():
    """Read-back cells equal to a drawn instance's programmed pairs give that instance's weights, read noise and
    its sign (the active device sits on G- for a negative weight) included, for the same random bytes."""
    from cimcal.analog.mapping import instance_unit_weight, levels_and_sign, read_back_unit_weight

    gen = torch.Generator().manual_seed(8)
    n_levels = 4
    w_unit = torch.rand(16, 32, generator=gen) * 2 - 1
    level_of_fine = (torch.linspace(0, 1, 1024) * (n_levels - 1)).round().to(torch.int32)
    programmed = torch.rand(n_levels * 256, generator=gen)
    read_noise = torch.rand(n_levels * 256, generator=gen) ** 4  # skewed: a wrong sign would show
    ranks = torch.randint(0, 256, (2, 16, 32), generator=gen)
    u_active, u_idle = torch.randint(0, 256, (2, 16, 32), generator=gen)
    level, sign = levels_and_sign(w_unit, level_of_fine)
    cells = sign * (programmed[level * 256 + ranks[0]] - programmed[ranks[1]])
    expected = instance_unit_weight(w_unit, ranks[0], ranks[1], u_active, u_idle, level_of_fine, programmed, read_noise)
    got = read_back_unit_weight(cells, level, sign, u_active, u_idle, read_noise)
    assert torch.allclose(got, expected, atol=1e-6)


def test_gaussian_baseline_quantizes_weights_to_the_lut_paths_levels():
    """The Gaussian baseline maps each weight to the level the LUT path and deployment program
    (``levels_and_sign``), at the half steps of the fine index too, where rounding rules differ: so comparing
    the methods compares their noise models, not their level mappings."""
    from cimcal.analog.gaussian import gaussian_unit_weight
    from cimcal.analog.mapping import N_FINE, levels_and_sign

    half_steps = ((torch.arange(N_FINE - 1, dtype=torch.float64) + 0.5) / (N_FINE - 1)).float()
    w = torch.cat([half_steps, torch.nextafter(half_steps, torch.ones(())), torch.nextafter(half_steps, torch.zeros(()))])
    w = torch.cat([w, -w])
    tables = {  # every fine index its own level, noise-free: the result is the level's mean exactly
        "level_of_fine": torch.arange(N_FINE, dtype=torch.int32),
        "mean_unit": torch.linspace(0.0, 1.0, N_FINE),
        "sigma_unit": torch.zeros(N_FINE),
    }
    level, sign = levels_and_sign(w, tables["level_of_fine"])
    expected = sign * (tables["mean_unit"][level] - tables["mean_unit"][0])
    got = gaussian_unit_weight(w, tables, torch.Generator().manual_seed(0))
    # one level apart is 1/1023; the straight-through form w + (mean - w) may differ from mean by an ulp
    torch.testing.assert_close(got, expected, rtol=0.0, atol=1e-6)
    # a NaN weight stays NaN (its own copy of the rule indexed out of bounds)
    nan = gaussian_unit_weight(torch.tensor([float("nan"), -float("nan"), 0.25]), tables, None)
    assert nan[:2].isnan().all() and nan[2].isfinite()
