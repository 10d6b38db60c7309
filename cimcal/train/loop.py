"""The training loop: clean, gaussian (differentiable noise-aware baseline) and ste (LUT + extended STE).

One loop for the three methods, so a comparison isolates the method:

- ``clean``: plain digital training; the profile is only recorded (evaluation still runs analog).
- ``gaussian``: the analog layers in ``noise="gaussian"`` mode, autograd through the noise.
- ``ste``: the analog layers in ``noise="lut"`` mode: forward samples the chip's lookup tables,
  backward is the clean operation's gradient (the extended straight-through estimator).

Noise is fresh every forward during training. Several profiles train one model for a fleet:
the model is converted once per profile, every view shares the same parameters, and each step
runs the view of one chip drawn at random (per rank, from a seeded ``torch.Generator``).

Under ``torchrun`` (``torch.distributed`` initialised, gloo on CPU) the fleet is wrapped in
``DistributedDataParallel`` and data is sharded with a ``DistributedSampler``; every rank
draws its own noise and chips (seeds offset by the rank), gradients are averaged.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from cimcal.errors import ConfigError
from cimcal.train.tasks import Task

__all__ = [
    "METHODS",
    "TrainResult",
    "train_model",
    "analog_view",
    "FleetModel",
    "noise_seed",
    "run_split",
]

# method -> AnalogConfig.noise used while training (None: train the digital model)
METHODS: dict[str, str | None] = {"clean": None, "gaussian": "gaussian", "ste": "lut"}


def noise_seed(seed: int, rank: int = 0, stream: int = 0) -> int:
    """A distinct, reproducible seed for each (run seed, rank, stream): ranks never share noise."""
    return (int(seed) * 1_000_003 + 7919 * (int(rank) + 1) + 104_729 * int(stream)) % (2**63 - 1)


def analog_view(model: nn.Module, profile: Any, config: Any, generator: torch.Generator | None = None) -> nn.Module:
    """A copy of ``model`` converted to analog layers for ``profile``, *sharing* ``model``'s parameters.

    Gradients of the view land in the original parameters, so several views (one per chip of a
    fleet) train one set of weights.
    """
    from cimcal.analog import convert

    view = convert(copy.deepcopy(model), profile, config, generator=generator)
    # every name of a shared (tied) parameter, so each of its owners in the view gets the master
    masters = dict(model.named_parameters(remove_duplicate=False))
    for name, _ in list(view.named_parameters(remove_duplicate=False)):
        if name not in masters:
            raise ConfigError(f"convert() added parameter {name!r}; cannot share it across a fleet")
        owner_name, _, attr = name.rpartition(".")
        owner = view.get_submodule(owner_name) if owner_name else view
        owner._parameters[attr] = masters[name]
    return view


class FleetModel(nn.Module):
    """The digital model plus one analog view per chip; ``forward(x, chip)`` runs chip ``chip`` (-1: digital)."""

    def __init__(self, model: nn.Module, views: Sequence[nn.Module] = ()) -> None:
        super().__init__()
        self.digital = model
        self.views = nn.ModuleList(views)

    def forward(self, x: Tensor, chip: int = -1) -> Tensor:
        return self.digital(x) if chip < 0 else self.views[chip](x)


@dataclass
class TrainResult:
    """The trained digital model, per-epoch history and the chip index used at every step."""

    model: nn.Module
    history: list[dict[str, float]] = field(default_factory=list)
    chips: list[int] = field(default_factory=list)
    step_s: float = 0.0


def run_split(
    model: nn.Module, task: Task, dataset: TensorDataset, batch_size: int = 256, chip: int | None = None
) -> tuple[float, float]:
    """(mean loss, metric) of ``model`` on ``dataset`` without gradients (``chip`` passed to a FleetModel)."""
    total_loss, n_correct, n_items = 0.0, 0, 0
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for inputs, target in DataLoader(dataset, batch_size=batch_size):
            logits = model(inputs) if chip is None else model(inputs, chip)
            count = target.numel()
            total_loss += float(task.loss(logits, target)) * count
            n_correct += int((logits.argmax(-1) == target).sum())
            n_items += count
    model.train(was_training)
    return total_loss / max(n_items, 1), task.score(total_loss, n_correct, n_items)


def _check(method: str, profiles: Sequence[Any], epochs: int, batch_size: int, lr: float) -> None:
    if method not in METHODS:
        raise ConfigError(f"method must be one of {sorted(METHODS)}, got {method!r}")
    if METHODS[method] is not None and not profiles:
        raise ConfigError(f"method {method!r} needs at least one chip profile")
    if epochs < 1 or batch_size < 1 or not lr > 0:
        raise ConfigError(f"epochs and batch_size must be >= 1 and lr > 0, got {epochs}, {batch_size}, {lr}")


def train_model(
    model: nn.Module,
    task: Task,
    profiles: Sequence[Any] = (),
    *,
    method: str = "ste",
    analog_config: Any = None,
    epochs: int = 10,
    batch_size: int = 64,
    lr: float = 2e-3,
    weight_decay: float = 0.0,
    seed: int = 0,
    max_steps: int | None = None,
    progress: bool = False,
) -> TrainResult:
    """Train ``model`` (in place) on ``task`` against ``profiles`` with ``method``; return the digital model.

    Parameters
    ----------
    model : any ``nn.Module`` whose matrix products are ``nn.Linear`` / ``nn.Conv2d``.
    task : a :class:`~cimcal.train.tasks.Task` (built-in or ``Task.from_tensors``).
    profiles : chip profiles; one model for the fleet, one chip drawn per step.
    method : "clean", "gaussian" or "ste".
    analog_config : an ``AnalogConfig``; its ``noise`` is set from the method.
    max_steps : stop after this many optimiser steps (tests, smoke runs).
    progress : tqdm bar on stderr (rank 0 only) with loss, metric and time per step.
    """
    _check(method, profiles, epochs, batch_size, lr)
    dist = torch.distributed
    distributed = dist.is_available() and dist.is_initialized()
    rank = dist.get_rank() if distributed else 0
    world = dist.get_world_size() if distributed else 1

    noise = METHODS[method]
    views: list[nn.Module] = []
    if noise is not None:
        from cimcal.analog.config import resolve_config

        config = dataclasses.replace(resolve_config(analog_config), noise=noise)
        # one explicit noise generator per rank, shared by every analog layer of every chip view
        noise_generator = torch.Generator().manual_seed(noise_seed(seed, rank, stream=2))
        views = [analog_view(model, profile, config, noise_generator) for profile in profiles]
    fleet = FleetModel(model, views)
    # Every rank must start from the same weights: DDP broadcasts rank 0's parameters. Buffers (noise
    # state of the analog layers) stay per rank, hence broadcast_buffers=False.
    runner: nn.Module = fleet
    if distributed:
        runner = nn.parallel.DistributedDataParallel(fleet, broadcast_buffers=False)
    torch.manual_seed(noise_seed(seed, rank))  # layers drawing from the default generator differ per rank
    chip_generator = torch.Generator().manual_seed(noise_seed(seed, rank, stream=1))

    sampler = None
    if distributed:
        sampler = torch.utils.data.DistributedSampler(task.train, num_replicas=world, rank=rank, seed=seed)
    loader = DataLoader(
        task.train,
        batch_size=batch_size,
        shuffle=sampler is None,
        sampler=sampler,
        drop_last=len(task.train) >= 2 * batch_size * world,
        generator=torch.Generator().manual_seed(seed),
    )
    total_steps = epochs * len(loader) if max_steps is None else min(max_steps, epochs * len(loader))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=max(total_steps, 1), pct_start=0.1)

    from tqdm.auto import tqdm

    bar = tqdm(total=total_steps, disable=not progress or rank != 0, unit="step", dynamic_ncols=True, leave=True)
    result = TrainResult(model)
    step, step_time = 0, 0.0
    fleet.train()
    for epoch in range(epochs):
        if sampler is not None:
            sampler.set_epoch(epoch)
        sum_loss, n_correct, n_items = 0.0, 0, 0
        for inputs, target in loader:
            if step >= total_steps:
                break
            start = time.perf_counter()
            chip = int(torch.randint(len(views), (1,), generator=chip_generator)) if views else -1
            logits = runner(inputs, chip)
            loss = task.loss(logits, target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            elapsed = time.perf_counter() - start
            step_time = elapsed if step == 0 else 0.9 * step_time + 0.1 * elapsed
            step += 1
            result.chips.append(chip)
            count = target.numel()
            sum_loss += float(loss.detach()) * count
            n_correct += int((logits.detach().argmax(-1) == target).sum())
            n_items += count
            figure = task.score(sum_loss, n_correct, n_items)
            bar.update(1)
            bar.set_postfix(
                {"ep": epoch, "loss": f"{float(loss.detach()):.3f}", task.metric[:3]: f"{figure:.3f}", "ms/step": f"{1e3 * step_time:.1f}"},
                refresh=False,
            )
        if n_items == 0:
            break
        result.history.append(
            {"epoch": epoch, "train_loss": sum_loss / n_items, f"train_{task.metric}": task.score(sum_loss, n_correct, n_items)}
        )
    bar.close()
    result.step_s = step_time
    model.eval()
    return result
