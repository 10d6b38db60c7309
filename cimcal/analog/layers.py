"""AnalogLinear and AnalogConv2d: thin modules that own parameters, config, tables and calibration.

They subclass ``nn.Linear`` / ``nn.Conv2d`` and keep the parameter names ``weight`` and ``bias``, so a
digital state_dict loads into an analog model and back. Buffers:

- persistent calibration values ``input_range_`` (DAC full scale) and ``psum_scale_`` (partial sum that
  lands on the edge of the ADC input range); 0 means "not calibrated yet" and a digital state_dict without
  them loads fine;
- non-persistent tables derived from the profile (``lut_*``, ``adc_*``) and, for ``fixed_instance``, the
  per-cell programming-error ranks ``instance_ranks`` (uint8). They follow ``.to()`` and DDP broadcasts
  but are not written to checkpoints: a checkpoint records the profile's sha256 instead.

Calibration: in training mode (or inside :func:`cimcal.analog.calibrate`) each forward folds the batch's
``input_percentile`` of ``|x|`` and ``psum_percentile`` of ``|partial sum|`` into the running buffers with
weight ``calib_momentum``; the first batch a layer ever sees sets them directly. Eval mode freezes them.
"""

from __future__ import annotations

import functools
import math
import numbers
import weakref
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cimcal.analog import kernels
from cimcal.analog.config import AnalogConfig, resolve_config
from cimcal.analog.converters import AdcTables, adc_columns, build_adc_tables, pack_bits
from cimcal.analog.crossbar import (
    calibrated_inputs,
    conv_channel_tiles,
    quantize_inputs,
    read_back_weight,
    row_abs_max,
    running_percentile,
    sample_unit_weight,
    stats_sample,
    tile_slices,
    tiled_adc_mvm,
)
from cimcal.analog.functions import AnalogConv2dFunction, AnalogLinearFunction, RoundSTE
from cimcal.analog.gaussian import gaussian_tiled_mvm, gaussian_unit_weight
from cimcal.analog.mapping import ConductanceTables, build_conductance_tables, levels_and_sign, nearest_levels
from cimcal.errors import ConfigError

__all__ = ["AnalogLinear", "AnalogConv2d", "AnalogLayer", "profile_tables", "drift_time_limits_s", "check_drift_time"]

_CONV_CHUNK_ELEMS = 1 << 18  # conv outputs per chunk of images (1 MiB of float32)
_TABLE_CACHE: dict[tuple[int, str, float | None], tuple[Any, Any]] = {}


def _cached(profile: Any, kind: str, t_s: float | None, build: Any) -> Any:
    key = (id(profile), kind, t_s)
    hit = _TABLE_CACHE.get(key)
    if hit is not None and hit[0]() is profile:
        return hit[1]
    value = build()
    try:
        ref = weakref.ref(profile)
    except TypeError:  # not weak-referenceable: keep it alive with the cache entry
        ref = (lambda p: (lambda: p))(profile)
    _TABLE_CACHE[key] = (ref, value)
    return value


def drift_time_limits_s(conductance: Any) -> tuple[float, float]:
    """The read times (s) a conductance model answers for (``ConductanceLUT.t_limits_s``; else its time points)."""
    if hasattr(conductance, "t_limits_s"):
        return conductance.t_limits_s()
    t_known = torch.as_tensor(conductance.t_s_, dtype=torch.float64)
    return float(t_known.min()), float(t_known.max())


def check_drift_time(conductance: Any, t_s: float, *, what: str = "AnalogConfig.t_s", hint: str = "") -> None:
    """ConfigError (``what=t_s ... outside ...`` plus ``hint``) unless the conductance model answers for ``t_s``."""
    t_first, t_last = drift_time_limits_s(conductance)
    if not t_first <= t_s <= t_last:
        raise ConfigError(
            f"{what}={t_s:.4g} s is outside the profile's measured drift times [{t_first:.4g}, {t_last:.4g}] s{hint}"
        )


def profile_tables(profile: Any, t_s: float | None) -> tuple[ConductanceTables | None, AdcTables | None]:
    """Compact tables of ``profile`` at ``t_s`` (cached per profile object; built with a fixed seed)."""
    conductance = getattr(profile, "conductance", None)
    adc = getattr(profile, "adc", None)
    if t_s is not None and conductance is not None:
        check_drift_time(conductance, t_s)
    cond_tables = None
    if conductance is not None:
        cond_tables = _cached(
            profile, "conductance", t_s,
            lambda: build_conductance_tables(conductance, t_s, torch.Generator().manual_seed(0)),
        )
    adc_tables = None
    if adc is not None:
        adc_tables = _cached(profile, "adc", None, lambda: build_adc_tables(adc, torch.Generator().manual_seed(0)))
    return cond_tables, adc_tables


def _analog_forward(forward: Callable[[Any, torch.Tensor], torch.Tensor]) -> Callable[[Any, torch.Tensor], torch.Tensor]:
    """Wrap an analog layer's ``forward``: ``torch.compile`` graph-breaks around it (the simulation calls numba
    kernels and reads calibration buffers as Python floats), and under ``torch.autocast`` the simulation runs
    with autocast off on inputs cast to the weight's dtype, as ``torch.amp.custom_fwd(cast_inputs=...)`` would."""

    @functools.wraps(forward)
    def run(self: Any, x: torch.Tensor) -> torch.Tensor:
        device_type = x.device.type
        if self.config.noise != "none" and torch.is_autocast_enabled(device_type):
            with torch.autocast(device_type, enabled=False):
                return forward(self, x.to(self.weight.dtype))
        return forward(self, x)

    disabled: list[Callable[[Any, torch.Tensor], torch.Tensor]] = []  # built on first use: it imports dynamo (~2 s)

    @functools.wraps(forward)
    def wrapper(self: Any, x: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_compiling():
            if not disabled:
                disabled.append(torch.compiler.disable(run))
            return disabled[0](self, x)
        return run(self, x)

    return wrapper


class AnalogLayer:
    """Behaviour shared by AnalogLinear and AnalogConv2d (a mixin over the torch module)."""

    config: AnalogConfig
    generator: torch.Generator | None

    def _init_analog(self, profile: Any, config: AnalogConfig | None, generator: torch.Generator | None) -> None:
        self.register_buffer("input_range_", torch.zeros(()))
        self.register_buffer("psum_scale_", torch.zeros(()))
        self.calibrating = False
        self.generator = generator
        self.set_profile(profile, config)

    # ---------------------------------------------------------------- profile binding
    def _adopt(
        self, module: nn.Module, profile: Any, config: AnalogConfig | None, generator: torch.Generator | None
    ) -> None:
        """Take over ``module``'s Parameter objects and train/eval mode, then set up the analog state."""
        self.weight = module.weight
        self.bias = module.bias
        self.train(module.training)
        self._init_analog(profile, config, generator)

    def set_profile(self, profile: Any, config: AnalogConfig | None = None) -> None:
        """Bind (or rebind) the layer to a chip profile and config: rebuilds the tables, keeps calibration."""
        config = resolve_config(config)
        if profile is None and config.noise != "none":
            raise ConfigError(f"AnalogConfig.noise={config.noise!r} needs a ChipProfile; pass profile= or use noise='none'")
        self.config = config
        self.profile_sha256 = None
        cond, adc = (None, None) if profile is None else profile_tables(profile, config.t_s)
        device = self.weight.device
        self._adc_geometry = (
            None if adc is None else (adc.x_lo, adc.x_hi, adc.grid_x0, adc.grid_step, adc.n_points, adc.interpolate)
        )
        self._adc_n_codes = None if adc is None else adc.n_codes
        self.g_range_us = None if cond is None else (cond.g_min_us, cond.g_max_us)
        for name in ("level_of_fine", "target_unit", "read_unit", "programmed_unit", "read_noise_unit", "mean_unit", "sigma_unit",
                     "threshold_unit", "bounds_read", "bounds_programmed"):
            value = None if cond is None else getattr(cond, name).to(device)
            self.register_buffer(f"lut_{name}", value, persistent=False)
        for name in ("codes", "steps", "step_base", "deq_offset", "deq_gain", "sigma_lsb"):
            value = None if adc is None or getattr(adc, name) is None else getattr(adc, name).to(device)
            self.register_buffer(f"adc_{name}", value, persistent=False)
        columns = None if adc is None else adc_columns(adc, self.weight.shape[0])
        for name in ("col_base", "col_gain", "col_offset"):
            self.register_buffer(f"adc_{name}", None if columns is None else columns[name].to(device), persistent=False)
        self.register_buffer("instance_ranks", None, persistent=False)
        # use_programmed's (unit weights, active level, sign, idle level or None, noise scale)
        self._programmed: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None, float] | None = None
        if config.resample == "fixed_instance" and cond is not None:
            self.new_instance()

    def new_instance(self, generator: torch.Generator | None = None) -> None:
        """Draw a new chip instance: each cell's persistent programming-error rank (uint8, both devices)."""
        self._programmed = None
        gen = generator if generator is not None else self.generator
        shape = (2, self.weight.shape[0], self.weight[0].numel())
        words = torch.randint(-(2**31), 2**31 - 1, ((2 * self.weight.numel() + 3) // 4,), dtype=torch.int32, generator=gen)
        self.instance_ranks = words.view(torch.uint8)[: 2 * self.weight.numel()].view(shape).to(self.weight.device)

    @property
    def adc_geometry(self) -> tuple[float, float, float, float, int, bool] | None:
        """The bound profile's ADC transfer-curve geometry, read-only; ``None`` without an ADC model.

        ``(x_lo, x_hi, grid_x0, grid_step, n_points, interpolate)`` as in the profile's ``AdcTables``:
        ``[x_lo, x_hi]`` is the ADC input range the layer's partial sums are mapped onto, the rest the grid of
        the code lookup. Set by ``set_profile``; the simulation and deployment both read it from here.
        """
        return self._adc_geometry

    @property
    def tile_rows(self) -> int:
        """Crossbar rows per tile (from the config)."""
        return self.config.tile_rows

    def _tables(self, prefix: str, names: tuple[str, ...]) -> dict[str, torch.Tensor | None] | None:
        """The buffers ``prefix + name`` by name (None without the first: no such model), read from ``_buffers``
        directly (``Module.__getattr__`` costs ~1 us a name, every forward)."""
        buffers = self._buffers
        if buffers[prefix + names[0]] is None:
            return None
        return {name: buffers[prefix + name] for name in names}

    # ---------------------------------------------------------------- calibration
    def _updating(self) -> bool:
        return self.training or self.calibrating

    def _input_dac(self, x: torch.Tensor, quantize: bool = True) -> tuple[torch.Tensor | None, float]:
        """(DAC codes of ``x`` if ``quantize``, else None; the DAC full scale). The full scale is the config's fixed
        range, else the running input percentile, updated first while training or calibrating and on the first
        batch a layer ever sees (calibration and DAC in one compiled pass where possible)."""
        cfg = self.config
        if cfg.input_range is not None:
            full_scale = float(cfg.input_range)
            return (quantize_inputs(x, full_scale, cfg.dac_bits, cfg.compile) if quantize else None), full_scale
        with torch.no_grad():
            if quantize:
                return calibrated_inputs(
                    x, self.input_range_, cfg.input_percentile, cfg.calib_momentum, self._updating(), cfg.dac_bits,
                    cfg.compile,
                )
            return None, running_percentile(self.input_range_, x, cfg.input_percentile, cfg.calib_momentum, self._updating())

    def _psum_scale(self, psum_tiles: list[Any]) -> float:
        """The running psum scale; on the very first batch, a stats pass over the tiles sets it first."""
        if float(self.psum_scale_) <= 0:
            with torch.no_grad():
                stats = torch.cat([stats_sample(psum_tile()) for psum_tile in psum_tiles])
                # 1e-12 while nothing calibrates it (an all-zero or all-NaN first batch)
                return running_percentile(self.psum_scale_, stats, self.config.psum_percentile,
                                          self.config.calib_momentum, True)
        return float(self.psum_scale_)

    # ---------------------------------------------------------------- simulation
    def use_programmed(self, unit_weight: torch.Tensor | None = None, noise_kept: float = 0.0,
                       devices: torch.Tensor | None = None) -> None:
        """Simulate cells a deployment programmed and read back instead of a drawn chip instance.

        ``unit_weight`` (O, K): ``(G+ - G-) / (g_max - g_min)`` of each pair's read-back conductances (the layer's
        own unit-weight space, see :mod:`cimcal.analog.mapping`). Every forward adds fresh read noise from the
        profile and converts through the profile's ADC. ``noise_kept``: the share of one read's noise variance the
        given cells already hold (0 for noise-free cells, ``1/n`` for the mean of n reads); the fresh noise is
        scaled by ``sqrt(1 - noise_kept)``, so a forward sees one read's variance in all. Neither ``unit_weight``
        nor ``devices`` (or :meth:`new_instance`) returns to drawn instances. Needs a conductance model and
        ``noise="lut"``. A NaN conductance passes through: the outputs it feeds are NaN.

        ``devices`` (2, O, K), instead of ``unit_weight``: each pair's read-back G+ and G- apart, in unit space
        (``(G - g_min) / (g_max - g_min)``). Each device's read noise then comes from the level nearest its own
        conductance (:func:`~cimcal.analog.mapping.nearest_levels`): the state it sits in, which is not the
        planned one where pair compensation moved it or programming missed. Without it, from the levels this
        layer maps the weights to (the idle device at the lowest level).
        """
        if unit_weight is None and devices is None:
            self._programmed = None
            return
        if unit_weight is not None and devices is not None:
            raise ConfigError("use_programmed takes unit_weight or devices, not both")
        if isinstance(noise_kept, bool) or not isinstance(noise_kept, numbers.Real) or not 0.0 <= noise_kept <= 1.0:
            raise ConfigError(f"noise_kept must be a number in [0, 1], got {noise_kept!r}")
        if self.lut_level_of_fine is None or self.config.noise != "lut":
            raise ConfigError("use_programmed needs a profile with a conductance model and AnalogConfig(noise='lut'), "
                              f"got noise={self.config.noise!r}")
        w2d = self.weight.detach().reshape(self.weight.shape[0], -1).float()
        if devices is not None:
            pair = torch.as_tensor(devices, dtype=torch.float32, device=w2d.device)
            if pair.shape != (2, *w2d.shape):
                raise ConfigError(f"programmed devices have shape {tuple(pair.shape)}, expected (2, {w2d.shape[0]}, {w2d.shape[1]})")
            unit = pair[0] - pair[1]
        else:
            unit = torch.as_tensor(unit_weight, dtype=torch.float32).clone()  # the caller's tensor may change later
            if unit.shape != w2d.shape:
                raise ConfigError(f"programmed unit weights have shape {tuple(unit.shape)}, the layer's weight {tuple(w2d.shape)}")
        level, sign = levels_and_sign(w2d / row_abs_max(w2d)[:, None], self.lut_level_of_fine)
        level, idle_level = level.long(), None
        if devices is not None:  # each device at the level its read-back conductance sits nearest
            on_plus, on_minus = (nearest_levels(pair[i], self.lut_target_unit) for i in (0, 1))
            positive = sign > 0
            level = torch.where(positive, on_plus, on_minus)
            idle_level = torch.where(positive, on_minus, on_plus)
        self._programmed = (unit, level, sign, idle_level, math.sqrt(1.0 - float(noise_kept)))

    def _noisy_weights(self, w2d: torch.Tensor, stream: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(noisy unit weights (O, K) of every tile, ``w_max`` per output): one sampling pass over the matrix."""
        cond = self._tables("lut_", ("level_of_fine", "read_unit", "programmed_unit", "read_noise_unit", "target_unit",
                                     "threshold_unit", "bounds_read", "bounds_programmed"))
        if cond is None:  # no conductance model: ideal cells
            w_max = row_abs_max(w2d)
            return w2d * (1.0 / w_max)[:, None], w_max
        if self._programmed is not None:  # read-back cells: only the read noise is drawn
            unit, level, sign, idle_level, noise_scale = self._programmed
            idle_level = None if idle_level is None else idle_level.to(w2d.device)
            noisy = read_back_weight(unit.to(w2d.device), level.to(w2d.device), sign.to(w2d.device),
                                     cond["read_noise_unit"], kernels.substream(stream, 0), noise_scale, idle_level)
            return noisy.to(w2d.dtype), row_abs_max(w2d)
        ranks = self.instance_ranks if self.config.resample == "fixed_instance" else None
        return sample_unit_weight(w2d, cond, ranks, kernels.substream(stream, 0), self.config.compile,
                                  self.config.pair_compensation)

    def _convert(
        self, psum_tiles: list[Any], w_max: torch.Tensor, full_scale: float, stream: tuple[int, int],
        reuse_buffer: bool = False, calibrate: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """:func:`tiled_adc_mvm` with the layer's tables; ``calibrate``: the call's sample is the whole batch's,
        fold it into the running psum scale there if training or calibrating (the stats come back None then)."""
        cfg = self.config
        adc = self._tables("adc_", ("codes", "steps", "step_base", "col_base", "col_gain", "col_offset"))
        psum_scale = self._psum_scale(psum_tiles) if adc is not None else 1.0
        fold = (self.psum_scale_, cfg.psum_percentile, cfg.calib_momentum) if calibrate and self._updating() else None
        return tiled_adc_mvm(
            psum_tiles, adc, self.adc_geometry, psum_scale, w_max, full_scale, stream, cfg.compile,
            cfg.adc_grad == "saturation_mask", reuse_buffer, fold,
        )

    def _update_psum_scale(self, stats: torch.Tensor | None) -> None:
        if stats is not None and self.adc_codes is not None and self._updating():
            cfg = self.config
            running_percentile(self.psum_scale_, stats, cfg.psum_percentile, cfg.calib_momentum, True)

    def simulate_mvm(
        self, x2d: torch.Tensor, w2d: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Chip forward of ``x2d @ w2d.T`` (no grad): DAC, noisy pairs, tiles, ADC, read-back, rescale.

        Returns (y, bit-packed (tile, row, output) mask of unsaturated conversions or None, noisy W or None).
        """
        cfg = self.config
        xq, full_scale = self._input_dac(x2d)
        stream = kernels.draw_key(self.generator)  # one draw per call: weights, then conversions (sub-streams)
        wn, w_max = self._noisy_weights(w2d, stream)
        psum_tiles = [
            (lambda out=None, rows=rows: torch.mm(xq[:, rows], wn[:, rows].T, out=out))
            for rows in tile_slices(x2d.shape[1], cfg.tile_rows)
        ]
        y, mask, stats = self._convert(psum_tiles, w_max, full_scale, kernels.substream(stream, 1), reuse_buffer=True,
                                       calibrate=True)
        self._update_psum_scale(stats)
        mask = None if mask is None else pack_bits(mask)
        return y, mask, (wn.mul_(w_max[:, None]) if cfg.grad_x_weight == "noisy" else None)

    def simulate_conv(
        self, x: torch.Tensor, weight: torch.Tensor, stride: Any, padding: Any, dilation: Any
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Chip forward of a conv2d: each tile holds whole kernel patches of a group of input channels, so a
        tile's partial sums are a conv over that channel group (no im2col). The DAC codes of all images come from
        one pass (input-sized); a conv on several tiles goes through in chunks of images of bounded output size
        (one chip read for all chunks), a conv on one tile in one go. Mask order: (tile, N, O, H, W)."""
        cfg = self.config
        out_ch, in_ch, kh, kw = weight.shape
        n, _, h, w = x.shape
        oh = (h + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
        ow = (w + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
        xq_all, full_scale = self._input_dac(x)  # calibration and DAC of every image in one pass
        stream = kernels.draw_key(self.generator)  # one draw per call: weights, then each chunk's conversions
        wn, w_max = self._noisy_weights(weight.reshape(out_ch, -1), stream)
        wn = wn.view_as(weight)
        groups = conv_channel_tiles(in_ch, kh * kw, cfg.tile_rows)
        # one tile: its partial sums are the output, converted in place (chunks would only add a copy); several:
        # chunks of images bound the partial-sum buffers that exist besides the output
        per_chunk = max(1, n) if len(groups) == 1 else max(1, _CONV_CHUNK_ELEMS // max(1, out_ch * oh * ow))
        # one chunk: its result is the output; an empty batch has no chunk
        y = x.new_empty(n, out_ch, oh, ow) if per_chunk < n or n == 0 else None
        masks, stats = [], []
        one_chunk = per_chunk >= n
        for chunk, start in enumerate(range(0, n, per_chunk)):
            xq = xq_all[start : start + per_chunk]
            psum_tiles = [
                (lambda out=None, cs=cs, xq=xq: F.conv2d(xq[:, cs], wn[:, cs], None, stride, padding, dilation))
                for cs in groups
            ]
            y_chunk, mask, chunk_stats = self._convert(psum_tiles, w_max, full_scale, kernels.substream(stream, 1 + chunk),
                                                       calibrate=one_chunk)
            if y is None:
                y = y_chunk
            else:
                y[start : start + per_chunk] = y_chunk
            if chunk_stats is not None:
                stats.append(chunk_stats)
            if mask is not None:
                masks.append(mask)
            del xq, y_chunk, psum_tiles
        del xq_all
        self._update_psum_scale(torch.cat(stats) if len(stats) > 1 else (stats[0] if stats else None))
        mask = pack_bits(torch.cat(masks, dim=1)) if masks else None
        noisy_w = wn.mul_(w_max.view(-1, 1, 1, 1)) if cfg.grad_x_weight == "noisy" else None
        return y, mask, noisy_w

    def _gaussian_prepare(self, x: torch.Tensor, w2d: torch.Tensor) -> tuple[torch.Tensor, float, torch.Tensor, torch.Tensor]:
        cfg = self.config
        _, full_scale = self._input_dac(x.detach(), quantize=False)
        q_max = float(2 ** (cfg.dac_bits - 1) - 1)
        xq = RoundSTE.apply(torch.clamp(x / full_scale, -1.0, 1.0) * q_max) / q_max
        w_max = w2d.detach().abs().amax(dim=1).clamp_min(1e-12)
        w_unit = w2d / w_max[:, None]
        cond = self._tables("lut_", ("level_of_fine", "mean_unit", "sigma_unit"))
        w_noisy = w_unit if cond is None else gaussian_unit_weight(w_unit, cond, self.generator)
        return xq, full_scale, w_max, w_noisy

    def _gaussian_convert(self, psum_tiles: list[Any], out_shape: tuple[int, ...]) -> torch.Tensor:
        cfg = self.config
        adc = self._tables("adc_", ("sigma_lsb",))
        psum_scale = 1.0
        if adc is not None:
            psum_scale = self._psum_scale([lambda f=f: f().detach() for f in psum_tiles])
        y_unit, stats = gaussian_tiled_mvm(psum_tiles, out_shape, adc, self._adc_n_codes, psum_scale, self.generator)
        if stats and adc is not None and self._updating():
            with torch.no_grad():
                running_percentile(self.psum_scale_, torch.cat(stats), cfg.psum_percentile, cfg.calib_momentum, True)
        return y_unit

    def gaussian_mvm(self, x2d: torch.Tensor, w2d: torch.Tensor) -> torch.Tensor:
        """The differentiable Gaussian baseline of ``x2d @ w2d.T`` (autograd through everything)."""
        xq, full_scale, w_max, w_noisy = self._gaussian_prepare(x2d, w2d)
        psum_tiles = [
            (lambda rows=rows: xq[:, rows] @ w_noisy[:, rows].T) for rows in tile_slices(x2d.shape[1], self.config.tile_rows)
        ]
        return self._gaussian_convert(psum_tiles, (x2d.shape[0], w2d.shape[0])) * (w_max * full_scale)

    def gaussian_conv(self, x: torch.Tensor, weight: torch.Tensor, stride: Any, padding: Any, dilation: Any) -> torch.Tensor:
        """The differentiable Gaussian baseline of a conv2d, on the same channel-group tiles."""
        out_ch, in_ch, kh, kw = weight.shape
        xq, full_scale, w_max, w_noisy = self._gaussian_prepare(x, weight.reshape(out_ch, -1))
        wn = w_noisy.view_as(weight)
        psum_tiles = [
            (lambda cs=cs: F.conv2d(xq[:, cs], wn[:, cs], None, stride, padding, dilation))
            for cs in conv_channel_tiles(in_ch, kh * kw, self.config.tile_rows)
        ]
        n, _, h, w = x.shape
        oh = (h + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
        ow = (w + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
        y_unit = self._gaussian_convert(psum_tiles, (n, out_ch, oh, ow))
        return y_unit * (w_max * full_scale).view(1, -1, 1, 1)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):  # noqa: ANN001
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)
        for name in ("input_range_", "psum_scale_"):  # a digital state_dict has no calibration: stay uncalibrated
            if prefix + name in missing_keys:
                missing_keys.remove(prefix + name)

    def extra_repr(self) -> str:
        cfg = self.config
        return f"{super().extra_repr()}, noise={cfg.noise!r}, resample={cfg.resample!r}, tile_rows={cfg.tile_rows}"


class AnalogLinear(AnalogLayer, nn.Linear):
    """``nn.Linear`` simulated on an analog CIM chip (see :class:`AnalogConfig` for the options)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        profile: Any = None,
        config: AnalogConfig | None = None,
        generator: torch.Generator | None = None,
        device: Any = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        nn.Linear.__init__(self, in_features, out_features, bias, device=device, dtype=dtype)
        self._init_analog(profile, config, generator)

    @classmethod
    def from_digital(
        cls, module: nn.Linear, profile: Any, config: AnalogConfig | None = None, generator: torch.Generator | None = None
    ) -> AnalogLinear:
        """An AnalogLinear sharing ``module``'s Parameter objects (optimizers keep working)."""
        layer = cls.__new__(cls)
        nn.Module.__init__(layer)
        layer.in_features, layer.out_features = module.in_features, module.out_features
        layer._adopt(module, profile, config, generator)
        return layer

    @_analog_forward
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        noise = self.config.noise
        if noise == "none":
            return F.linear(x, self.weight, self.bias)
        x2d = x.reshape(-1, self.in_features)
        if noise == "lut":  # the Function adds the bias
            y = AnalogLinearFunction.apply(x2d, self.weight, self, self.bias)[0]
        else:
            y = self.gaussian_mvm(x2d, self.weight)
            if self.bias is not None:  # y is a fresh tensor: add the bias in place (no output-sized copy)
                y.add_(self.bias)
        return y.reshape(*x.shape[:-1], self.out_features)


class AnalogConv2d(AnalogLayer, nn.Conv2d):
    """``nn.Conv2d`` (groups=1, zero padding) simulated on an analog CIM chip: each tile holds whole kernel
    patches of a group of input channels (see :meth:`simulate_conv`)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 0,
        dilation: int | tuple[int, int] = 1,
        bias: bool = True,
        *,
        profile: Any = None,
        config: AnalogConfig | None = None,
        generator: torch.Generator | None = None,
        device: Any = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        nn.Conv2d.__init__(
            self, in_channels, out_channels, kernel_size, stride, padding, dilation, 1, bias, device=device, dtype=dtype
        )
        _check_convertible(self)
        self._init_analog(profile, config, generator)

    @classmethod
    def from_digital(
        cls, module: nn.Conv2d, profile: Any, config: AnalogConfig | None = None, generator: torch.Generator | None = None
    ) -> AnalogConv2d:
        """An AnalogConv2d sharing ``module``'s Parameter objects."""
        _check_convertible(module)
        layer = cls.__new__(cls)
        nn.Module.__init__(layer)
        for name in ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "transposed",
                     "output_padding", "groups", "padding_mode", "_reversed_padding_repeated_twice"):
            setattr(layer, name, getattr(module, name))
        layer.padding = (0, 0) if module.padding == "valid" else module.padding
        layer._adopt(module, profile, config, generator)
        return layer

    @_analog_forward
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        noise = self.config.noise
        if noise == "none":
            return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation)
        unbatched = x.dim() == 3
        if unbatched:
            x = x.unsqueeze(0)
        if noise == "lut":  # the Function adds the bias
            y = AnalogConv2dFunction.apply(x, self.weight, self, self.stride, self.padding, self.dilation, self.bias)[0]
        else:
            y = self.gaussian_conv(x, self.weight, self.stride, self.padding, self.dilation)
            if self.bias is not None:  # y is a fresh tensor: add the bias in place (no output-sized copy)
                y.add_(self.bias.view(1, -1, 1, 1))
        return y.squeeze(0) if unbatched else y


def conv_unsupported_reason(module: nn.Conv2d) -> str | None:
    """Why ``module`` cannot run analog (None if it can): groups, non-zero padding modes, 'same' padding."""
    if module.groups != 1:
        return f"groups={module.groups} (only groups=1 maps onto one crossbar)"
    if module.padding_mode != "zeros":
        return f"padding_mode={module.padding_mode!r} (only 'zeros')"
    if isinstance(module.padding, str) and module.padding != "valid":
        return f"padding={module.padding!r} (use explicit integer padding)"
    return None


def _check_convertible(module: nn.Conv2d) -> None:
    reason = conv_unsupported_reason(module)
    if reason is not None:
        raise ConfigError(f"Conv2d cannot be simulated on a crossbar: {reason}")

