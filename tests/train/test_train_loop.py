"""The training loop: loss goes down for every method, fleets sample several chips."""

from __future__ import annotations

import pytest
import torch

from cimcal.errors import ConfigError
from cimcal.train import build_model, train_model
from cimcal.train.loop import run_split


def _tiny_mlp(task):
    torch.manual_seed(0)
    return build_model("digits", "mlp", task.info, {"hidden": [32]})


@pytest.mark.parametrize("method", ["clean", "gaussian", "ste"])
def test_short_training_run_decreases_loss(method, digits_task, fleet_profiles, analog_config):
    model = _tiny_mlp(digits_task)
    before, _ = run_split(model, digits_task, digits_task.val)
    profiles = fleet_profiles[:1] if method != "clean" else []
    result = train_model(model, digits_task, profiles, method=method, analog_config=analog_config,
                         epochs=2, batch_size=32, lr=2e-2, seed=0, max_steps=60)
    after, accuracy = run_split(result.model, digits_task, digits_task.val)
    assert len(result.chips) == 60
    assert after < 0.6 * before and accuracy > 0.6
    assert not any(type(m).__module__.startswith("cimcal.analog") for m in result.model.modules())


def test_fleet_training_samples_every_chip(digits_task, fleet_profiles, analog_config):
    model = _tiny_mlp(digits_task)
    result = train_model(model, digits_task, fleet_profiles, method="ste", analog_config=analog_config,
                         epochs=1, batch_size=32, seed=1, max_steps=30)
    counts = torch.bincount(torch.tensor(result.chips), minlength=len(fleet_profiles))
    assert len(counts) == len(fleet_profiles) and bool((counts >= 4).all())
    again = train_model(_tiny_mlp(digits_task), digits_task, fleet_profiles, method="ste",
                        analog_config=analog_config, epochs=1, batch_size=32, seed=1, max_steps=30)
    assert again.chips == result.chips
    for p, q in zip(result.model.parameters(), again.model.parameters()):
        assert torch.equal(p, q)  # same seed: same chips, noise and data order -> same weights


def test_noisy_methods_need_a_profile(digits_task):
    with pytest.raises(ConfigError, match="needs at least one chip profile"):
        train_model(_tiny_mlp(digits_task), digits_task, [], method="ste")
    with pytest.raises(ConfigError, match="method must be one of"):
        train_model(_tiny_mlp(digits_task), digits_task, [], method="adam")


def test_tied_weights_stay_tied_in_an_analog_view(fleet_profiles):
    from torch import nn

    from cimcal.analog import AnalogConfig
    from cimcal.train.loop import analog_view

    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.enc = nn.Linear(8, 8, bias=False)
            self.dec = nn.Linear(8, 8, bias=False)
            self.dec.weight = self.enc.weight

        def forward(self, x):
            return self.dec(torch.relu(self.enc(x)))

    torch.manual_seed(0)
    model = Tied()
    view = analog_view(model, fleet_profiles[0], AnalogConfig(noise="none", compile=False))
    assert view.enc.weight is model.enc.weight and view.dec.weight is model.enc.weight
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    x = torch.randn(16, 8)
    before = model.enc.weight.detach().clone()
    view(x).pow(2).sum().backward()
    optimizer.step()
    assert not torch.equal(model.enc.weight, before)
    assert torch.equal(view(x), model(x))  # the view's second owner runs the trained value too


def test_an_analog_config_that_is_not_one_is_a_config_error(digits_task, fleet_profiles):
    with pytest.raises(ConfigError, match="config must be an AnalogConfig"):
        train_model(_tiny_mlp(digits_task), digits_task, fleet_profiles[:1], method="ste",
                    analog_config={"tile_rows": 64}, epochs=1, max_steps=1)
