"""Built-in offline tasks and the :class:`Task` container for users' own data.

A task is three fixed tensor splits (train / val / test), the metric reported on them
("accuracy" for classification, "perplexity" for next-token prediction) and the loss that
goes with it. Splits are drawn from an explicit ``torch.Generator`` seeded by ``seed``, so
the same seed always gives the same split on every machine and every rank.

Built-in tasks (offline, no downloads):

- ``digits``: scikit-learn's bundled ``load_digits`` (1797 8x8 images, pixels scaled to
  [0, 1]); 70 / 15 / 15 split.
- ``charlm``: character-level language modelling on the help text shipped with Python
  (``pydoc_data.topics``); text cut into blocks of ``seq_len + 1`` characters whose order
  is shuffled once by the seed; 90 / 5 / 5 split; the metric is perplexity per character.
"""

from __future__ import annotations

import math
import string
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import TensorDataset

from cimcal.errors import ConfigError

__all__ = ["Task", "load_task", "TASKS", "CHARLM_VOCAB", "encode_text", "decode_text"]

METRICS = ("accuracy", "perplexity")

# Printable ASCII plus newline; everything else maps to the last id ("unknown").
CHARLM_VOCAB: str = string.printable[:95] + "\n"
_UNKNOWN_ID = len(CHARLM_VOCAB)


@dataclass
class Task:
    """Three fixed splits, a metric and the matching loss.

    Parameters
    ----------
    name : task name recorded in checkpoints ("digits", "charlm" or your own).
    metric : "accuracy" (outputs ``(N, C)`` logits, targets ``(N,)`` class ids) or
        "perplexity" (outputs ``(N, T, V)`` logits, targets ``(N, T)`` token ids).
    train, val, test : ``TensorDataset`` of (inputs, targets).
    info : shape facts the model builders need (e.g. ``n_classes``, ``vocab_size``).
    """

    name: str
    metric: str
    train: TensorDataset
    val: TensorDataset
    test: TensorDataset
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise ConfigError(f"task metric must be one of {METRICS}, got {self.metric!r}")

    @classmethod
    def from_tensors(
        cls,
        name: str,
        metric: str,
        train: tuple[Tensor, Tensor],
        val: tuple[Tensor, Tensor],
        test: tuple[Tensor, Tensor] | None = None,
        info: dict[str, Any] | None = None,
    ) -> Task:
        """Wrap your own (inputs, targets) tensors as a task (``test`` defaults to ``val``)."""
        test = val if test is None else test
        return cls(name, metric, TensorDataset(*train), TensorDataset(*val), TensorDataset(*test), dict(info or {}))

    def loss(self, logits: Tensor, target: Tensor) -> Tensor:
        """Mean cross-entropy (over samples, or over tokens for language modelling)."""
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1))

    def score(self, total_loss: float, n_correct: int, n_items: int) -> float:
        """The task metric from accumulated sums: accuracy in [0, 1] or perplexity = exp(mean CE)."""
        if self.metric == "accuracy":
            return n_correct / max(n_items, 1)
        return math.exp(min(total_loss / max(n_items, 1), 50.0))

    def better(self, a: float, b: float) -> bool:
        """True if metric value ``a`` is better than ``b``."""
        return a > b if self.metric == "accuracy" else a < b


def _split_indices(n: int, fractions: tuple[float, float], seed: int) -> tuple[Tensor, Tensor, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(n, generator=generator)
    n_train = int(round(fractions[0] * n))
    n_val = int(round(fractions[1] * n))
    return order[:n_train], order[n_train : n_train + n_val], order[n_train + n_val :]


def _digits(seed: int) -> Task:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.as_tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (N, 1, 8, 8) in [0, 1]
    labels = torch.as_tensor(bunch.target, dtype=torch.long)
    train, val, test = _split_indices(len(labels), (0.70, 0.15), seed)
    return Task(
        "digits",
        "accuracy",
        TensorDataset(images[train], labels[train]),
        TensorDataset(images[val], labels[val]),
        TensorDataset(images[test], labels[test]),
        {"n_classes": 10, "in_shape": (1, 8, 8), "seed": seed},
    )


def encode_text(text: str) -> Tensor:
    """Character ids in :data:`CHARLM_VOCAB` (unknown characters -> one extra id)."""
    table = {ch: i for i, ch in enumerate(CHARLM_VOCAB)}
    return torch.tensor([table.get(ch, _UNKNOWN_ID) for ch in text], dtype=torch.long)


def decode_text(ids: Tensor) -> str:
    """Inverse of :func:`encode_text` (unknown ids print as '?')."""
    return "".join(CHARLM_VOCAB[i] if i < _UNKNOWN_ID else "?" for i in ids.tolist())


def _charlm(seed: int, seq_len: int = 64, max_chars: int = 200_000) -> Task:
    from pydoc_data.topics import topics

    text = "\n".join(topics[key] for key in sorted(topics))[:max_chars]
    ids = encode_text(text)
    block = seq_len + 1
    n_blocks = len(ids) // block
    blocks = ids[: n_blocks * block].view(n_blocks, block)
    train, val, test = _split_indices(n_blocks, (0.90, 0.05), seed)

    def pairs(index: Tensor) -> TensorDataset:
        chosen = blocks[index]
        return TensorDataset(chosen[:, :-1].contiguous(), chosen[:, 1:].contiguous())

    return Task(
        "charlm",
        "perplexity",
        pairs(train),
        pairs(val),
        pairs(test),
        {"vocab_size": _UNKNOWN_ID + 1, "seq_len": seq_len, "max_chars": max_chars, "seed": seed},
    )


TASKS = {"digits": _digits, "charlm": _charlm}


def load_task(name: str, seed: int = 0, **options: Any) -> Task:
    """Load a built-in task with its fixed, seeded splits.

    ``options`` go to the task (charlm: ``seq_len``, ``max_chars``).
    """
    if name not in TASKS:
        raise ConfigError(f"unknown task {name!r}; built-in tasks are {sorted(TASKS)}")
    return TASKS[name](seed, **options)
