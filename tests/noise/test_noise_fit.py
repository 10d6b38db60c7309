"""fit_profile: paths, lists, DataFrames, hive datasets, streaming batch size, Dask, provenance."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from noise_tables import make_adc, make_conductance

import cimcal
from cimcal import ChipProfile, fit_profile
from cimcal.data import write_table
from cimcal.errors import ConfigError, DataError


def _assert_same_conductance(a, b, rtol=1e-5, atol=1e-5):
    for name, tensor in a.state_tensors().items():
        other = b.state_tensors()[name]
        assert tensor.shape == other.shape, name
        assert torch.allclose(tensor.double(), other.double(), rtol=rtol, atol=atol), name


@pytest.fixture(scope="module")
def cond_table():
    return make_conductance(n_cells=4000, t_s=(1.0, 100.0), reads=2, seed=21)


@pytest.fixture(scope="module")
def dumps(tmp_path_factory, cond_table):
    root = tmp_path_factory.mktemp("dumps")
    half = len(cond_table) // 2
    a = write_table(cond_table.iloc[:half], root / "cond_a.parquet", "conductance")
    b = write_table(cond_table.iloc[half:], root / "cond_b.parquet", "conductance")
    adc = write_table(make_adc(repeats=8), root / "adc.parquet", "adc")
    return a, b, adc


def test_fit_from_parquet_paths_matches_fit_from_a_dataframe(dumps, cond_table):
    a, b, adc = dumps
    from_files = fit_profile(conductance=[a, b], adc=adc)
    from_frame = fit_profile(conductance=cond_table, adc=make_adc(repeats=8))
    _assert_same_conductance(from_files.conductance, from_frame.conductance)
    assert torch.equal(from_files.adc.code_table_, from_frame.adc.code_table_)
    prov = from_files.provenance
    assert prov["cimcal_version"] == cimcal.__version__ and prov["created"].endswith("+00:00")
    assert [s["path"] for s in prov["conductance"]["sources"]] == [str(a), str(b)]
    assert all(len(s["sha256"]) == 64 for s in prov["conductance"]["sources"])
    assert prov["conductance"]["rows"] == len(cond_table)
    assert prov["fit_params"]["n_knots"] == 4096


def test_small_batches_give_the_same_profile_as_one_batch(cond_table):
    one = fit_profile(conductance=cond_table, batch_rows=10**7)
    many = fit_profile(conductance=cond_table, batch_rows=997)
    _assert_same_conductance(one.conductance, many.conductance)


def test_hive_partitioned_dataset_keeps_chips_apart(tmp_path):
    for chip, seed in (("A", 1), ("B", 2)):
        part = tmp_path / "ds" / f"chip_id={chip}"
        part.mkdir(parents=True)
        write_table(make_conductance(n_cells=1500, reads=2, seed=seed), part / "part.parquet", "conductance")
    profile = fit_profile(conductance=tmp_path / "ds")
    assert profile.provenance["conductance"]["chip_ids"] == ["A", "B"]
    # same (row, col) on two chips are two cells: 3000 cells, each read twice
    assert profile.provenance["conductance"]["cells"] == 3000


def test_fit_save_load_from_the_top_level_api(dumps, tmp_path):
    a, b, adc = dumps
    path = fit_profile(conductance=[a, b], adc=adc).save(tmp_path / "chip.cimprof")
    profile = ChipProfile.load(path)
    g = profile.conductance.sample(torch.tensor([[0, 1], [2, 3]]), t_s=10.0)
    codes = profile.adc.sample(torch.tensor([1.0, 30.0]), torch.tensor([2, 7]))
    assert g.shape == (2, 2) and g.dtype == torch.float32 and codes.dtype == torch.int64


def test_bad_calls_raise_one_line_errors(tmp_path):
    with pytest.raises(ConfigError, match="conductance and/or adc"):
        fit_profile()
    with pytest.raises(DataError, match="no such file"):
        fit_profile(conductance=tmp_path / "missing.parquet")
    with pytest.raises(ConfigError, match="n_knots"):
        fit_profile(conductance=make_conductance(n_cells=10), n_knots=8)


def test_dask_local_cluster_fits_the_same_profile(dumps, cond_table, tmp_path):
    distributed = pytest.importorskip("dask.distributed")
    a, b, adc = dumps
    single = fit_profile(conductance=[a, b], adc=adc)
    for chip, seed in (("A", 1), ("B", 2)):
        part = tmp_path / "ds" / f"chip_id={chip}"
        part.mkdir(parents=True)
        write_table(make_conductance(n_cells=800, reads=2, seed=seed), part / "part.parquet", "conductance")
    hive_single = fit_profile(conductance=tmp_path / "ds")
    with distributed.LocalCluster(processes=False, n_workers=2, threads_per_worker=1,
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        on_dask_frames = fit_profile(conductance=cond_table, dask_client=client, batch_rows=5_000)
        on_dask_files = fit_profile(conductance=[a, b], adc=adc, dask_client=client)
        hive_dask = fit_profile(conductance=tmp_path / "ds", dask_client=client)
    _assert_same_conductance(hive_single.conductance, hive_dask.conductance)
    assert hive_dask.provenance["conductance"]["chip_ids"] == ["A", "B"]
    assert hive_dask.provenance["conductance"]["cells"] == 1600
    _assert_same_conductance(single.conductance, on_dask_files.conductance)
    _assert_same_conductance(single.conductance, on_dask_frames.conductance)
    assert torch.equal(single.adc.code_table_, on_dask_files.adc.code_table_)
    assert on_dask_files.provenance["fit_params"]["dask"] is True


def test_importing_cimcal_noise_loads_no_instruments_and_no_dask():
    code = ("import sys, cimcal.noise, cimcal.noise.fit, cimcal.noise.profile; "
            "bad = [m for m in sys.modules if m.startswith(('pyvisa', 'cimcal.drivers', 'dask', 'distributed'))]; "
            "print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_public_names_of_cimcal_noise_are_pinned():
    import cimcal.noise

    assert set(cimcal.noise.__all__) == {"ConductanceLUT", "ADCLUT", "ChipProfile", "fit_profile", "NotFittedError",
                                         "FORMAT_VERSION", "validate_profile", "ValidationResult"}
    for name in cimcal.noise.__all__:
        assert getattr(cimcal.noise, name) is not None


def test_progress_bar_goes_to_stderr(capsys):
    fit_profile(conductance=make_conductance(n_cells=500, reads=2, seed=3), progress=True)
    captured = capsys.readouterr()
    assert captured.out == "" and "rows" in captured.err
