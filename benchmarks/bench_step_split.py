"""Where the STE-LUT training step's time goes: per layer against the clean model, and inside the analog forward.

    python benchmarks/bench_step_split.py [--models mlp cnn] [--steps 40] [--threads N]

First, per layer: clean and STE-LUT steps interleaved (``--steps`` rounds, fresh noise every step, medians), with
forward hooks timing every top-level layer; the rest of the step (loss, backward, optimizer) beside them. Then,
inside the analog forwards: every compiled kernel call, ``torch.mm``/``F.conv2d`` and the extended-STE Functions'
forward wrapped (for this process only) in timers, and per step the whole step, the analog forwards, the kernels,
the matmuls/convs, and the rest of the forwards (Python, small torch ops, numpy views: the per-call cost a fused
op would remove). The timers add a few microseconds per call; read the split, not the step time
(``bench_step.py`` measures that).
"""

from __future__ import annotations

import argparse
import collections
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_setup import MODELS, bench_profile, interleaved_medians, make_step  # noqa: E402


def _timed(spent: dict[str, float], name: str, fn):  # noqa: ANN001, ANN202
    def wrapper(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            spent[name] += time.perf_counter() - start

    return wrapper


def _per_layer(model_name: str, profile, steps: int, warmup: int) -> None:  # noqa: ANN001
    """Clean and STE-LUT steps interleaved; median time of each top-level layer's forward, of the whole forward
    and of the rest of the step, printed side by side."""
    runs = {method: make_step(method, model_name, profile) for method in ("clean", "ste")}
    times: dict[str, dict[str, list[float]]] = {method: collections.defaultdict(list) for method in runs}
    for method, step in runs.items():
        started: dict[str, float] = {}
        record = times[method]
        layers = [(name, module) for name, module in step.model.named_children()] + [("forward", step.model)]
        for name, module in layers:
            module.register_forward_pre_hook(lambda _m, _i, name=name: started.__setitem__(name, time.perf_counter()))
            module.register_forward_hook(
                lambda _m, _i, _o, name=name, record=record: record[name].append(time.perf_counter() - started[name]))
        for _ in range(warmup):
            step()
        record.clear()
    step_s = interleaved_medians(runs, steps)
    median = {method: {name: statistics.median(v) * 1e3 for name, v in record.items()} for method, record in times.items()}
    for method in runs:
        median[method]["step"] = step_s[method] * 1e3
        median[method]["loss, backward, optimizer"] = median[method]["step"] - median[method]["forward"]
    model = runs["ste"].model
    print(f"{model_name}, per layer (median of {steps} interleaved steps, ms): clean -> STE-LUT (+ difference)")
    for name in median["clean"]:
        label = f"{name} {type(model.get_submodule(name)).__name__}" if name in model._modules else name
        clean, ste = median["clean"][name], median["ste"][name]
        print(f"  {label:28s} {clean:7.3f} -> {ste:7.3f}  ({ste - clean:+.3f})")


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

    profile = bench_profile()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for model in args.models:
        _per_layer(model, profile, args.steps, args.warmup)
    spent: dict[str, float] = collections.defaultdict(float)
    kernel_call = kernels._Kernel.__call__
    kernels._Kernel.__call__ = _timed(spent, "kernels", kernel_call)
    kernels._running_kth = _timed(spent, "kernels", kernels._running_kth)
    for cls in (functions.AnalogLinearFunction, functions.AnalogConv2dFunction):
        cls.forward = staticmethod(_timed(spent, "forward", cls.forward))
    mm, conv2d = torch.mm, F.conv2d
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
        print(f"{model}, inside the analog forwards: step {total * 1e3:.1f} ms; analog forwards {per['forward']:.2f} ms = kernels "
              f"{per['kernels']:.2f} + matmuls/convs {per['mm/conv']:.2f} + rest {rest:.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
