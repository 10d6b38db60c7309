"""ChipProfile: the fitted noise models of one chip plus provenance, in one ``.cimprof`` file.

A ``.cimprof`` file is a safetensors file (no pickle): the model tables are its tensors
(``conductance.<name>``, ``adc.<name>``) and its header metadata (a str -> str dict) holds
``format`` = ``cimcal-profile``, ``format_version``, ``checksum`` (sha256 over the canonical
content: tensors then metadata) and ``cimcal`` (JSON: provenance, fit parameters and the fitted
scalars). Loading checks all of it before use. See docs/profile-format.md.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cimcal.errors import ProfileError
from cimcal.publish import publish_file
from cimcal.noise.adc import ADCLUT
from cimcal.noise.conductance import ConductanceLUT

__all__ = ["ChipProfile", "FORMAT_NAME", "FORMAT_VERSION"]

FORMAT_NAME = "cimcal-profile"
FORMAT_VERSION = 1

# name -> (dtype, number of dims); shapes are cross-checked in _check_shapes.
_CONDUCTANCE_SPEC = {
    "levels": (torch.int64, 1), "g_target_us": (torch.float32, 1), "t_s": (torch.float64, 1),
    "quantiles": (torch.float32, 3), "programmed_quantiles": (torch.float32, 3),
    "read_noise_quantiles": (torch.float32, 2), "mean_us": (torch.float32, 2), "sigma_us": (torch.float32, 2),
    "read_noise_sigma_us": (torch.float32, 1), "n_reads": (torch.int64, 2), "n_cells": (torch.int64, 2),
    "filled": (torch.bool, 2),
}
_ADC_SPEC = {
    "cols": (torch.int64, 1), "input_edges": (torch.float64, 1), "code_table": (None, 3),
    "mean_code_table": (torch.float32, 2), "code_counts": (torch.int64, 2), "sigma_lsb": (torch.float32, 1),
    "offset_lsb": (torch.float32, 1), "gain_error": (torch.float32, 1), "inl_lsb": (torch.float32, 2),
    "dnl_lsb": (torch.float32, 2),
}
# Derived ADC figures are NaN where undefined (e.g. a transition never observed).
_MAY_BE_NAN = {"adc.sigma_lsb", "adc.offset_lsb", "adc.gain_error", "adc.inl_lsb", "adc.dnl_lsb"}


def _canonical_digest(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> str:
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        digest.update(f"{name}|{str(t.dtype)}|{list(t.shape)}|".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    for key in sorted(metadata):
        if key != "checksum":
            digest.update(f"{key}={metadata[key]}\n".encode())
    return digest.hexdigest()


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, (set, tuple)):
        return sorted(value) if isinstance(value, set) else list(value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


class ChipProfile:
    """The fitted models of a chip (conductance and/or ADC) and where they came from.

    Parameters
    ----------
    conductance : ConductanceLUT or None
    adc : ADCLUT or None
    provenance : dict
        JSON-serializable: sources (path, sha256, rows), chip ids, fit parameters, cimcal
        version, created time.
    """

    def __init__(self, conductance: ConductanceLUT | None, adc: ADCLUT | None, provenance: dict | None = None) -> None:
        self.conductance = conductance
        self.adc = adc
        self.provenance = dict(provenance or {})
        self._sha256: str | None = None

    # ------------------------------------------------------------------ content
    def _content(self) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        tensors: dict[str, torch.Tensor] = {}
        doc: dict[str, Any] = {"provenance": self.provenance}
        if self.conductance is not None:
            tensors.update({f"conductance.{k}": v for k, v in self.conductance.state_tensors().items()})
            doc["conductance"] = {"n_knots": int(self.conductance.n_knots),
                                  "t_span_s": self.conductance.t_span_s_.tolist()}
        if self.adc is not None:
            tensors.update({f"adc.{k}": v for k, v in self.adc.state_tensors().items()})
            doc["adc"] = {"params": self.adc.get_params(), "fitted": self.adc.state_params()}
        metadata = {
            "format": FORMAT_NAME,
            "format_version": str(FORMAT_VERSION),
            "cimcal": json.dumps(doc, sort_keys=True, default=_json_default, allow_nan=False),
        }
        metadata["checksum"] = _canonical_digest(tensors, metadata)
        return tensors, metadata

    @property
    def sha256(self) -> str:
        """SHA-256 of the canonical content (tables + metadata); what checkpoints record."""
        if self._sha256 is None:
            self._sha256 = self._content()[1]["checksum"]
        return self._sha256

    def save(self, path: str | os.PathLike) -> Path:
        """Write one ``.cimprof`` file (atomically: a temporary file renamed into place)."""
        from safetensors.torch import save_file

        path = Path(path)
        tensors, metadata = self._content()
        tmp = path.with_name(path.name + ".tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            save_file(tensors, str(tmp), metadata=metadata)
            publish_file(tmp, path)
        except OSError as err:
            raise ProfileError(f"cannot write profile: {err.strerror or err}", path=str(path)) from err
        finally:
            if tmp.exists():
                tmp.unlink()
        self._sha256 = metadata["checksum"]
        return path

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, path: str | os.PathLike) -> ChipProfile:
        """Read and check a ``.cimprof`` file; any problem raises :class:`ProfileError` naming it."""
        from safetensors import safe_open

        name = str(path)
        if not Path(path).is_file():
            raise ProfileError("no such profile file", path=name)
        try:
            with safe_open(name, framework="pt") as handle:
                metadata = dict(handle.metadata() or {})
                tensors = {key: handle.get_tensor(key) for key in handle.keys()}
        except Exception as err:  # safetensors raises several types for bad headers / short files
            line = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
            raise ProfileError(f"not a readable cimcal profile (truncated or corrupt?): {line}", path=name) from err
        if metadata.get("format") != FORMAT_NAME:
            raise ProfileError(f"not a cimcal profile (format {metadata.get('format')!r})", path=name)
        version = metadata.get("format_version")
        if version != str(FORMAT_VERSION):
            raise ProfileError(
                f"profile format version {version!r} is not supported (this cimcal reads version "
                f"{FORMAT_VERSION}); refit the profile with this cimcal version",
                path=name,
            )
        if metadata.get("checksum") != _canonical_digest(tensors, metadata):
            raise ProfileError("checksum mismatch: the profile was modified or corrupted after it was saved", path=name)
        try:
            doc = json.loads(metadata["cimcal"])
        except (KeyError, ValueError) as err:
            raise ProfileError("the profile's 'cimcal' metadata is missing or not JSON", path=name) from err
        return cls._build(tensors, doc, name)

    @classmethod
    def _build(cls, tensors: dict[str, torch.Tensor], doc: dict, name: str) -> ChipProfile:
        conductance = adc = None
        try:
            if "conductance" in doc:
                part = cls._part(tensors, "conductance", _CONDUCTANCE_SPEC, name)
                _check_conductance(part, name)
                n_knots = int(doc["conductance"]["n_knots"])
                _require(part["quantiles"].shape[-1] == n_knots,
                         f"conductance tables have {part['quantiles'].shape[-1]} knots, metadata says {n_knots}", name)
                t_span = doc["conductance"].get("t_span_s")
                if t_span is not None:
                    span = np.asarray(t_span, dtype=np.float64)
                    _require(span.shape == (len(part["t_s"]), 2) and bool(np.isfinite(span).all())
                             and bool((span[:, 0] <= span[:, 1]).all()),
                             "conductance t_span_s metadata must be one finite [min, max] per time point", name)
                conductance = ConductanceLUT.from_state(part, n_knots=n_knots, t_span_s=t_span)
            if "adc" in doc:
                part = cls._part(tensors, "adc", _ADC_SPEC, name)
                _check_adc(part, doc["adc"]["fitted"], name)
                params = dict(doc["adc"]["params"])
                if params.get("ideal_range") is not None:
                    params["ideal_range"] = tuple(params["ideal_range"])
                adc = ADCLUT.from_state(part, doc["adc"]["fitted"], params)
        except ProfileError:
            raise
        except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as err:
            raise ProfileError(f"inconsistent profile content: {err}", path=name) from err
        extra = set(tensors) - {f"conductance.{k}" for k in _CONDUCTANCE_SPEC} - {f"adc.{k}" for k in _ADC_SPEC}
        if extra:
            raise ProfileError(f"unexpected tensors {sorted(extra)}", path=name)
        if conductance is None and adc is None:
            raise ProfileError("the profile holds neither a conductance nor an ADC model", path=name)
        profile = cls(conductance, adc, doc.get("provenance", {}))
        return profile

    @staticmethod
    def _part(tensors: dict[str, torch.Tensor], prefix: str, spec: dict, name: str) -> dict[str, torch.Tensor]:
        part = {}
        for key, (dtype, ndim) in spec.items():
            full = f"{prefix}.{key}"
            if full not in tensors:
                raise ProfileError(f"tensor {full!r} is missing", path=name)
            t = tensors[full]
            if (dtype is not None and t.dtype != dtype) or t.dim() != ndim:
                raise ProfileError(
                    f"tensor {full!r} has dtype {t.dtype} and {t.dim()} dims, expected {dtype} and {ndim}", path=name
                )
            if t.is_floating_point() and full not in _MAY_BE_NAN and not bool(torch.isfinite(t).all()):
                raise ProfileError(f"tensor {full!r} has NaN or infinite values", path=name)
            part[key] = t
        return part

    def __repr__(self) -> str:
        return f"ChipProfile(conductance={self.conductance!r}, adc={self.adc!r})"


def _require(ok: bool, message: str, name: str) -> None:
    if not ok:
        raise ProfileError(message, path=name)


def _check_conductance(p: dict[str, torch.Tensor], name: str) -> None:
    n_l, n_t = len(p["levels"]), len(p["t_s"])
    q = p["quantiles"]
    _require(n_l >= 1 and n_t >= 1, "conductance tables are empty", name)
    k = q.shape[-1]
    _require(k >= 2, "conductance tables need at least 2 knots", name)
    _require(tuple(q.shape) == (n_t, n_l, k), f"conductance.quantiles has shape {tuple(q.shape)}, "
             f"expected {(n_t, n_l, k)}", name)
    for key, shape in (("programmed_quantiles", (n_t, n_l, k)), ("read_noise_quantiles", (n_l, k)),
                       ("mean_us", (n_t, n_l)), ("sigma_us", (n_t, n_l)), ("n_reads", (n_t, n_l)),
                       ("n_cells", (n_t, n_l)), ("filled", (n_t, n_l)), ("g_target_us", (n_l,)),
                       ("read_noise_sigma_us", (n_l,))):
        _require(tuple(p[key].shape) == shape,
                 f"conductance.{key} has shape {tuple(p[key].shape)}, expected {shape}", name)
    _require(bool((p["levels"] >= 0).all()) and bool((p["levels"].diff() > 0).all()),
             "conductance.levels must be non-negative and strictly increasing", name)
    _require(bool((p["t_s"] >= 0).all()) and bool((p["t_s"].diff() > 0).all()),
             "conductance.t_s must be non-negative and strictly increasing", name)
    for key in ("quantiles", "programmed_quantiles", "read_noise_quantiles"):
        _require(bool((p[key].diff(dim=-1) >= 0).all()), f"conductance.{key} is not monotone along the knots", name)


def _check_adc(p: dict[str, torch.Tensor], fitted: dict, name: str) -> None:
    n_c = len(p["cols"])
    table = p["code_table"]
    n_b = len(p["input_edges"]) - 1
    n_codes = int(fitted["n_codes"])
    _require(table.dtype in (torch.int16, torch.int32), "adc.code_table must be int16 or int32", name)
    _require(n_c >= 1 and n_b >= 1 and table.shape[0] == n_c and table.shape[1] == n_b,
             f"adc.code_table has shape {tuple(table.shape)}, expected ({n_c}, {n_b}, knots)", name)
    for key, shape in (("mean_code_table", (n_c, n_b)), ("code_counts", (n_c, n_codes)), ("sigma_lsb", (n_c,)),
                       ("offset_lsb", (n_c,)), ("gain_error", (n_c,)), ("inl_lsb", (n_c, n_codes)),
                       ("dnl_lsb", (n_c, n_codes))):
        _require(tuple(p[key].shape) == shape, f"adc.{key} has shape {tuple(p[key].shape)}, expected {shape}", name)
    _require(bool((table >= 0).all()) and bool((table < n_codes).all()), "adc.code_table has codes out of range", name)
    _require(bool((table.diff(dim=-1) >= 0).all()), "adc.code_table is not monotone along the knots", name)
    edges = p["input_edges"]
    steps = edges.diff()
    _require(bool((steps > 0).all()) and math.isclose(float(steps.max()), float(steps.min()), rel_tol=1e-6),
             "adc.input_edges must be increasing and uniform", name)
    _require(bool((p["cols"] >= 0).all()) and bool((p["cols"].diff() > 0).all()),
             "adc.cols must be non-negative and strictly increasing", name)
    _require(len(fitted["missing_codes"]) == n_c, "adc missing_codes must have one list per column", name)
