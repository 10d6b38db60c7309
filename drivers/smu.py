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

import re
from typing import Any, Protocol

import numpy as np
from pymeasure.instruments.keithley import Keithley2450 as _PyMeasureKeithley2450

from cimcal.drivers.instrument import CimcalInstrument
from cimcal.drivers.limits import SafeLimits, check_range
from cimcal.errors import InstrumentError

__all__ = ["ConductanceProbe", "Keithley2450", "B1500Probe", "K4200Probe"]


class ConductanceProbe(Protocol):
    """Anything that measures one device's conductance: the SMU campaigns' only need."""

    idn: str

    def measure_conductance_s(self, v_read_v: float, n_reads: int = 1) -> np.ndarray: ...

    def close(self) -> None: ...


def _guarded(name: str, check: str) -> property:
    """Re-declare PyMeasure property ``name`` with a limit check before its setter sends anything."""
    base = getattr(_PyMeasureKeithley2450, name)

    def fset(self: "Keithley2450", value: float) -> None:
        getattr(self, check)(name, value)
        base.fset(self, value)

    return property(base.fget, fset, doc=(base.__doc__ or "") + " Raises LimitError outside SafeLimits.")


class Keithley2450(_PyMeasureKeithley2450, CimcalInstrument):
    """PyMeasure's Keithley 2450 (SCPI command set) with cimcal's limits, lock, retries and error check.

    Parameters
    ----------
    adapter : VISA resource string or PyMeasure adapter.
    limits : safe limits; ``v_read_max_v`` bounds the source voltage, ``i_compliance_max_a`` the
        current compliance, ``i_range_max_a``/``v_range_max_v`` the ranges, ``nplc_*`` the NPLC.
    """

    def __init__(self, adapter: Any, *, limits: SafeLimits | None = None, **kwargs: Any) -> None:
        self.limits = limits if limits is not None else SafeLimits()
        super().__init__(adapter, **kwargs)

    # ----- limit checks (called by the guarded setters) -------------------------------------
    def _check_voltage(self, name: str, value: float) -> None:
        check_range(name, abs(float(value)), 0.0, self.limits.v_read_max_v, command=name, unit=" V")

    def _check_compliance(self, name: str, value: float) -> None:
        check_range(name, float(value), 0.0, self.limits.i_compliance_max_a, command=name, unit=" A")

    def _check_i_range(self, name: str, value: float) -> None:
        check_range(name, abs(float(value)), 0.0, self.limits.i_range_max_a, command=name, unit=" A")

    def _check_v_range(self, name: str, value: float) -> None:
        check_range(name, abs(float(value)), 0.0, self.limits.v_range_max_v, command=name, unit=" V")

    def _check_nplc(self, name: str, value: float) -> None:
        check_range(name, float(value), self.limits.nplc_min, self.limits.nplc_max, command=name)

    source_voltage = _guarded("source_voltage", "_check_voltage")
    compliance_current = _guarded("compliance_current", "_check_compliance")
    current_range = _guarded("current_range", "_check_i_range")
    source_current = _guarded("source_current", "_check_compliance")
    source_current_range = _guarded("source_current_range", "_check_i_range")
    source_voltage_range = _guarded("source_voltage_range", "_check_v_range")
    voltage_range = _guarded("voltage_range", "_check_v_range")
    compliance_voltage = _guarded("compliance_voltage", "_check_v_range")
    current_nplc = _guarded("current_nplc", "_check_nplc")

    # ----- errors: raise instead of log -----------------------------------------------------
    def check_errors(self) -> list:
        """Drain ``SYST:ERR?``; raise :class:`InstrumentError` if the instrument reported any."""
        self.error_dialect.check(self, "<last command>")
        return []

    def measure_current(self, nplc: float = 1, current: float = 1.05e-4, auto_range: bool = True) -> None:
        """PyMeasure's measure_current with NPLC and range checked against the limits first."""
        self._check_nplc("current_nplc", nplc)
        if not auto_range:
            self._check_i_range("current_range", current)
        super().measure_current(nplc=nplc, current=current, auto_range=auto_range)

    def ramp_to_voltage(self, target_voltage: float, steps: int = 30, pause: float = 20e-3) -> None:
        """PyMeasure's ramp, refused up front if the target is outside the limits."""
        self._check_voltage("source_voltage", target_voltage)
        super().ramp_to_voltage(target_voltage, steps=steps, pause=pause)

    # ----- the measurement ---------------------------------------------------------------
    def measure_conductance_s(self, v_read_v: float, n_reads: int = 1, *, compliance_a: float | None = None,
                              nplc: float = 1.0) -> np.ndarray:
        """Source ``v_read_v``, read the current ``n_reads`` times, return ``I / V`` in siemens.

        Everything is checked before the first command: read voltage (non-zero, within
        ``v_read_max_v``), compliance (default ``i_compliance_max_a``) and NPLC.
        """
        self._check_voltage("source_voltage", v_read_v)
        if v_read_v == 0:
            raise InstrumentError("v_read_v must be non-zero to compute G = I / V", command="measure_conductance")
        compliance = self.limits.i_compliance_max_a if compliance_a is None else compliance_a
        self._check_compliance("compliance_current", compliance)
        self._check_nplc("current_nplc", nplc)
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


class B1500Probe:
    """Conductance with one SMU of PyMeasure's :class:`~pymeasure.instruments.agilent.AgilentB1500`.

    Uses FLEX ``DV`` (through the driver's ``SMU.force``) and high-speed spot ``TI``; errors are
    read with ``ERRX?`` by the driver and re-raised as :class:`InstrumentError`.
    """

    def __init__(self, b1500: Any, smu: Any, *, limits: SafeLimits | None = None) -> None:
        self.b1500, self.smu = b1500, smu
        self.limits = limits if limits is not None else SafeLimits()
        self.idn = str(b1500.id)

    def measure_conductance_s(self, v_read_v: float, n_reads: int = 1, *,
                              compliance_a: float | None = None) -> np.ndarray:
        check_range("source voltage", abs(v_read_v), 1e-12, self.limits.v_read_max_v, command="DV", unit=" V")
        compliance = self.limits.i_compliance_max_a if compliance_a is None else compliance_a
        check_range("compliance current", compliance, 0.0, self.limits.i_compliance_max_a, command="DV", unit=" A")
        try:
            self.smu.enable()
            self.smu.force("Voltage", 0, v_read_v, comp=compliance)
            self.b1500.check_errors()
            replies = [self.b1500.ask(f"TI {self.smu.channel}") for _ in range(int(n_reads))]
            self.smu.force_gnd()
            self.b1500.check_errors()
        except OSError as exc:  # PyMeasure's B1500 raises OSError for ERRX? entries
            raise InstrumentError(str(exc), command="DV/TI", resource=str(self.idn)) from exc
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

    def measure_conductance_s(self, v_read_v: float, n_reads: int = 1, *,
                              compliance_a: float | None = None) -> np.ndarray:
        check_range("source voltage", abs(v_read_v), 1e-12, self.limits.v_read_max_v, command="DV", unit=" V")
        compliance = self.limits.i_compliance_max_a if compliance_a is None else compliance_a
        check_range("compliance current", compliance, 0.0, self.limits.i_compliance_max_a, command="DV", unit=" A")
        try:
            self.smu.voltage_setpoint = (0, v_read_v, compliance)
            currents = np.array([float(self.smu.current) for _ in range(int(n_reads))])
            self.smu.voltage_setpoint = (0, 0.0, compliance)
        except ValueError as exc:  # PyMeasure's 4200 raises ValueError when a command is not ACKed
            raise InstrumentError(str(exc), command="DV/TI", resource=self.idn) from exc
        return currents / float(v_read_v)

    def close(self) -> None:
        self.k4200.adapter.close()
