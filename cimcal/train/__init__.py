"""Training and Monte-Carlo evaluation against chip profiles.

Built-in offline tasks (``digits``, ``charlm``), small reference models, one training loop for
the three methods (``clean``, ``gaussian``, ``ste``), Monte-Carlo evaluation over chip
instances, and pickle-free checkpoints. Your own model and data work through the same API:
wrap tensors in :meth:`Task.from_tensors` and call :func:`train_model` / :func:`evaluate_model`.
"""

from __future__ import annotations

from cimcal.train.builtin import TRAIN_DEFAULTS, train_builtin
from cimcal.train.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from cimcal.train.evaluate import EvalResult, evaluate_checkpoint, evaluate_model
from cimcal.train.loop import METHODS, TrainResult, train_model
from cimcal.train.models import DEFAULT_MODEL, MODELS, build_model
from cimcal.train.tasks import TASKS, Task, load_task

__all__ = [
    "Task",
    "load_task",
    "TASKS",
    "MODELS",
    "DEFAULT_MODEL",
    "build_model",
    "METHODS",
    "TrainResult",
    "train_model",
    "TRAIN_DEFAULTS",
    "train_builtin",
    "EvalResult",
    "evaluate_model",
    "evaluate_checkpoint",
    "Checkpoint",
    "save_checkpoint",
    "load_checkpoint",
]
