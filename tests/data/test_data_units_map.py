"""--map renames and unit conversion onto g_us."""

from __future__ import annotations

import numpy as np
import pytest
from data_tables import make_conductance, write_csv

from cimcal.data import read_table
from cimcal.errors import ConfigError, DataError


@pytest.fixture
def base():
    return make_conductance(n_cells=8, reads=1, t_s=(1.0,))


@pytest.mark.parametrize(
    ("column", "to_foreign"),
    [
        ("g_s", lambda g_us: g_us * 1e-6),
        ("g_ms", lambda g_us: g_us * 1e-3),
        ("g_ns", lambda g_us: g_us * 1e3),
        ("r_ohm", lambda g_us: 1e6 / g_us),
        ("r_kohm", lambda g_us: 1e3 / g_us),
    ],
)
def test_unit_columns_convert_to_microsiemens(tmp_path, base, column, to_foreign):
    foreign = base.drop(columns=["g_us"]).assign(**{column: to_foreign(base["g_us"])})
    table = read_table(write_csv(foreign, tmp_path / "f.csv"), "conductance")
    np.testing.assert_allclose(table["g_us"], base["g_us"], rtol=1e-12)
    assert column not in table.columns


def test_resistance_to_conductance_is_an_inverse(base):
    table = read_table(base.drop(columns=["g_us"]).assign(r_ohm=10_000.0), "conductance")
    assert np.all(table["g_us"] == 100.0)  # 10 kohm = 100 uS


def test_g_target_converts_too(base):
    table = read_table(base.assign(r_target_kohm=50.0), "conductance")
    assert np.all(table["g_target_us"] == 20.0)


def test_g_us_wins_over_unit_columns(base):
    table = read_table(base.assign(r_ohm=1.0), "conductance")
    np.testing.assert_array_equal(table["g_us"], base["g_us"])


def test_map_renames_foreign_columns(tmp_path, base):
    foreign = base.rename(columns={"row": "Row", "col": "Col", "level": "lvl", "g_us": "G"})
    mapping = {"Row": "row", "Col": "col", "lvl": "level", "G": "g_us"}
    table = read_table(write_csv(foreign, tmp_path / "f.csv"), "conductance", column_map=mapping)
    np.testing.assert_array_equal(table["g_us"], base["g_us"])


def test_map_then_units(base):
    foreign = base.drop(columns=["g_us"]).assign(Resistance=1e6 / base["g_us"])
    table = read_table(foreign, "conductance", column_map={"Resistance": "r_ohm"})
    np.testing.assert_allclose(table["g_us"], base["g_us"], rtol=1e-12)


def test_map_can_swap_names(base):
    swapped = read_table(base, "conductance", column_map={"row": "col", "col": "row"})
    np.testing.assert_array_equal(swapped["row"], base["col"])


def test_map_onto_an_existing_column_is_an_error(base):
    with pytest.raises(DataError, match=r"two columns end up named 'g_us'"):
        read_table(base.assign(G=1.0), "conductance", column_map={"G": "g_us"})


def test_map_two_columns_to_one_name_is_a_config_error(base):
    with pytest.raises(ConfigError, match="several columns to 'g_us'"):
        read_table(base, "conductance", column_map={"a": "g_us", "b": "g_us"})


def test_unused_map_names_are_reported_with_missing_columns(base):
    with pytest.raises(DataError, match=r"--map names not in this source: Gx"):
        read_table(base.drop(columns=["g_us"]), "conductance", column_map={"Gx": "g_us"})
