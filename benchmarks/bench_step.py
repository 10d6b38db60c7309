"""Time per training step: clean vs the extended STE (LUT noise) vs the Gaussian NAT baseline.

    python benchmarks/bench_step.py [--models mlp cnn] [--rounds 45] [--steps 1] [--threads N] [--no-compile]
                                    [--pair-compensation] [--profile chip.cimprof]

All ratios come from one run on the same model, batch and profile, with fresh noise every step. The
methods are interleaved round by round, the order reversed every other round, so that load from other
processes on a shared machine hits them alike; each round times ``--steps`` steps (default one: timings on
shared machines drift within seconds). Warm-up steps (torch.compile, table building) are excluded.

Printed per model: the median step time of each method over the rounds and its ratio to clean's, in wall-clock
and process CPU time; then the paired ratio, the median over rounds of each round's ratio (the steps timed side
by side, so a slow phase of the machine cancels), with a 95 % bootstrap confidence interval of this run's
median (from 10 rounds on).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_setup import METHODS, MODELS, bench_profile, interleaved_times, make_step, paired_ratio  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--rounds", type=int, default=45)
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--no-compile", action="store_true", help="eager sampling chains (the fallback)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--pair-compensation", action="store_true",
                        help="also time the extended STE with AnalogConfig(pair_compensation=True) ('ste-pc')")
    parser.add_argument("--profile", default=None, help="a chip profile (.cimprof) instead of the synthetic benchmark chip")
    args = parser.parse_args(argv)
    methods = METHODS + (("ste-pc",) if args.pair_compensation else ())
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.profile:
        from cimcal.noise.profile import ChipProfile

        profile = ChipProfile.load(args.profile)
    else:
        profile = bench_profile()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, compile={not args.no_compile}")
    for model_name in args.models:
        steps = {m: make_step(m, model_name, profile, not args.no_compile) for m in methods}
        for step in steps.values():
            for _ in range(args.warmup):
                step()
        times = interleaved_times(steps, args.rounds, args.steps)
        for label in ("wall", "cpu"):
            median = {m: statistics.median(t[label]) for m, t in times.items()}
            line = ", ".join(
                f"{m} {1e3 * median[m]:.1f} ms ({median[m] / median['clean']:.2f}x clean)" for m in methods
            )
            print(f"{model_name} [{label}]: {line}; median of {args.rounds} interleaved rounds x {args.steps} steps")
        paired = []
        for m in methods[1:]:
            ratio, low, high = paired_ratio(times[m]["wall"], times["clean"]["wall"])
            interval = "" if low is None else f" (95% CI {low:.2f}-{high:.2f})"
            paired.append(f"{m} {ratio:.2f}x clean{interval}")
        print(f"{model_name} [paired wall]: {', '.join(paired)}; median over rounds of the round's ratio")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
