"""Shared fixtures of the deploy tests: a profile fitted on the shipped sample dumps (simulated rram chip,
seed 0), a small seeded digits model, and a simulated chip served on a loopback port."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

DATA = Path(__file__).resolve().parents[2] / "calibration_data"


@pytest.fixture(scope="session")
def profile():
    from cimcal.noise.fit import fit_profile

    return fit_profile(conductance=str(DATA / "conductance_fit.parquet"), adc=str(DATA / "adc_fit.parquet"))


@pytest.fixture(scope="session")
def digits():
    from cimcal.train.tasks import load_task

    return load_task("digits", seed=0)


@pytest.fixture(scope="session")
def trained_small(digits):
    """The built-in digits MLP with one hidden layer of 8, briefly trained (digital): 64 -> 8 -> 10."""
    from cimcal.train.models import build_model

    torch.manual_seed(0)
    model = build_model("digits", "mlp", digits.info, {"hidden": [8]})
    x, y = digits.train.tensors
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(80):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    return model.eval()


@pytest.fixture()
def sim_chip():
    from cimcal.drivers.sim.chip import SimChip

    return SimChip.from_preset("rram", seed=0)


@pytest.fixture()
def served(sim_chip):
    """(chip, tester) over a real pyvisa-py SOCKET session to a SimServer on an ephemeral loopback port."""
    from cimcal.drivers.sim.server import SimServer
    from cimcal.drivers.tester import CIMTester

    with SimServer(sim_chip) as server:
        tester = CIMTester(server.resource)
        try:
            yield sim_chip, tester, server
        finally:
            tester.close()

