"""Model checkpoints: one ``.ckpt`` file, safetensors weights plus JSON metadata, no pickle.

The safetensors header carries one metadata entry, ``"cimcal"``: a JSON object with the
task, model name and hyperparameters, the :class:`~cimcal.analog.AnalogConfig` used, the
sha256 of every chip profile trained against, the method, the seed and the cimcal version,
plus ``"checksum"``: sha256 over the canonical metadata JSON and every tensor's name, dtype,
shape and bytes. Loading recomputes the checksum and refuses any file whose weights or
metadata were changed after saving (:class:`~cimcal.errors.CheckpointError`).

Weights are those of the *digital* model (``to_digital`` of the trained analog model), so a
checkpoint loads into the plain architecture and is converted again for evaluation.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from cimcal.errors import CheckpointError
from cimcal.publish import publish_file

__all__ = ["Checkpoint", "save_checkpoint", "load_checkpoint", "FORMAT_VERSION", "BUILTIN_META"]

FORMAT_VERSION = 1
# what a checkpoint of a built-in task needs to rebuild its model and reload its task split
BUILTIN_META = ("task", "task_info", "split_seed", "model", "hparams")
_META_KEY = "cimcal"
_SUM_KEY = "checksum"


def _checksum(meta_json: str, tensors: dict[str, Tensor]) -> str:
    digest = hashlib.sha256()
    digest.update(meta_json.encode("utf-8"))
    for name in sorted(tensors):
        tensor = tensors[name].detach().contiguous().cpu()
        digest.update(f"\0{name}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def _canonical(meta: dict[str, Any]) -> str:
    return json.dumps(meta, sort_keys=True, separators=(",", ":"), allow_nan=False)


@dataclass
class Checkpoint:
    """A loaded checkpoint: the digital model's ``state_dict`` and its metadata."""

    state_dict: dict[str, Tensor]
    meta: dict[str, Any]
    path: Path | None = None

    def build_model(self, info: dict[str, Any] | None = None) -> nn.Module:
        """Rebuild the recorded built-in model and load the weights (``info`` defaults to the recorded one)."""
        from cimcal.train.models import build_model

        model = build_model(self.meta["task"], self.meta["model"], info or self.meta["task_info"], self.meta["hparams"])
        mismatch = _first_mismatch(model.state_dict(), self.state_dict)
        if mismatch is None:
            try:
                model.load_state_dict(self.state_dict)
            except RuntimeError as err:  # e.g. a dtype torch cannot copy
                mismatch = str(err).strip().splitlines()[-1].strip()
        if mismatch is not None:
            raise CheckpointError(f"{self.path}: weights do not fit model {self.meta['model']!r}: {mismatch}")
        return model


def _first_mismatch(expected: dict[str, Tensor], stored: dict[str, Tensor]) -> str | None:
    """The first weight the model needs but the checkpoint lacks, has extra, or holds in another shape."""
    for name, tensor in expected.items():
        if name not in stored:
            return f"missing weight {name!r} {tuple(tensor.shape)}"
        if tuple(stored[name].shape) != tuple(tensor.shape):
            return f"weight {name!r} has shape {tuple(stored[name].shape)}, the model needs {tuple(tensor.shape)}"
    extra = [name for name in stored if name not in expected]
    return f"unexpected weight {extra[0]!r}" if extra else None


def save_checkpoint(path: str | os.PathLike, model: nn.Module, meta: dict[str, Any]) -> Path:
    """Write ``model.state_dict()`` and ``meta`` (JSON-able) to one safetensors file; return its path.

    ``meta`` gains ``format_version``, ``cimcal_version`` and ``created`` if absent.
    """
    from safetensors.torch import save_file

    from cimcal import __version__

    tensors = {name: t.detach().cpu().contiguous().clone() for name, t in model.state_dict().items()}
    full = {"format_version": FORMAT_VERSION, "cimcal_version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **meta}
    try:
        meta_json = _canonical(full)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: checkpoint metadata is not JSON-able: {err}") from None
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={_META_KEY: meta_json, _SUM_KEY: _checksum(meta_json, tensors)})
    publish_file(tmp, path)
    return path


def load_checkpoint(path: str | os.PathLike, *, task: str | None = None, model: str | None = None,
                    require: tuple[str, ...] = ()) -> Checkpoint:
    """Load and verify a checkpoint; ``task``/``model`` (if given) must match the recorded ones.

    Raises :class:`CheckpointError` if the file is missing, not a cimcal checkpoint, of an unknown
    format version, tampered with (checksum mismatch), recorded for another task or model, or
    its metadata lacks a key of ``require`` (e.g. :data:`BUILTIN_META`).
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        with safe_open(str(path), framework="pt") as handle:
            header = handle.metadata() or {}
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    except Exception as err:  # safetensors raises several types for a corrupt header or body
        raise CheckpointError(f"{path}: not a readable safetensors checkpoint ({type(err).__name__}: {err})") from None
    if _META_KEY not in header or _SUM_KEY not in header:
        raise CheckpointError(f"{path}: safetensors file without cimcal metadata; was it written by save_checkpoint?")
    meta_json = header[_META_KEY]
    if _checksum(meta_json, tensors) != header[_SUM_KEY]:
        raise CheckpointError(f"{path}: checksum mismatch: the weights or metadata were modified after saving")
    try:
        meta = json.loads(meta_json)
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path}: metadata is not valid JSON: {err}") from None
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format_version {meta.get('format_version')!r} is not supported "
            f"(this cimcal reads {FORMAT_VERSION})"
        )
    missing = [key for key in require if key not in meta]
    if missing:
        raise CheckpointError(f"{path}: checkpoint metadata lacks {missing[0]!r}; was it written by cimcal train?")
    if task is not None and meta.get("task") != task:
        raise CheckpointError(f"{path}: checkpoint was trained on task {meta.get('task')!r}, not {task!r}")
    if model is not None and meta.get("model") != model:
        raise CheckpointError(f"{path}: checkpoint holds model {meta.get('model')!r}, not {model!r}")
    return Checkpoint(tensors, meta, path)
