"""Small shared fixtures: the digits task and chip profiles fitted from small synthetic dumps."""

from __future__ import annotations

import pytest

from cimcal.train import load_task


@pytest.fixture(scope="session")
def digits_task():
    return load_task("digits", seed=0)


def _profile(seed: int, spread: float):
    import numpy as np

    from cimcal.data.synthetic import synthetic_adc, synthetic_conductance
    from cimcal.noise.fit import fit_profile

    cond = synthetic_conductance(n_cells=1024, levels=8, reads=2, t_s=(1.0, 3600.0), seed=seed, n_cols=32)
    # widen the programming error so chips differ visibly (deterministic per seed)
    cond["g_us"] = np.maximum(cond["g_target_us"] + spread * (cond["g_us"] - cond["g_target_us"]), 0.0)
    adc = synthetic_adc(cols=4, n_inputs=128, repeats=4, seed=seed + 100)
    return fit_profile(cond, adc)


@pytest.fixture(scope="session")
def fleet_profiles():
    """Two small chips with different noise."""
    return [_profile(seed, spread) for seed, spread in ((0, 1.0), (1, 3.0))]


@pytest.fixture(scope="session")
def chip_profile_path(fleet_profiles, tmp_path_factory):
    return fleet_profiles[1].save(tmp_path_factory.mktemp("profiles") / "chip.cimprof")


@pytest.fixture(scope="session")
def analog_config():
    from cimcal.analog import AnalogConfig

    return AnalogConfig(compile=False)  # no compile warm-up in short tests
