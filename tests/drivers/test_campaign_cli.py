"""``cimcal measure ...`` on the simulated chip (in-process server over loopback): tables and errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cimcal.cli import main
from cimcal.data import read_metadata, read_table

SMALL = ["--rows", "0:16", "--cols", "0:8", "--no-progress"]


def test_levels_writes_a_conductance_table_with_provenance(tmp_path, capsys):
    out = tmp_path / "levels"
    assert main(["measure", "levels", "-o", str(out), *SMALL, "--reads", "3", "--seed", "4"]) == 0
    assert "384 rows in 3 chunks" in capsys.readouterr().out
    table = read_table(out, "conductance")
    assert len(table) == 16 * 8 * 3
    assert set(table.columns) >= {"row", "col", "level", "g_us", "chip_id", "array", "g_target_us", "t_s",
                                  "read_idx", "temp_c"}
    assert not table.duplicated(["row", "col", "read_idx", "t_s"]).any()
    assert set(table["level"]) == set(range(8))  # balanced pattern over every level
    err = np.abs(table["g_us"] - table["g_target_us"])
    assert err.median() < 1.5
    meta = read_metadata(out / "part-00000.parquet")
    assert meta["instrument_idn"].startswith("CIMCAL,SIMCHIP-RRAM,4")
    assert meta["seed"] == 4 and meta["preset"] == "rram" and meta["chunk"] == 0
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["complete"] and len(manifest["chunks"]) == 3
    assert manifest["chip_state"]["programmed"] and manifest["chip_state"]["epoch"] == 0


def test_drift_reads_at_each_scheduled_time(tmp_path):
    out = tmp_path / "drift"
    assert main(["measure", "drift", "-o", str(out), *SMALL, "--times", "1,100,10000", "--reads", "1"]) == 0
    metas = [read_metadata(p) for p in sorted(out.glob("part-*.parquet"))]
    assert [m["t_nominal_s"] for m in metas] == [1.0, 100.0, 10000.0]
    clocks = [m["clock_at_read_s"][0] for m in metas]
    assert clocks[1] - clocks[0] == pytest.approx(99.0, abs=0.5)     # CLOCk:ADVance, no real waiting
    by_time = [read_table(p, "conductance") for p in sorted(out.glob("part-*.parquet"))]
    for meta, part in zip(metas, by_time, strict=True):
        # per cell: the clock of the read minus that cell's PROG:TIME? -> not one value per chunk
        assert part["t_s"].min() >= meta["t_nominal_s"] and part["t_s"].nunique() > 1
        assert part["t_s"].max() - part["t_s"].min() < 0.1  # a 16x8 window programs in milliseconds
    assert by_time[2]["g_us"].mean() < by_time[0]["g_us"].mean()  # conductance drifts down


def test_readnoise_repeats_the_same_cells(tmp_path):
    out = tmp_path / "rn"
    assert main(["measure", "readnoise", "-o", str(out), *SMALL, "--reads", "10", "--reads-per-chunk", "5"]) == 0
    table = read_table(out, "conductance")
    per_cell = table.groupby(["row", "col"])
    assert per_cell.size().eq(10).all()
    assert (per_cell["g_us"].std() > 0).mean() > 0.9  # every cell shows read noise


def test_adc_sweep_writes_an_adc_table(tmp_path):
    out = tmp_path / "adc"
    assert main(["measure", "adc", "-o", str(out), "--cols", "0:4", "--points", "32", "--repeats", "2",
                 "--cols-per-chunk", "2", "--no-progress"]) == 0
    table = read_table(out, "adc")
    assert len(table) == 4 * 32 * 2
    assert not table.duplicated(["col", "input", "repeat"]).any()
    assert table["code"].min() == 0 and table["code"].max() == 255  # the margin reaches saturation
    meta = read_metadata(out / "part-00000.parquet")
    assert meta["input_unit"] == "uA" and meta["source"].startswith("TCPIP0::127.0.0.1::")
    assert (table.groupby("col")["code"].apply(lambda c: np.corrcoef(c, table.loc[c.index, "input"])[0, 1])
            > 0.99).all()


def test_rerunning_a_finished_campaign_with_resume_measures_nothing(tmp_path, capsys):
    out = tmp_path / "done"
    assert main(["measure", "levels", "-o", str(out), *SMALL, "--reads", "1"]) == 0
    capsys.readouterr()
    assert main(["measure", "levels", "-o", str(out), *SMALL, "--reads", "1", "--resume"]) == 0
    assert "0 measured now" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["measure", "levels", "--rows", "5"], "--rows must look like START:STOP"),
    (["measure", "levels", "--rows", "0:999"], "does not fit the chip"),
    (["measure", "drift", "--times", "10,1"], "--times must be increasing"),
    (["measure", "drift", "--times", "1,nan"], "--times must be increasing, distinct, finite and >= 0"),
    (["measure", "levels", "--limits", "v_read=1"], "unknown safe limit"),
    (["measure", "levels", "--resource", "TCPIP0::127.0.0.1::9::SOCKET", "--faults", "drop_after=1"],
     "--faults only applies"),
])
def test_bad_options_exit_2_with_one_line(tmp_path, capsys, argv, message):
    assert main([*argv, "-o", str(tmp_path / "x"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_existing_campaign_needs_resume_and_the_same_options(tmp_path, capsys):
    out = tmp_path / "c"
    assert main(["measure", "levels", "-o", str(out), *SMALL, "--reads", "1"]) == 0
    assert main(["measure", "levels", "-o", str(out), *SMALL, "--reads", "1"]) == 2
    assert "pass --resume" in capsys.readouterr().err
    assert main(["measure", "levels", "-o", str(out), *SMALL, "--reads", "2", "--resume"]) == 2
    assert "n_reads: 1 -> 2" in capsys.readouterr().err


def test_unreachable_instrument_is_a_clear_error(tmp_path, capsys):
    rc = main(["measure", "levels", "-o", str(tmp_path / "x"), "--resource", "TCPIP0::127.0.0.1::9::SOCKET",
               "--timeout-ms", "500", "--no-progress"])
    assert rc == 2
    assert "TCPIP0::127.0.0.1::9::SOCKET" in capsys.readouterr().err


@pytest.mark.parametrize("faults", ["drop_after=30", "garble_after=30", "truncate_after=30",
                                    "delay_s=1.0,delay_after=30"])
def test_campaign_rides_out_a_transport_fault(tmp_path, faults):
    out = tmp_path / "f"
    assert main(["measure", "readnoise", "-o", str(out), *SMALL, "--reads", "12", "--reads-per-chunk", "2",
                 "--faults", faults, "--timeout-ms", "400"]) == 0
    table = read_table(out, "conductance")
    assert len(table) == 16 * 8 * 12 and not table.duplicated(["row", "col", "read_idx"]).any()


def test_instrument_error_mid_campaign_stops_it_and_resume_completes_it(tmp_path, capsys):
    out = tmp_path / "e"
    args = ["measure", "readnoise", "-o", str(out), *SMALL, "--reads", "12", "--reads-per-chunk", "1"]
    assert main([*args, "--faults", "push_error=-310:System error,error_after=30"]) == 2
    err = capsys.readouterr().err
    assert "-310,System error" in err and "--resume" in err
    done = len(json.loads((out / "_manifest.json").read_text())["chunks"])
    assert 0 < done < 12
    assert main([*args, "--resume"]) == 0
    table = read_table(out, "conductance")
    assert len(table) == 16 * 8 * 12 and not table.duplicated(["row", "col", "read_idx"]).any()


def test_sim_serve_answers_a_plain_pyvisa_client_and_stops_on_sigterm():
    import re
    import signal
    import subprocess
    import sys

    import pyvisa

    proc = subprocess.Popen([sys.executable, "-m", "cimcal", "sim", "serve", "--port", "0", "--seed", "7"],
                            stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stderr.readline()
        match = re.search(r"TCPIP0::127\.0\.0\.1::\d+::SOCKET", line)
        assert match, line
        rm = pyvisa.ResourceManager("@py")
        inst = rm.open_resource(match.group(0), read_termination="\n", write_termination="\n", timeout=5000)
        assert inst.query("*IDN?").startswith("CIMCAL,SIMCHIP-RRAM,7")
        g_us = inst.query_binary_values("READ:MAP? 0,0,2,0,2", datatype="f", container=np.array)
        assert g_us.shape == (4,)
        inst.close()
        rm.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
