"""Single-device conductance with standard source-measure units, reusing PyMeasure's drivers.

``G = I / V``: source a small read voltage, measure the current. :class:`Keithley2450` is
PyMeasure's Keithley 2450 driver with the cimcal layer mixed in (locking, retried queries, raising
error checks) and every voltage/current/range setter guarded by :class:`SafeLimits`: where PyMeasure
would clamp (``truncated_range``) these raise :class:`LimitError` before anything is sent.
:class:`B1500Probe` and :class:`K4200Probe` wrap PyMeasure's Agilent/Keysight B1500 and Keithley
4200A-SCS drivers with the same limits, so :func:`cimcal.drivers.campaign_smu.run_device_campaign`
can use any of them through the :class:`ConductanceProbe` protocol.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from typing import Any, Protocol

import numpy as np
from pymeasure.instruments.keithley import Keithley2450 as _PyMeasureKeithley2450

from cimcal.drivers.instrument import CimcalInstrument, guarded_control
from cimcal.drivers.limits import SafeLimits, check_range
from cimcal.errors import InstrumentError

__all__ = ["ConductanceProbe", "Keithley2450", "B1500Probe", "K4200Probe"]


class ConductanceProbe(Protocol):
    """Anything that measures one device's conductance: the SMU campaigns' only need."""

    idn: str

    def measure_conductance_s(self, v_read_v: float, n_reads: int = 1) -> np.ndarray: ...

    def close(self) -> None: ...


def _limit_check(field: str, unit: str, *, low_field: str | None = None, magnitude: bool = True):
    """A setter check against ``SafeLimits.<field>`` naming the property, command and limit."""

    def check(smu: "Keithley2450", name: str, command: str, value: float) -> None:
        low = getattr(smu.limits, low_field) if low_field else 0.0
        v = abs(float(value)) if magnitude else float(value)
        check_range(name, v, low, getattr(smu.limits, field), command=command, unit=unit,
                    limit=f"{low_field}/{field}" if low_field else field)

    return check


def _guarded(name: str, check: Any) -> property:
    """Re-declare PyMeasure property ``name``: limit check first, then the cimcal transaction."""
    return guarded_control(getattr(_PyMeasureKeithley2450, name), name, check,
                           " Raises LimitError outside SafeLimits; transport faults retry, then InstrumentError.")


_SOURCE_V = _limit_check("v_prog_max_v", " V")          # sourcing may be a program pulse
_READ_V = _limit_check("v_read_max_v", " V")            # the read bias of measure_conductance_s
_COMPLIANCE = _limit_check("i_compliance_max_a", " A", magnitude=False)
_I_RANGE = _limit_check("i_range_max_a", " A")
_V_RANGE = _limit_check("v_range_max_v", " V")
_NPLC = _limit_check("nplc_max", "", low_field="nplc_min", magnitude=False)


class Keithley2450(_PyMeasureKeithley2450, CimcalInstrument):
    """PyMeasure's Keithley 2450 (SCPI command set) with cimcal's limits, lock, retries and error check.

    Parameters
    ----------
    adapter : VISA resource string or PyMeasure adapter.
    limits : safe limits. Two voltage semantics: :meth:`measure_conductance_s` is a *read* and its
        bias is bounded by ``v_read_max_v``; sourcing directly (``source_voltage``,
        ``ramp_to_voltage``) may be a program pulse and is bounded by ``v_prog_max_v``.
        ``i_compliance_max_a`` bounds the current compliance and ``source_current``,
        ``i_range_max_a``/``v_range_max_v`` the ranges, ``nplc_min``/``nplc_max`` the NPLC.

    Every guarded setter raises :class:`LimitError` naming the property, its SCPI command and the
    limit before anything is sent; a transport fault while setting reconnects and retries, then
    raises :class:`InstrumentError` (never a raw ``VisaIOError``).
    """

    def __init__(self, adapter: Any, *, limits: SafeLimits | None = None, **kwargs: Any) -> None:
        self.limits = limits if limits is not None else SafeLimits()
        super().__init__(adapter, **kwargs)

    source_voltage = _guarded("source_voltage", _SOURCE_V)
    compliance_current = _guarded("compliance_current", _COMPLIANCE)
    current_range = _guarded("current_range", _I_RANGE)
    source_current = _guarded("source_current", _COMPLIANCE)
    source_current_range = _guarded("source_current_range", _I_RANGE)
    source_voltage_range = _guarded("source_voltage_range", _V_RANGE)
    voltage_range = _guarded("voltage_range", _V_RANGE)
    compliance_voltage = _guarded("compliance_voltage", _V_RANGE)
    current_nplc = _guarded("current_nplc", _NPLC)

    # ----- errors: raise instead of log -----------------------------------------------------
    def check_errors(self) -> list:
        """Drain ``SYST:ERR?``; raise :class:`InstrumentError` if the instrument reported any."""
        self.error_dialect.check(self, "<last command>")
        return []

    def measure_current(self, nplc: float = 1, current: float = 1.05e-4, auto_range: bool = True) -> None:
        """PyMeasure's measure_current with NPLC and range checked against the limits first."""
        _NPLC(self, "current_nplc", ":SENS:CURR:NPLC", nplc)
        if not auto_range:
            _I_RANGE(self, "current_range", ":SENS:CURR:RANG", current)
        super().measure_current(nplc=nplc, current=current, auto_range=auto_range)

    def ramp_to_voltage(self, target_voltage: float, steps: int = 30, pause: float = 20e-3) -> None:
        """PyMeasure's ramp (sourcing: bounded by ``v_prog_max_v``), refused up front outside the limits."""
        _SOURCE_V(self, "ramp_to_voltage", ":SOUR:VOLT:LEV", target_voltage)
        super().ramp_to_voltage(target_voltage, steps=steps, pause=pause)

    # ----- the measurement ---------------------------------------------------------------
    def measure_conductance_s(self, v_read_v: float, n_reads: int = 1, *, compliance_a: float | None = None,
                              nplc: float = 1.0) -> np.ndarray:
        """Source ``v_read_v``, read the current ``n_reads`` times, return ``I / V`` in siemens.

        Everything is checked before the first command: read voltage (non-zero, within
        ``v_read_max_v``: this is a read, not a program pulse), compliance (default
        ``i_compliance_max_a``) and NPLC. The source returns to 0 V and off even if a read fails.
        """
        _READ_V(self, "v_read_v", ":SOUR:VOLT:LEV", v_read_v)
        if v_read_v == 0:
            raise InstrumentError("v_read_v must be non-zero to compute G = I / V", command="measure_conductance")
        compliance = self.limits.i_compliance_max_a if compliance_a is None else compliance_a
        _COMPLIANCE(self, "compliance_current", ":SOUR:VOLT:ILIM", compliance)
        _NPLC(self, "current_nplc", ":SENS:CURR:NPLC", nplc)
        with self.lock:
            self.apply_voltage(compliance_current=compliance)
            self.measure_current(nplc=nplc)
            self.source_voltage = v_read_v
            self.enable_source()
            try:
                currents_a = np.array([float(self.current) for _ in range(int(n_reads))])
            finally:
                self.source_voltage = 0.0
                self.disable_source()
        return currents_a / float(v_read_v)


_NUMBER = re.compile(r"[-+]?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?\s*$")


def _resource_of(instrument: Any) -> str | None:
    """The VISA resource string behind a PyMeasure instrument (None for a test adapter)."""
    adapter = getattr(instrument, "adapter", None)
    name = getattr(adapter, "resource_name", None) or getattr(getattr(adapter, "connection", None),
                                                                "resource_name", None)
    return name if isinstance(name, str) else None


@contextlib.contextmanager
def _grounded_after(ground: Any) -> Iterator[None]:
    """Run ``ground()`` after the block, also when it fails (then ground's own error is not raised
    over the original one): a failed read must never leave the device biased."""
    try:
        yield
    except BaseException:
        try:
            ground()
        except Exception:  # noqa: BLE001 - the first error is the one to report
            pass
        raise
    ground()


def _checked_read_bias(limits: SafeLimits, v_read_v: float, compliance_a: float | None) -> float:
    """Refuse a read bias or compliance outside ``limits`` before ``DV`` is sent; return the compliance."""
    check_range("v_read_v", abs(v_read_v), 1e-12, limits.v_read_max_v, command="DV", unit=" V",
                limit="v_read_max_v")
    compliance = limits.i_compliance_max_a if compliance_a is None else compliance_a
    check_range("compliance_a", compliance, 0.0, limits.i_compliance_max_a, command="DV", unit=" A",
                limit="i_compliance_max_a")
    return compliance


class B1500Probe:
    """Conductance with one SMU of PyMeasure's :class:`~pymeasure.instruments.agilent.AgilentB1500`.

    Uses FLEX ``DV`` (through the driver's ``SMU.force``) and high-speed spot ``TI``; errors are
    read with ``ERRX?`` by the driver and re-raised as :class:`InstrumentError`.
    """

    def __init__(self, b1500: Any, smu: Any, *, limits: SafeLimits | None = None) -> None:
        self.b1500, self.smu = b1500, smu
        self.limits = limits if limits is not None else SafeLimits()
        self.idn = str(b1500.id)
        self.resource_name = _resource_of(b1500)

    def _ground(self) -> None:
        self.smu.force_gnd()  # DZ: the channel back to 0 V
        self.b1500.check_errors()

    def measure_conductance_s(self, v_read_v: float, n_reads: int = 1, *,
                              compliance_a: float | None = None) -> np.ndarray:
        """``DV`` the read bias, ``TI`` ``n_reads`` times, then ``DZ`` (also after an error); I / V in S."""
        compliance = _checked_read_bias(self.limits, v_read_v, compliance_a)
        try:
            self.smu.enable()
            with _grounded_after(self._ground):
                self.smu.force("Voltage", 0, v_read_v, comp=compliance)
                self.b1500.check_errors()
                replies = [self.b1500.ask(f"TI {self.smu.channel}") for _ in range(int(n_reads))]
        except OSError as exc:  # PyMeasure's B1500 raises OSError for ERRX? entries
            raise InstrumentError(str(exc), command="DV/TI", resource=self.resource_name) from exc
        currents = []
        for reply in replies:
            match = _NUMBER.search(reply.strip())
            if not match:
                raise InstrumentError("unparseable current", command="TI", reply=reply)
            currents.append(float(match.group(0)))
        return np.asarray(currents) / float(v_read_v)

    def close(self) -> None:
        self.b1500.adapter.close()


class K4200Probe:
    """Conductance with one SMU of PyMeasure's :class:`~pymeasure.instruments.keithley.Keithley4200`.

    KXCI user mode: ``DV`` through ``voltage_setpoint`` (acknowledged, ``ACK``), ``TI`` to measure.
    """

    def __init__(self, k4200: Any, smu_id: int = 1, *, limits: SafeLimits | None = None) -> None:
        self.k4200 = k4200
        self.smu = getattr(k4200, f"smu{smu_id}")
        self.limits = limits if limits is not None else SafeLimits()
        self.idn = str(k4200.id)
        self.resource_name = _resource_of(k4200)

    def measure_conductance_s(self, v_read_v: float, n_reads: int = 1, *,
                              compliance_a: float | None = None) -> np.ndarray:
        """``DV`` the read bias, ``TI`` ``n_reads`` times, then ``DV`` 0 V (also after an error); I / V in S."""
        compliance = _checked_read_bias(self.limits, v_read_v, compliance_a)

        def ground() -> None:
            self.smu.voltage_setpoint = (0, 0.0, compliance)

        try:
            with _grounded_after(ground):
                self.smu.voltage_setpoint = (0, v_read_v, compliance)
                currents = np.array([float(self.smu.current) for _ in range(int(n_reads))])
        except ValueError as exc:  # PyMeasure's 4200 raises ValueError when a command is not ACKed
            raise InstrumentError(str(exc), command="DV/TI", resource=self.resource_name) from exc
        return currents / float(v_read_v)

    def close(self) -> None:
        self.k4200.adapter.close()
