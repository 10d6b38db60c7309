"""The core never loads the hardware layer; the drivers never load torch (ARCHITECTURE.md)."""

import json
import subprocess
import sys

import pytest


def _loaded_after(import_line: str) -> set[str]:
    code = f"import sys, json\n{import_line}\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    return set(json.loads(out.strip().splitlines()[-1]))


@pytest.mark.parametrize(
    "module", ["cimcal", "cimcal.data", "cimcal.noise", "cimcal.analog", "cimcal.train", "cimcal.report"]
)
def test_core_does_not_import_drivers_or_pyvisa(module: str) -> None:
    loaded = _loaded_after(f"import {module}")
    assert "pyvisa" not in loaded
    assert not any(m == "cimcal.drivers" or m.startswith("cimcal.drivers.") for m in loaded)


def test_drivers_do_not_import_torch() -> None:
    loaded = _loaded_after("import cimcal.drivers, cimcal.drivers.sim")
    assert "torch" not in loaded


def test_bare_import_is_cheap() -> None:
    loaded = _loaded_after("import cimcal")
    assert "torch" not in loaded and "pandas" not in loaded


def test_public_api_names() -> None:
    import cimcal

    assert set(cimcal.__all__) == {"ChipProfile", "fit_profile", "__version__"}



@pytest.mark.parametrize("module", ["data_cmds", "deploy_cmds", "measure_cmds", "profile_cmds", "train_cmds"])
def test_loading_a_command_is_cheap(module: str) -> None:
    """``cimcal <command> --help`` loads the command's module: its option defaults must not pull in torch,
    pandas or scipy (seconds of start-up; the work itself imports them when it runs)."""
    loaded = _loaded_after(f"import cimcal.cli.{module}")
    assert not {"torch", "pandas", "scipy"} & loaded
