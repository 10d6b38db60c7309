"""Built-in tasks: fixed seeded splits, shapes, metrics."""

from __future__ import annotations

import math

import pytest
import torch

from cimcal.errors import ConfigError
from cimcal.train import Task, build_model, load_task


@pytest.mark.parametrize("name", ["digits", "charlm"])
def test_same_seed_gives_same_split_and_other_seed_another(name):
    first, again, other = load_task(name, seed=3), load_task(name, seed=3), load_task(name, seed=4)
    for split in ("train", "val", "test"):
        assert torch.equal(getattr(first, split).tensors[0], getattr(again, split).tensors[0])
        assert torch.equal(getattr(first, split).tensors[1], getattr(again, split).tensors[1])
    assert not torch.equal(first.test.tensors[0], other.test.tensors[0])


@pytest.mark.parametrize("name", ["digits", "charlm"])
def test_splits_are_disjoint_and_cover_the_data(name):
    task = load_task(name, seed=0)
    rows = [tuple(x.flatten().tolist()) for split in (task.train, task.val, task.test) for x in split.tensors[0]]
    sizes = [len(s) for s in (task.train, task.val, task.test)]
    assert len(rows) == sum(sizes) and min(sizes) > 100
    if name == "digits":
        assert sum(sizes) == 1797 and task.train.tensors[0].shape[1:] == (1, 8, 8)
        assert 0.0 <= float(task.train.tensors[0].min()) and float(task.train.tensors[0].max()) <= 1.0


def test_charlm_targets_are_inputs_shifted_by_one():
    task = load_task("charlm", seed=0, seq_len=32)
    inputs, targets = task.train.tensors
    assert inputs.shape[1] == 32 and torch.equal(inputs[:, 1:], targets[:, :-1])
    assert int(inputs.max()) < task.info["vocab_size"]


def test_metric_scores():
    task = load_task("digits")
    assert task.score(0.0, 9, 10) == 0.9 and task.better(0.9, 0.8)
    lm = load_task("charlm")
    assert lm.score(10 * math.log(5.0), 0, 10) == pytest.approx(5.0) and lm.better(4.0, 5.0)


@pytest.mark.parametrize("task_name,model_name", [("digits", "mlp"), ("digits", "cnn"), ("charlm", "transformer")])
def test_models_build_for_their_task(task_name, model_name):
    task = load_task(task_name)
    model = build_model(task_name, model_name, task.info)
    inputs, _ = task.val[:3]
    out = model(inputs)
    assert out.shape[0] == 3 and out.shape[-1] == task.info.get("n_classes", task.info.get("vocab_size"))


def test_unknown_names_are_clear_errors():
    with pytest.raises(ConfigError, match="unknown task"):
        load_task("mnist")
    with pytest.raises(ConfigError, match="unknown model 'cnn' for task 'charlm'"):
        build_model("charlm", "cnn", {})
    with pytest.raises(ConfigError, match="unknown hyperparameters"):
        build_model("digits", "mlp", {}, {"depth": 3})
    with pytest.raises(ConfigError, match="metric"):
        Task.from_tensors("mine", "f1", (torch.zeros(2, 3), torch.zeros(2)), (torch.zeros(2, 3), torch.zeros(2)))


def test_public_api_is_pinned():
    import cimcal.train as train

    assert sorted(train.__all__) == sorted([
        "Task", "load_task", "TASKS", "MODELS", "DEFAULT_MODEL", "build_model", "METHODS", "TrainResult",
        "train_model", "TRAIN_DEFAULTS", "train_builtin", "EvalResult", "evaluate_model", "evaluate_checkpoint",
        "Checkpoint", "save_checkpoint", "load_checkpoint",
    ])
    assert all(hasattr(train, name) for name in train.__all__)
