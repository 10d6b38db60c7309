"""The ADC sweep campaign (``cimcal measure adc``): known inputs into each column's ADC -> ADC table.

Same store, chunking and resume as :mod:`cimcal.drivers.campaigns`; the ADC test mode has no
programmed state, so a resumed sweep simply continues with the next chunk of columns.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

from cimcal.drivers.campaign_store import CampaignStore
from cimcal.drivers.campaigns import (CampaignResult, _now, _prepare, _progress, check_temperature,
                                      chip_id_from_idn)
from cimcal.drivers.limits import check_range
from cimcal.drivers.tester import CIMTester
from cimcal.errors import ConfigError

__all__ = ["AdcPlan", "run_adc_campaign"]


@dataclass(frozen=True)
class AdcPlan:
    """The ADC sweep: ``n_points`` inputs spanning the ADC range widened by ``margin`` on each side
    (to see saturation), each converted ``n_repeats`` times, on columns ``cols`` of ``array``."""

    array: int = 0
    cols: tuple[int, int] = (0, 32)
    n_points: int = 256
    n_repeats: int = 16
    margin: float = 0.05
    cols_per_chunk: int = 8
    temp_c: float | None = None

    def validate(self) -> "AdcPlan":
        lo, hi = self.cols
        if not 0 <= lo < hi:
            raise ConfigError(f"--cols must be START:STOP with 0 <= START < STOP, got {lo}:{hi}")
        if self.n_points < 2 or self.n_repeats < 1 or self.cols_per_chunk < 1:
            raise ConfigError("n_points must be >= 2, n_repeats and cols_per_chunk >= 1, got "
                              f"{self.n_points}, {self.n_repeats}, {self.cols_per_chunk}")
        if not 0 <= self.margin < 1:
            raise ConfigError(f"--margin must lie in [0, 1), got {self.margin}")
        return self

    def chunks(self) -> list[tuple[int, int]]:
        return [(c, min(c + self.cols_per_chunk, self.cols[1]))
                for c in range(self.cols[0], self.cols[1], self.cols_per_chunk)]

    def options(self) -> dict[str, Any]:
        d = asdict(self)
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}


def run_adc_campaign(tester: CIMTester, out_dir: str, plan: AdcPlan, *, resume: bool = False,
                     progress: bool = True, provenance: dict[str, Any] | None = None,
                     chip_id: str | None = None) -> CampaignResult:
    """Run (or resume) the ADC sweep (``ADC:TEST?``) into ``out_dir`` (ADC table).

    Each column gets the same ``n_points`` inputs, each repeated ``n_repeats`` times in one block;
    a chunk is ``cols_per_chunk`` columns. The ADC has no programmed state: resume just continues.
    """
    plan = plan.validate()
    # everything that can refuse is checked before the output directory is created
    idn = tester.idn
    cfg = tester.config
    if plan.cols[1] > cfg.cols or not 0 <= plan.array < cfg.arrays:
        raise ConfigError(f"columns {plan.cols} of array {plan.array} do not fit the chip "
                          f"({cfg.arrays} arrays of {cfg.cols} columns)")
    check_temperature(tester, plan.temp_c)
    lo, hi = cfg.adc_range_ua
    span = hi - lo
    inputs_ua = np.linspace(lo - plan.margin * span, hi + plan.margin * span, plan.n_points)
    peak = float(np.max(np.abs(inputs_ua.astype(np.float32))))
    check_range("|ADC test input| (ADC range + margin)", peak, 0.0, float(np.float32(tester.limits.adc_test_max_ua)),
                command="ADC:TEST?", unit=" uA", limit="adc_test_max_ua")
    store = CampaignStore.open(out_dir, campaign="adc", kind="adc", options=plan.options(), resume=resume)
    resumed = store.n_committed > 0
    chunks = plan.chunks()
    if store.complete:
        return CampaignResult(str(store.directory), len(chunks), 0,
                              sum(c["rows"] for c in store.manifest["chunks"]), resumed)
    _prepare(tester, store, plan.temp_c, provenance)
    sweep = np.tile(inputs_ua, plan.n_repeats)
    repeats = np.repeat(np.arange(plan.n_repeats), plan.n_points)
    chip = chip_id or chip_id_from_idn(idn)
    per_col = sweep.size
    total_rows = per_col * (plan.cols[1] - plan.cols[0])
    done_rows = sum(c["rows"] for c in store.manifest["chunks"])
    run = 0
    with _progress(total_rows, done_rows, "adc", progress) as bar:
        for index in range(store.n_committed, len(chunks)):
            c0, c1 = chunks[index]
            started = _now()
            temp_c = tester.temperature()
            codes = [tester.adc_test(plan.array, col, sweep) for col in range(c0, c1)]
            tester.raise_errors(f"chunk {index} (ADC:TEST? columns {c0}..{c1 - 1})")
            n = per_col * (c1 - c0)
            table = pd.DataFrame({
                "col": np.repeat(np.arange(c0, c1), per_col),
                "input": np.tile(sweep.astype(np.float32).astype(np.float64), c1 - c0),
                "code": np.concatenate(codes).astype(np.int64), "chip_id": chip,
                "array": np.full(n, plan.array), "repeat": np.tile(repeats, c1 - c0),
                "temp_c": np.full(n, temp_c),
            })
            metadata = {"campaign": "adc", "chunk": index, "instrument_idn": idn, "chip_id": chip,
                        "source": tester.resource_name, "input_unit": "uA", "plan": plan.options(), "adc_bits": cfg.adc_bits, "adc_range_ua": list(cfg.adc_range_ua),
                        "temp_c": temp_c, "started": started,
                        **{k: v for k, v in store.manifest["provenance"].items() if k in ("preset", "seed")}}
            store.commit_chunk(index, table, "adc", metadata, started=started)
            run += 1
            bar.update(n)
    store.finish()
    return CampaignResult(str(store.directory), len(chunks), run, total_rows, resumed)
