"""Data-parallel training under ``torchrun`` (gloo on CPU).

``torchrun --nproc_per_node=2 -m cimcal train ...`` sets ``RANK``/``WORLD_SIZE``/``MASTER_ADDR``;
:func:`init_from_env` then joins the process group, and :func:`cimcal.train.train_model` wraps
the model in ``DistributedDataParallel`` by itself. Only rank 0 writes files and draws a
progress bar; every rank draws its own noise (seeds offset by the rank).
"""

from __future__ import annotations

import os

import torch.distributed as dist

__all__ = ["init_from_env", "shutdown", "rank", "world_size"]


def init_from_env(backend: str = "gloo") -> bool:
    """Join the process group described by torchrun's environment; False when not launched by torchrun."""
    if not dist.is_available() or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return True


def rank() -> int:
    """This process's rank (0 when not distributed)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    """Number of processes (1 when not distributed)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def shutdown() -> None:
    """Leave the process group if one was joined."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
