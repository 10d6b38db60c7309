"""Empirical lookup-table noise models and the chip profile that holds them.

- :class:`ConductanceLUT`: per level and time point, inverse-CDF tables of single reads, of the
  persistent per-cell programming error and of read-to-read noise; drift by interpolation in
  ``log1p(t_s)``.
- :class:`ADCLUT`: per column and input bin, an inverse CDF over output codes, plus IEEE 1241
  style derived figures (gain, offset, INL, DNL, noise, missing codes).
- :class:`ChipProfile`: the fitted models and their provenance in one ``.cimprof`` file.
- :func:`fit_profile`: measurement tables (paths, datasets, DataFrames) in, a profile out, on
  mergeable summaries (streamed in one process, or on Dask).

Models follow the scikit-learn estimator contract and sample with an explicit
``torch.Generator``. Names load lazily so ``import cimcal.noise`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "ConductanceLUT",
    "ADCLUT",
    "ChipProfile",
    "fit_profile",
    "NotFittedError",
    "FORMAT_VERSION",
    "validate_profile",
    "ValidationResult",
]

_LAZY = {
    "ConductanceLUT": "cimcal.noise.conductance",
    "NotFittedError": "cimcal.noise.conductance",
    "ADCLUT": "cimcal.noise.adc",
    "ChipProfile": "cimcal.noise.profile",
    "FORMAT_VERSION": "cimcal.noise.profile",
    "fit_profile": "cimcal.noise.fit",
    "validate_profile": "cimcal.noise.validation",
    "ValidationResult": "cimcal.noise.validation",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'cimcal.noise' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
