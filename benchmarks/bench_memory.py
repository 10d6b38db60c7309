"""Peak memory of one training step: clean vs the extended STE (LUT noise) vs the Gaussian NAT baseline.

    python benchmarks/bench_memory.py [--models mlp cnn] [--steps 3]

Each (model, method) runs in its own subprocess (``--child``), so allocator caches and compiled kernels
never mix. In the child, after warm-up steps, one training step runs under ``torch.profiler`` with
``profile_memory=True``; the peak of its live tensor bytes (allocations minus frees in time order, from the
profiler's memory timeline) is added to the tensor bytes alive when the step starts (parameters, optimizer
state, buffers, the batch; gradients are set to None between steps). The
process RSS high-water mark (``ru_maxrss``, includes the Python/torch runtime and compiled code) is printed
beside it. Ratios are against ``clean`` on the same model and batch, measured in one run.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_setup import METHODS, MODELS  # noqa: E402


def _live_bytes_at_start(step_state: dict) -> int:
    seen: set[int] = set()
    total = 0
    for tensor in step_state["tensors"]():
        ptr = tensor.untyped_storage().data_ptr()
        if ptr in seen:
            continue
        seen.add(ptr)
        total += tensor.untyped_storage().nbytes()
    return total


def child(model_name: str, method: str, steps: int) -> dict:
    """Measure one (model, method) in this process; returns the figures as a dict."""
    import copy

    from torch import nn

    from bench_setup import bench_profile, build_model

    profile = bench_profile() if method != "clean" else None
    model, x, y = build_model(model_name)
    model = copy.deepcopy(model)
    if method != "clean":
        from cimcal.analog import AnalogConfig, convert

        noise = {"ste": "lut", "gaussian": "gaussian"}[method]
        convert(model, profile, AnalogConfig(noise=noise), generator=torch.Generator().manual_seed(1))
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        optimizer.step()

    for _ in range(steps):
        step()

    def tensors():
        yield from model.parameters()
        yield from model.buffers()
        for state in optimizer.state.values():
            yield from (v for v in state.values() if isinstance(v, torch.Tensor))
        yield x
        yield y

    optimizer.zero_grad(set_to_none=True)
    baseline = _live_bytes_at_start({"tensors": tensors})
    from torch.profiler._memory_profiler import Action, MemoryProfile

    with torch.profiler.profile(
        activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True
    ) as prof:
        step()
    live = peak = 0
    for _, action, _, size in MemoryProfile(prof.profiler.kineto_results).timeline:  # time-ordered
        if action == Action.CREATE:
            live += size
        elif action == Action.DESTROY:
            live -= size
        peak = max(peak, live)
    return {
        "model": model_name,
        "method": method,
        "peak_tensor_bytes": baseline + peak,
        "baseline_bytes": baseline,
        "ru_maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--steps", type=int, default=3, help="warm-up steps before the measured one")
    parser.add_argument("--child", nargs=2, metavar=("MODEL", "METHOD"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child[0], args.child[1], args.steps)))
        return 0
    for model_name in args.models:
        results = {}
        for method in METHODS:
            out = subprocess.run(
                [sys.executable, __file__, "--child", model_name, method, "--steps", str(args.steps)],
                check=True, capture_output=True, text=True,
            )
            results[method] = json.loads(out.stdout.strip().splitlines()[-1])
        clean = results["clean"]
        parts = []
        for method in METHODS:
            r = results[method]
            parts.append(
                f"{method} {r['peak_tensor_bytes'] / 2**20:.1f} MiB tensors "
                f"({r['peak_tensor_bytes'] / clean['peak_tensor_bytes']:.2f}x clean), "
                f"RSS high-water {r['ru_maxrss_kib'] / 1024:.0f} MiB ({r['ru_maxrss_kib'] / clean['ru_maxrss_kib']:.2f}x)"
            )
        print(f"{model_name}: " + "; ".join(parts))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
