"""Configuration of the simulated chip: one flat dataclass, loaded from TOML presets or files.

A config file is TOML. Keys may sit at top level or inside any table (``[array]``,
``[program]``, ``[adc]``, ...): tables only group keys for readers, the loader flattens them
onto :class:`SimConfig` field names (which are unique). A file may start from a preset with
``base = "rram"`` and override a few keys. A ``[faults]`` table is returned separately (see
:mod:`cimcal.drivers.sim.faults`). Units are in the names (``_us`` µS, ``_ua`` µA, ``_v``
volts, ``_s`` seconds, ``_c`` °C, ``_lsb`` ADC least significant bits).
"""

from __future__ import annotations

import dataclasses
import os
import sys
from dataclasses import dataclass, fields
from importlib import resources
from typing import Any

from cimcal.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

__all__ = ["SimConfig", "PRESETS", "load_preset", "load_config", "load_config_with_faults"]

PRESETS = ("rram", "rram-inl", "pcm")


@dataclass(frozen=True)
class SimConfig:
    """Every physical and timing parameter of the simulated chip (defaults: an RRAM-like chip)."""

    name: str = "rram"
    # geometry and levels
    n_arrays: int = 4
    rows: int = 256
    cols: int = 256
    n_levels: int = 8
    g_min_us: float = 1.0
    g_max_us: float = 40.0
    # as-fabricated state and per-cell (device-to-device) limits
    g_init_min_us: float = 1.0
    g_init_max_us: float = 40.0
    g_ceiling_rel: float = 1.12  # mean reachable max conductance / g_max_us
    g_ceiling_d2d_sigma: float = 0.06  # lognormal spread of the reachable max
    g_floor_us: float = 0.3
    # program-and-verify
    tol_us: float = 0.8
    max_pulses: int = 40
    g_reset_us: float = 1.2  # conductance after the initial RESET pulse (median)
    g_reset_sigma: float = 0.3  # lognormal spread of the RESET state
    pulse_gain: float = 0.55  # median fraction of the verify error a pulse corrects
    pulse_gain_d2d_sigma: float = 0.35  # lognormal spread of pulse_gain between cells
    pulse_c2c_sigma: float = 0.5  # lognormal spread of each pulse's response (cycle to cycle)
    pulse_noise_us: float = 0.25  # additive random step per pulse
    jump_prob: float = 0.04  # probability of an abrupt filament jump per pulse
    jump_scale: float = 2.5  # step multiplier of such a jump
    relax_sigma_rel: float = 0.012  # post-verify relaxation (relative, gaussian)
    # stuck cells
    stuck_on_frac: float = 0.004
    stuck_off_frac: float = 0.006
    stuck_on_g_us: float = 46.0
    stuck_off_g_us: float = 0.15
    stuck_sigma_rel: float = 0.1
    # read noise: sigma_us = read_noise_a * g_us ** read_noise_b (1/f-like, conductance dependent)
    read_noise_a: float = 0.03
    read_noise_b: float = 0.6
    read_noise_d2d_sigma: float = 0.25  # lognormal spread of read_noise_a between cells
    rtn_frac: float = 0.02  # fraction of cells with random telegraph noise
    rtn_rel_amp: float = 0.03  # RTN amplitude relative to the cell conductance
    # drift: g(t) = g0 * (t/t0) ** -nu for t > t0 (t since programming, Arrhenius-scaled)
    drift_nu_mean: float = 0.006
    drift_nu_sigma: float = 0.004
    drift_nu_low_g_factor: float = 0.5  # nu *= 1 + factor * (1 - relative level): low G drifts more
    drift_t0_s: float = 1.0
    drift_ea_ev: float = 0.3  # activation energy of drift acceleration with temperature
    # temperature
    temp_default_c: float = 25.0
    temp_min_c: float = -40.0
    temp_max_c: float = 125.0
    g_tc_per_c: float = 0.0015  # relative read-conductance change per °C from 25 °C
    # ADC (one per column)
    adc_bits: int = 8
    adc_min_ua: float = 0.0
    adc_max_ua: float = 1024.0
    adc_gain_sigma: float = 0.02
    adc_offset_sigma_lsb: float = 1.5
    adc_offset_tc_lsb_per_c: float = 0.02
    adc_inl_bow_sigma_lsb: float = 1.0
    adc_dnl_sigma_lsb: float = 0.15
    adc_noise_lsb: float = 0.4
    # DAC and limits
    dac_bits: int = 8
    dac_min_v: float = 0.0
    dac_max_v: float = 0.2
    v_read_max_v: float = 0.2
    v_prog_max_v: float = 3.0
    # IR drop (series wire resistance per cell pitch; 0 = off)
    r_wire_ohm: float = 0.0
    # simulated clock: time each operation takes
    t_cmd_s: float = 1e-5
    t_pulse_s: float = 2e-6
    t_read_cell_s: float = 1e-7
    t_mvm_s: float = 1e-6
    t_adc_s: float = 1e-7

    def validate(self, source: str = "<config>") -> SimConfig:
        """Check ranges once at the edge; return self or raise ConfigError naming the key."""
        checks: list[tuple[str, bool, str]] = [
            ("n_arrays", 1 <= self.n_arrays <= 64, "1..64"),
            ("rows", 1 <= self.rows <= 4096, "1..4096"),
            ("cols", 1 <= self.cols <= 4096, "1..4096"),
            ("n_levels", 2 <= self.n_levels <= 256, "2..256"),
            ("g_min_us", 0 <= self.g_min_us < self.g_max_us, "0 <= g_min_us < g_max_us"),
            ("tol_us", self.tol_us > 0, "> 0"),
            ("max_pulses", 1 <= self.max_pulses <= 10_000, "1..10000"),
            ("adc_bits", 2 <= self.adc_bits <= 15, "2..15 (codes are int16)"),
            ("adc_min_ua", self.adc_min_ua < self.adc_max_ua, "adc_min_ua < adc_max_ua"),
            ("dac_bits", 1 <= self.dac_bits <= 24, "1..24"),
            ("dac_min_v", self.dac_min_v < self.dac_max_v, "dac_min_v < dac_max_v"),
            ("dac_max_v", max(abs(self.dac_min_v), abs(self.dac_max_v)) <= self.v_read_max_v,
             "|DAC range| <= v_read_max_v"),
            ("stuck_on_frac", 0 <= self.stuck_on_frac + self.stuck_off_frac <= 1,
             "stuck_on_frac + stuck_off_frac in [0, 1]"),
            ("rtn_frac", 0 <= self.rtn_frac <= 1, "[0, 1]"),
            ("drift_t0_s", self.drift_t0_s > 0, "> 0"),
            ("temp_default_c", self.temp_min_c <= self.temp_default_c <= self.temp_max_c,
             "temp_min_c..temp_max_c"),
            ("r_wire_ohm", self.r_wire_ohm >= 0, ">= 0"),
        ]
        for key, ok, rule in checks:
            if not ok:
                raise ConfigError(f"{source}: {key} must be {rule}, got {getattr(self, key)!r}")
        return self


_FIELDS = {f.name: f for f in fields(SimConfig)}


def _flatten(table: dict[str, Any], source: str) -> tuple[dict[str, Any], dict[str, Any]]:
    flat: dict[str, Any] = {}
    faults: dict[str, Any] = {}
    for key, value in table.items():
        if key == "faults":
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: [faults] must be a table")
            faults.update(value)
        elif isinstance(value, dict):
            sub, sub_faults = _flatten(value, source)
            flat.update(sub)
            faults.update(sub_faults)
        else:
            flat[key] = value
    return flat, faults


def _coerce(flat: dict[str, Any], base: SimConfig, source: str) -> SimConfig:
    values: dict[str, Any] = {}
    for key, value in flat.items():
        if key == "base":
            continue
        if key not in _FIELDS:
            raise ConfigError(f"{source}: unknown key {key!r}; known keys: {', '.join(sorted(_FIELDS))}")
        kind = type(getattr(base, key))
        if kind is bool or isinstance(value, bool):
            raise ConfigError(f"{source}: {key} must be a {kind.__name__}, got {value!r}")
        if kind is int and not isinstance(value, int):
            raise ConfigError(f"{source}: {key} must be an integer, got {value!r}")
        if kind is float and not isinstance(value, (int, float)):
            raise ConfigError(f"{source}: {key} must be a number, got {value!r}")
        if kind is str and not isinstance(value, str):
            raise ConfigError(f"{source}: {key} must be a string, got {value!r}")
        values[key] = kind(value)
    return dataclasses.replace(base, **values).validate(source)


def _read_toml(text: str, source: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{source}: invalid TOML: {err}") from None


def _preset_table(name: str) -> dict[str, Any]:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    text = resources.files("cimcal.drivers.sim").joinpath("presets", f"{name}.toml").read_text("utf-8")
    return _read_toml(text, f"preset {name}")


def load_preset(name: str) -> SimConfig:
    """The named preset (one of ``PRESETS``) as a validated SimConfig. A preset may name another as its
    ``base`` and override some of its keys, as config files do."""
    flat, _ = _flatten(_preset_table(name), f"preset {name}")
    base = SimConfig()
    if "base" in flat:
        if flat["base"] == name:
            raise ConfigError(f"preset {name}: a preset cannot be its own base")
        base = load_preset(flat["base"])
    return _coerce(flat, base, f"preset {name}")


def load_config_with_faults(path: str | os.PathLike[str]) -> tuple[SimConfig, dict[str, Any]]:
    """Load a TOML config file; return the config and its raw ``[faults]`` table (maybe empty)."""
    source = os.fspath(path)
    try:
        with open(source, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as err:
        raise ConfigError(f"{source}: cannot read config: {err.strerror}") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"{source}: not UTF-8 text: byte 0x{err.object[err.start]:02x} at offset {err.start} "
                          "(save the file as UTF-8)") from None
    flat, faults = _flatten(_read_toml(text, source), source)
    base = SimConfig()
    if "base" in flat:
        if not isinstance(flat["base"], str):
            raise ConfigError(f"{source}: base must be a preset name string, got {flat['base']!r}")
        base = load_preset(flat["base"])
    return _coerce(flat, base, source), faults


def load_config(path: str | os.PathLike[str]) -> SimConfig:
    """Load a TOML config file (optionally ``base = "<preset>"`` plus overrides) as a SimConfig."""
    return load_config_with_faults(path)[0]
