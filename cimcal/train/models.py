"""Small reference models for the built-in tasks, built by name from JSON-able hyperparameters.

Every matrix product lives in an ``nn.Linear`` or ``nn.Conv2d`` so that
:func:`cimcal.analog.convert` can move it onto the analog tiles; embeddings, layer norms and
the attention softmax stay digital, as they would on a CIM accelerator's digital periphery.
A checkpoint records ``(task, model name, hyperparameters)`` and :func:`build_model` rebuilds
the same architecture from them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from cimcal.errors import ConfigError

__all__ = ["MLP", "SmallCNN", "CharTransformer", "MODELS", "DEFAULT_MODEL", "build_model", "default_hparams"]


class MLP(nn.Module):
    """Flatten -> (Linear -> ReLU) * len(hidden) -> Linear."""

    def __init__(self, in_features: int = 64, hidden: tuple[int, ...] = (128, 128), n_classes: int = 10) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU()]
            width = size
        layers.append(nn.Linear(width, n_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class SmallCNN(nn.Module):
    """Two 3x3 convolutions and a 2x2 max-pool on 8x8 digits, then a two-layer classifier."""

    def __init__(self, channels: tuple[int, int] = (16, 32), hidden: int = 64, n_classes: int = 10) -> None:
        super().__init__()
        c1, c2 = channels
        self.features = nn.Sequential(
            nn.Conv2d(1, c1, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(c1, c2, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
        )
        self.classifier = nn.Sequential(nn.Linear(c2 * 16, hidden), nn.ReLU(), nn.Linear(hidden, n_classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


class _CausalSelfAttention(nn.Module):
    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x: Tensor) -> Tensor:
        batch, length, width = x.shape
        q, k, v = self.qkv(x).split(width, dim=-1)
        shape = (batch, length, self.n_heads, width // self.n_heads)
        q, k, v = (t.reshape(shape).transpose(1, 2) for t in (q, k, v))
        # The score and value products multiply activations by activations: they stay digital.
        out = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(out.transpose(1, 2).reshape(batch, length, width))


class _Block(nn.Module):
    def __init__(self, d_model: int, n_heads: int, d_ff: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(d_model)
        self.attn = _CausalSelfAttention(d_model, n_heads)
        self.norm2 = nn.LayerNorm(d_model)
        self.ff = nn.Sequential(nn.Linear(d_model, d_ff), nn.GELU(), nn.Linear(d_ff, d_model))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.ff(self.norm2(x))


class CharTransformer(nn.Module):
    """A small pre-norm causal transformer over characters (learned positions)."""

    def __init__(
        self,
        vocab_size: int = 97,
        seq_len: int = 64,
        d_model: int = 64,
        n_heads: int = 4,
        n_layers: int = 2,
        d_ff: int = 128,
    ) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ConfigError(f"d_model must be divisible by n_heads, got {d_model} and {n_heads}")
        self.token = nn.Embedding(vocab_size, d_model)
        self.position = nn.Embedding(seq_len, d_model)
        self.blocks = nn.Sequential(*[_Block(d_model, n_heads, d_ff) for _ in range(n_layers)])
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size)
        nn.init.normal_(self.token.weight, std=1.0 / math.sqrt(d_model))
        nn.init.normal_(self.position.weight, std=0.02)

    def forward(self, ids: Tensor) -> Tensor:
        positions = torch.arange(ids.shape[1], device=ids.device)
        x = self.token(ids) + self.position(positions)
        return self.head(self.norm(self.blocks(x)))


def _mlp(info: dict[str, Any], hidden: list[int] | tuple[int, ...] = (128, 128)) -> nn.Module:
    in_features = math.prod(info.get("in_shape", (64,)))
    return MLP(in_features, tuple(int(h) for h in hidden), int(info.get("n_classes", 10)))


def _cnn(info: dict[str, Any], channels: list[int] | tuple[int, int] = (16, 32), hidden: int = 64) -> nn.Module:
    if len(channels) != 2:
        raise ConfigError(f"channels must be a list of 2 ints >= 1, got {list(channels)!r}")
    c1, c2 = (int(c) for c in channels)
    return SmallCNN((c1, c2), int(hidden), int(info.get("n_classes", 10)))


def _transformer(
    info: dict[str, Any], d_model: int = 64, n_heads: int = 4, n_layers: int = 2, d_ff: int = 128
) -> nn.Module:
    return CharTransformer(int(info["vocab_size"]), int(info["seq_len"]), d_model, n_heads, n_layers, d_ff)


# task -> model name -> builder(task.info, **hparams)
MODELS: dict[str, dict[str, Callable[..., nn.Module]]] = {
    "digits": {"mlp": _mlp, "cnn": _cnn},
    "charlm": {"transformer": _transformer},
}
DEFAULT_MODEL = {"digits": "mlp", "charlm": "transformer"}


def default_hparams(task: str, name: str) -> dict[str, Any]:
    """The builder's default hyperparameters (what a checkpoint records when none are given)."""
    import inspect

    builder = _builder(task, name)
    params = list(inspect.signature(builder).parameters.values())[1:]
    return {p.name: list(p.default) if isinstance(p.default, tuple) else p.default for p in params}


def _builder(task: str, name: str) -> Callable[..., nn.Module]:
    if task not in MODELS:
        raise ConfigError(f"no built-in models for task {task!r}; tasks with models are {sorted(MODELS)}")
    if name not in MODELS[task]:
        raise ConfigError(f"unknown model {name!r} for task {task!r}; choose one of {sorted(MODELS[task])}")
    return MODELS[task][name]


def build_model(task: str, name: str, info: dict[str, Any], hparams: dict[str, Any] | None = None) -> nn.Module:
    """Build a built-in model by task and name; ``hparams`` override the defaults."""
    builder = _builder(task, name)
    defaults = default_hparams(task, name)
    unknown = set(hparams or {}) - set(defaults)
    if unknown:
        raise ConfigError(f"unknown hyperparameters {sorted(unknown)} for model {name!r}; known: {sorted(defaults)}")
    merged = {**defaults, **(hparams or {})}
    for key, value in merged.items():
        _check_hparam(key, value, list_valued=isinstance(defaults[key], list))
    return builder(info, **merged)


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _check_hparam(key: str, value: Any, *, list_valued: bool) -> None:
    """Every built-in hyperparameter is a size: an int >= 1, or a list of them where the default is a list."""
    if list_valued and not (isinstance(value, (list, tuple)) and all(_is_count(v) for v in value)):
        raise ConfigError(f"{key} must be a list of ints >= 1, got {value!r}")
    if not list_valued and not _is_count(value):
        raise ConfigError(f"{key} must be an int >= 1, got {value!r}")
