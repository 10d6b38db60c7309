"""The deployment plan reproduces the analog layer's own modelling: pairs, levels, DAC grid, read-out scale."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cimcal.deploy import calibrated_analog_model
from cimcal.deploy_plan import ChipGeometry, dac_full_scale_v, plan_deployment


def _geometry(sim_chip) -> ChipGeometry:
    cfg = sim_chip.config
    return ChipGeometry(cfg.n_arrays, cfg.rows, cfg.cols, tuple(sim_chip.targets_us), (cfg.adc_min_ua, cfg.adc_max_ua),
                        cfg.dac_bits, (cfg.dac_min_v, cfg.dac_max_v), cfg.v_read_max_v)


@pytest.fixture()
def planned(trained_small, digits, profile, sim_chip):
    from cimcal.analog import AnalogConfig

    analog = calibrated_analog_model(trained_small, digits, profile, AnalogConfig(compile=False))
    return analog, plan_deployment(analog, profile, _geometry(sim_chip))


def test_pair_conductances_equal_the_layers_programmed_weights(planned, profile):
    from cimcal.analog.mapping import level_unit_weight

    analog, plan = planned
    targets = torch.as_tensor(profile.conductance.g_target_us_, dtype=torch.float64)
    levels = torch.as_tensor(profile.conductance.levels_).long()
    target_of = dict(zip(levels.tolist(), targets.tolist()))
    g_min, g_max = float(targets.min()), float(targets.max())
    pairs = plan.geometry.pairs
    for name, layer_plan in plan.layers.items():
        layer = analog.get_submodule(name)
        w = layer.weight.detach().reshape(layer.weight.shape[0], -1)
        w_unit = w / w.abs().amax(dim=1, keepdim=True).clamp_min(1e-12)
        expected = level_unit_weight(w_unit, layer.lut_level_of_fine, layer.lut_target_unit).double()
        got = torch.full_like(expected, float("nan"))
        for slot in layer_plan.slots:
            half = slot.cell_rows.size // 2
            g = np.array([target_of[int(v)] for v in slot.cell_levels])
            plus, minus = g[:half], g[half:]
            assert np.array_equal(slot.cell_cols[half:], slot.cell_cols[:half] + pairs)  # G- sits C/2 to the right
            col_to_out = dict(zip(slot.adc_cols.tolist(), slot.outputs.tolist()))
            outs = [col_to_out[int(c)] for c in slot.cell_cols[:half]]
            ins = slot.cell_rows[:half] + slot.in_start
            got[outs, ins] = torch.as_tensor((plus - minus) / (g_max - g_min))
        assert not torch.isnan(got).any()
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)


def test_outputs_sharing_an_adc_column_go_to_separate_slots(planned, profile):
    _, plan = planned
    cols = torch.as_tensor(profile.adc.cols_).long().tolist()  # the sample dumps measured 4 ADC columns
    first = plan.layers["net.1"]
    assert len(first.slots) == -(-8 // len(cols))
    for slot in first.slots:
        assert len(set(slot.adc_cols.tolist())) == slot.adc_cols.size  # one output per ADC per slot
        assert slot.adc_cols.tolist() == [cols[j % len(cols)] for j in slot.outputs.tolist()]


def test_read_voltage_lands_on_the_chip_dac_grid_and_scales_psum_onto_the_adc_range(planned, sim_chip):
    _, plan = planned
    cfg = sim_chip.config
    chip_lsb = (cfg.dac_max_v - cfg.dac_min_v) / (2**cfg.dac_bits - 1)
    for layer_plan in plan.layers.values():
        step = layer_plan.v_fs_v / (2 ** (layer_plan.dac_bits - 1) - 1)
        assert step / chip_lsb == pytest.approx(round(step / chip_lsb), abs=1e-9)
        assert 0 < layer_plan.v_fs_v <= cfg.v_read_max_v
        # p = psum_scale lands on the edge of the profile's measured ADC range
        span = float(sim_chip.targets_us[-1] - sim_chip.targets_us[0])
        edge = layer_plan.offset_ua + layer_plan.gain * layer_plan.psum_scale * span * layer_plan.v_fs_v
        assert edge == pytest.approx(1075.2, rel=1e-4)


def test_a_layer_dac_finer_than_the_chips_is_reported_not_hidden(sim_chip):
    v_fs, deviation = dac_full_scale_v(_geometry(sim_chip), layer_dac_bits=10)
    assert deviation is not None and "finer" in deviation
    assert v_fs == pytest.approx(sim_chip.config.v_read_max_v)


def test_conv_tiles_hold_whole_kernel_patches_as_the_layer_tiles_them(profile, sim_chip):
    from torch import nn

    from cimcal.analog import AnalogConfig, convert

    torch.manual_seed(0)
    conv = convert(nn.Sequential(nn.Conv2d(64, 4, 3, padding=1)), profile, AnalogConfig(compile=False, noise="lut",
                                                                                         resample="fixed_instance"))
    layer = conv[0]
    layer.input_range_.fill_(1.0)
    layer.psum_scale_.fill_(5.0)
    plan = plan_deployment(conv, profile, _geometry(sim_chip))
    spans = sorted({(s.in_start, s.in_stop) for s in plan.layers["0"].slots})
    assert spans == [(0, 252), (252, 504), (504, 576)]  # 28 channels x 9 kernel cells per 256-row tile
    assert plan.deviations == []


def test_a_non_finite_weight_is_refused_with_its_layer_and_position(profile, sim_chip):
    from torch import nn

    from cimcal.analog import AnalogConfig, convert
    from cimcal.errors import ConfigError

    model = convert(nn.Sequential(nn.Linear(16, 4)), profile, AnalogConfig(compile=False))
    layer = model[0]
    layer.input_range_.fill_(1.0)
    layer.psum_scale_.fill_(5.0)
    with torch.no_grad():
        layer.weight[2, 11] = float("nan")
    with pytest.raises(ConfigError, match=r"^0: weight\[2, 11\] is nan"):
        plan_deployment(model, profile, _geometry(sim_chip))
