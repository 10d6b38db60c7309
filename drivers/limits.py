"""Safe operating limits: a request outside them raises :class:`LimitError` before anything is sent.

PyMeasure's ``truncated_range`` validator silently clamps an out-of-range value to the nearest
bound. For a chip under test a clamped compliance or read voltage is still a surprise, so the
drivers check every voltage, current, range and index against these limits first and refuse.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from cimcal.errors import ConfigError, LimitError

__all__ = ["SafeLimits", "check_range", "strict_range_raising"]


@dataclass(frozen=True)
class SafeLimits:
    """Configurable safe operating limits shared by the CIM tester and the SMU drivers.

    Attributes
    ----------
    v_read_max_v : largest |read voltage| applied to a cell (MVM inputs, an SMU's read bias in
        ``measure_conductance_s``).
    v_prog_max_v : largest |program voltage|: what an SMU may source outside a read
        (``source_voltage``, ``ramp_to_voltage``: a program pulse) and what a CIM tester may report
        as its own program voltage (``LIMit:VPRog?``) before it is allowed to program cells.
    i_compliance_max_a : largest current compliance an SMU may be given.
    i_range_max_a : largest current measure/source range.
    v_range_max_v : largest voltage measure/source range.
    adc_test_max_ua : largest |current| fed into an ADC in test mode, microamperes.
    temp_min_c, temp_max_c : allowed chip temperature set points.
    advance_max_s : longest single simulated-clock advance (guards against typos such as 1e9).
    nplc_min, nplc_max : allowed SMU integration times in power-line cycles.
    """

    v_read_max_v: float = 0.5
    v_prog_max_v: float = 3.0
    i_compliance_max_a: float = 1e-3
    i_range_max_a: float = 1e-2
    v_range_max_v: float = 20.0
    adc_test_max_ua: float = 1e4
    temp_min_c: float = -40.0
    temp_max_c: float = 125.0
    advance_max_s: float = 10 * 365 * 86400.0
    nplc_min: float = 0.01
    nplc_max: float = 10.0

    def replace(self, **changes: float) -> "SafeLimits":
        """Return a copy with some limits changed (unknown names raise ConfigError)."""
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ConfigError(f"unknown safe limit(s) {unknown}; known: {sorted(known)}")
        return dataclasses.replace(self, **changes)

    @classmethod
    def parse(cls, text: str) -> "SafeLimits":
        """Parse ``"v_read_max_v=0.3,i_compliance_max_a=1e-4"`` (the CLI ``--limits`` option)."""
        changes: dict[str, float] = {}
        for item in filter(None, (part.strip() for part in text.split(","))):
            name, sep, value = item.partition("=")
            if not sep:
                raise ConfigError(f"--limits entry {item!r} must look like name=value")
            try:
                changes[name.strip()] = float(value)
            except ValueError:
                raise ConfigError(f"--limits {name.strip()} must be a number, got {value!r}") from None
        return cls().replace(**changes)


def check_range(
    name: str, value: float, low: float, high: float, *, command: str | None = None, unit: str = "",
    limit: str | None = None,
) -> float:
    """Return ``value`` if ``low <= value <= high`` (and finite), else raise :class:`LimitError`.

    ``limit`` names the :class:`SafeLimits` field(s) behind the bounds: the message then says how
    to widen them. Without it (geometry: arrays, rows, columns) the bounds are the chip's own and
    the message only says what is allowed.
    """
    v = float(value)
    if not math.isfinite(v) or v < low or v > high:
        advice = (f" (limit {limit}; widen it with --limits / SafeLimits if this is intended)"
                  if limit else "")
        raise LimitError(
            f"{name} {v:g}{unit} is outside the safe range [{low:g}, {high:g}]{unit}; nothing was sent{advice}",
            command=command,
        )
    return v


def strict_range_raising(value: float, values: tuple[float, float]) -> float:
    """A PyMeasure validator that raises :class:`LimitError` instead of clamping.

    A validator does not know the property it guards: drivers check with :func:`check_range`
    (naming the property, command and limit) before a setter reaches this last line of defence.
    """
    return check_range("value", value, float(min(values)), float(max(values)))
