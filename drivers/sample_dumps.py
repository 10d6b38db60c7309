"""Write the sample dumps of ``calibration_data/`` by measuring the simulated chip through the driver.

``python -m cimcal.drivers.sample_dumps calibration_data`` serves the RRAM preset chip (seed 0) on
loopback and runs four campaigns through :class:`CIMTester` over pyvisa-py, exactly as a user
would with ``cimcal measure``: a drift campaign (128 x 64 cells, t = 1, 100, 10^4 s, 2 reads) for
fitting and one on *other* cells of the same chip for validation, and two ADC sweeps (4 columns,
256 inputs, 64 / 32 repeats).
Each campaign's part files are then written as one file (``cimcal.data.write_table``, provenance
metadata from the campaign manifest).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from cimcal.data import read_table, write_table
from cimcal.drivers.campaign_adc import AdcPlan, run_adc_campaign
from cimcal.drivers.campaigns import default_conductance_plan, open_tester, run_conductance_campaign

__all__ = ["write_sample_dumps"]

TIMES_S = (1.0, 100.0, 10_000.0)


def write_sample_dumps(directory: str | Path, *, seed: int = 0, preset: str = "rram") -> list[Path]:
    """Measure the simulated chip and write the four sample files into ``directory``."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    plans = [
        ("conductance_fit.parquet", "conductance",
         default_conductance_plan("drift", rows=(0, 128), cols=(0, 64), n_reads=2, times_s=TIMES_S, pattern_seed=1)),
        ("conductance_heldout.parquet", "conductance",
         default_conductance_plan("drift", rows=(128, 256), cols=(0, 64), n_reads=2, times_s=TIMES_S,
                                  pattern_seed=2)),
        ("adc_fit.parquet", "adc", AdcPlan(cols=(0, 4), n_points=256, n_repeats=64, cols_per_chunk=1)),
        ("adc_heldout.csv", "adc", AdcPlan(cols=(0, 4), n_points=256, n_repeats=32, cols_per_chunk=1)),
    ]
    written = []
    with tempfile.TemporaryDirectory() as tmp, open_tester("sim", preset=preset, seed=seed) as (tester, prov):
        for name, kind, plan in plans:
            campaign_dir = Path(tmp) / name
            if kind == "adc":
                run_adc_campaign(tester, str(campaign_dir), plan, progress=False, provenance=prov)
            else:
                run_conductance_campaign(tester, str(campaign_dir), plan, progress=False, provenance=prov)
            manifest = json.loads((campaign_dir / "_manifest.json").read_text())
            table = read_table(campaign_dir, kind)
            metadata = {"source": "simulated chip via cimcal.drivers (python -m cimcal.drivers.sample_dumps)",
                        "instrument_idn": manifest["provenance"]["instrument_idn"],
                        "campaign": manifest["campaign"], "plan": manifest["options"],
                        "chip_state": manifest["chip_state"], "preset": preset, "seed": seed}
            path = out / name
            if path.exists():
                path.unlink()
            write_table(table, path, kind, metadata=metadata)
            written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cimcal.drivers.sample_dumps",
                                     description="Measure the simulated chip into the sample dumps.")
    parser.add_argument("directory", help="output directory, e.g. calibration_data")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--preset", default="rram")
    args = parser.parse_args(argv)
    for path in write_sample_dumps(args.directory, seed=args.seed, preset=args.preset):
        print(f"{path}  {path.stat().st_size / 1024:.0f} KiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
