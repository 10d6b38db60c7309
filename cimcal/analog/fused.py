"""torch.compile wrappers for the elementwise sampling chains, with an eager fallback.

The forward's cost is random bytes and table gathers, not arithmetic; compiling each chain fuses the
index arithmetic, gathers and read-back into one pass over memory. If compilation fails (no C compiler,
an unsupported platform) the first call warns once and every later call runs the eager function.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["fused"]

_COMPILED: dict[Callable[..., Any], Callable[..., Any]] = {}
_BROKEN: set[Callable[..., Any]] = set()


def fused(fn: Callable[..., Any], enabled: bool) -> Callable[..., Any]:
    """Return the compiled version of ``fn`` when ``enabled`` and compilation works, else ``fn``."""
    if not enabled or fn in _BROKEN:
        return fn
    compiled = _COMPILED.get(fn)
    if compiled is None:
        compiled = torch.compile(fn, dynamic=None, fullgraph=True)
        _COMPILED[fn] = compiled

    def call(*args: Any) -> Any:
        try:
            return compiled(*args)
        except Exception as err:  # noqa: BLE001 - any compiler failure falls back to eager
            _BROKEN.add(fn)
            warnings.warn(
                f"torch.compile of {fn.__name__} failed ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); "
                "using the eager version (slower, same results)",
                RuntimeWarning,
                stacklevel=2,
            )
            return fn(*args)

    return call
