"""ChipProfile .cimprof files: bit-exact round trip, and every kind of bad file is a ProfileError."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from noise_tables import make_adc, make_conductance
from safetensors import safe_open
from safetensors.torch import save_file

import cimcal
from cimcal.errors import ProfileError
from cimcal.noise import ADCLUT, ChipProfile, ConductanceLUT
from cimcal.noise.profile import _canonical_digest


@pytest.fixture(scope="module")
def profile() -> ChipProfile:
    cond = ConductanceLUT().fit(make_conductance(n_cells=3000, t_s=(1.0, 100.0), reads=2, seed=1))
    adc = ADCLUT().fit(make_adc(repeats=8))
    return ChipProfile(cond, adc, {"cimcal_version": cimcal.__version__, "note": "µS test"})


@pytest.fixture()
def saved(profile, tmp_path) -> Path:
    return profile.save(tmp_path / "chip.cimprof")


def _read_raw(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(path), framework="pt") as handle:
        return {k: handle.get_tensor(k) for k in handle.keys()}, dict(handle.metadata())


def _rewrite(path: Path, tensors: dict, metadata: dict, *, fix_checksum: bool = True) -> None:
    if fix_checksum:
        metadata = dict(metadata)
        metadata["checksum"] = _canonical_digest(tensors, metadata)
    save_file(tensors, str(path), metadata=metadata)


def test_round_trip_is_bit_exact_and_samples_identically(profile, saved):
    loaded = ChipProfile.load(saved)
    for part in ("conductance", "adc"):
        before = getattr(profile, part).state_tensors()
        after = getattr(loaded, part).state_tensors()
        assert before.keys() == after.keys()
        for name in before:
            assert before[name].dtype == after[name].dtype, name
            assert torch.equal(before[name].nan_to_num(-7.0), after[name].nan_to_num(-7.0)), name
    assert loaded.provenance == profile.provenance
    assert loaded.adc.missing_codes_ == profile.adc.missing_codes_
    assert loaded.adc.input_range_ == profile.adc.input_range_
    assert loaded.sha256 == profile.sha256 and len(loaded.sha256) == 64
    level = torch.randint(0, 4, (1000,))
    assert torch.equal(profile.conductance.sample(level, t_s=10.0, generator=torch.Generator().manual_seed(0)),
                       loaded.conductance.sample(level, t_s=10.0, generator=torch.Generator().manual_seed(0)))
    x = torch.linspace(0, 64, 500)
    assert torch.equal(profile.adc.sample(x, torch.tensor(2), generator=torch.Generator().manual_seed(1)),
                       loaded.adc.sample(x, torch.tensor(2), generator=torch.Generator().manual_seed(1)))


def test_file_is_safetensors_with_versioned_json_metadata_and_no_pickle(saved):
    raw = saved.read_bytes()
    (header_len,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + header_len])
    meta = header["__metadata__"]
    assert meta["format"] == "cimcal-profile" and meta["format_version"] == "1"
    assert json.loads(meta["cimcal"])["provenance"]["note"] == "µS test"
    assert b"\x80\x04" not in raw[:2] and b"torch._utils" not in raw and b"cpickle" not in raw.lower()
    sources = "".join(p.read_text() for p in Path(cimcal.__file__).parent.joinpath("noise").glob("*.py"))
    assert "import pickle" not in sources and "torch.save" not in sources and "torch.load" not in sources


def test_profile_with_only_one_model_round_trips(profile, tmp_path):
    only_adc = ChipProfile(None, profile.adc, {})
    loaded = ChipProfile.load(only_adc.save(tmp_path / "adc.cimprof"))
    assert loaded.conductance is None and loaded.adc is not None


def test_tampered_tensor_bytes_fail_the_checksum(saved):
    raw = bytearray(saved.read_bytes())
    raw[-10] ^= 0x01
    saved.write_bytes(bytes(raw))
    with pytest.raises(ProfileError, match="checksum") as err:
        ChipProfile.load(saved)
    assert str(saved) in str(err.value)


def test_tampered_metadata_fails_the_checksum(saved):
    tensors, metadata = _read_raw(saved)
    doc = json.loads(metadata["cimcal"])
    doc["provenance"]["note"] = "edited"
    metadata["cimcal"] = json.dumps(doc, sort_keys=True)
    _rewrite(saved, tensors, metadata, fix_checksum=False)
    with pytest.raises(ProfileError, match="checksum"):
        ChipProfile.load(saved)


@pytest.mark.parametrize("keep", [0.5, 0.02])
def test_truncated_file_is_a_profile_error(saved, keep):
    raw = saved.read_bytes()
    saved.write_bytes(raw[: int(len(raw) * keep)])
    with pytest.raises(ProfileError, match="truncated or corrupt") as err:
        ChipProfile.load(saved)
    assert str(saved) in str(err.value)


def test_wrong_format_version_is_a_profile_error(saved):
    tensors, metadata = _read_raw(saved)
    metadata["format_version"] = "99"
    _rewrite(saved, tensors, metadata)
    with pytest.raises(ProfileError, match="version '99' is not supported"):
        ChipProfile.load(saved)


def test_non_monotone_quantiles_are_a_profile_error(saved):
    tensors, metadata = _read_raw(saved)
    q = tensors["conductance.quantiles"].clone()
    q[0, 0, 10] = q[0, 0, 11] + 1.0
    tensors["conductance.quantiles"] = q
    _rewrite(saved, tensors, metadata)
    with pytest.raises(ProfileError, match="not monotone"):
        ChipProfile.load(saved)


def test_non_finite_values_and_bad_shapes_are_profile_errors(saved, tmp_path):
    tensors, metadata = _read_raw(saved)
    bad = dict(tensors)
    bad["conductance.mean_us"] = torch.full_like(tensors["conductance.mean_us"], float("nan"))
    _rewrite(saved, bad, metadata)
    with pytest.raises(ProfileError, match="NaN or infinite"):
        ChipProfile.load(saved)
    bad = dict(tensors)
    bad["conductance.g_target_us"] = tensors["conductance.g_target_us"][:-1].clone()
    _rewrite(saved, bad, metadata)
    with pytest.raises(ProfileError, match="g_target_us has shape"):
        ChipProfile.load(saved)
    bad = dict(tensors)
    del bad["adc.code_table"]
    _rewrite(saved, bad, metadata)
    with pytest.raises(ProfileError, match="'adc.code_table' is missing"):
        ChipProfile.load(saved)


def test_missing_and_foreign_files_are_profile_errors(tmp_path):
    with pytest.raises(ProfileError, match="no such profile file"):
        ChipProfile.load(tmp_path / "absent.cimprof")
    other = tmp_path / "other.cimprof"
    save_file({"x": torch.zeros(3)}, str(other), metadata={"format": "something-else"})
    with pytest.raises(ProfileError, match="not a cimcal profile"):
        ChipProfile.load(other)
    garbage = tmp_path / "garbage.cimprof"
    garbage.write_bytes(b"not a profile at all")
    with pytest.raises(ProfileError):
        ChipProfile.load(garbage)
