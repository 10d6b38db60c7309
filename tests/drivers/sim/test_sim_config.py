"""TOML presets and config files of the simulated chip, and the fault specification."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys

import pytest

from cimcal.drivers.sim.chip import SimChip
from cimcal.drivers.sim.config import PRESETS, SimConfig, load_config, load_config_with_faults, load_preset
from cimcal.drivers.sim.faults import FaultCounter, Faults, garble, truncate
from cimcal.errors import ConfigError


@pytest.mark.parametrize("name", PRESETS)
def test_presets_load_and_set_every_field(name):
    config = load_preset(name)
    assert config.name == name
    assert config.rows == config.cols == 256 and config.n_arrays >= 2


def test_presets_differ_where_the_devices_differ():
    rram, pcm = load_preset("rram"), load_preset("pcm")
    assert (rram.g_min_us, rram.g_max_us) == (1.0, 40.0)
    assert (pcm.g_min_us, pcm.g_max_us) == (0.1, 25.0)
    assert pcm.drift_nu_mean > 5 * rram.drift_nu_mean


def test_a_preset_can_build_on_another():
    """rram-inl is the rram chip with a strongly bowed ADC transfer curve, nothing else."""
    assert load_preset("rram-inl") == dataclasses.replace(load_preset("rram"), name="rram-inl", adc_inl_bow_sigma_lsb=25.0)


def test_config_file_overrides_a_preset_base(tmp_path):
    path = tmp_path / "chip.toml"
    path.write_text('base = "pcm"\n[array]\nn_arrays = 2\nrows = 64\n[faults]\ndrop_after = 3\n')
    config, faults = load_config_with_faults(path)
    assert config == dataclasses.replace(load_preset("pcm"), n_arrays=2, rows=64)
    assert Faults.from_mapping(faults) == Faults(drop_after=3)
    chip = SimChip.from_config(path, seed=1)
    assert chip.rows == 64 and chip.n_levels == 16


@pytest.mark.parametrize(
    "text, match",
    [
        ("rows = 0\n", "rows must be 1..4096"),
        ("colz = 5\n", "unknown key 'colz'"),
        ("rows = 2.5\n", "rows must be an integer"),
        ("g_min_us = 50.0\n", "g_min_us"),
        ("dac_max_v = 1.0\n", "v_read_max_v"),
        ("base = \"sram\"\n", "unknown preset 'sram'"),
        ("rows = \n", "invalid TOML"),
    ],
)
def test_bad_config_names_file_and_key(tmp_path, text, match):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match) as err:
        load_config(path)
    if "preset" not in match:
        assert str(path) in str(err.value)


def test_missing_config_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "absent.toml")


def test_a_config_file_that_is_not_utf8_names_the_file_and_byte_offset(tmp_path):
    path = tmp_path / "latin1.toml"
    path.write_bytes('# g in \u00b5S\nbase = "rram"\n'.encode("latin-1"))
    with pytest.raises(ConfigError, match=rf"{re.escape(str(path))}: not UTF-8 text: byte 0xb5 at offset 7"):
        load_config(path)


def test_default_config_equals_the_rram_preset():
    assert SimConfig() == load_preset("rram")


def test_faults_parse_from_text():
    faults = Faults.parse("drop_after=5, delay_s=2.5,delay_after=1,garble_after=3,truncate_after=4,"
                          "push_error=-300:Device-specific error,error_after=2,repeat=true")
    assert faults == Faults(drop_after=5, delay_s=2.5, delay_after=1, garble_after=3, truncate_after=4,
                            push_error=(-300, "Device-specific error"), error_after=2, repeat=True)
    assert Faults.parse("") == Faults() and not Faults().active
    assert faults.active


@pytest.mark.parametrize("text", ["drop_after", "drop_after=x", "delay_s=-1", "wobble=1", "push_error=abc"])
def test_bad_fault_text_is_a_config_error(text):
    with pytest.raises(ConfigError, match="faults"):
        Faults.parse(text)


def test_fault_counter_fires_each_fault_once_at_the_right_command():
    counter = FaultCounter(Faults(drop_after=3, garble_after=1, delay_s=1.0, delay_after=2,
                                  push_error=(-300, "x"), error_after=0))
    actions = [counter.next() for _ in range(6)]
    assert [a.drop for a in actions] == [False, False, False, True, False, False]
    assert [a.garble for a in actions] == [False, True, False, False, False, False]
    assert [a.delay_s for a in actions] == [0.0, 0.0, 1.0, 0.0, 0.0, 0.0]
    assert [a.push_error for a in actions] == [(-300, "x"), None, None, None, None, None]


def test_garble_and_truncate_bytes():
    reply = b"#14a\nbc\n"
    garbled = garble(reply)
    assert garbled.count(b"\n") == 1 and garbled.endswith(b"\n") and not garbled.startswith(b"#")
    assert truncate(reply) == b"#14a\n"  # header kept, half the 4-byte payload
    assert truncate(b"256\n") == b"2"


def test_sim_package_never_imports_torch():
    code = ("import sys, cimcal.drivers.sim.server, cimcal.drivers.sim.chip; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_public_names_are_pinned():
    import importlib

    import cimcal.drivers.sim as sim

    assert sorted(sim.__all__) == sorted(
        ["SimChip", "SimConfig", "SimServer", "Dispatcher", "Faults", "serve", "load_preset", "load_config"])
    for name in sim.__all__:
        assert getattr(sim, name) is not None
    for module, names in {
        "chip": ["SimChip"],
        "server": ["SimServer", "build_chip", "serve", "main", "bind_warning"],
        "faults": ["Faults", "FaultAction", "FaultCounter", "garble", "truncate"],
    }.items():
        assert sorted(importlib.import_module(f"cimcal.drivers.sim.{module}").__all__) == sorted(names)
