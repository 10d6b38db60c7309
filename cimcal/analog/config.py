"""AnalogConfig: the one flat, documented configuration of an analog layer.

Every field is a plain value (str, int, float, bool, None) so a config round-trips through JSON
(checkpoints store ``dataclasses.asdict(config)``). ``validate()`` checks the values once, at the
edge (``convert`` and the layers call it), and raises :class:`cimcal.errors.ConfigError` with a
one-line message naming the field.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass
from typing import Any

from cimcal.errors import ConfigError

__all__ = ["AnalogConfig", "resolve_config", "NOISE_MODES", "RESAMPLE_MODES", "ADC_GRAD_MODES", "GRAD_X_WEIGHTS"]

NOISE_MODES = ("lut", "gaussian", "none")
RESAMPLE_MODES = ("every_forward", "fixed_instance")
ADC_GRAD_MODES = ("identity", "saturation_mask")
GRAD_X_WEIGHTS = ("clean", "noisy")


@dataclass(frozen=True)
class AnalogConfig:
    """How a layer is simulated on the chip described by a ChipProfile.

    Noise model
        noise: ``"lut"`` samples the measured lookup tables in a non-differentiable forward and trains
            through the extended straight-through estimator (backward = the clean op's gradient);
            ``"gaussian"`` is the differentiable noise-aware-training baseline (Gaussian weight noise with
            the profile's per-level sigma, Gaussian ADC noise with the profile's ``sigma_lsb_``, STE rounding,
            autograd through everything); ``"none"`` is the clean digital op.
        resample: ``"every_forward"`` draws programming error and read noise at every forward (a new chip
            each step, the usual training setting); ``"fixed_instance"`` draws each cell's programming error
            once (a persistent per-cell quantile rank, redrawn by ``new_instance()``) and read noise at every
            forward (Monte-Carlo evaluation over chip instances).
        t_s: inference time after programming in seconds (conductance drift); ``None`` = the profile's
            earliest measured time.

    Mapping and tiles
        tile_rows: crossbar rows per tile. Inputs beyond are split into tiles whose partial sums each pass
            their own ADC conversion and are accumulated digitally.
        Weights are mapped per output channel: ``w / max|w_j|`` in [-1, 1] maps onto a differential pair
        (G+, G-) over the profile's levels, the unused device of the pair at the lowest level.
        pair_compensation: after programming, a pair whose device missed its target by more than half a
            level gap (a stuck cell, a failed verify) has its partner re-programmed to the level that brings
            the pair's difference back nearest its target (``cimcal deploy`` does this on the chip; the
            ``"lut"`` forward models it, :func:`cimcal.analog.mapping.compensate_pairs`). ``False``: pairs
            stay as programmed.

    Converters
        dac_bits: signed input DAC resolution (inputs clipped to ``[-input_range, input_range]``).
        input_range: fixed DAC full scale in the layer's input units; ``None`` = calibrated from data
            (running ``input_percentile`` of ``|x|``).
        psum_percentile: partial sums are scaled so that this percentile of ``|partial sum|`` (running,
            per layer, collected while training or calibrating; a buffer) lands on the edge of the ADC's
            measured input range. Larger -> fewer saturated conversions, coarser resolution.
        calib_momentum: exponential-moving-average weight of a new batch in the running percentiles.
        adc_grad: ``"identity"`` passes the gradient straight through the ADC; ``"saturation_mask"`` zeroes
            it where the conversion saturated (mask saved bit-packed, 1 bit per conversion).
        grad_x_weight: weight used for ``grad_x = g W``: ``"clean"`` (saves W, free) or ``"noisy"`` (saves the
            noisy weight sampled in forward instead of W: one weight-sized tensor more).
        compile: run weight sampling and ADC conversion as compiled kernels (:mod:`cimcal.analog.kernels`,
            numba; compiled on first use and cached on disk) on float32 CPU tensors; ``False`` runs their eager
            torch reference (the same values; ~3.5x slower on large layers; always used on other devices and dtypes).
    """

    noise: str = "lut"
    resample: str = "every_forward"
    t_s: float | None = None
    tile_rows: int = 256
    pair_compensation: bool = False
    dac_bits: int = 8
    input_range: float | None = None
    input_percentile: float = 99.9
    psum_percentile: float = 99.9
    calib_momentum: float = 0.1
    adc_grad: str = "identity"
    grad_x_weight: str = "clean"
    compile: bool = True

    def validate(self) -> AnalogConfig:
        """Check every field; return self, or raise ConfigError naming the first bad field."""
        _choice("noise", self.noise, NOISE_MODES)
        _choice("resample", self.resample, RESAMPLE_MODES)
        _choice("adc_grad", self.adc_grad, ADC_GRAD_MODES)
        _choice("grad_x_weight", self.grad_x_weight, GRAD_X_WEIGHTS)
        if self.t_s is not None and not (_is_real(self.t_s) and self.t_s >= 0):
            raise ConfigError(f"AnalogConfig.t_s must be None or a finite number >= 0 seconds, got {self.t_s!r}")
        _int_range("tile_rows", self.tile_rows, 1, 1 << 20)
        _int_range("dac_bits", self.dac_bits, 2, 24)
        if self.input_range is not None and not (_is_real(self.input_range) and self.input_range > 0):
            raise ConfigError(
                f"AnalogConfig.input_range must be None (calibrated) or a finite number > 0, got {self.input_range!r}"
            )
        for name in ("input_percentile", "psum_percentile"):
            value = getattr(self, name)
            if not (_is_real(value) and 0 < value <= 100):
                raise ConfigError(f"AnalogConfig.{name} must be in (0, 100], got {value!r}")
        if not (_is_real(self.calib_momentum) and 0 < self.calib_momentum <= 1):
            raise ConfigError(f"AnalogConfig.calib_momentum must be in (0, 1], got {self.calib_momentum!r}")
        for name in ("pair_compensation", "compile"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"AnalogConfig.{name} must be True or False, got {getattr(self, name)!r}")
        for field in dataclasses.fields(self):  # numpy scalars -> plain int/float: the config stays JSON-able
            value = getattr(self, field.name)
            if isinstance(value, numbers.Real) and not isinstance(value, bool) and type(value) not in (int, float):
                object.__setattr__(self, field.name, int(value) if isinstance(value, numbers.Integral) else float(value))
        return self

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON dict of the fields (for checkpoints)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> AnalogConfig:
        """Build and validate a config from ``to_dict()`` output; unknown keys raise ConfigError."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ConfigError(f"AnalogConfig has no field {unknown[0]!r}; known fields: {', '.join(sorted(names))}")
        return cls(**values).validate()

    def replace(self, **changes: Any) -> AnalogConfig:
        """A validated copy with some fields changed."""
        return dataclasses.replace(self, **changes).validate()


def resolve_config(config: Any) -> AnalogConfig:
    """``config`` validated (``None``: the defaults); anything but an AnalogConfig raises ConfigError."""
    if config is None:
        return AnalogConfig()
    if not isinstance(config, AnalogConfig):
        raise ConfigError(
            f"config must be an AnalogConfig (build one from a dict with AnalogConfig.from_dict), got {type(config).__name__}"
        )
    return config.validate()


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"AnalogConfig.{name} must be one of {', '.join(map(repr, allowed))}, got {value!r}")


def _int_range(name: str, value: Any, low: int, high: int) -> None:
    if not (isinstance(value, numbers.Integral) and not isinstance(value, bool) and low <= value <= high):
        raise ConfigError(f"AnalogConfig.{name} must be an integer in [{low}, {high}], got {value!r}")
