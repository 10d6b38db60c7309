"""measure -> fit -> validate on the simulated chip: a profile fitted on one campaign passes validation
against a second, independent campaign (other cells, another pattern, fresh ADC conversions)."""

from __future__ import annotations

import pytest

from cimcal.cli import main


@pytest.mark.slow
def test_profile_fitted_on_one_campaign_validates_on_another(tmp_path, capsys):
    drift = ["--cols", "0:64", "--times", "1,100,10000", "--reads", "2", "--no-progress"]
    adc = ["--cols", "0:4", "--points", "256", "--cols-per-chunk", "1", "--no-progress"]
    assert main(["measure", "drift", "-o", str(tmp_path / "g_fit"), "--rows", "0:128", "--pattern-seed", "1",
                 *drift]) == 0
    assert main(["measure", "adc", "-o", str(tmp_path / "adc_fit"), "--repeats", "64", *adc]) == 0
    # the second campaign: a fresh in-process simulated chip of the same seed, on other cells
    assert main(["measure", "drift", "-o", str(tmp_path / "g_val"), "--rows", "128:256", "--pattern-seed", "2",
                 *drift]) == 0
    assert main(["measure", "adc", "-o", str(tmp_path / "adc_val"), "--repeats", "32", *adc]) == 0
    profile = tmp_path / "chip.cimprof"
    assert main(["fit", "--conductance", str(tmp_path / "g_fit"), "--adc", str(tmp_path / "adc_fit"),
                 "-o", str(profile)]) == 0
    capsys.readouterr()
    rc = main(["validate", str(profile), "--conductance", str(tmp_path / "g_val"),
               "--adc", str(tmp_path / "adc_val")])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "PASS" in out
