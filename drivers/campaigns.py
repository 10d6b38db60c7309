"""Measurement campaigns: turn a chip into the tables that ``cimcal fit`` reads, resumably.

Four campaigns (``cimcal measure levels|readnoise|drift|adc``; the ADC sweep lives in
:mod:`cimcal.drivers.campaign_adc`, the single-device SMU campaign in
:mod:`cimcal.drivers.campaign_smu`) share one shape: a deterministic
*plan* (options -> an ordered list of chunks), a setup step that puts the chip in the planned
state (programming a level pattern), then the chunks, each read from the chip and committed to a
:class:`~cimcal.drivers.campaign_store.CampaignStore` (Parquet part file + atomic manifest).

Resume (``--resume``) and the chip's state
    The manifest records which chunks are committed and the chip state the campaign relies on:
    the programming *epoch* (clock range of ``PROG:TIME?`` over the campaign's cells when they
    were programmed). On resume the driver asks the chip again (``PROG:RES?``/``PROG:TIME?``):

    - programming never finished (killed during ``PROG:CELL``) -> program again;
    - the cells still hold that programming (a chip that stayed powered, ``cimcal sim serve``)
      -> continue reading them, nothing re-programmed;
    - the chip lost it (power cycle, a fresh ``--resource sim`` process) -> program the same
      pattern again as a new epoch (recorded in the manifest and in later part files' metadata);
      ``drift`` then measures its remaining time points relative to the new programming.

    Chunks already committed are never redone; the interrupted one is redone whole.

The drift schedule
    ``t_s`` is the nominal time since programming at which a chunk is read. Before a chunk of time
    point ``t`` the campaign waits until the tester clock (``CLOCk?``) reaches
    ``program_clock + t`` (the end of the window's programming): :class:`AdvanceClock` ages the
    simulated chip with ``CLOCk:ADVance``, :class:`WallClockWait` sleeps on real hardware (refused
    on the simulated chip, whose clock only moves with commands: it would wait forever). A chip
    already past the time point (resumed late) is read at once.

    The ``t_s`` *column* is per cell, as docs/data-format.md defines it: the tester clock at the
    start of that read (``CLOCk?``) minus the time that cell was last programmed (``PROG:TIME?``,
    one binary block per array, read once per run). It is therefore >= the nominal time point;
    the nominal value (``t_nominal_s``), the clock of each read (``clock_at_read_s``) and the
    programming ``epoch`` are in the part file's metadata (the table contract has no epoch column).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import math
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np
import pandas as pd

from cimcal.drivers.campaign_store import CampaignStore
from cimcal.drivers.limits import SafeLimits, check_range
from cimcal.drivers.tester import CIMTester, TesterConfig
from cimcal.errors import ConfigError, InstrumentError

__all__ = [
    "ConductancePlan",
    "CampaignResult",
    "AdvanceClock",
    "WallClockWait",
    "default_conductance_plan",
    "run_conductance_campaign",
    "open_tester",
    "chip_id_from_idn",
]

CONDUCTANCE_CAMPAIGNS = ("levels", "readnoise", "drift")


@dataclass(frozen=True)
class ConductancePlan:
    """What a levels / readnoise / drift campaign measures (every field is recorded in the manifest).

    ``rows``/``cols`` are half-open windows of array ``array``; the pattern assigns each cell a level
    from ``levels`` (None = every level of the chip), balanced and shuffled with ``pattern_seed``;
    each time point of ``times_s`` is read ``n_reads`` times; a chunk holds ``reads_per_chunk`` reads.
    """

    campaign: str = "levels"
    array: int = 0
    rows: tuple[int, int] = (0, 256)
    cols: tuple[int, int] = (0, 256)
    levels: tuple[int, ...] | None = None
    n_reads: int = 2
    times_s: tuple[float, ...] = (1.0,)
    reads_per_chunk: int = 1
    pattern_seed: int = 0
    temp_c: float | None = None

    def validate(self) -> "ConductancePlan":
        if self.campaign not in CONDUCTANCE_CAMPAIGNS:
            raise ConfigError(f"campaign must be one of {CONDUCTANCE_CAMPAIGNS}, got {self.campaign!r}")
        for name in ("rows", "cols"):
            lo, hi = getattr(self, name)
            if not 0 <= lo < hi:
                raise ConfigError(f"--{name} must be START:STOP with 0 <= START < STOP, got {lo}:{hi}")
        if self.n_reads < 1 or self.reads_per_chunk < 1:
            raise ConfigError(f"n_reads and reads_per_chunk must be >= 1, got {self.n_reads}, "
                              f"{self.reads_per_chunk}")
        times = list(self.times_s)
        if not times or not all(math.isfinite(t) and t >= 0 for t in times) or times != sorted(set(times)):
            raise ConfigError(f"--times must be increasing, distinct, finite and >= 0, got {times}")
        return self

    @property
    def n_cells(self) -> int:
        return (self.rows[1] - self.rows[0]) * (self.cols[1] - self.cols[0])

    def chunks(self) -> list[tuple[int, int, int]]:
        """Ordered chunks as (time index, first read index, number of reads)."""
        out = []
        for t_idx in range(len(self.times_s)):
            for first in range(0, self.n_reads, self.reads_per_chunk):
                out.append((t_idx, first, min(self.reads_per_chunk, self.n_reads - first)))
        return out

    def options(self) -> dict[str, Any]:
        d = asdict(self)
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}


def default_conductance_plan(campaign: str, **overrides: Any) -> ConductancePlan:
    """The default plan of each campaign (finishes well under a minute on the simulated chip)."""
    defaults: dict[str, dict[str, Any]] = {
        "levels": dict(rows=(0, 256), cols=(0, 256), n_reads=2, times_s=(1.0,), reads_per_chunk=1),
        "readnoise": dict(rows=(0, 64), cols=(0, 64), n_reads=100, times_s=(1.0,), reads_per_chunk=10),
        "drift": dict(rows=(0, 128), cols=(0, 128), n_reads=2, times_s=(1.0, 10.0, 100.0, 1e3, 1e4, 1e5),
                      reads_per_chunk=2),
    }
    if campaign not in defaults:
        raise ConfigError(f"campaign must be one of {CONDUCTANCE_CAMPAIGNS}, got {campaign!r}")
    params = {**defaults[campaign], **{k: v for k, v in overrides.items() if v is not None}}
    return ConductancePlan(campaign=campaign, **params).validate()


@dataclass
class CampaignResult:
    """What a campaign run did: where, how many chunks/rows in all, how many run now."""

    directory: str
    chunks_total: int
    chunks_run: int
    rows_total: int
    resumed: bool
    reprogrammed: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


# ----- waiting for a time point -------------------------------------------------------------
class Wait(Protocol):
    name: str

    def until(self, tester: CIMTester, clock_s: float) -> None: ...


class AdvanceClock:
    """Reach a clock time by ageing the (simulated) chip: ``CLOCk:ADVance``. No real waiting."""

    name = "advance"

    def until(self, tester: CIMTester, clock_s: float) -> None:
        now = tester.clock()
        if clock_s > now:
            tester.advance(clock_s - now)


class WallClockWait:
    """Reach a clock time by sleeping (real hardware): polls ``CLOCk?`` at most every ``poll_s``."""

    name = "real"

    def __init__(self, poll_s: float = 5.0) -> None:
        self.poll_s = poll_s

    def until(self, tester: CIMTester, clock_s: float) -> None:
        while (left := clock_s - tester.clock()) > 0:
            time.sleep(min(left, self.poll_s))


def _pick_wait(wait: str, idn: str) -> Wait:
    simulated = "SIMCHIP" in idn.upper()
    if wait == "real" and simulated:
        raise ConfigError("--wait real cannot reach a time point on the simulated chip: its clock only moves "
                          "with commands and CLOCk:ADVance, so real waiting would never end; use --wait auto "
                          "or advance")
    if wait == "advance" or (wait == "auto" and simulated):
        return AdvanceClock()
    if wait in ("real", "auto"):
        return WallClockWait()
    raise ConfigError(f"--wait must be auto, advance or real, got {wait!r}")


# ----- helpers -----------------------------------------------------------------------------
def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


def chip_id_from_idn(idn: str) -> str:
    """``"CIMCAL,SIMCHIP-rram,0,0.1"`` -> ``"SIMCHIP-rram-0"`` (model and serial of ``*IDN?``)."""
    fields_ = [f.strip() for f in idn.split(",")]
    return "-".join(f for f in fields_[1:3] if f) or idn.strip() or "unknown"


def _progress(total: int, initial: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="row", unit_scale=True, file=sys.stderr,
                disable=not enabled, dynamic_ncols=True, smoothing=0.1)


def check_temperature(tester: CIMTester, temp_c: float | None) -> None:
    """Refuse a ``--temp-c`` outside the limits (before any output is created)."""
    if temp_c is not None:
        check_range("--temp-c", temp_c, tester.limits.temp_min_c, tester.limits.temp_max_c, command="TEMP",
                    unit=" C", limit="temp_min_c/temp_max_c")


def check_idn(store: CampaignStore, idn: str) -> None:
    """On resume, refuse an instrument other than the one the committed chunks were measured on."""
    recorded = store.manifest["provenance"].get("instrument_idn")
    if recorded is not None and recorded != idn:
        raise ConfigError(f"{store.directory}: campaign was measured on {recorded!r} but the instrument is "
                          f"{idn!r}; resume on the same chip or start a new output directory")


def record_run(store: CampaignStore, limits: SafeLimits, **fields: Any) -> None:
    """Append this run (start time, limits, ...) to the manifest's ``provenance.runs`` list.

    The first run's provenance stays at the top level; every run (the first and each resume) is
    listed with its own limits, so a resume under other ``--limits`` is on record.
    """
    runs = list(store.manifest["provenance"].get("runs", []))
    runs.append({"started": _now(), "first_chunk": store.n_committed, "limits": asdict(limits), **fields})
    store.update("provenance", runs=runs)


def _prepare(tester: CIMTester, store: CampaignStore, temp_c: float | None,
             provenance: dict[str, Any] | None) -> str:
    """Check the chip is the recorded one, record provenance and this run, set the temperature."""
    idn = tester.idn
    check_idn(store, idn)
    if store.manifest["provenance"].get("instrument_idn") is None:
        store.update("provenance", **tester.provenance(), tester_config=tester.config.to_dict(),
                     limits=asdict(tester.limits), **(provenance or {}))
    record_run(store, tester.limits, instrument_idn=idn, resource=tester.resource_name, temp_c=temp_c)
    if temp_c is not None:
        tester.temperature(temp_c)
    return idn


def _level_pattern(plan: ConductancePlan, n_levels: int) -> np.ndarray:
    levels = np.arange(n_levels) if plan.levels is None else np.asarray(plan.levels, dtype=np.int64)
    if levels.size == 0 or levels.min() < 0 or levels.max() >= n_levels:
        raise ConfigError(f"--levels must lie in [0, {n_levels - 1}], got {plan.levels}")
    rng = np.random.default_rng(plan.pattern_seed)
    h, w = plan.rows[1] - plan.rows[0], plan.cols[1] - plan.cols[0]
    return rng.permutation(np.resize(levels, h * w)).reshape(h, w)


def _check_window(plan: ConductancePlan, cfg: TesterConfig) -> None:
    if plan.rows[1] > cfg.rows or plan.cols[1] > cfg.cols or not 0 <= plan.array < cfg.arrays:
        raise ConfigError(f"window rows {plan.rows} cols {plan.cols} array {plan.array} does not fit the chip "
                          f"({cfg.arrays} arrays of {cfg.rows}x{cfg.cols})")


def _window(plan: ConductancePlan) -> tuple[slice, slice]:
    return slice(*plan.rows), slice(*plan.cols)


def _chip_holds_programming(tester: CIMTester, plan: ConductancePlan, state: dict[str, Any]) -> bool:
    r, c = _window(plan)
    result = tester.program_result(plan.array)[r, c]
    times = tester.program_time(plan.array)[r, c]
    if (result == 0).any() or np.isnan(times).any():
        return False
    return float(times.min()) == state.get("program_clock_min_s") and \
        float(times.max()) == state.get("program_clock_max_s")


def _ensure_programmed(tester: CIMTester, store: CampaignStore, plan: ConductancePlan,
                       pattern: np.ndarray) -> bool:
    """Program the pattern unless the chip still holds this campaign's programming. True if programmed."""
    state = store.manifest["chip_state"]
    if state.get("programmed") and _chip_holds_programming(tester, plan, state):
        return False
    epoch = int(state.get("epoch", -1)) + 1
    store.update("chip_state", programmed=False, epoch=epoch)  # a kill from here on means: program again
    rr, cc = np.meshgrid(np.arange(*plan.rows), np.arange(*plan.cols), indexing="ij")
    cfg = tester.config
    if plan.rows == (0, cfg.rows) and plan.cols == (0, cfg.cols):
        tester.program_array(plan.array, pattern)
    else:
        tester.program_cells(plan.array, rr.ravel(), cc.ravel(), pattern.ravel())
    r, c = _window(plan)
    result = tester.program_result(plan.array)[r, c]
    times = tester.program_time(plan.array)[r, c]
    store.update("chip_state", programmed=True, epoch=epoch, program_clock_min_s=float(np.nanmin(times)),
                 program_clock_max_s=float(np.nanmax(times)), first_chunk_of_epoch=store.n_committed,
                 failed_verify_cells=int((result < 0).sum()), programmed_at=_now())
    return True


def run_conductance_campaign(tester: CIMTester, out_dir: str, plan: ConductancePlan, *,
                             resume: bool = False, wait: str = "auto", progress: bool = True,
                             provenance: dict[str, Any] | None = None,
                             chip_id: str | None = None) -> CampaignResult:
    """Run (or resume) a levels / readnoise / drift campaign into ``out_dir`` (conductance table).

    Each chunk reads the window ``reads_per_chunk`` times (``READ:MAP?`` binary blocks) at one time
    point and commits one Parquet part file; see the module docstring for resume semantics.
    """
    plan = plan.validate()
    # everything that can refuse is checked before the output directory is created
    idn = tester.idn
    waiter = _pick_wait(wait, idn)
    cfg = tester.config
    _check_window(plan, cfg)
    pattern = _level_pattern(plan, cfg.levels)
    check_temperature(tester, plan.temp_c)
    tester.check_program_voltage()
    store = CampaignStore.open(out_dir, campaign=plan.campaign, kind="conductance", options=plan.options(),
                               resume=resume)
    resumed = store.n_committed > 0
    chunks = plan.chunks()
    rows_per_read = plan.n_cells
    if store.complete:
        return CampaignResult(str(store.directory), len(chunks), 0, sum(c["rows"] for c in
                                                                          store.manifest["chunks"]), resumed)
    _prepare(tester, store, plan.temp_c, provenance)
    targets_us = np.asarray(cfg.targets_us, dtype=np.float64)
    chip = chip_id or chip_id_from_idn(idn)
    reprogrammed = _ensure_programmed(tester, store, plan, pattern)
    # each cell's own programming time: t_s = clock at read - this (one block per array, once per run)
    prog_clock_s = tester.program_time(plan.array)[_window(plan)].ravel()
    if np.isnan(prog_clock_s).any():
        raise InstrumentError("PROG:TIME? reports cells of the window as never programmed right after "
                              "programming", command=f"PROG:TIME? {plan.array}", resource=tester.resource_name)

    rr, cc = np.meshgrid(np.arange(*plan.rows), np.arange(*plan.cols), indexing="ij")
    row_keys, col_keys, lvl = rr.ravel(), cc.ravel(), pattern.ravel()
    total_rows = rows_per_read * plan.n_reads * len(plan.times_s)
    done_rows = sum(c["rows"] for c in store.manifest["chunks"])
    run = 0
    with _progress(total_rows, done_rows, plan.campaign, progress) as bar:
        for index in range(store.n_committed, len(chunks)):
            t_idx, first_read, n_reads = chunks[index]
            started = _now()
            state = store.manifest["chip_state"]
            t_s = float(plan.times_s[t_idx])
            waiter.until(tester, state["program_clock_max_s"] + t_s)
            temp_c = tester.temperature()
            clocks_s, maps = [], []
            for _ in range(n_reads):
                clocks_s.append(tester.clock())
                maps.append(tester.read_map(plan.array, plan.rows, plan.cols).ravel())
            tester.raise_errors(f"chunk {index} (READ:MAP? x{n_reads})")  # nothing queued: commit
            cell_t_s = np.concatenate([np.maximum(c - prog_clock_s, 0.0) for c in clocks_s])
            n = rows_per_read * n_reads
            table = pd.DataFrame({
                "row": np.tile(row_keys, n_reads), "col": np.tile(col_keys, n_reads),
                "level": np.tile(lvl, n_reads), "g_us": np.concatenate(maps).astype(np.float64),
                "chip_id": chip, "array": np.full(n, plan.array),
                "g_target_us": np.tile(targets_us[lvl], n_reads), "t_s": cell_t_s,
                "read_idx": np.repeat(np.arange(first_read, first_read + n_reads), rows_per_read),
                "temp_c": np.full(n, temp_c),
            })
            metadata = {"campaign": plan.campaign, "chunk": index, "instrument_idn": idn, "chip_id": chip,
                        "source": tester.resource_name, "plan": plan.options(), "epoch": state["epoch"],
                        "t_nominal_s": t_s, "clock_at_read_s": clocks_s,
                        "program_clock_s": [state["program_clock_min_s"], state["program_clock_max_s"]],
                        "wait": waiter.name, "temp_c": temp_c, "started": started,
                        **{k: v for k, v in store.manifest["provenance"].items() if k in ("preset", "seed")}}
            store.commit_chunk(index, table, "conductance", metadata, started=started)
            run += 1
            bar.update(n)
    store.finish()
    return CampaignResult(str(store.directory), len(chunks), run, total_rows, resumed, reprogrammed)


@contextlib.contextmanager
def open_tester(resource: str = "sim", *, preset: str = "rram", seed: int = 0, config: str | None = None,
                faults: str | None = None, limits: SafeLimits | None = None, timeout_ms: int = 10_000,
                retries: int = 2, visa_library: Any = "@py") -> Iterator[tuple[CIMTester, dict[str, Any]]]:
    """Open a tester by VISA resource string, or ``"sim"``: a simulated chip served in-process.

    ``"sim"`` builds the chip (``preset``/``config`` and ``seed``), serves it with
    :class:`~cimcal.drivers.sim.server.SimServer` on an ephemeral loopback port and connects over a
    real pyvisa-py TCPIP SOCKET session. Yields the tester and provenance to record.
    """
    with contextlib.ExitStack() as stack:
        provenance: dict[str, Any] = {"resource_requested": resource}
        resource_is_sim = resource == "sim"
        if resource_is_sim:
            from cimcal.drivers.sim.server import SimServer, build_chip

            # as `cimcal sim serve --config`: the file's [faults] table applies unless --faults is given
            chip, faults = build_chip(preset, config or None, seed, faults)
            server = stack.enter_context(SimServer(chip, faults=faults))
            resource = server.resource
            provenance.update(preset=None if config else preset, sim_config=config, seed=seed)
        tester = CIMTester(resource, limits=limits, timeout_ms=timeout_ms, retries=retries,
                           visa_library="@py" if resource_is_sim else visa_library)  # sim: loopback socket
        stack.callback(tester.close)
        yield tester, provenance
