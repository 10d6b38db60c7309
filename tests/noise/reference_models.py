"""Reference models with the sampling API of ConductanceLUT / ADCLUT, for the validation tests.

- ``GaussianConductance`` / ``GaussianADC``: the textbook baseline (mean and std per level and time;
  a linear ADC transfer with Gaussian noise). A fidelity check worth its name must reject them on a
  dump with stuck cells, skew, drift and non-uniform ADC thresholds.
- ``BootstrapConductance`` / ``BootstrapADC``: resample the fit data itself, the ideal
  non-parametric model; the validation maths must accept it. It does not depend on the noise
  package, so the validation tests pin the statistics on their own.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch


def _time_index(t_grid: torch.Tensor, t_s: float | None) -> int:
    if t_s is None:
        return 0
    return int(torch.argmin((t_grid - float(t_s)).abs()))


class GaussianConductance:
    """Normal(mean, std) per (level, t_s), clipped at 0 µS."""

    def fit(self, df: pd.DataFrame) -> "GaussianConductance":
        if "t_s" not in df.columns:
            df = df.assign(t_s=0.0)
        stats = df.groupby(["level", "t_s"])["g_us"].agg(["mean", "std"]).unstack("t_s")
        self.levels_ = torch.tensor(stats.index.to_numpy(), dtype=torch.long)
        self.t_s_ = torch.tensor(stats["mean"].columns.to_numpy(), dtype=torch.float64)
        self.mean_ = torch.tensor(stats["mean"].to_numpy())
        self.std_ = torch.tensor(stats["std"].to_numpy())
        return self

    def sample(self, level, t_s=None, generator=None):
        row = torch.searchsorted(self.levels_, level)
        k = _time_index(self.t_s_, t_s)
        z = torch.randn(level.shape, generator=generator, dtype=torch.float64)
        return (self.mean_[row, k] + self.std_[row, k] * z).clamp_min(0.0).float()


class BootstrapConductance:
    """Draw measured fit reads of the same (level, t_s) uniformly at random."""

    def fit(self, df: pd.DataFrame) -> "BootstrapConductance":
        if "t_s" not in df.columns:
            df = df.assign(t_s=0.0)
        self.levels_ = torch.as_tensor(np.sort(df["level"].unique()), dtype=torch.long)
        self.t_s_ = torch.as_tensor(np.sort(df["t_s"].unique()), dtype=torch.float64)
        self.values_ = {
            (int(lv), float(t)): torch.as_tensor(g["g_us"].to_numpy().copy())
            for (lv, t), g in df.groupby(["level", "t_s"])
        }
        return self

    def sample(self, level, t_s=None, generator=None):
        t = float(self.t_s_[_time_index(self.t_s_, t_s)])
        out = torch.empty(level.shape, dtype=torch.float64)
        for lv in level.unique().tolist():
            mask = level == lv
            pool = self.values_[(int(lv), t)]
            idx = torch.randint(pool.numel(), (int(mask.sum()),), generator=generator)
            out[mask] = pool[idx]
        return out.float()


def _n_codes(codes: np.ndarray) -> int:
    return int(2 ** int(np.ceil(np.log2(max(int(codes.max()) + 1, 2)))))


class GaussianADC:
    """Per column: code = clip(round(a + b x + sigma z)), a, b, sigma fitted on unsaturated codes."""

    def fit(self, df: pd.DataFrame) -> "GaussianADC":
        self.n_codes_ = _n_codes(df["code"].to_numpy())
        cols, a, b, s = [], [], [], []
        for col, g in df.groupby("col"):
            inside = g[(g["code"] > 0) & (g["code"] < self.n_codes_ - 1)]
            slope, intercept = np.polyfit(inside["input"], inside["code"], 1)
            resid = inside["code"] - (intercept + slope * inside["input"])
            cols.append(int(col))
            a.append(intercept)
            b.append(slope)
            s.append(float(np.std(resid)))
        self.cols_ = torch.as_tensor(cols, dtype=torch.long)
        self.offset_, self.gain_, self.sigma_ = (torch.as_tensor(v, dtype=torch.float64) for v in (a, b, s))
        return self

    def sample(self, x, col, generator=None):
        i = torch.searchsorted(self.cols_, col.expand(x.shape).contiguous())
        z = torch.randn(x.shape, generator=generator, dtype=torch.float64)
        code = torch.round(self.offset_[i] + self.gain_[i] * x.double() + self.sigma_[i] * z)
        return code.clamp(0, self.n_codes_ - 1).long()


class BootstrapADC:
    """Draw a measured fit code of the same column at the nearest measured input.

    Needs a regular ramp: every (col, input) pair converted the same number of times.
    """

    def fit(self, df: pd.DataFrame) -> "BootstrapADC":
        self.pooled_ = "col" not in df  # like ADCLUT: a table without col fits one pooled transfer
        if self.pooled_:
            df = df.assign(col=0)
        self.n_codes_ = _n_codes(df["code"].to_numpy())
        self.cols_ = torch.as_tensor(np.sort(df["col"].unique()), dtype=torch.long)
        self.inputs_ = torch.as_tensor(np.sort(df["input"].unique()), dtype=torch.float64)
        table = df.sort_values(["col", "input"], kind="stable")
        shape = (self.cols_.numel(), self.inputs_.numel(), -1)
        self.codes_ = torch.as_tensor(table["code"].to_numpy().reshape(shape).copy())
        return self

    def sample(self, x, col, generator=None):
        x = x.double().contiguous()
        hi = torch.searchsorted(self.inputs_, x).clamp(1, self.inputs_.numel() - 1)
        nearer_lo = (x - self.inputs_[hi - 1]) < (self.inputs_[hi] - x)
        i = torch.where(nearer_lo, hi - 1, hi)
        c = torch.searchsorted(self.cols_, col.expand(x.shape).contiguous())
        r = torch.randint(self.codes_.shape[2], x.shape, generator=generator)
        return self.codes_[c, i, r]


@dataclass
class ReferenceProfile:
    """Duck-typed stand-in for ChipProfile (validate_profile reads .conductance and .adc)."""

    conductance: object = None
    adc: object = None


def split_conductance(df: pd.DataFrame, n_cols: int = 128, every: int = 2) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Hold out every ``every``-th cell (all its reads and times), fit on the rest."""
    cell = df["row"] * n_cols + df["col"]
    held = cell % every == every - 1
    return df[~held].reset_index(drop=True), df[held].reset_index(drop=True)


def split_adc(df: pd.DataFrame, fit_repeats: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Fit on the first ``fit_repeats`` conversions of every input, hold out the rest."""
    fit = df["repeat"] < fit_repeats
    return df[fit].reset_index(drop=True), df[~fit].reset_index(drop=True)
