"""What pair compensation buys on the chip: the same models deployed without it and with it.

    python benchmarks/bench_compensation.py [--presets rram-inl,rram] [--seeds 0,1,2,3] [--mc 20]

For each simulated chip (preset, seed) it runs ``cimcal demo --from-scratch --no-pair-compensation`` (the
three digits models trained from scratch, without compensation; the demo's own deployments are not used),
then deploys each model to the chip twice through ``cimcal deploy``'s Python API, with the checkpoint's
``pair_compensation`` overridden to False and to True, each with its own Monte-Carlo prediction (``--mc``
instances). Prints per deployment the prediction, the on-chip accuracy and the cells moved, then per preset
the mean on-chip and predicted change, the gaps before and after, and the mean prediction spread. About
45 s per chip on 2 cores.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default="rram-inl,rram")
    parser.add_argument("--seeds", default="0,1,2,3")
    parser.add_argument("--mc", type=int, default=20)
    args = parser.parse_args(argv)

    import cimcal.drivers as drivers
    from cimcal.demo import _sim_limits, run_demo
    from cimcal.deploy import deploy_checkpoint
    from cimcal.noise.profile import ChipProfile

    seeds = [int(s) for s in args.seeds.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        for preset in args.presets.split(","):
            runs: list[tuple[dict, dict]] = []
            for seed in seeds:
                work = Path(tmp) / f"{preset}_{seed}"
                demo = run_demo(work, preset=preset, seed=seed, finetune=False, pair_compensation=False, mc=1,
                                echo=lambda line: None)
                profile = ChipProfile.load(demo.files["profile"])
                with drivers.open_tester("sim", preset=preset, seed=seed, limits=_sim_limits(preset)) as (tester, _):
                    for row in demo.rows:
                        results = {}
                        for compensate in (False, True):
                            results[compensate] = deploy_checkpoint(
                                row.checkpoint, profile, tester=tester, mc=args.mc, seed=seed,
                                state_path=work / f"{row.method}_{compensate}.deploy.json",
                                overrides={"pair_compensation": compensate})
                        off, on = results[False], results[True]
                        runs.append((off.to_dict(), on.to_dict()))
                        print(f"{preset} seed {seed} {row.method}: without: predicted {100 * off.predicted:.2f} +- "
                              f"{100 * off.predicted_std:.2f} on chip {100 * off.on_chip:.2f} | with: predicted "
                              f"{100 * on.predicted:.2f} +- {100 * on.predicted_std:.2f} on chip {100 * on.on_chip:.2f}, "
                              f"{on.stats['cells_compensated']} cells moved", flush=True)
            change = [100 * (on["on_chip"] - off["on_chip"]) for off, on in runs]
            predicted = [100 * (on["predicted"] - off["predicted"]) for off, on in runs]
            gaps = {k: [abs(100 * run[k]["gap"]) for run in runs] for k in (0, 1)}
            spread = {k: statistics.mean(100 * run[k]["predicted_std"] for run in runs) for k in (0, 1)}
            print(f"{preset}, {len(runs)} deployments: on chip {statistics.mean(change):+.2f} (min {min(change):+.2f}, "
                  f"max {max(change):+.2f}); predicted {statistics.mean(predicted):+.2f}; mean |gap| "
                  f"{statistics.mean(gaps[0]):.2f} -> {statistics.mean(gaps[1]):.2f}, max {max(gaps[0]):.2f} -> "
                  f"{max(gaps[1]):.2f}, beyond 1.5: {sum(g > 1.5 for g in gaps[0])} -> {sum(g > 1.5 for g in gaps[1])}; "
                  f"prediction sd {spread[0]:.2f} -> {spread[1]:.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
