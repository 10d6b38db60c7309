"""Sampling throughput of the LUT models at 10^7 values, against the uniform-float ceiling.

Prints samples/s for ConductanceLUT.sample and ADCLUT.sample (fused torch.compile kernel and
the eager fallback) and for torch.rand alone, all measured in this run, with their ratios.
Target (issue 2): >= 5e7 samples/s on 2 cores; torch.rand alone is the ceiling.

    python benchmarks/bench_sample.py [--n 10000000] [--repeats 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from cimcal.data.synthetic import synthetic_adc, synthetic_conductance
from cimcal.noise import ADCLUT, ConductanceLUT


def _best(fn, repeats: int) -> float:
    fn()  # warm-up (compiles the fused kernel on first use)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    n = args.n

    cond = ConductanceLUT().fit(synthetic_conductance(n_cells=16_384, levels=16, reads=2, seed=0))
    adc = ADCLUT().fit(synthetic_adc(cols=64, n_inputs=512, repeats=8, seed=0))
    gen = torch.Generator().manual_seed(0)
    level = torch.randint(0, 16, (n,), generator=gen)
    x = torch.rand(n, generator=gen) * 100.0
    col = torch.randint(0, 64, (n,), generator=gen)

    results: dict[str, float] = {}
    results["torch.rand (ceiling)"] = _best(lambda: torch.rand(n, generator=gen), args.repeats)
    for mode in ("1", "0"):
        os.environ["CIMCAL_COMPILE"] = mode
        tag = "compiled" if mode == "1" else "eager"
        start = time.perf_counter()
        cond.sample(level[:1024], t_s=10.0, generator=gen)
        adc.sample(x[:1024], col[:1024], generator=gen)
        if mode == "1":
            print(f"first-call compile of both kernels: {time.perf_counter() - start:.1f} s")
        results[f"ConductanceLUT.sample ({tag})"] = _best(lambda: cond.sample(level, t_s=10.0, generator=gen),
                                                           args.repeats)
        results[f"ADCLUT.sample ({tag})"] = _best(lambda: adc.sample(x, col, generator=gen), args.repeats)
    os.environ.pop("CIMCAL_COMPILE")

    ceiling = n / results["torch.rand (ceiling)"]
    print(f"n = {n:.0e} values, {torch.get_num_threads()} threads, best of {args.repeats} "
          f"(shared machine: timings are noisy)")
    for name, seconds in results.items():
        rate = n / seconds
        print(f"  {name:36s} {rate / 1e6:8.1f} M samples/s   {rate / ceiling:5.2f} x ceiling   "
              f"{rate / 5e7:5.2f} x target")
    assert np.isfinite(ceiling)


if __name__ == "__main__":
    main()
