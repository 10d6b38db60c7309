"""cimcal.drivers: instruments over VISA (PyMeasure based), the simulated chip, measurement campaigns.

Names are imported lazily, so ``import cimcal.drivers`` stays cheap and pulls in neither pyvisa
nor pandas until a driver or campaign is used. The drivers never import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "CimcalInstrument",
    "CIMTester",
    "TesterConfig",
    "SafeLimits",
    "Keithley2450",
    "B1500Probe",
    "K4200Probe",
    "ConductanceProbe",
    "CampaignStore",
    "ConductancePlan",
    "AdcPlan",
    "DevicePlan",
    "default_conductance_plan",
    "run_conductance_campaign",
    "run_adc_campaign",
    "run_device_campaign",
    "open_tester",
]

_WHERE = {
    "CimcalInstrument": "instrument",
    "CIMTester": "tester",
    "TesterConfig": "tester",
    "SafeLimits": "limits",
    "Keithley2450": "smu",
    "B1500Probe": "smu",
    "K4200Probe": "smu",
    "ConductanceProbe": "smu",
    "CampaignStore": "campaign_store",
    "ConductancePlan": "campaigns",
    "AdcPlan": "campaign_adc",
    "default_conductance_plan": "campaigns",
    "run_conductance_campaign": "campaigns",
    "run_adc_campaign": "campaign_adc",
    "open_tester": "campaigns",
    "DevicePlan": "campaign_smu",
    "run_device_campaign": "campaign_smu",
}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'cimcal.drivers' has no attribute {name!r}")
    return getattr(importlib.import_module(f"cimcal.drivers.{_WHERE[name]}"), name)


def __dir__() -> list[str]:
    return sorted(__all__)
