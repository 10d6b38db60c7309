"""How far one chip lands from the Monte-Carlo prediction: the prediction's bias and the chip-to-chip spread.

    python benchmarks/bench_prediction.py [--preset rram-inl] [--chips 32] [--first-seed 200] [--methods clean,ste]
                                          [--pair-compensation] [--from-scratch]

Trains the demo's digits models once (the demo's sizes and recipe, on the profile measured and fitted from
chip ``--model-seed``, as ``cimcal demo --seed`` does), then for each of ``--chips`` fresh simulated chips
(seeds ``--first-seed`` ...): measures it as the demo does, fits its own profile, predicts every model's
accuracy over ``--mc`` simulated instances of that profile and deploys the model to the chip. Prints
per chip the prediction, the on-chip accuracy and the read-back ("from cells") prediction, then per method
the mean of on-chip minus predicted with its standard error, the chip-to-chip sd, and how many chips
landed more than 1.5 points away. ``--pair-compensation``: trained, predicted and deployed with
``AnalogConfig(pair_compensation=True)``, as ``cimcal demo`` does by default. About 20 s per chip on 2 cores.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path


def measure_and_fit(tester, provenance, work: Path):  # noqa: ANN001, ANN201
    """The demo's campaigns on ``tester`` into ``work`` (:func:`cimcal.demo.measure_chip`) and the profile fitted
    from them, as the demo fits it."""
    from cimcal.demo import demo_sizes, measure_chip
    from cimcal.noise.fit import fit_profile

    measured = measure_chip(tester, work, demo_sizes(False), provenance)
    return fit_profile(conductance=[measured["levels"], measured["readnoise"], measured["drift"]], adc=measured["adc"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="rram-inl")
    parser.add_argument("--chips", type=int, default=32)
    parser.add_argument("--first-seed", type=int, default=200)
    parser.add_argument("--model-seed", type=int, default=0, help="chip (and training seed) the models are trained for")
    parser.add_argument("--methods", default="clean,ste")
    parser.add_argument("--mc", type=int, default=40)
    parser.add_argument("--pair-compensation", action="store_true", help="AnalogConfig(pair_compensation=True)")
    parser.add_argument("--from-scratch", action="store_true", help="every method from scratch (the demo's "
                        "--from-scratch); default: the others fine-tuned from the clean model")
    args = parser.parse_args(argv)
    if args.chips < 2:
        parser.error("--chips must be at least 2 (the spread needs two chips)")

    import cimcal.drivers as drivers
    from cimcal.analog import AnalogConfig
    from cimcal.demo import _sim_limits, demo_sizes, train_demo_model
    from cimcal.deploy import deploy_model
    from cimcal.train.checkpoint import load_checkpoint, save_checkpoint
    from cimcal.train.evaluate import evaluate_model
    from cimcal.train.tasks import load_task

    methods = args.methods.split(",")
    config = AnalogConfig(pair_compensation=args.pair_compensation)
    limits = _sim_limits(args.preset)
    sizes = demo_sizes(False)
    task = load_task("digits", seed=args.model_seed)
    gaps: dict[str, list[float]] = {m: [] for m in methods}
    cells: dict[str, list[float]] = {m: [] for m in methods}
    with tempfile.TemporaryDirectory() as tmp:
        with drivers.open_tester("sim", preset=args.preset, seed=args.model_seed, limits=limits) as (tester, prov):
            profile = measure_and_fit(tester, prov, Path(tmp) / "model_chip")
        # as the demo trains them: clean, and the others fine-tuned from it (--from-scratch: all from scratch)
        clean, meta = train_demo_model("clean", profile, sizes, config, epochs=sizes["epochs"], seed=args.model_seed)
        init = None if args.from_scratch else load_checkpoint(save_checkpoint(Path(tmp) / "clean.ckpt", clean, meta))
        models = {m: clean if m == "clean" else train_demo_model(m, profile, sizes, config, epochs=sizes["epochs"],
                                                                 seed=args.model_seed, init=init)[0] for m in methods}
        for seed in range(args.first_seed, args.first_seed + args.chips):
            with drivers.open_tester("sim", preset=args.preset, seed=seed, limits=limits) as (tester, prov):
                profile = measure_and_fit(tester, prov, Path(tmp) / f"chip_{seed}")
                line = []
                for m in methods:
                    predicted = evaluate_model(models[m], task, profile, config, mc=args.mc, seed=args.model_seed)
                    result = deploy_model(models[m], task, profile, tester, config, seed=args.model_seed,
                                          predicted=predicted)
                    gaps[m].append(100 * (result.on_chip - predicted.mean))
                    cells[m].append(100 * (result.on_chip - result.predicted_cells))
                    line.append(f"{m} predicted {100 * predicted.mean:.2f} on chip {100 * result.on_chip:.2f} "
                                f"from cells {100 * result.predicted_cells:.2f}")
            print(f"chip {seed}: " + " | ".join(line), flush=True)
    for m in methods:
        g, c = gaps[m], cells[m]
        sd = statistics.stdev(g)
        print(f"{m}: on chip - predicted {statistics.mean(g):+.2f} (se {sd / len(g) ** 0.5:.2f}, chip-to-chip sd "
              f"{sd:.2f}), beyond 1.5 points on {sum(abs(x) > 1.5 for x in g)} of {len(g)} chips; on chip - from cells "
              f"{statistics.mean(c):+.2f} (sd {statistics.stdev(c):.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
