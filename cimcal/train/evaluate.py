"""Monte-Carlo evaluation over chip instances.

A *chip instance* is one programming of the weights onto a chip: its programming error is
drawn once (``fixed_instance`` noise) and stays for the whole test set, while read noise and
ADC noise are drawn on every forward, as on silicon. Each of the ``mc`` instances gets a fresh
programming error from its own seeded generator, so the spread across instances is the
chip-to-chip (program-to-program) spread a deployment would see.

The result holds the mean, std (ddof=1) and worst case (lowest accuracy, highest perplexity)
over instances, and the noise-free figure of the same weights (the digital model) beside it.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from cimcal.errors import ConfigError
from cimcal.train.loop import noise_seed, run_split
from cimcal.train.tasks import Task

__all__ = ["EvalResult", "evaluate_model", "evaluate_checkpoint", "instance_config", "calibrate_ranges",
           "effective_t_s"]


@dataclass
class EvalResult:
    """Monte-Carlo figures of one model on one profile."""

    metric: str
    mean: float
    std: float
    worst: float
    noise_free: float
    mc: int
    values: list[float] = field(default_factory=list)
    t_s: float | None = None
    split: str = "test"

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (what ``cimcal evaluate --json`` prints)."""
        return dataclasses.asdict(self)


def instance_config(config: Any, t_s: float | None = None) -> Any:
    """The AnalogConfig used for evaluation: LUT noise, programming error fixed per chip instance."""
    changes: dict[str, Any] = {"noise": "lut", "resample": "fixed_instance"}
    if t_s is not None:
        changes["t_s"] = float(t_s)
    return dataclasses.replace(config, **changes)


def calibrate_ranges(analog: nn.Module, dataset: TensorDataset, batches: int = 4, batch_size: int = 256) -> None:
    """Set the analog layers' DAC and partial-sum ranges from a few batches of ``dataset``.

    Checkpoints hold the digital weights only, so every evaluation calibrates the converted model
    the same way, whatever the training method (running percentiles, see AnalogConfig).
    """
    from cimcal.analog import calibrate

    was_training = analog.training
    analog.eval()
    loader = DataLoader(dataset, batch_size=batch_size)
    calibrate(analog, (batch for index, batch in zip(range(batches), loader)))
    analog.train(was_training)


def _program_instance(analog: nn.Module, generator: torch.Generator) -> None:
    """A new chip instance: fresh programming error in every layer; read/ADC noise from ``generator``."""
    from cimcal.analog import analog_layers, new_instance

    for layer in analog_layers(analog):
        layer.generator = generator
    new_instance(analog, generator)


def evaluate_model(
    model: nn.Module,
    task: Task,
    profile: Any,
    analog_config: Any = None,
    *,
    mc: int = 20,
    t_s: float | None = None,
    seed: int = 0,
    split: str = "test",
    batch_size: int = 256,
    calib_batches: int = 4,
) -> EvalResult:
    """Evaluate the digital ``model`` on ``mc`` instances of the chip described by ``profile``.

    ``model`` is not modified: it is converted on a copy, whose DAC and partial-sum ranges are
    calibrated on ``calib_batches`` batches of the training split. ``split`` is "test" or "val".
    """
    from cimcal.analog import AnalogConfig, convert

    if mc < 1:
        raise ConfigError(f"mc must be >= 1, got {mc}")
    if split not in ("test", "val"):
        raise ConfigError(f"split must be 'test' or 'val', got {split!r}")
    dataset = getattr(task, split)
    _, noise_free = run_split(model, task, dataset, batch_size)
    config = instance_config(analog_config or AnalogConfig(), t_s)
    analog = convert(copy.deepcopy(model), profile, config)
    _program_instance(analog, torch.Generator().manual_seed(noise_seed(seed, 0, stream=9)))
    calibrate_ranges(analog, task.train, calib_batches, batch_size)
    values = []
    for instance in range(mc):
        _program_instance(analog, torch.Generator().manual_seed(noise_seed(seed, 0, stream=10 + instance)))
        values.append(run_split(analog, task, dataset, batch_size)[1])
    tensor = torch.tensor(values, dtype=torch.float64)
    worst = float(tensor.min() if task.metric == "accuracy" else tensor.max())
    std = float(tensor.std()) if mc > 1 else 0.0
    return EvalResult(task.metric, float(tensor.mean()), std, worst, noise_free, mc, values,
                      effective_t_s(profile, config), split)


def effective_t_s(profile: Any, config: Any, t_s: float | None = None) -> float | None:
    """The read time a model is evaluated or deployed at: ``t_s``, else the config's, else the profile's earliest
    time point (None without a conductance model)."""
    if t_s is not None:
        return float(t_s)
    if getattr(config, "t_s", None) is not None:
        return float(config.t_s)
    conductance = getattr(profile, "conductance", None)
    return None if conductance is None else float(torch.as_tensor(conductance.t_s_).min())


def evaluate_checkpoint(
    path: str | os.PathLike,
    profile: Any,
    *,
    mc: int = 20,
    t_s: float | None = None,
    seed: int = 0,
    split: str = "test",
    task: Task | None = None,
    overrides: dict[str, Any] | None = None,
) -> EvalResult:
    """Load a checkpoint of a built-in task and Monte-Carlo evaluate it (``task`` for users' own data).

    ``overrides`` change AnalogConfig fields recorded in the checkpoint (e.g. ``{"compile": False}``).
    """
    from cimcal.train.builtin import config_from_json
    from cimcal.train.checkpoint import BUILTIN_META, load_checkpoint
    from cimcal.train.tasks import load_task

    checkpoint = load_checkpoint(path, task=None if task is None else task.name,
                                 require=BUILTIN_META if task is None else ("task", "model", "hparams"))
    meta = checkpoint.meta
    if task is None:
        task = load_task(meta["task"], seed=meta["split_seed"], **meta.get("task_options", {}))
    model = checkpoint.build_model(task.info)
    config = config_from_json(meta.get("analog_config"))
    if overrides:
        config = dataclasses.replace(config, **overrides)
    conductance = getattr(profile, "conductance", None)
    if t_s is None and config.t_s is not None and conductance is not None:
        from cimcal.analog.layers import check_drift_time

        check_drift_time(conductance, config.t_s, what=f"{path}: the checkpoint's AnalogConfig.t_s",
                         hint="; pass --t-s (t_s=) inside that range")
    result = evaluate_model(model, task, profile, config, mc=mc, t_s=t_s, seed=seed, split=split)
    if math.isnan(result.mean):
        raise ConfigError(f"{path}: evaluation produced NaN")
    return result
