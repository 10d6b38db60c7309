"""Train a built-in (task, model) pair end to end and describe it for its checkpoint.

:func:`train_builtin` is what ``cimcal train`` runs: load the task with its seeded split, build
the model with a seeded init (or from a trained checkpoint, to fine-tune it), train with
:func:`~cimcal.train.loop.train_model`, and return the trained digital model with the checkpoint
metadata (task, model and hyperparameters, AnalogConfig, profile sha256s, method, seed).
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from cimcal.train.loop import TrainResult, train_model
from cimcal.train.models import DEFAULT_MODEL, build_model, default_hparams
from cimcal.train.tasks import TASKS, load_task

__all__ = ["TRAIN_DEFAULTS", "train_builtin", "config_to_json", "config_from_json"]

# per task: optimiser settings that train the default model well in a few minutes on 2 cores
TRAIN_DEFAULTS: dict[str, dict[str, Any]] = {
    "digits": {"epochs": 30, "batch_size": 64, "lr": 3e-3},
    "charlm": {"epochs": 4, "batch_size": 32, "lr": 3e-3},
}


def config_to_json(config: Any) -> dict[str, Any] | None:
    """An AnalogConfig as a JSON-able dict (None stays None)."""
    return None if config is None else json_safe(dataclasses.asdict(config))


def json_safe(value: Any) -> Any:
    """Tuples -> lists, recursively (what JSON would do), so metadata compares equal after a round trip."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def config_from_json(data: dict[str, Any] | None) -> Any:
    """Rebuild an AnalogConfig from :func:`config_to_json` output (lists back to tuples where the default is one)."""
    from cimcal.analog import AnalogConfig

    if data is None:
        return AnalogConfig()
    defaults = AnalogConfig()
    known = {f.name for f in dataclasses.fields(AnalogConfig)}
    values = {}
    for key, value in data.items():
        if key not in known:
            continue  # a field of a newer cimcal; ignore it rather than refuse the checkpoint
        if isinstance(value, list) and isinstance(getattr(defaults, key, None), tuple):
            value = tuple(value)
        values[key] = value
    return AnalogConfig(**values)


def _profile_sha(profile: Any) -> str | None:
    sha = getattr(profile, "sha256", None)
    return sha() if callable(sha) else sha


def train_builtin(
    task: str,
    profiles: Sequence[Any] = (),
    *,
    method: str = "ste",
    model: str | None = None,
    hparams: dict[str, Any] | None = None,
    analog_config: Any = None,
    epochs: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    seed: int = 0,
    max_steps: int | None = None,
    task_options: dict[str, Any] | None = None,
    progress: bool = False,
    init: Any = None,
) -> tuple[nn.Module, dict[str, Any], TrainResult]:
    """Train a built-in model; return (digital model, checkpoint metadata, TrainResult).

    ``init``: a :class:`~cimcal.train.checkpoint.Checkpoint` of this task to start from instead of a seeded
    init (fine-tuning, e.g. a clean model with chip noise). It fixes the model, its hyperparameters, the task
    options and the data split (its ``split_seed``: a new split would put its training data into the test set);
    ``seed`` still sets the data order and the noise. The metadata records it under ``init``.
    """
    defaults = TRAIN_DEFAULTS.get(task, {"epochs": 10, "batch_size": 64, "lr": 2e-3})
    epochs = defaults["epochs"] if epochs is None else epochs
    batch_size = defaults["batch_size"] if batch_size is None else batch_size
    lr = defaults["lr"] if lr is None else lr
    split_seed = seed
    if init is not None:
        model, hparams, task_options, split_seed = _from_init(init, task, model, hparams, task_options)
    the_task = load_task(task, seed=split_seed, **(task_options or {}))
    name = model or DEFAULT_MODEL[task]
    full_hparams = {**default_hparams(task, name), **(hparams or {})}
    torch.manual_seed(seed)
    net = build_model(task, name, the_task.info, full_hparams) if init is None else init.build_model(the_task.info)
    if analog_config is None:
        try:
            from cimcal.analog import AnalogConfig
        except ImportError:  # clean training needs no analog layers; evaluation will
            if method != "clean":
                raise
        else:
            analog_config = AnalogConfig()
    result = train_model(
        net, the_task, profiles, method=method, analog_config=analog_config, epochs=epochs,
        batch_size=batch_size, lr=lr, seed=seed, max_steps=max_steps, progress=progress,
    )
    meta = {
        "task": task,
        "task_options": json_safe(task_options or {}),
        "task_info": json_safe(the_task.info),
        "split_seed": split_seed,
        "model": name,
        "hparams": json_safe(full_hparams),
        "method": method,
        "seed": seed,
        "analog_config": config_to_json(analog_config),
        "profile_sha256": [_profile_sha(p) for p in profiles],
        "train": {"epochs": epochs, "batch_size": batch_size, "lr": lr, "max_steps": max_steps,
                  "world_size": torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1},
        "history": result.history,
    }
    if init is not None:
        from cimcal.data.sources import sha256_file

        meta["init"] = {"file": None if init.path is None else init.path.name,
                        "sha256": None if init.path is None else sha256_file(init.path),
                        "method": init.meta.get("method"), "seed": init.meta.get("seed")}
    return result.model, meta, result


def _from_init(init: Any, task: str, model: str | None, hparams: dict[str, Any] | None,
               task_options: dict[str, Any] | None) -> tuple[str, dict[str, Any], dict[str, Any], int]:
    """(model, hparams, task options, split seed) of a fine-tuning run from checkpoint ``init``; a conflicting
    request is a ConfigError naming the checkpoint."""
    from cimcal.errors import ConfigError

    meta, where = init.meta, init.path or "init checkpoint"
    for key in ("task", "model", "hparams", "split_seed"):
        if key not in meta:
            raise ConfigError(f"{where}: no {key!r} in its metadata: not a checkpoint of a built-in task")
    if meta["task"] != task:
        raise ConfigError(f"{where}: a checkpoint of task {meta['task']!r}, asked to train {task!r}")
    if model is not None and model != meta["model"]:
        raise ConfigError(f"{where}: holds model {meta['model']!r}, asked for {model!r}")
    for key, value in (hparams or {}).items():  # compared in the checkpoint's JSON form (tuples are lists there)
        if meta["hparams"].get(key) != json_safe(value):
            raise ConfigError(f"{where}: its model has {key}={meta['hparams'].get(key)!r}, asked for {value!r} "
                              "(a fine-tuning run keeps the model)")
    recorded = meta.get("task_options") or {}
    builder = TASKS.get(task)
    defaults = {} if builder is None else {name: p.default for name, p in inspect.signature(builder).parameters.items()
                                           if p.default is not inspect.Parameter.empty}
    for key, value in (task_options or {}).items():  # an option left at its default was recorded as absent
        if recorded.get(key, defaults.get(key, inspect.Parameter.empty)) != json_safe(value):
            raise ConfigError(f"{where}: trained with task options {recorded!r}, asked for {key}={value!r}")
    return meta["model"], dict(meta["hparams"]), dict(recorded), int(meta["split_seed"])
