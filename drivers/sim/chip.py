"""Physics of the simulated compute-in-memory chip (numpy only, seeded, vectorized over cells).

Model, per array of ``rows x cols`` multi-level cells:

- **Programming** is an iterative program-and-verify loop run for all still-unverified cells at
  once: a RESET pulse, then verify reads (with read noise) and corrective pulses whose response is
  stochastic (per-cell gain from device-to-device variation, lognormal cycle-to-cycle spread,
  additive noise, occasional abrupt jumps), bounded by a per-cell reachable maximum. A cell stops
  when a verify read lies within ``tol_us`` of its target, or fails after ``max_pulses``. After
  verification the cell relaxes slightly. The final error is thus a truncated, roughly uniform
  band convolved with small noise, plus failed cells: non-Gaussian by construction.
- **Stuck cells** (stuck-on / stuck-off fractions) ignore pulses.
- **Reads** add conductance-dependent noise ``sigma = a * G**b`` (1/f-like; ``a`` varies from cell
  to cell, scaled with sqrt(T)) and random telegraph noise on a fraction of cells; reads are
  clipped at 0 µS.
- **Drift**: ``G(t) = G0 * (t / t0) ** -nu`` for ``t > t0`` since programming, per-cell ``nu``
  (larger at low conductance when ``drift_nu_low_g_factor > 0``). Time is Arrhenius-scaled with
  the temperature history (``drift_ea_ev``), so hot storage ages the chip faster.
- **Temperature** also scales the read conductance by ``1 + g_tc_per_c * (T - 25 °C)``.
- **MVM**: inputs quantized by the DAC, column currents ``I = V @ G`` (µS * V = µA), with the
  read noise of every cell, optional IR drop (series wire resistance per cell pitch), then each
  column's ADC: gain and offset error (offset drifts with temperature), INL bow, non-uniform code
  thresholds (DNL, possibly missing codes), thermal noise and saturation.
- **Clock**: simulated seconds since power-on; every operation advances it by a realistic amount
  (see :class:`~cimcal.drivers.sim.config.SimConfig` ``t_*_s``), :meth:`SimChip.advance` ages it.

The chip is not thread-safe: the server serializes access with a lock.
"""

from __future__ import annotations

import os

import numpy as np

from cimcal.drivers.sim.config import SimConfig, load_config, load_preset
from cimcal.errors import ConfigError

__all__ = ["SimChip"]

_BOLTZMANN_EV = 8.617333262e-5
_T_REF_K = 298.15
ADC_GAIN_RANGE = (1.0 / 64.0, 1024.0)  # differential read-out gain (MVM:DIFFerential?)


class SimChip:
    """A seeded simulated chip; ``SimChip.from_preset("rram", seed=0)``.

    Out-of-range requests raise :class:`~cimcal.errors.ConfigError` with a one-line message.
    """

    def __init__(self, config: SimConfig | None = None, seed: int = 0) -> None:
        self.config = (config or SimConfig()).validate()
        self.seed = int(seed)
        self._rng = np.random.default_rng(self.seed)
        self._build()
        self.reset()

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_preset(cls, name: str = "rram", seed: int = 0) -> SimChip:
        """A chip from a built-in preset (``"rram"`` or ``"pcm"``)."""
        return cls(load_preset(name), seed=seed)

    @classmethod
    def from_config(cls, path: str | os.PathLike[str], seed: int = 0) -> SimChip:
        """A chip from a TOML config file (see :mod:`cimcal.drivers.sim.config`)."""
        return cls(load_config(path), seed=seed)

    def _build(self) -> None:
        cfg, rng = self.config, self._rng
        shape = (cfg.n_arrays, cfg.rows, cfg.cols)
        self.targets_us = np.linspace(cfg.g_min_us, cfg.g_max_us, cfg.n_levels)
        # device-to-device parameters, fixed at "fabrication"
        self._gain = cfg.pulse_gain * np.exp(rng.normal(0.0, cfg.pulse_gain_d2d_sigma, shape))
        self._ceiling_us = cfg.g_max_us * cfg.g_ceiling_rel * np.exp(
            rng.normal(0.0, cfg.g_ceiling_d2d_sigma, shape))
        self._nu_base = np.clip(rng.normal(cfg.drift_nu_mean, cfg.drift_nu_sigma, shape), 0.0, None)
        u = rng.random(shape)
        self._stuck = np.zeros(shape, dtype=np.int8)
        self._stuck[u < cfg.stuck_on_frac] = 1
        self._stuck[(u >= cfg.stuck_on_frac) & (u < cfg.stuck_on_frac + cfg.stuck_off_frac)] = -1
        self._rtn = rng.random(shape) < cfg.rtn_frac
        self._noise_rel = np.exp(rng.normal(0.0, cfg.read_noise_d2d_sigma, shape)).astype(np.float32)
        self._rtn[self._stuck != 0] = False
        log_lo, log_hi = np.log(cfg.g_init_min_us), np.log(cfg.g_init_max_us)
        self._g0_us = np.exp(rng.uniform(log_lo, log_hi, shape))
        stuck_spread = np.exp(rng.normal(0.0, cfg.stuck_sigma_rel, shape))
        self._g0_us = np.where(self._stuck == 1, cfg.stuck_on_g_us * stuck_spread, self._g0_us)
        self._g0_us = np.where(self._stuck == -1, cfg.stuck_off_g_us * stuck_spread, self._g0_us)
        self._nu = np.where(self._stuck != 0, 0.0, self._nu_base)
        # the per-read hot path works in float32 (plenty for µS values; 2x faster transcendentals)
        self._g0_us = self._g0_us.astype(np.float32)
        self._nu = self._nu.astype(np.float32)
        self._prog_clock_s = np.full(shape, np.nan)
        self._prog_eff_s = np.zeros(shape)
        self._level = np.full(shape, -1, dtype=np.int16)
        # per-column ADCs
        n_codes = 2**cfg.adc_bits
        adc_shape = (cfg.n_arrays, cfg.cols)
        self._adc_gain = 1.0 + rng.normal(0.0, cfg.adc_gain_sigma, adc_shape)
        self._adc_offset_lsb = rng.normal(0.0, cfg.adc_offset_sigma_lsb, adc_shape)
        self._adc_bow_lsb = rng.normal(0.0, cfg.adc_inl_bow_sigma_lsb, adc_shape)
        ideal = np.arange(1, n_codes, dtype=np.float64)
        jitter = rng.normal(0.0, cfg.adc_dnl_sigma_lsb, (*adc_shape, n_codes - 1))
        self._adc_thresholds_lsb = np.sort(ideal + jitter, axis=-1)
        # IR drop: wire resistance from the row driver (left) and to the column ADC (bottom)
        rr, cc = np.meshgrid(np.arange(cfg.rows), np.arange(cfg.cols), indexing="ij")
        self._r_series_ohm = cfg.r_wire_ohm * ((cc + 1) + (cfg.rows - rr)).astype(np.float64)
        self._clock_s = 0.0
        self._eff_clock_s = 0.0

    def reset(self) -> None:
        """``*RST``: default temperature, programming results cleared. Cell states are non-volatile."""
        self._temp_c = self.config.temp_default_c
        self._pulses = np.zeros(self._g0_us.shape, dtype=np.int16)

    # ------------------------------------------------------------------ scalar properties
    @property
    def n_arrays(self) -> int:
        return self.config.n_arrays

    @property
    def rows(self) -> int:
        return self.config.rows

    @property
    def cols(self) -> int:
        return self.config.cols

    @property
    def n_levels(self) -> int:
        return self.config.n_levels

    @property
    def clock_s(self) -> float:
        """Simulated seconds since power-on."""
        return self._clock_s

    @property
    def temperature_c(self) -> float:
        return self._temp_c

    @temperature_c.setter
    def temperature_c(self, value: float) -> None:
        cfg = self.config
        if not (np.isfinite(value) and cfg.temp_min_c <= value <= cfg.temp_max_c):
            raise ConfigError(f"temperature must be in {cfg.temp_min_c:g}..{cfg.temp_max_c:g} degC, got {value!r}")
        self._temp_c = float(value)

    # ------------------------------------------------------------------ time
    def _accel(self) -> float:
        """Arrhenius acceleration of drift time at the current temperature (1 at 25 °C)."""
        t_k = self._temp_c + 273.15
        return float(np.exp(self.config.drift_ea_ev / _BOLTZMANN_EV * (1.0 / _T_REF_K - 1.0 / t_k)))

    def _tick(self, seconds: float) -> None:
        self._clock_s += seconds
        self._eff_clock_s += seconds * self._accel()

    def advance(self, seconds: float) -> None:
        """Age the chip by ``seconds`` of simulated time at the current temperature."""
        if not (np.isfinite(seconds) and 0.0 <= seconds <= 1e10):
            raise ConfigError(f"advance must be in 0..1e10 s, got {seconds!r}")
        self._tick(float(seconds))

    def note_command(self) -> None:
        """Advance the clock by the fixed per-command overhead (called by the SCPI dispatcher)."""
        self._tick(self.config.t_cmd_s)

    # ------------------------------------------------------------------ validation helpers
    def _check_array(self, a: int) -> int:
        if not 0 <= a < self.config.n_arrays:
            raise ConfigError(f"array must be in 0..{self.config.n_arrays - 1}, got {a}")
        return int(a)

    def _check_window(self, r0: int, r1: int, c0: int, c1: int) -> tuple[slice, slice]:
        cfg = self.config
        if not (0 <= r0 < r1 <= cfg.rows and 0 <= c0 < c1 <= cfg.cols):
            raise ConfigError(
                f"window rows {r0}..{r1}, cols {c0}..{c1} must satisfy 0 <= r0 < r1 <= {cfg.rows}, "
                f"0 <= c0 < c1 <= {cfg.cols}")
        return slice(r0, r1), slice(c0, c1)

    # ------------------------------------------------------------------ conductance
    def _temp_factor(self) -> float:
        return 1.0 + self.config.g_tc_per_c * (self._temp_c - 25.0)

    def _noise_scale(self) -> float:
        return float(np.sqrt((self._temp_c + 273.15) / _T_REF_K))

    def _sigma_us(self, g_us: np.ndarray, noise_rel: np.ndarray) -> np.ndarray:
        """Read-noise sigma (µS): ``a * G**b`` times the cell's own factor, scaled with sqrt(T)."""
        cfg = self.config
        scale = g_us.dtype.type(cfg.read_noise_a * self._noise_scale())
        with np.errstate(divide="ignore"):  # log(0) -> -inf -> sigma 0
            power = np.exp(g_us.dtype.type(cfg.read_noise_b) * np.log(np.maximum(g_us, 0.0)))
        return scale * noise_rel * power

    def _true_g(self, a: int, rows: slice, cols: slice) -> np.ndarray:
        t_eff = self._eff_clock_s - self._prog_eff_s[a, rows, cols]
        log_t = np.log(np.maximum(t_eff * (1.0 / self.config.drift_t0_s), 1.0).astype(np.float32))
        drift = np.exp(-self._nu[a, rows, cols] * log_t)
        return self._g0_us[a, rows, cols] * drift * np.float32(self._temp_factor())

    def true_conductance_us(self, a: int) -> np.ndarray:
        """Noise-free conductance of every cell now (simulator truth; not reachable over SCPI)."""
        a = self._check_array(a)
        return self._true_g(a, slice(None), slice(None))

    def drift_nu(self, a: int) -> np.ndarray:
        """Per-cell drift exponents (simulator truth)."""
        return self._nu[self._check_array(a)].copy()

    def stuck_map(self, a: int) -> np.ndarray:
        """int8 map: 1 stuck-on, -1 stuck-off, 0 healthy (simulator truth)."""
        return self._stuck[self._check_array(a)].copy()

    def adc_params(self, a: int) -> dict[str, np.ndarray]:
        """Per-column ADC gain, offset (LSB at 25 °C), INL bow (LSB) and code thresholds (LSB)."""
        a = self._check_array(a)
        return {
            "gain": self._adc_gain[a].copy(),
            "offset_lsb": self._adc_offset_lsb[a].copy(),
            "bow_lsb": self._adc_bow_lsb[a].copy(),
            "thresholds_lsb": self._adc_thresholds_lsb[a].copy(),
        }

    def _read(self, g_us: np.ndarray, rtn: np.ndarray, noise_rel: np.ndarray) -> np.ndarray:
        rng = self._rng
        out = g_us + self._sigma_us(g_us, noise_rel) * rng.standard_normal(g_us.shape, dtype=g_us.dtype)
        idx = np.flatnonzero(rtn)
        if idx.size:
            flat = out.reshape(-1)
            state = rng.integers(0, 2, idx.size) - 0.5
            flat[idx] += self.config.rtn_rel_amp * g_us.reshape(-1)[idx] * state
        return np.maximum(out, 0.0)

    def read_map(self, a: int, r0: int = 0, r1: int | None = None, c0: int = 0,
                 c1: int | None = None) -> np.ndarray:
        """One read of a window (half-open ranges) of array ``a``: float32 µS, shape (r1-r0, c1-c0)."""
        a = self._check_array(a)
        r1 = self.config.rows if r1 is None else r1
        c1 = self.config.cols if c1 is None else c1
        rows, cols = self._check_window(r0, r1, c0, c1)
        g = self._read(self._true_g(a, rows, cols), self._rtn[a, rows, cols], self._noise_rel[a, rows, cols])
        self._tick(g.size * self.config.t_read_cell_s)
        return g.astype(np.float32)

    def read_cell(self, a: int, r: int, c: int) -> float:
        """One read of one cell (µS)."""
        return float(self.read_map(a, r, r + 1, c, c + 1)[0, 0])

    # ------------------------------------------------------------------ programming
    def _check_levels(self, levels: np.ndarray) -> None:
        if levels.size and (levels.min() < 0 or levels.max() >= self.config.n_levels):
            raise ConfigError(f"levels must be in 0..{self.config.n_levels - 1}, "
                              f"got {int(levels.min())}..{int(levels.max())}")

    def program_array(self, a: int, levels: np.ndarray) -> np.ndarray:
        """Program-and-verify every cell of array ``a`` to ``levels`` (R, C); returns pulses (int16)."""
        a = self._check_array(a)
        cfg = self.config
        levels = np.asarray(levels)
        if levels.shape != (cfg.rows, cfg.cols):
            raise ConfigError(f"level map must have shape ({cfg.rows}, {cfg.cols}), got {levels.shape}")
        levels = levels.astype(np.int64).ravel()
        self._check_levels(levels)
        self._program(a, np.arange(levels.size), levels)
        return self._pulses[a].copy()

    def program_cells(self, a: int, rows: np.ndarray, cols: np.ndarray, levels: np.ndarray) -> None:
        """Program-and-verify a subset of cells, in the given order (a repeated cell: the last wins)."""
        a = self._check_array(a)
        cfg = self.config
        rows, cols, levels = (np.asarray(x, dtype=np.int64).ravel() for x in (rows, cols, levels))
        if not rows.size == cols.size == levels.size:
            raise ConfigError("rows, cols and levels must have the same length")
        if rows.size and (rows.min() < 0 or rows.max() >= cfg.rows or cols.min() < 0 or cols.max() >= cfg.cols):
            raise ConfigError(f"cells must lie in rows 0..{cfg.rows - 1}, cols 0..{cfg.cols - 1}")
        self._check_levels(levels)
        flat = rows * cfg.cols + cols
        # keep the last occurrence of each cell, in the original order
        _, first_in_reversed = np.unique(flat[::-1], return_index=True)
        keep = np.sort(flat.size - 1 - first_in_reversed)
        self._program(a, flat[keep], levels[keep])

    def _program(self, a: int, flat_idx: np.ndarray, levels: np.ndarray) -> None:
        cfg, rng = self.config, self._rng
        n = flat_idx.size
        if n == 0:
            return
        target = self.targets_us[levels]
        stuck = self._stuck[a].reshape(-1)[flat_idx]
        gain = self._gain[a].reshape(-1)[flat_idx]
        ceiling = self._ceiling_us[a].reshape(-1)[flat_idx]
        noise_rel = self._noise_rel[a].reshape(-1)[flat_idx]
        tf = self._temp_factor()
        # RESET pulse: the start state no longer depends on the cell's history
        g = cfg.g_reset_us * np.exp(rng.normal(0.0, cfg.g_reset_sigma, n))
        g = np.where(stuck != 0, self._g0_us[a].reshape(-1)[flat_idx], g)
        pulses = np.full(n, -1, dtype=np.int16)
        active = np.arange(n)
        used = 1
        while True:
            g_seen = g[active] * tf
            measured = g_seen + self._sigma_us(g_seen, noise_rel[active]) * rng.standard_normal(active.size)
            err_us = target[active] - measured
            ok = np.abs(err_us) <= cfg.tol_us
            pulses[active[ok]] = used
            active, err_us = active[~ok], err_us[~ok]
            if active.size == 0 or used >= cfg.max_pulses:
                break
            response = gain[active] * np.exp(rng.normal(0.0, cfg.pulse_c2c_sigma, active.size))
            response = np.where(rng.random(active.size) < cfg.jump_prob, response * cfg.jump_scale, response)
            step = err_us / tf * response + rng.normal(0.0, cfg.pulse_noise_us, active.size)
            step = np.where(stuck[active] != 0, 0.0, step)
            g[active] = np.clip(g[active] + step, cfg.g_floor_us, np.maximum(ceiling[active], cfg.g_floor_us))
            used += 1
        healthy = stuck == 0
        relaxed = g + rng.normal(0.0, cfg.relax_sigma_rel, n) * g
        g = np.where(healthy, np.maximum(relaxed, cfg.g_floor_us), g)
        rel = np.clip((g - cfg.g_min_us) / (cfg.g_max_us - cfg.g_min_us), 0.0, 1.0)
        nu = self._nu_base[a].reshape(-1)[flat_idx] * (1.0 + cfg.drift_nu_low_g_factor * (1.0 - rel))
        nu = np.where(healthy, nu, 0.0)
        # cells are programmed one after another: each one's time is when its last verify ended
        n_pulses = np.where(pulses < 0, cfg.max_pulses, pulses).astype(np.float64)
        done_s = np.cumsum(n_pulses) * cfg.t_pulse_s
        accel = self._accel()
        for arr, values in ((self._g0_us, g), (self._nu, nu), (self._pulses, pulses),
                            (self._level, levels.astype(np.int16)),
                            (self._prog_clock_s, self._clock_s + done_s),
                            (self._prog_eff_s, self._eff_clock_s + done_s * accel)):
            arr[a].reshape(-1)[flat_idx] = values
        self._tick(float(done_s[-1]))

    def program_result(self, a: int) -> np.ndarray:
        """Pulses used by the last programming of each cell (int16; -1 failed verify, 0 not since reset)."""
        return self._pulses[self._check_array(a)].copy()

    def program_time(self, a: int) -> np.ndarray:
        """Clock time (s) each cell was last programmed (float64; nan if never)."""
        return self._prog_clock_s[self._check_array(a)].copy()

    # ------------------------------------------------------------------ DAC, ADC, MVM
    def quantize_inputs(self, inputs_v: np.ndarray) -> np.ndarray:
        """DAC: round to the nearest of 2**dac_bits equally spaced levels over the DAC range."""
        cfg = self.config
        lsb = (cfg.dac_max_v - cfg.dac_min_v) / (2**cfg.dac_bits - 1)
        return cfg.dac_min_v + np.round((inputs_v - cfg.dac_min_v) / lsb) * lsb

    def _convert(self, a: int, x_ua: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Per-column ADC: ``x_ua`` (..., m) currents into columns ``cols`` (m,) -> int16 codes."""
        cfg, rng = self.config, self._rng
        n_codes = 2**cfg.adc_bits
        lsb = (cfg.adc_max_ua - cfg.adc_min_ua) / n_codes
        y = (x_ua - cfg.adc_min_ua) / lsb
        u = np.clip(y / n_codes, 0.0, 1.0)
        offset = self._adc_offset_lsb[a, cols] + cfg.adc_offset_tc_lsb_per_c * (self._temp_c - 25.0)
        y = self._adc_gain[a, cols] * y + offset + self._adc_bow_lsb[a, cols] * 4.0 * u * (1.0 - u)
        y = y + cfg.adc_noise_lsb * self._noise_scale() * rng.standard_normal(y.shape)
        y = np.clip(y, -1.0, n_codes + 1.0)
        # one searchsorted over all columns: shift column k's thresholds by k * stride
        stride = n_codes + 4.0
        pos = np.arange(cols.size, dtype=np.float64)
        flat = (self._adc_thresholds_lsb[a, cols] + (pos * stride)[:, None]).ravel()
        count = np.searchsorted(flat, y + pos * stride, side="right")
        return (count - pos.astype(np.int64) * (n_codes - 1)).astype(np.int16)

    def adc_test(self, a: int, col: int, inputs_ua: np.ndarray) -> np.ndarray:
        """Feed known currents (µA) straight into column ``col``'s ADC; int16 codes."""
        a = self._check_array(a)
        if not 0 <= col < self.config.cols:
            raise ConfigError(f"column must be in 0..{self.config.cols - 1}, got {col}")
        x = np.asarray(inputs_ua, dtype=np.float64).reshape(-1, 1)
        if not np.all(np.isfinite(x)):
            raise ConfigError("ADC test inputs must be finite")
        codes = self._convert(a, x, np.array([col]))[:, 0]
        self._tick(x.size * self.config.t_adc_s)
        return codes

    def _check_inputs(self, inputs_v: np.ndarray) -> np.ndarray:
        cfg = self.config
        v = np.asarray(inputs_v, dtype=np.float64)
        if v.ndim != 2 or v.shape[1] != cfg.rows:
            raise ConfigError(f"inputs must have shape (n, {cfg.rows}), got {v.shape}")
        if not np.all(np.isfinite(v)) or (v.size and (v.min() < cfg.dac_min_v or v.max() > cfg.dac_max_v)):
            raise ConfigError(f"input voltages must lie in the DAC range {cfg.dac_min_v:g}..{cfg.dac_max_v:g} V")
        return v

    def _column_currents(self, a: int, v: np.ndarray) -> np.ndarray:
        """DAC-quantized inputs (n, rows) -> column currents (n, cols) in µA, with read noise, RTN, IR drop."""
        cfg, rng = self.config, self._rng
        v = self.quantize_inputs(v)
        g = self._true_g(a, slice(None), slice(None))
        if cfg.r_wire_ohm > 0:
            g = g / (1.0 + g * 1e-6 * self._r_series_ohm)
        current_ua = v @ g
        # independent gaussian read noise of every cell, summed on the column
        sigma_us = self._sigma_us(g, self._noise_rel[a])
        current_ua += np.sqrt((v * v) @ np.square(sigma_us)) * rng.standard_normal(current_ua.shape)
        rtn_r, rtn_c = np.nonzero(self._rtn[a])
        if rtn_r.size:
            state = rng.integers(0, 2, (v.shape[0], rtn_r.size)) - 0.5
            contrib = state * (cfg.rtn_rel_amp * g[rtn_r, rtn_c]) * v[:, rtn_r]
            onehot = np.zeros((rtn_r.size, cfg.cols))
            onehot[np.arange(rtn_r.size), rtn_c] = 1.0
            current_ua += contrib @ onehot
        return current_ua

    def mvm(self, a: int, inputs_v: np.ndarray) -> np.ndarray:
        """Matrix-vector multiply: inputs (n, rows) volts -> int16 codes (n, cols)."""
        a = self._check_array(a)
        v = self._check_inputs(inputs_v)
        codes = self._convert(a, self._column_currents(a, v), np.arange(self.config.cols))
        self._tick(v.shape[0] * self.config.t_mvm_s)
        return codes

    def mvm_differential(self, a: int, inputs_v: np.ndarray, gain: float, offset_ua: float) -> np.ndarray:
        """Differential MVM: column pairs (k, k + cols/2) -> int16 codes (n, cols/2).

        Column ``k``'s ADC converts ``offset_ua + gain * (I_k - I_{k+cols/2})``: differential column
        sensing with a programmable read-out gain and a reference current (how a CIM macro reads a
        (G+, G-) weight pair with one conversion).
        """
        a = self._check_array(a)
        cfg = self.config
        lo, hi = ADC_GAIN_RANGE
        if not (np.isfinite(gain) and lo <= gain <= hi):
            raise ConfigError(f"read-out gain must be in {lo:g}..{hi:g}, got {gain!r}")
        if not (np.isfinite(offset_ua) and cfg.adc_min_ua <= offset_ua <= cfg.adc_max_ua):
            raise ConfigError(f"offset must lie in the ADC range {cfg.adc_min_ua:g}..{cfg.adc_max_ua:g} uA, "
                              f"got {offset_ua!r}")
        v = self._check_inputs(inputs_v)
        current_ua = self._column_currents(a, v)
        half = cfg.cols // 2
        x_ua = offset_ua + gain * (current_ua[:, :half] - current_ua[:, half: 2 * half])
        codes = self._convert(a, x_ua, np.arange(half))
        self._tick(v.shape[0] * cfg.t_mvm_s)
        return codes
