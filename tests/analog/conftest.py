"""Fixtures for the analog layer tests: a tiny stand-in chip profile with the ChipProfile sampling API.

The stand-in has non-Gaussian (log-normal) programming error, Gaussian read noise, drift between two
time points, and a 5-bit ADC with per-column offsets and Gaussian input-referred noise. It implements only
the public API the analog layers use, so tests pin the layers' behaviour independently of the fitter.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch


class StandInConductance:
    def __init__(self, n_levels: int = 8, g_max_us: float = 40.0) -> None:
        self.levels_ = torch.arange(n_levels)
        self.g_target_us_ = torch.linspace(2.0, g_max_us, n_levels)
        self.t_s_ = torch.tensor([0.0, 3600.0])
        self.g_range_us_ = (0.0, g_max_us + 10)
        self.n_knots = 256
        self.prog_sigma = 0.15  # log-normal shape
        self.read_sigma_us = 0.3

    def _drift(self, t_s: float | None) -> float:
        return 1.0 - 0.02 * math.log1p(t_s or 0.0) / math.log1p(3600.0)

    def sample_programmed(self, level, t_s=None, generator=None):
        target = self.g_target_us_[level.long()]
        z = torch.randn(level.shape, generator=generator)
        scale = 1.5 + 0.03 * target
        return (target + scale * (torch.exp(self.prog_sigma * z) - math.exp(self.prog_sigma**2 / 2)) / self.prog_sigma) * self._drift(t_s)

    def sample_read_noise(self, level, generator=None):
        return torch.randn(level.shape, generator=generator) * self.read_sigma_us

    def sample(self, level, t_s=None, generator=None):
        return self.sample_programmed(level, t_s, generator) + self.sample_read_noise(level, generator)

    def mean_us(self, level, t_s=None):
        return self.g_target_us_[level.long()] * self._drift(t_s)

    def sigma_us(self, level, t_s=None):
        target = self.g_target_us_[level.long()]
        s = self.prog_sigma
        prog = (1.5 + 0.03 * target) * math.sqrt((math.exp(s**2) - 1) * math.exp(s**2)) / s
        return torch.sqrt((prog * self._drift(t_s)) ** 2 + self.read_sigma_us**2)


class StandInADC:
    def __init__(self, n_cols: int = 4, n_codes: int = 32, sigma_lsb: float = 0.6) -> None:
        self.cols_ = torch.arange(n_cols) + 10  # physical ids need not start at 0
        self.n_codes_ = n_codes
        self.input_range_ = (0.0, 64.0)
        self.input_edges_ = torch.linspace(0.0, 64.0, n_codes + 1)
        self.offset_lsb_ = torch.linspace(-0.4, 0.4, n_cols)
        self.sigma_lsb_ = torch.full((n_cols,), sigma_lsb)

    def _z(self, x, col):
        lsb = (self.input_range_[1] - self.input_range_[0]) / self.n_codes_
        idx = (col.long() - 10).clamp(0, len(self.cols_) - 1)
        return (x - self.input_range_[0]) / lsb + self.offset_lsb_[idx], idx

    def sample(self, x, col, generator=None):
        z, idx = self._z(x.float(), torch.as_tensor(col).expand_as(x))
        noisy = z + torch.randn(x.shape, generator=generator) * self.sigma_lsb_[idx]
        return noisy.floor().clamp(0, self.n_codes_ - 1).long()

    def mean_code(self, x, col):
        z, idx = self._z(x.float(), torch.as_tensor(col).expand_as(x))
        k = torch.arange(1, self.n_codes_, dtype=torch.float32)
        sigma = self.sigma_lsb_[idx][..., None]
        return torch.special.ndtr((z[..., None] - k) / sigma).sum(-1)


@pytest.fixture(scope="session")
def standin_profile():
    return SimpleNamespace(conductance=StandInConductance(), adc=StandInADC(), provenance={})


@pytest.fixture(scope="session")
def fitted_profile():
    """A real ChipProfile fitted by cimcal.noise.fit_profile on seeded synthetic measurement tables."""
    from cimcal.data.synthetic import synthetic_adc, synthetic_conductance
    from cimcal.noise.fit import fit_profile

    return fit_profile(
        conductance=synthetic_conductance(n_cells=2048, seed=0),
        adc=synthetic_adc(cols=4, n_inputs=256, repeats=8, seed=0),
    )


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: one intra-op thread avoids OpenMP barrier stalls on a shared, loaded 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
