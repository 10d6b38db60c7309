"""Shared set-up of the analog benchmarks: the chip profile, the two models, one training step.

The profile is fitted with :func:`cimcal.noise.fit_profile` on seeded synthetic measurement tables
(:mod:`cimcal.data.synthetic`: skewed programming error, stuck cells, drift, heavy-tailed read noise;
a 6-bit ADC with INL/DNL, near-missing codes and sparkles), so every method sees the same chip.
Methods: ``clean`` (the plain digital model), ``ste`` (AnalogConfig(noise="lut"), the extended STE) and
``gaussian`` (AnalogConfig(noise="gaussian"), differentiable noise-aware training); fresh noise every step.
``ste-pc``: the extended STE with ``pair_compensation=True`` (bench_step's ``--pair-compensation``).
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

METHODS = ("clean", "ste", "gaussian")
MODELS = ("mlp", "cnn")


def bench_profile():
    """The benchmark chip: a profile fitted on seeded synthetic conductance and ADC tables."""
    from cimcal.data.synthetic import synthetic_adc, synthetic_conductance
    from cimcal.noise.fit import fit_profile

    return fit_profile(conductance=synthetic_conductance(n_cells=4096, seed=0), adc=synthetic_adc(cols=8, seed=0))


def build_model(name: str) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """(model, inputs, labels): MLP 784-1024-1024-10 at batch 256, or the digits CNN (8x8) at batch 256."""
    torch.manual_seed(0)
    if name == "mlp":
        model = nn.Sequential(nn.Linear(784, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, 10))
        x = torch.rand(256, 784)
    elif name == "cnn":  # the digits CNN of cimcal.train.models.SmallCNN
        model = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(32 * 16, 64), nn.ReLU(), nn.Linear(64, 10),
        )
        x = torch.rand(256, 1, 8, 8)
    else:
        raise ValueError(f"model must be one of {MODELS}, got {name!r}")
    return model, x, torch.randint(0, 10, (256,))


def make_step(method: str, model_name: str, profile, compile_chain: bool = True) -> Callable[[], float]:
    """A closure running one SGD training step of ``method`` on ``model_name``; returns the loss. Its
    ``model`` attribute is the model it trains (for hooks)."""
    from cimcal.analog import AnalogConfig, convert

    model, x, y = build_model(model_name)
    model = copy.deepcopy(model)
    if method != "clean":
        noise = {"ste": "lut", "ste-pc": "lut", "gaussian": "gaussian"}[method]
        config = AnalogConfig(noise=noise, compile=compile_chain, pair_compensation=method == "ste-pc")
        convert(model, profile, config, generator=torch.Generator().manual_seed(1))
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()

    def step() -> float:
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    step.model = model  # type: ignore[attr-defined]
    return step


def interleaved_times(
    steps: dict[str, Callable[[], object]], rounds: int, per_round: int = 1
) -> dict[str, dict[str, list[float]]]:
    """Per-round times (s per step) of each step: ``{name: {"wall": [...], "cpu": [...]}}`` (process CPU time
    beside wall time). The steps run in turn round by round, ``per_round`` steps each, the order reversed every
    other round, so that drifting load from other jobs falls on all of them alike and no step always follows
    the same one."""
    times: dict[str, dict[str, list[float]]] = {name: {"wall": [], "cpu": []} for name in steps}
    for i in range(rounds):
        for name in (list(steps) if i % 2 == 0 else list(reversed(steps))):
            start, start_cpu = time.perf_counter(), time.process_time()
            for _ in range(per_round):
                steps[name]()
            times[name]["wall"].append((time.perf_counter() - start) / per_round)
            times[name]["cpu"].append((time.process_time() - start_cpu) / per_round)
    return times


def interleaved_medians(steps: dict[str, Callable[[], object]], rounds: int) -> dict[str, float]:
    """Median wall time (s) of each step over :func:`interleaved_times`' rounds."""
    return {name: statistics.median(t["wall"]) for name, t in interleaved_times(steps, rounds).items()}


PAIRED_CI_MIN_ROUNDS = 10


def paired_ratio(numerator: list[float], denominator: list[float], seed: int = 0) -> tuple[float, float | None, float | None]:
    """Median over rounds of the per-round ratio ``numerator[i] / denominator[i]`` (steps timed side by side in
    one round, so that a slow phase of the machine lasting a round or longer cancels), with a 95 % bootstrap
    confidence interval of that median (scipy's BCa, resampling rounds; ``seed`` fixes it): (median, low, high).
    The interval covers this run only (the machine's phases move the ratio between runs); it is None below
    :data:`PAIRED_CI_MIN_ROUNDS` rounds."""
    import numpy as np
    from scipy.stats import bootstrap

    if len(numerator) != len(denominator) or not numerator:
        raise ValueError(f"paired_ratio needs two equal, non-empty lists, got {len(numerator)} and {len(denominator)}")
    ratios = np.asarray(numerator) / np.asarray(denominator)
    if len(ratios) < PAIRED_CI_MIN_ROUNDS:
        return float(np.median(ratios)), None, None
    ci = bootstrap((ratios,), np.median, confidence_level=0.95, n_resamples=2000, random_state=seed).confidence_interval
    return float(np.median(ratios)), float(ci.low), float(ci.high)
