"""Fixtures for the data-layer tests."""

import pandas as pd
import pytest

from data_tables import make_adc, make_conductance


@pytest.fixture
def conductance() -> pd.DataFrame:
    return make_conductance()


@pytest.fixture
def adc() -> pd.DataFrame:
    return make_adc()
