"""Single-device campaign with a source-measure unit: repeated ``G = I / V`` reads of one cell.

Works with any :class:`~cimcal.drivers.smu.ConductanceProbe`: the cimcal :class:`Keithley2450`
(PyMeasure's driver + limits) or PyMeasure's B1500 / 4200A wrapped by :class:`B1500Probe` /
:class:`K4200Probe`. The device sits behind a probe station or switch matrix, so the user says which
cell (``row``/``col``) and level it is; rows go to the same conductance table and the same resumable
store (Parquet parts + manifest) as the chip campaigns.
"""

from __future__ import annotations

import datetime as dt
import sys
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from cimcal.drivers.campaign_store import CampaignStore
from cimcal.drivers.campaigns import CampaignResult, check_idn, record_run
from cimcal.drivers.limits import SafeLimits
from cimcal.drivers.smu import ConductanceProbe
from cimcal.errors import ConfigError

__all__ = ["DevicePlan", "run_device_campaign"]


@dataclass(frozen=True)
class DevicePlan:
    """``n_reads`` reads of one device at ``v_read_v``, ``reads_per_chunk`` per part file."""

    v_read_v: float = 0.1
    n_reads: int = 100
    reads_per_chunk: int = 25
    row: int = 0
    col: int = 0
    level: int = 0
    g_target_us: float | None = None
    array: int = 0
    chip_id: str = "device"

    def validate(self) -> "DevicePlan":
        if self.n_reads < 1 or self.reads_per_chunk < 1:
            raise ConfigError(f"n_reads and reads_per_chunk must be >= 1, got {self.n_reads}, {self.reads_per_chunk}")
        if self.v_read_v == 0:
            raise ConfigError("v_read_v must be non-zero (G = I / V)")
        return self


def run_device_campaign(probe: ConductanceProbe, out_dir: str, plan: DevicePlan, *, resume: bool = False,
                        progress: bool = False) -> CampaignResult:
    """Read one device ``plan.n_reads`` times through ``probe``; resumable like the chip campaigns."""
    from tqdm import tqdm

    plan = plan.validate()
    store = CampaignStore.open(out_dir, campaign="smu", kind="conductance", options=asdict(plan), resume=resume)
    starts = list(range(0, plan.n_reads, plan.reads_per_chunk))
    resumed = store.n_committed > 0
    check_idn(store, probe.idn)  # a resume must use the same instrument
    resource = getattr(probe, "resource_name", None)
    if not store.manifest["provenance"].get("instrument_idn"):
        store.update("provenance", instrument_idn=probe.idn, resource=resource)
    record_run(store, getattr(probe, "limits", SafeLimits()), instrument_idn=probe.idn, resource=resource)
    run = 0
    with tqdm(total=plan.n_reads, initial=min(plan.n_reads, store.n_committed * plan.reads_per_chunk),
              unit="read", file=sys.stderr, disable=not progress) as bar:
        for index in range(store.n_committed, len(starts)):
            first = starts[index]
            n = min(plan.reads_per_chunk, plan.n_reads - first)
            started = dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")
            g_us = probe.measure_conductance_s(plan.v_read_v, n) * 1e6
            table = pd.DataFrame({
                "row": np.full(n, plan.row), "col": np.full(n, plan.col), "level": np.full(n, plan.level),
                "g_us": g_us, "chip_id": plan.chip_id, "array": np.full(n, plan.array),
                "read_idx": np.arange(first, first + n), "v_read_v": np.full(n, float(plan.v_read_v)),
            })
            if plan.g_target_us is not None:
                table["g_target_us"] = float(plan.g_target_us)
            store.commit_chunk(index, table, "conductance", {"campaign": "smu", "chunk": index,
                                                             "instrument_idn": probe.idn, "source": resource}, started=started)
            run += 1
            bar.update(n)
    store.finish()
    return CampaignResult(str(store.directory), len(starts), run, plan.n_reads, resumed)
