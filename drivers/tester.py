"""CIMTester: the CIM chip tester's SCPI command set (docs/scpi.md) as a typed Python API.

Scalar settings are PyMeasure descriptors (one line each: command, validator, units); maps and
vectors travel as little-endian IEEE 488.2 blocks. Every request is checked against the chip's
geometry and the :class:`~cimcal.drivers.limits.SafeLimits` *before* anything is sent.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from pymeasure.instruments import Instrument

from cimcal.drivers.instrument import CimcalInstrument, guarded_control
from cimcal.drivers.limits import SafeLimits, check_range
from cimcal.errors import InstrumentError, LimitError

__all__ = ["CIMTester", "TesterConfig"]


@dataclass(frozen=True)
class TesterConfig:
    """What the chip says about itself (``CHIP:*?``, ``ADC:*?``, ``DAC:*?``, ``LIMit:*?``)."""

    arrays: int
    rows: int
    cols: int
    levels: int
    targets_us: tuple[float, ...]
    adc_bits: int
    adc_range_ua: tuple[float, float]
    dac_bits: int
    dac_range_v: tuple[float, float]
    v_read_max_v: float
    v_prog_max_v: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _pair(values: list[float]) -> tuple[float, float]:
    if len(values) != 2:
        raise ValueError(f"expected two values, got {values}")
    return float(values[0]), float(values[1])


def _two_fields(command: str) -> Callable[[str], str]:
    """``preprocess_reply`` of a (min, max) query: refuse a reply that is not exactly two fields.

    (PyMeasure hands a one-value reply to ``get_process``, not ``get_process_list``: without this
    check ``ADC:RANG? -> 100`` would become the float 100.0.)
    """

    def check(reply: str) -> str:
        if len(reply.split(",")) != 2:
            raise InstrumentError("expected two numbers 'min,max'", command=command, reply=reply)
        return reply

    return check


def _check_temperature(tester: "CIMTester", name: str, command: str, value: float) -> None:
    check_range(name, value, tester.limits.temp_min_c, tester.limits.temp_max_c, command=command, unit=" C",
                limit="temp_min_c/temp_max_c")


class CIMTester(CimcalInstrument):
    """A CIM chip tester (FPGA board or the simulated chip) over VISA.

    Parameters
    ----------
    adapter : VISA resource string (e.g. ``"TCPIP0::127.0.0.1::5025::SOCKET"``) or a PyMeasure adapter.
    limits : safe operating limits; requests outside them raise :class:`LimitError`, nothing sent.
    timeout_ms, retries, visa_library : see :class:`CimcalInstrument`.
    """

    strict_values = True  # every reply of the command set is numeric: a non-number is garbled

    # ----- declarative configuration and state ------------------------------------------------
    arrays = Instrument.measurement("CHIP:ARR?", "Number of arrays (tiles) on the chip (int).", cast=int)
    rows = Instrument.measurement("CHIP:ROWS?", "Rows per array (int).", cast=int)
    cols = Instrument.measurement("CHIP:COL?", "Columns per array (int).", cast=int)
    n_levels = Instrument.measurement("CHIP:LEV?", "Number of programmable levels L (int).", cast=int)
    level_targets_us = Instrument.measurement(
        "CHIP:LEV:TARG?", "Target conductance of levels 0..L-1, microsiemens (list of float).",
        get_process_list=lambda v: [float(x) for x in v], get_process=lambda v: [float(v)])  # one level: one value
    adc_bits = Instrument.measurement("ADC:BITS?", "ADC resolution, bits (int).", cast=int)
    adc_range_ua = Instrument.measurement(
        "ADC:RANG?", "ADC input range (min, max) of column current, microamperes.", get_process_list=_pair,
        preprocess_reply=_two_fields("ADC:RANG?"))
    dac_bits = Instrument.measurement("DAC:BITS?", "Input DAC resolution, bits (int).", cast=int)
    dac_range_v = Instrument.measurement(
        "DAC:RANG?", "Input DAC voltage range (min, max), volts.", get_process_list=_pair,
        preprocess_reply=_two_fields("DAC:RANG?"))
    chip_v_read_max_v = Instrument.measurement("LIM:VRE?", "The chip's own maximum read voltage, volts.")
    chip_v_prog_max_v = Instrument.measurement("LIM:VPR?", "The chip's own maximum program voltage, volts.")
    clock_s = Instrument.measurement("CLOC?", "Simulated/real seconds since power-on (float).")
    temperature_c = guarded_control(Instrument.control(
        "TEMP?", "TEMP %g", "Chip temperature set point and reading, degrees Celsius.", check_set_errors=True),
        "temperature_c", _check_temperature,
        " Raises LimitError outside SafeLimits.temp_min_c/temp_max_c; transport faults retry, then InstrumentError.")

    def __init__(self, adapter: Any, *, limits: SafeLimits | None = None, name: str = "CIM tester",
                 **kwargs: Any) -> None:
        super().__init__(adapter, name, **kwargs)
        self.limits = limits if limits is not None else SafeLimits()
        self._config: TesterConfig | None = None

    def check_set_errors(self) -> list:
        """Run the error-queue check after a descriptor set (raises InstrumentError)."""
        self.error_dialect.check(self, "<property set>")
        return []

    check_get_errors = check_set_errors

    # ----- configuration ---------------------------------------------------------------------
    @property
    def config(self) -> TesterConfig:
        """The chip's geometry, levels, converter ranges and limits (queried once, then cached)."""
        if self._config is None:
            arrays, rows, cols, levels = self.arrays, self.rows, self.cols, self.n_levels  # the protocol's order
            targets = tuple(self.level_targets_us)
            if len(targets) != levels:
                raise InstrumentError(f"{len(targets)} level targets for the {levels} levels CHIP:LEV? reported",
                                      command="CHIP:LEV:TARG?", reply=",".join(f"{t:g}" for t in targets),
                                      resource=self.resource_name)
            self._config = TesterConfig(
                arrays=arrays, rows=rows, cols=cols, levels=levels, targets_us=targets, adc_bits=self.adc_bits,
                adc_range_ua=self.adc_range_ua, dac_bits=self.dac_bits, dac_range_v=self.dac_range_v,
                v_read_max_v=float(self.chip_v_read_max_v), v_prog_max_v=float(self.chip_v_prog_max_v))
        return self._config

    def reset(self) -> None:
        """``*RST``: power-on state (levels unprogrammed, clock kept)."""
        self.command("*RST")

    def clear(self) -> None:
        """``*CLS``: clear the error queue."""
        self.write("*CLS")

    def opc(self) -> bool:
        """``*OPC?``: True once pending operations are complete."""
        return self.query("*OPC?", lambda r: int(r.strip()) == 1)

    # ----- argument checks (before anything is sent) ---------------------------------------------
    def _array(self, a: int, command: str) -> int:
        return int(check_range("array", a, 0, self.config.arrays - 1, command=command))

    def _window(self, n: int, span: tuple[int, int] | None, what: str, command: str) -> tuple[int, int]:
        lo, hi = (0, n) if span is None else (int(span[0]), int(span[1]))
        if not (0 <= lo < hi <= n):
            raise LimitError(f"{what} range [{lo}, {hi}) is outside [0, {n}); nothing was sent", command=command)
        return lo, hi

    def _shaped(self, values: np.ndarray, shape: tuple[int, ...], command: str) -> np.ndarray:
        """``values`` reshaped to ``shape``; a reply with the wrong number of values is an InstrumentError."""
        expected = int(np.prod(shape))
        if values.size != expected:
            raise InstrumentError(f"reply carried {values.size} values, expected {expected}", command=command,
                                  resource=self.resource_name)
        return values.reshape(shape)

    def _levels(self, levels: np.ndarray, command: str) -> None:
        if levels.size and (levels.min() < 0 or levels.max() >= self.config.levels):
            raise LimitError(f"levels must lie in [0, {self.config.levels - 1}], got "
                             f"[{levels.min()}, {levels.max()}]; nothing was sent", command=command)

    def check_program_voltage(self, command: str = "PROG") -> None:
        """Refuse to program a chip whose own program voltage exceeds ``limits.v_prog_max_v``.

        The tester has no program-voltage command: its program-and-verify loop applies up to
        ``LIMit:VPRog?`` volts by itself, so that reported value is what the limit is checked against.
        """
        chip_v = self.config.v_prog_max_v
        if not chip_v <= self.limits.v_prog_max_v:
            raise LimitError(
                f"the chip programs with up to {chip_v:g} V (LIMit:VPRog?), above the safe limit v_prog_max_v = "
                f"{self.limits.v_prog_max_v:g} V; nothing was sent (raise v_prog_max_v with --limits / SafeLimits "
                "only if the chip is rated for it)", command=command)

    # ----- programming ---------------------------------------------------------------------
    def program_array(self, a: int, levels: np.ndarray) -> None:
        """``PROG:ARRay``: program-and-verify every cell of array ``a`` to an (R, C) level map."""
        command = "PROG:ARR"
        a = self._array(a, command)
        self.check_program_voltage(command)
        levels = np.asarray(levels)
        cfg = self.config
        if levels.shape != (cfg.rows, cfg.cols):
            raise LimitError(f"level map shape {levels.shape} != ({cfg.rows}, {cfg.cols}); nothing was sent",
                             command=command)
        self._levels(levels, command)
        self.command_with_block(f"PROG:ARR {a},", levels.astype(np.uint8), "u1")

    def program_cells(self, a: int, rows: np.ndarray, cols: np.ndarray, levels: np.ndarray) -> None:
        """``PROG:CELLs``: program a subset of cells, given as equal-length row/col/level vectors."""
        command = "PROG:CELL"
        a = self._array(a, command)
        self.check_program_voltage(command)
        rows, cols, levels = (np.asarray(x, dtype=np.int64).ravel() for x in (rows, cols, levels))
        if not (rows.size == cols.size == levels.size):
            raise LimitError("rows, cols and levels must have equal lengths; nothing was sent", command=command)
        cfg = self.config
        if rows.size and (rows.min() < 0 or rows.max() >= cfg.rows or cols.min() < 0 or cols.max() >= cfg.cols):
            raise LimitError(f"cells must lie inside the {cfg.rows}x{cfg.cols} array; nothing was sent",
                             command=command)
        self._levels(levels, command)
        triples = np.stack([rows, cols, levels], axis=1).astype(np.int32)
        self.command_with_block(f"PROG:CELL {a},", triples, "i4")

    def program_result(self, a: int) -> np.ndarray:
        """``PROG:RESult?``: (R, C) int16 pulses used per cell (-1 failed verify, 0 not programmed)."""
        a = self._array(a, "PROG:RES?")
        cfg = self.config
        return self._shaped(self.query_block(f"PROG:RES? {a}", "i2"), (cfg.rows, cfg.cols), "PROG:RES?")

    def program_time(self, a: int) -> np.ndarray:
        """``PROG:TIME?``: (R, C) float64 clock time each cell was last programmed (nan if never)."""
        a = self._array(a, "PROG:TIME?")
        cfg = self.config
        return self._shaped(self.query_block(f"PROG:TIME? {a}", "f8"), (cfg.rows, cfg.cols), "PROG:TIME?")

    # ----- reading -----------------------------------------------------------------------
    def read_map(self, a: int, rows: tuple[int, int] | None = None,
                 cols: tuple[int, int] | None = None) -> np.ndarray:
        """``READ:MAP?``: one read of a window (half-open ``rows``/``cols``), float32 µS, shape (r, c)."""
        command = "READ:MAP?"
        a = self._array(a, command)
        cfg = self.config
        r0, r1 = self._window(cfg.rows, rows, "row", command)
        c0, c1 = self._window(cfg.cols, cols, "column", command)
        suffix = "" if rows is None and cols is None else f",{r0},{r1},{c0},{c1}"
        return self._shaped(self.query_block(f"READ:MAP? {a}{suffix}", "f4"), (r1 - r0, c1 - c0), command)

    def read_cell(self, a: int, r: int, c: int) -> float:
        """``READ:CELL?``: one cell, µS (the slow per-cell path)."""
        command = "READ:CELL?"
        a = self._array(a, command)
        cfg = self.config
        r = int(check_range("row", r, 0, cfg.rows - 1, command=command))
        c = int(check_range("column", c, 0, cfg.cols - 1, command=command))
        return self.query(f"READ:CELL? {a},{r},{c}", float)

    # ----- compute ------------------------------------------------------------------------
    def _input_vectors(self, inputs_v: np.ndarray, command: str) -> np.ndarray:
        """Inputs as (n, R) float32 volts, refused before sending if outside the read limit or the DAC range."""
        inputs_v = np.asarray(inputs_v, dtype=np.float32)
        if inputs_v.ndim == 1:
            inputs_v = inputs_v[None, :]
        cfg = self.config
        if inputs_v.ndim != 2 or inputs_v.shape[1] != cfg.rows:
            raise LimitError(f"inputs must have shape (n, {cfg.rows}), got {inputs_v.shape}; nothing was sent",
                             command=command)
        # inputs travel as float32: compare in float32 so 0.2 (float64) admits float32(0.2)
        v_max = float(np.float32(min(self.limits.v_read_max_v, cfg.v_read_max_v)))
        peak = float(np.max(np.abs(inputs_v))) if inputs_v.size else 0.0
        check_range("|input voltage|", peak, 0.0, v_max, command=command, unit=" V", limit="v_read_max_v")
        if inputs_v.size:  # the DAC converts only its range (DAC:RANGe?): refuse rather than let it clip
            lo, hi = (float(np.float32(x)) for x in cfg.dac_range_v)
            low, high = float(inputs_v.min()), float(inputs_v.max())
            if low < lo or high > hi:
                raise LimitError(f"input voltages [{low:g}, {high:g}] V leave the DAC range [{lo:g}, {hi:g}] V "
                                 "(DAC:RANGe?); nothing was sent", command=command)
        return inputs_v

    def mvm(self, a: int, inputs_v: np.ndarray) -> np.ndarray:
        """``MVM?``: apply ``n`` input vectors (n, R) in volts; return (n, C) int16 ADC codes."""
        command = "MVM?"
        a = self._array(a, command)
        inputs_v = self._input_vectors(inputs_v, command)
        n = inputs_v.shape[0]
        if n == 0:  # the tester refuses n = 0 (and would leave the read to time out): send nothing
            return np.zeros((0, self.config.cols), dtype=np.int16)
        codes = self.command_with_block(f"MVM? {a},{n},", inputs_v, "f4", query_dtype="i2", idempotent=True)
        return self._shaped(codes, (n, self.config.cols), command)

    def mvm_differential(self, a: int, inputs_v: np.ndarray, gain: float, offset_ua: float) -> np.ndarray:
        """``MVM:DIFFerential?``: (n, R) volts -> (n, C/2) codes of ``offset_ua + gain * (I_k - I_{k+C/2})``.

        Column pair (k, k + C/2) holds a differential weight (G+, G-); column k's ADC converts the
        difference once (the read-out cimcal.deploy uses). ``gain`` in [1/64, 1024]; ``offset_ua``
        (reference current) within ``ADC:RANGe?``.
        """
        command = "MVM:DIFF?"
        a = self._array(a, command)
        inputs_v = self._input_vectors(inputs_v, command)
        cfg = self.config
        check_range("read-out gain", gain, 1.0 / 64.0, 1024.0, command=command)
        check_range("read-out offset", offset_ua, cfg.adc_range_ua[0], cfg.adc_range_ua[1], command=command,
                    unit=" uA")
        n = inputs_v.shape[0]
        if n == 0:  # as in mvm: send nothing for an empty batch
            return np.zeros((0, cfg.cols // 2), dtype=np.int16)
        codes = self.command_with_block(f"MVM:DIFF? {a},{n},{gain:.9g},{offset_ua:.9g},", inputs_v, "f4",
                                        query_dtype="i2", idempotent=True)
        return self._shaped(codes, (n, cfg.cols // 2), command)

    def adc_test(self, a: int, col: int, inputs_ua: np.ndarray) -> np.ndarray:
        """``ADC:TEST?``: feed known currents (µA) straight into column ``col``'s ADC; return int16 codes."""
        command = "ADC:TEST?"
        a = self._array(a, command)
        col = int(check_range("column", col, 0, self.config.cols - 1, command=command))
        inputs_ua = np.asarray(inputs_ua, dtype=np.float32).ravel()
        peak = float(np.max(np.abs(inputs_ua))) if inputs_ua.size else 0.0
        check_range("|ADC test input|", peak, 0.0, float(np.float32(self.limits.adc_test_max_ua)), command=command,
                    unit=" uA", limit="adc_test_max_ua")
        codes = self.command_with_block(f"ADC:TEST? {a},{col},", inputs_ua, "f4", query_dtype="i2",
                                        idempotent=True)
        return self._shaped(codes, inputs_ua.shape, command)

    # ----- clock and temperature ----------------------------------------------------------------
    def clock(self) -> float:
        """``CLOCk?``: seconds since power-on (simulated on the sim chip)."""
        return float(self.clock_s)

    def advance(self, seconds: float) -> None:
        """``CLOCk:ADVance``: age the simulated chip by ``seconds`` (not retried: not idempotent)."""
        seconds = check_range("clock advance", seconds, 0.0, self.limits.advance_max_s, command="CLOC:ADV",
                              unit=" s", limit="advance_max_s")
        self.command(f"CLOC:ADV {seconds:.9g}")

    def temperature(self, set_c: float | None = None) -> float:
        """Read the chip temperature, or set it first when ``set_c`` is given (°C)."""
        if set_c is not None:
            self.temperature_c = set_c  # limit-checked, locked, error-checked, retried (guarded_control)
        return float(self.temperature_c)
