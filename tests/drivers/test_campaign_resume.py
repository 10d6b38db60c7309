"""Interrupted campaigns resume with every row exactly once (kill -9, Ctrl-C, a dead connection)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from driver_fixtures import small_chip

from cimcal.cli import main
from cimcal.data import read_metadata, read_table
from cimcal.drivers.campaign_store import CampaignStore
from cimcal.drivers.campaigns import default_conductance_plan, run_conductance_campaign
from cimcal.drivers.sim.server import SimServer
from cimcal.drivers.tester import CIMTester
from cimcal.errors import InstrumentError

KEYS = ["row", "col", "read_idx", "t_s"]


def _keys(directory: Path) -> pd.DataFrame:
    """Row keys (cell, read, nominal time point): the per-cell t_s depends on when a cell was read."""
    frames = []
    for part in sorted(directory.glob("part-*.parquet")):
        table = read_table(part, "conductance")
        t_nominal_s = read_metadata(part)["t_nominal_s"]
        assert (table["t_s"] >= t_nominal_s).all()  # every cell at least as old as the time point
        frames.append(table.assign(t_s=t_nominal_s)[KEYS])
    return pd.concat(frames).sort_values(KEYS).reset_index(drop=True)


def _committed(directory: Path) -> int:
    try:
        return len(json.loads((directory / "_manifest.json").read_text())["chunks"])
    except (OSError, ValueError):
        return 0


@pytest.mark.slow  # a subprocess killed mid-run: ~10 s on the shared machine; in-process variants stay default
def test_resume_after_kill_keeps_every_row(tmp_path, capsys):
    args = ["measure", "readnoise", "--rows", "0:16", "--cols", "0:16", "--reads", "16",
            "--reads-per-chunk", "1", "--no-progress"]
    reference = tmp_path / "reference"
    assert main([*args, "-o", str(reference)]) == 0

    out = tmp_path / "killed"
    # every reply 50 ms late: the campaign takes seconds, long enough to kill it mid-run even on a busy machine
    proc = subprocess.Popen([sys.executable, "-m", "cimcal", *args, "-o", str(out), "--faults", "delay_s=0.05"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while _committed(out) < 3 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = _committed(out)
    assert 3 <= done < 16, "the campaign was not killed mid-run"

    capsys.readouterr()
    assert main([*args, "-o", str(out), "--resume"]) == 0
    assert f"{16 - done} measured now" in capsys.readouterr().out
    keys = _keys(out)
    assert not keys.duplicated().any()
    pd.testing.assert_frame_equal(keys, _keys(reference))
    assert not (out / ".staging").exists()


def _interrupt_after(monkeypatch, n_chunks: int, action):
    original = CampaignStore.commit_chunk

    def commit(self, index, *args, **kwargs):
        path = original(self, index, *args, **kwargs)
        if index + 1 == n_chunks:
            action()
        return path

    monkeypatch.setattr(CampaignStore, "commit_chunk", commit)


def test_ctrl_c_then_resume_on_a_chip_that_kept_its_programming(tmp_path, monkeypatch):
    plan = default_conductance_plan("drift", rows=(0, 8), cols=(0, 8), n_reads=2, reads_per_chunk=1,
                                    times_s=(1.0, 10.0, 100.0))
    with SimServer(small_chip(seed=3)) as server:
        reference = run_conductance_campaign(CIMTester(server.resource), str(tmp_path / "ref"), plan,
                                             progress=False)

    def ctrl_c():
        raise KeyboardInterrupt

    with SimServer(small_chip(seed=3)) as server:
        _interrupt_after(monkeypatch, 3, ctrl_c)
        with pytest.raises(KeyboardInterrupt):
            run_conductance_campaign(CIMTester(server.resource), str(tmp_path / "out"), plan, progress=False)
        monkeypatch.undo()
        result = run_conductance_campaign(CIMTester(server.resource), str(tmp_path / "out"), plan,
                                          resume=True, progress=False)
    assert result.resumed and not result.reprogrammed and result.chunks_run == reference.chunks_total - 3
    pd.testing.assert_frame_equal(_keys(tmp_path / "out"), _keys(tmp_path / "ref"))
    manifest = json.loads((tmp_path / "out" / "_manifest.json").read_text())
    assert manifest["chip_state"]["epoch"] == 0  # programmed once


def test_dead_connection_then_resume_on_a_fresh_chip_reprograms(tmp_path, monkeypatch):
    plan = default_conductance_plan("drift", rows=(0, 8), cols=(0, 8), n_reads=1, reads_per_chunk=1,
                                    times_s=(1.0, 10.0, 100.0, 1000.0))
    server = SimServer(small_chip(seed=5)).start()
    _interrupt_after(monkeypatch, 2, server.stop)  # the instrument goes away mid-campaign
    tester = CIMTester(server.resource, timeout_ms=500, retries=1)
    with pytest.raises(InstrumentError, match="reconnecting failed|transport fault"):
        run_conductance_campaign(tester, str(tmp_path / "out"), plan, progress=False)
    monkeypatch.undo()
    with SimServer(small_chip(seed=5)) as fresh:  # power-cycled chip: its cells are unprogrammed
        result = run_conductance_campaign(CIMTester(fresh.resource), str(tmp_path / "out"), plan,
                                          resume=True, progress=False)
        clock = CIMTester(fresh.resource).clock()
    assert result.reprogrammed and result.chunks_run == 2
    keys = _keys(tmp_path / "out")
    assert sorted(keys["t_s"].unique()) == [1.0, 10.0, 100.0, 1000.0]
    assert not keys.duplicated(KEYS).any() and len(keys) == 4 * 64
    manifest = json.loads((tmp_path / "out" / "_manifest.json").read_text())
    state = manifest["chip_state"]
    assert state["epoch"] == 1 and state["first_chunk_of_epoch"] == 2
    parts = sorted((tmp_path / "out").glob("part-*.parquet"))
    assert [read_metadata(p)["epoch"] for p in parts] == [0, 0, 1, 1]  # the reprogramming, per part file
    # t_s after the reprogramming is measured from the new programming, per cell
    last = read_table(parts[-1], "conductance")
    assert last["t_s"].min() >= 1000.0 and last["t_s"].max() < 1000.0 + 1.0
    assert clock == pytest.approx(state["program_clock_max_s"] + 1000.0, abs=1.0)


def test_orphan_part_files_of_an_interrupted_chunk_are_dropped(tmp_path):
    store = CampaignStore.open(tmp_path / "c", campaign="levels", kind="conductance", options={"a": 1},
                               resume=False)
    table = pd.DataFrame({"row": [0, 1], "col": [0, 0], "level": [1, 2], "g_us": [3.0, 4.0]})
    store.commit_chunk(0, table, "conductance", {}, started="now")
    (tmp_path / "c" / "part-00001.parquet").write_bytes(b"half a file")  # killed before the manifest
    (tmp_path / "c" / ".staging").mkdir(exist_ok=True)
    (tmp_path / "c" / ".staging" / "part-00001.parquet").write_bytes(b"half")
    again = CampaignStore.open(tmp_path / "c", campaign="levels", kind="conductance", options={"a": 1},
                               resume=True)
    assert again.n_committed == 1
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["_manifest.json", "part-00000.parquet"]
    assert len(read_table(tmp_path / "c", "conductance")) == 2


def test_interrupted_programming_is_redone_on_resume(tmp_path, monkeypatch):
    plan = default_conductance_plan("levels", rows=(0, 8), cols=(0, 8), n_reads=2)
    with SimServer(small_chip(seed=4)) as server:
        def killed(*args, **kwargs):
            raise KeyboardInterrupt

        monkeypatch.setattr(CIMTester, "program_cells", killed)
        with pytest.raises(KeyboardInterrupt):
            run_conductance_campaign(CIMTester(server.resource), str(tmp_path / "p"), plan, progress=False)
        monkeypatch.undo()
        state = json.loads((tmp_path / "p" / "_manifest.json").read_text())["chip_state"]
        assert state["programmed"] is False
        result = run_conductance_campaign(CIMTester(server.resource), str(tmp_path / "p"), plan,
                                          resume=True, progress=False)
    assert result.reprogrammed and result.chunks_run == 2
    assert len(read_table(tmp_path / "p", "conductance")) == 2 * 64
