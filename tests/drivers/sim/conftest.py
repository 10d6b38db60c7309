"""Shared fixtures for the simulated-chip tests: small chips for protocol tests, a served chip."""

from __future__ import annotations

import dataclasses

import pytest

from cimcal.drivers.sim.chip import SimChip
from cimcal.drivers.sim.config import load_preset
from cimcal.drivers.sim.scpi import Dispatcher
from cimcal.drivers.sim.server import SimServer


def small_chip(preset: str = "rram", seed: int = 0, **overrides: object) -> SimChip:
    """A 2 x 32 x 16 chip of the preset's physics: fast enough for byte-level tests."""
    config = dataclasses.replace(load_preset(preset), n_arrays=2, rows=32, cols=16, **overrides)
    return SimChip(config, seed=seed)


@pytest.fixture
def make_chip():
    """Factory fixture: ``make_chip(preset="rram", seed=0, **config_overrides)``."""
    return small_chip


@pytest.fixture
def chip() -> SimChip:
    return small_chip()


@pytest.fixture
def dispatcher(chip: SimChip) -> Dispatcher:
    return Dispatcher(chip)


@pytest.fixture
def server():
    with SimServer(SimChip.from_preset("rram", seed=0)) as srv:
        yield srv
