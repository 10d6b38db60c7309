"""cimcal: hardware-in-the-loop calibration for analog compute-in-memory chips.

The loop: measure a chip over VISA (:mod:`cimcal.drivers`), fit lookup-table noise models
from the measurement tables (:mod:`cimcal.noise`), train networks against the fitted chip
profile with the extended straight-through estimator (:mod:`cimcal.analog`,
:mod:`cimcal.train`), and deploy them back onto the chip.

``import cimcal`` is cheap: the public names below are loaded on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "ChipProfile": "cimcal.noise.profile",
    "fit_profile": "cimcal.noise.fit",
}

__all__ = ["ChipProfile", "fit_profile", "__version__"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'cimcal' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
