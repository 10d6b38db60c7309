"""Fixtures of the noise-model tests; the table generators live in noise_tables.py."""

from __future__ import annotations

import pandas as pd
import pytest
from noise_tables import make_conductance


@pytest.fixture(scope="module")
def conductance_table() -> pd.DataFrame:
    return make_conductance()
