"""Fixtures for the driver and campaign tests: simulated chips served on loopback."""

from __future__ import annotations

import pytest
from driver_fixtures import small_chip

from cimcal.drivers.sim.server import SimServer


@pytest.fixture
def served_chip():
    """A small simulated chip served on an ephemeral loopback port (real pyvisa-py sessions)."""
    with SimServer(small_chip()) as server:
        yield server


@pytest.fixture
def serve_with_faults():
    """Factory: ``serve_with_faults("drop_after=3")`` -> a started server (stopped after the test)."""
    servers = []

    def start(faults: str, **overrides: object) -> SimServer:
        server = SimServer(small_chip(**overrides), faults=faults).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()
