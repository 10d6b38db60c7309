"""The simulated compute-in-memory chip: physics (:mod:`.chip`), TOML presets (:mod:`.config`),
SCPI parsing (:mod:`.scpi`), the TCP server (:mod:`.server`) and fault injection (:mod:`.faults`).

cimcal code reaches the simulated chip only through VISA, exactly as it reaches silicon; these
Python entry points are for starting it and for tests. numpy only (never torch).
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["SimChip", "SimConfig", "SimServer", "Dispatcher", "Faults", "serve", "load_preset", "load_config"]

_LAZY = {
    "SimChip": "cimcal.drivers.sim.chip",
    "SimConfig": "cimcal.drivers.sim.config",
    "load_preset": "cimcal.drivers.sim.config",
    "load_config": "cimcal.drivers.sim.config",
    "SimServer": "cimcal.drivers.sim.server",
    "serve": "cimcal.drivers.sim.server",
    "Dispatcher": "cimcal.drivers.sim.scpi",
    "Faults": "cimcal.drivers.sim.faults",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'cimcal.drivers.sim' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
