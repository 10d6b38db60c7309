"""Deployment plan: where every weight of a calibrated analog model goes on a chip, and at what scale.

The plan executes exactly what the training layers modelled (see :mod:`cimcal.analog.mapping`,
:mod:`cimcal.analog.converters`, :mod:`cimcal.analog.crossbar`), using their own functions:

- **Weights**: per output ``w / max|w_j|``; each weight is a differential pair (G+, G-), the active
  device at the level the layer's ``level_of_fine`` table picks, the idle one at the lowest level.
  On the chip the pair is two columns: G+ in column ``k``, G- in column ``k + C/2``; the chip's
  differential read-out (``MVM:DIFFerential?``) subtracts their currents before ONE conversion by
  column ``k``'s ADC, as the layer converts one differential partial sum per output per tile.
- **Tiles**: the layer's own tiles (``tile_rows`` rows; a conv's tiles hold whole kernel patches of groups of
  input channels), each tile's partial sums converted separately.
- **ADC column**: output ``j`` is converted by the physical column the layer modelled
  (``profile.adc.cols_[j % n_cols]``); outputs sharing a column go to separate *slots* (turns).
- **Inputs**: the layer's signed DAC codes ``xq`` in [-1, 1] become voltages ``xq * v_fs_v``; ``v_fs_v``
  is the largest full scale within the read-voltage limit whose steps land exactly on the chip's
  DAC grid, so the chip's DAC reproduces the layer's quantization.
- **Partial-sum scale**: the layer lands ``psum_scale`` on the edge of the ADC's measured range
  ``[x_lo, x_hi]``: ``a = center + p / psum_scale * half``. Physically the differential current is
  ``p * (g_max - g_min) * v_fs_v`` µA, so the read-out gain is ``half / (psum_scale * span * v_fs_v)``
  and its offset (reference current) is ``center``.
- **Read-back**: codes are dequantized with the layer's own per-column ``deq_gain``/``deq_offset``.
- **Pair compensation** (a layer's ``AnalogConfig.pair_compensation``): after a slot is programmed,
  :meth:`DeployPlan.compensation_moves` re-targets the partner of every device that missed its level by the
  layers' own rule (:func:`cimcal.analog.mapping.compensate_pairs`).

A slot is one (layer, tile, turn): at most ``rows`` inputs and ``cols / 2`` outputs, one array's worth.
Anything the chip cannot realise exactly is done the closest way and listed in ``DeployPlan.deviations``.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from cimcal.errors import ConfigError, ProfileError

__all__ = ["ChipGeometry", "SlotPlan", "LayerPlan", "DeployPlan", "plan_deployment", "dac_full_scale_v"]


@dataclass(frozen=True)
class ChipGeometry:
    """What deployment needs to know about the chip (from the tester's configuration queries)."""

    arrays: int
    rows: int
    cols: int
    targets_us: tuple[float, ...]
    adc_range_ua: tuple[float, float]
    dac_bits: int
    dac_range_v: tuple[float, float]
    v_read_max_v: float

    @classmethod
    def from_tester_config(cls, config: Any, v_read_limit_v: float | None = None) -> ChipGeometry:
        """From a :class:`cimcal.drivers.tester.TesterConfig` (and the driver's safe read-voltage limit)."""
        v_max = float(config.v_read_max_v)
        if v_read_limit_v is not None:
            v_max = min(v_max, float(v_read_limit_v))
        return cls(int(config.arrays), int(config.rows), int(config.cols), tuple(float(g) for g in config.targets_us),
                   tuple(float(x) for x in config.adc_range_ua), int(config.dac_bits),
                   tuple(float(x) for x in config.dac_range_v), v_max)

    @property
    def pairs(self) -> int:
        """Differential pairs (= ADC read-outs) per array: columns k and k + cols/2."""
        return self.cols // 2


@dataclass
class SlotPlan:
    """One array's worth of a layer: a tile of its inputs and a set of outputs, as a cell level list."""

    key: str
    layer: str
    tile: int
    in_start: int
    in_stop: int
    outputs: np.ndarray  # (m,) output indices served by this slot
    adc_cols: np.ndarray  # (m,) physical column whose differential read-out serves each output
    cell_rows: np.ndarray  # (2 * m * tile_len,) int
    cell_cols: np.ndarray
    cell_levels: np.ndarray

    @property
    def n_cells(self) -> int:
        return int(self.cell_rows.size)

    @property
    def digest(self) -> str:
        """sha256 of the cell list (what resume compares)."""
        h = hashlib.sha256()
        for arr in (self.cell_rows, self.cell_cols, self.cell_levels):
            h.update(np.ascontiguousarray(arr, dtype=np.int32).tobytes())
        return h.hexdigest()


@dataclass
class LayerPlan:
    """Scales and read-back of one analog layer; its slots in tile order."""

    name: str
    n_in: int
    n_out: int
    input_full_scale: float
    psum_scale: float
    dac_bits: int
    v_fs_v: float
    gain: float
    offset_ua: float
    w_max: torch.Tensor  # (O,)
    pair_compensation: bool  # the layer's AnalogConfig.pair_compensation: re-target the partner of a failed device
    deq_gain: torch.Tensor  # (O,) code -> unit partial sum
    deq_offset: torch.Tensor  # (O,)
    slots: list[SlotPlan] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"layer": self.name, "inputs": self.n_in, "outputs": self.n_out, "slots": len(self.slots),
                "input_full_scale": self.input_full_scale, "psum_scale": self.psum_scale, "v_fs_v": self.v_fs_v,
                "adc_gain": self.gain, "adc_offset_ua": self.offset_ua, "pair_compensation": self.pair_compensation,
                "cells": int(sum(s.n_cells for s in self.slots))}


@dataclass
class DeployPlan:
    """Every layer's plan, in module order, and what could not be realised exactly."""

    layers: dict[str, LayerPlan]
    geometry: ChipGeometry
    deviations: list[str] = field(default_factory=list)
    levels: np.ndarray | None = None  # chip level ids in ascending target order (the layers' level order)

    @property
    def slots(self) -> list[SlotPlan]:
        return [slot for layer in self.layers.values() for slot in layer.slots]

    def compensation_moves(self, slot: SlotPlan, g_us: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Pair compensation on the chip, the rule the layers model (:func:`cimcal.analog.mapping.compensate_pairs`):
        from ``g_us``, the slot's cells as programmed (read back, in cell order), the cells to re-program and
        their new chip level ids. The active device of a pair is the one not at the lowest level (G+ when both
        are)."""
        from cimcal.analog.mapping import compensate_pairs

        levels = np.asarray(self.levels)
        targets = torch.as_tensor(np.asarray(self.geometry.targets_us, dtype=np.float64)[levels])
        position = np.empty(int(levels.max()) + 1, dtype=np.int64)
        position[levels] = np.arange(levels.size)
        half = slot.n_cells // 2
        plus, minus = np.arange(half), np.arange(half, 2 * half)
        idle_level = int(levels[0])
        active_plus = (slot.cell_levels[:half] != idle_level) | (slot.cell_levels[half:] == idle_level)
        active = np.where(active_plus, plus, minus)
        idle = np.where(active_plus, minus, plus)
        g = torch.as_tensor(np.asarray(g_us, dtype=np.float64))
        new_active, new_idle = compensate_pairs(g[active], g[idle], torch.as_tensor(position[slot.cell_levels[active]]),
                                                targets)
        new_active, new_idle = new_active.numpy(), new_idle.numpy()
        cells = np.concatenate([active[new_active >= 0], idle[new_idle >= 0]])
        return cells, levels[np.concatenate([new_active[new_active >= 0], new_idle[new_idle >= 0]])]


def dac_full_scale_v(geometry: ChipGeometry, layer_dac_bits: int) -> tuple[float, str | None]:
    """Largest input full scale whose DAC steps ``v_fs / (2**(bits-1) - 1)`` are whole chip DAC steps.

    Returns (v_fs_v, deviation or None). Inputs are unipolar on the chip: 0 V must be a DAC level.
    """
    lo, hi = geometry.dac_range_v
    chip_lsb = (hi - lo) / (2**geometry.dac_bits - 1)
    q_max = 2 ** (layer_dac_bits - 1) - 1
    v_max = min(geometry.v_read_max_v, hi)
    multiple = math.floor(v_max / (q_max * chip_lsb) + 1e-9)
    if lo != 0.0:
        return v_max, f"chip DAC range starts at {lo:g} V, not 0 V: inputs are re-quantized by the chip's DAC"
    if multiple < 1:
        return v_max, (f"layer DAC ({layer_dac_bits} bits) is finer than the chip's ({geometry.dac_bits} bits over "
                       f"{v_max:g} V): inputs are re-quantized by the chip's DAC")
    return multiple * q_max * chip_lsb, None


def _sorted_levels(profile: Any, geometry: ChipGeometry) -> np.ndarray:
    """Chip level ids in ascending target order (the order of the layer's level tables); checks the chip."""
    lut = profile.conductance
    levels = np.asarray(torch.as_tensor(lut.levels_).long())
    targets = np.asarray(torch.as_tensor(lut.g_target_us_, dtype=torch.float64))
    order = np.argsort(targets, kind="stable")
    chip = np.asarray(geometry.targets_us)
    if levels.max() >= chip.size:
        raise ProfileError(f"profile has level {int(levels.max())} but the chip has {chip.size} levels")
    span = chip.max() - chip.min()
    worst = float(np.max(np.abs(chip[levels] - targets)))
    if worst > 0.02 * span:
        raise ProfileError(f"profile level targets differ from the chip's (CHIP:LEV:TARG?) by up to {worst:.3g} µS: "
                           "was the profile measured on another kind of chip?")
    return levels[order]


def _adc_columns(profile: Any, n_out: int, pairs: int, deviations: list[str], name: str) -> np.ndarray:
    cols = np.asarray(torch.as_tensor(profile.adc.cols_).long()).reshape(-1)
    if cols.size == 1:  # pooled ADC model: every column is "the" modelled ADC
        return np.arange(n_out) % pairs
    phys = cols[np.arange(n_out) % cols.size]
    if (phys >= pairs).any():
        deviations.append(f"{name}: the profile's ADC columns {sorted(set(phys[phys >= pairs].tolist()))[:4]}... are "
                          f"not differential read-out columns (0..{pairs - 1}); using column mod {pairs}")
        phys = phys % pairs
    return phys


def _layer_tiles(layer: Any, n_in: int) -> list[slice]:
    """The input rows of each tile, exactly as the layer tiles them (convs: whole kernel patches of groups
    of input channels; the flattened weight is channel-major, so a channel group is a contiguous row range)."""
    from torch import nn

    from cimcal.analog.crossbar import conv_channel_tiles, tile_slices

    tile_rows = layer.config.tile_rows
    if isinstance(layer, nn.Conv2d):
        kernel_cells = int(layer.weight[0, 0].numel())
        groups = conv_channel_tiles(int(layer.weight.shape[1]), kernel_cells, tile_rows)
        return [slice(g.start * kernel_cells, g.stop * kernel_cells) for g in groups]
    return tile_slices(n_in, tile_rows)


def _layer_plan(name: str, layer: Any, profile: Any, geometry: ChipGeometry, sorted_levels: np.ndarray,
                deviations: list[str]) -> LayerPlan:
    from cimcal.analog.mapping import levels_and_sign  # the layer's own weight -> level rule

    cfg = layer.config
    if float(layer.psum_scale_) <= 0 or (cfg.input_range is None and float(layer.input_range_) <= 0):
        raise ConfigError(f"{name}: analog layer is not calibrated (run cimcal.analog.calibrate first)")
    if layer.lut_level_of_fine is None or layer.adc_deq_gain is None:
        raise ProfileError(f"{name}: deployment needs a profile with both conductance and ADC models")
    w2d = layer.weight.detach().reshape(layer.weight.shape[0], -1).float()
    n_out, n_in = w2d.shape
    if not bool(torch.isfinite(w2d).all()):
        row, col = (~torch.isfinite(w2d)).nonzero()[0].tolist()
        raise ConfigError(f"{name}: weight[{row}, {col}] is {float(w2d[row, col])}; only finite weights can be programmed")
    w_max = w2d.abs().amax(dim=1).clamp_min(1e-12)
    position, sign = levels_and_sign(w2d / w_max[:, None], layer.lut_level_of_fine)
    active = sorted_levels[position.long().numpy()]  # (O, K) chip level ids
    idle = int(sorted_levels[0])
    positive = (sign > 0).numpy()
    g_plus = np.where(positive, active, idle)
    g_minus = np.where(positive, idle, active)

    tiles = _layer_tiles(layer, n_in)
    if any(t.stop - t.start > geometry.rows for t in tiles):
        deviations.append(f"{name}: a tile of the layer (tile_rows={cfg.tile_rows}) exceeds the chip's {geometry.rows} "
                          "rows; split into chip-sized tiles (more ADC conversions than modelled)")
        tiles = [slice(start, min(start + geometry.rows, t.stop)) for t in tiles
                 for start in range(t.start, t.stop, geometry.rows)]
    pairs = geometry.pairs
    adc_cols = _adc_columns(profile, n_out, pairs, deviations, name)
    turn = np.zeros(n_out, dtype=np.int64)
    seen: dict[int, int] = {}
    for j, col in enumerate(adc_cols.tolist()):
        turn[j] = seen.get(col, 0)
        seen[col] = turn[j] + 1

    v_fs, deviation = dac_full_scale_v(geometry, cfg.dac_bits)
    if deviation:
        deviations.append(f"{name}: {deviation}")
    x_lo, x_hi = layer.adc_geometry[0], layer.adc_geometry[1]
    half, center = 0.5 * (x_hi - x_lo), 0.5 * (x_hi + x_lo)
    g_min, g_max = layer.g_range_us
    psum_scale = float(layer.psum_scale_)
    gain = half / (psum_scale * (g_max - g_min) * v_fs)
    to_unit = psum_scale / half
    plan = LayerPlan(
        name=name, n_in=n_in, n_out=n_out,
        input_full_scale=float(cfg.input_range) if cfg.input_range is not None else float(layer.input_range_),
        psum_scale=psum_scale, dac_bits=cfg.dac_bits, v_fs_v=float(v_fs), gain=float(gain), offset_ua=float(center),
        w_max=w_max, pair_compensation=bool(cfg.pair_compensation), deq_gain=layer.adc_col_gain.float() * to_unit,  # the layer's own per-output read-back
        deq_offset=layer.adc_col_offset.float() * to_unit,
    )
    for t, rows in enumerate(tiles):
        length = rows.stop - rows.start
        for u in range(int(turn.max()) + 1):
            outs = np.flatnonzero(turn == u)
            k = adc_cols[outs]
            r = np.repeat(np.arange(length), outs.size)
            c = np.tile(k, length)
            o = np.tile(outs, length)
            cell_rows = np.concatenate([r, r])
            cell_cols = np.concatenate([c, c + pairs])
            cell_levels = np.concatenate([g_plus[o, rows.start + r], g_minus[o, rows.start + r]])
            plan.slots.append(SlotPlan(f"{name}/t{t}/u{u}", name, t, rows.start, rows.stop, outs, k,
                                       cell_rows, cell_cols, cell_levels.astype(np.int64)))
    return plan


def plan_deployment(analog_model: torch.nn.Module, profile: Any, geometry: ChipGeometry) -> DeployPlan:
    """Plan every analog layer of a calibrated, converted model onto a chip of ``geometry``."""
    from cimcal.analog import AnalogLayer

    if getattr(profile, "conductance", None) is None or getattr(profile, "adc", None) is None:
        raise ProfileError("deployment needs a profile with both a conductance and an ADC model")
    if geometry.cols < 2:
        raise ConfigError("the chip needs at least 2 columns for differential pairs")
    levels = _sorted_levels(profile, geometry)
    deviations: list[str] = []
    layers = {}
    for name, module in analog_model.named_modules():
        if isinstance(module, AnalogLayer):
            layers[name] = _layer_plan(name, module, profile, geometry, levels, deviations)
    if not layers:
        raise ConfigError("the model has no analog layers to deploy")
    return DeployPlan(layers, geometry, deviations, levels)
