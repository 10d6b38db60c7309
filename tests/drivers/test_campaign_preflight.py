"""Campaign refusals leave nothing behind, reruns after them work, and what each run records."""

from __future__ import annotations

import json
from importlib import resources

import numpy as np
import pandas as pd
import pytest
from driver_fixtures import small_chip

from cimcal.cli import main
from cimcal.data import read_metadata, read_table
from cimcal.drivers.campaign_adc import AdcPlan, run_adc_campaign
from cimcal.drivers.campaign_store import CampaignStore
from cimcal.drivers.campaigns import default_conductance_plan, run_conductance_campaign
from cimcal.drivers.limits import SafeLimits
from cimcal.drivers.sim.server import SimServer
from cimcal.drivers.tester import CIMTester
from cimcal.errors import ConfigError, LimitError

SMALL = ["--rows", "0:8", "--cols", "0:8", "--reads", "1", "--no-progress"]


@pytest.mark.parametrize("extra, message", [
    (["--rows", "0:999"], "does not fit the chip"),
    (["--temp-c", "200"], "--temp-c 200 C is outside"),
    (["--limits", "v_prog_max_v=2"], "LIMit:VPRog?"),
    (["--wait", "real"], "--wait real cannot"),
])
def test_a_refusal_creates_no_output_and_the_corrected_rerun_works(tmp_path, capsys, extra, message):
    out = tmp_path / "c"
    assert main(["measure", "drift", "-o", str(out), *SMALL, "--times", "1", *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and "--resume" not in err
    assert not out.exists()
    assert main(["measure", "drift", "-o", str(out), *SMALL, "--times", "1"]) == 0


def test_adc_refusals_come_before_the_store(tmp_path):
    with SimServer(small_chip()) as server:
        tester = CIMTester(server.resource, limits=SafeLimits(adc_test_max_ua=10.0))
        with pytest.raises(LimitError, match="adc_test_max_ua"):
            run_adc_campaign(tester, str(tmp_path / "a"), AdcPlan(cols=(0, 2), n_points=4, n_repeats=1),
                             progress=False)
        with pytest.raises(ConfigError, match="do not fit the chip"):
            run_adc_campaign(tester, str(tmp_path / "b"), AdcPlan(cols=(0, 999)), progress=False)
        tester.close()
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_a_store_without_committed_chunks_does_not_block_a_rerun(tmp_path, capsys):
    out = tmp_path / "c"
    # the pushed error hits the programming: the manifest exists but no chunk was committed
    assert main(["measure", "levels", "-o", str(out), *SMALL,
                 "--faults", "push_error=-310:System error,error_after=12"]) == 2
    err = capsys.readouterr().err
    assert "-310" in err and "--resume" not in err  # nothing to resume: no hint
    assert json.loads((out / "_manifest.json").read_text())["chunks"] == []
    assert main(["measure", "levels", "-o", str(out), *SMALL[:-3], "--reads", "2", "--no-progress"]) == 0
    assert len(read_table(out, "conductance")) == 2 * 64


def test_store_with_committed_chunks_still_needs_resume(tmp_path):
    store = CampaignStore.open(tmp_path / "s", campaign="levels", kind="conductance", options={"a": 1},
                               resume=False)
    table = pd.DataFrame({"row": [0], "col": [0], "level": [1], "g_us": [3.0]})
    store.commit_chunk(0, table, "conductance", {}, started="now")
    with pytest.raises(ConfigError, match="1 committed chunk"):
        CampaignStore.open(tmp_path / "s", campaign="levels", kind="conductance", options={"a": 1}, resume=False)


def test_t_s_is_per_cell_from_prog_time_and_each_run_records_its_limits(tmp_path, monkeypatch):
    plan = default_conductance_plan("drift", rows=(0, 16), cols=(0, 8), n_reads=2, reads_per_chunk=2,
                                    times_s=(1.0, 50.0))
    out = tmp_path / "d"
    with SimServer(small_chip(seed=2)) as server:
        original = CampaignStore.commit_chunk

        def commit_then_stop(self, index, *args, **kwargs):
            original(self, index, *args, **kwargs)
            raise KeyboardInterrupt

        monkeypatch.setattr(CampaignStore, "commit_chunk", commit_then_stop)
        with CIMTester(server.resource, limits=SafeLimits(v_read_max_v=0.3)) as first:
            with pytest.raises(KeyboardInterrupt):
                run_conductance_campaign(first, str(out), plan, progress=False)
        monkeypatch.undo()
        with CIMTester(server.resource, limits=SafeLimits(v_read_max_v=0.25)) as second:
            run_conductance_campaign(second, str(out), plan, resume=True, progress=False)
            prog_clock_s = second.program_time(0)[:16, :8]
            resource = server.resource
    parts = sorted(out.glob("part-*.parquet"))
    assert len(parts) == 2
    for part in parts:
        meta, table = read_metadata(part), read_table(part, "conductance")
        assert meta["source"] == resource  # the resource, not null
        for read_idx, clock_s in zip(sorted(table["read_idx"].unique()), meta["clock_at_read_s"], strict=True):
            rows = table[table["read_idx"] == read_idx]
            expected = clock_s - prog_clock_s[rows["row"], rows["col"]]
            np.testing.assert_allclose(rows["t_s"], expected, rtol=0, atol=1e-9)
            assert rows["t_s"].nunique() > 1  # cells programmed one after another: not one value per chunk
    runs = json.loads((out / "_manifest.json").read_text())["provenance"]["runs"]
    assert [r["limits"]["v_read_max_v"] for r in runs] == [0.3, 0.25]
    assert [r["first_chunk"] for r in runs] == [0, 1]


def test_sim_config_faults_table_applies_to_measure(tmp_path, capsys):
    preset = resources.files("cimcal.drivers.sim").joinpath("presets/rram.toml").read_text()
    config = tmp_path / "chip.toml"
    config.write_text(preset + '\n[faults]\npush_error = [-310, "System error from the config"]\nerror_after = 12\n')
    assert main(["measure", "levels", "-o", str(tmp_path / "c"), *SMALL, "--sim-config", str(config)]) == 2
    assert "System error from the config" in capsys.readouterr().err
