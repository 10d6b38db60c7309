"""Where the STE-LUT training step's analog forward goes: sampling kernels, tile matmuls/convs, and the rest.

    python benchmarks/bench_step_split.py [--models mlp cnn] [--steps 40] [--threads N]

Wraps (for this process only) every compiled kernel call, ``torch.mm``/``F.conv2d`` and the extended-STE
Functions' forward with timers, runs ``--steps`` real training steps of the benchmark models (fresh noise every
step) and prints per step: the whole step, the analog forwards, the kernels, the matmuls/convs, and the rest of
the forwards (Python, small torch ops, numpy views: the per-call cost a fused op would remove). The timers add a
few microseconds per call; read the split, not the step time (``bench_step.py`` measures that).
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_setup import MODELS, bench_profile, make_step  # noqa: E402


def _timed(spent: dict[str, float], name: str, fn):  # noqa: ANN001, ANN202
    def wrapper(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            spent[name] += time.perf_counter() - start

    return wrapper


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from cimcal.analog import functions, kernels

    spent: dict[str, float] = collections.defaultdict(float)
    kernel_call = kernels._Kernel.__call__
    kernels._Kernel.__call__ = _timed(spent, "kernels", kernel_call)
    kernels._running_kth = _timed(spent, "kernels", kernels._running_kth)
    for cls in (functions.AnalogLinearFunction, functions.AnalogConv2dFunction):
        cls.forward = staticmethod(_timed(spent, "forward", cls.forward))
    mm, conv2d = torch.mm, F.conv2d
    profile = bench_profile()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for model in args.models:
        step = make_step("ste", model, profile)
        torch.mm, F.conv2d = _timed(spent, "mm/conv", mm), _timed(spent, "mm/conv", conv2d)
        try:
            for _ in range(args.warmup):
                step()
            spent.clear()
            start = time.perf_counter()
            for _ in range(args.steps):
                step()
            total = (time.perf_counter() - start) / args.steps
        finally:
            torch.mm, F.conv2d = mm, conv2d
        per = {name: value / args.steps * 1e3 for name, value in spent.items()}
        rest = per["forward"] - per["kernels"] - per["mm/conv"]
        print(f"{model}: step {total * 1e3:.1f} ms; analog forwards {per['forward']:.2f} ms = kernels "
              f"{per['kernels']:.2f} + matmuls/convs {per['mm/conv']:.2f} + rest {rest:.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
