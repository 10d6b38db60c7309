"""Weight -> conductance mapping and the compact conductance tables derived from a ChipProfile.

A weight row ``w_j`` is scaled by ``max|w_j|`` into ``[-1, 1]`` and mapped onto a differential pair
(G+, G-): the active device of the pair is programmed to the level whose target conductance is nearest to
``g_min + |w| (g_max - g_min)``, the idle device to the lowest level; the effective unit weight is
``(G+ - G-) / (g_max - g_min)``. ``g_min``/``g_max`` are the targets of the lowest/highest level.

The profile is reached only through its public sampling API (``sample``, ``sample_programmed``,
``sample_read_noise``, ``mean_us``, ``sigma_us``): from large samples we keep, per level, ``n_knots``
equally likely values in *unit-weight* space that keep the level's mean and variance, stuck-cell tails
included (:func:`slice_knots`). A forward then costs one byte of randomness and one gather from a small,
cache-resident float32 table per device.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from cimcal.errors import ProfileError

__all__ = [
    "ConductanceTables",
    "build_conductance_tables",
    "noisy_unit_weight",
    "instance_unit_weight",
    "read_back_unit_weight",
    "nearest_levels",
    "level_unit_weight",
    "levels_and_sign",
    "compensate_pairs",
    "compensation_threshold",
    "compensation_bounds",
    "redraw_byte",
    "N_KNOTS",
    "N_FINE",
    "slice_knots",
]

N_KNOTS = 256  # one random byte per device draw
N_FINE = 1024  # resolution of the |w| -> level lookup
_SAMPLES_PER_LEVEL = 1 << 18  # 1024 per knot: a 0.3 % stuck tail is ~790 samples (Poisson sd 3.6 %)


@dataclass(frozen=True)
class ConductanceTables:
    """Per-level tables in unit-weight space ((g - g_min) / (g_max - g_min)); shapes in brackets.

    level_of_fine [N_FINE] int32: level position for ``round(|w| * (N_FINE - 1))``.
    target_unit [L]: programmed target of each level.
    read_unit [L*K]: knots of one read (programming error + read noise): ``every_forward``.
    programmed_unit [L*K]: knots of the persistent programmed value: ``fixed_instance``.
    read_noise_unit [L*K]: knots of the read-to-read deviation added at every forward (``fixed_instance``).
    mean_unit, sigma_unit [L]: per-level mean and std (the gaussian baseline).
    threshold_unit [] and bounds_read, bounds_programmed [4] int32: pair compensation's
    :func:`compensation_threshold` and :func:`compensation_bounds` of ``read_unit`` / ``programmed_unit``.
    """

    g_min_us: float
    g_max_us: float
    level_of_fine: torch.Tensor
    target_unit: torch.Tensor
    read_unit: torch.Tensor
    programmed_unit: torch.Tensor
    read_noise_unit: torch.Tensor
    mean_unit: torch.Tensor
    sigma_unit: torch.Tensor
    threshold_unit: torch.Tensor
    bounds_read: torch.Tensor
    bounds_programmed: torch.Tensor


def build_conductance_tables(lut: Any, t_s: float | None, generator: torch.Generator | None = None) -> ConductanceTables:
    """Derive compact per-level tables from a fitted ConductanceLUT at inference time ``t_s``."""
    levels = torch.as_tensor(lut.levels_).long()
    targets = torch.as_tensor(lut.g_target_us_, dtype=torch.float64)
    if levels.numel() < 2:
        raise ProfileError(f"conductance model has {levels.numel()} level(s); weight mapping needs at least 2")
    order = torch.argsort(targets)
    levels, targets = levels[order], targets[order]
    g_min, g_max = float(targets[0]), float(targets[-1])
    if not g_max > g_min:
        raise ProfileError(f"conductance levels span no range (g_target_us from {g_min} to {g_max})")
    span = g_max - g_min

    def unit(g_us: torch.Tensor) -> torch.Tensor:
        return ((g_us.double() - g_min) / span).float()

    def knots(draw: Any, offset: float) -> torch.Tensor:
        # one call per level: below the size at which the profile's sampler compiles (seconds on first use)
        rows = [draw(torch.full((_SAMPLES_PER_LEVEL,), int(level))) for level in levels]
        return ((slice_knots(torch.stack(rows)) - offset) / span).float().contiguous().view(-1)

    read = knots(lambda lv: lut.sample(lv, t_s=t_s, generator=generator), g_min)
    programmed = knots(lambda lv: lut.sample_programmed(lv, t_s=t_s, generator=generator), g_min)
    read_noise = knots(lambda lv: lut.sample_read_noise(lv, generator=generator), 0.0)
    mean_unit = unit(torch.as_tensor(lut.mean_us(levels, t_s=t_s)))
    sigma_unit = (torch.as_tensor(lut.sigma_us(levels, t_s=t_s), dtype=torch.float64) / span).float()

    target_unit = unit(targets)
    fine = torch.linspace(0.0, 1.0, N_FINE, dtype=torch.float32)
    level_of_fine = nearest_levels(fine, target_unit).to(torch.int32)
    for name, table in (("read", read), ("programmed", programmed), ("read-noise", read_noise)):
        if not torch.isfinite(table).all():
            raise ProfileError(f"conductance model produced non-finite {name} samples at t_s={t_s}")
    return ConductanceTables(
        g_min_us=g_min,
        g_max_us=g_max,
        level_of_fine=level_of_fine.contiguous(),
        target_unit=target_unit.contiguous(),
        read_unit=read,
        programmed_unit=programmed,
        read_noise_unit=read_noise,
        mean_unit=mean_unit.contiguous(),
        sigma_unit=sigma_unit.contiguous(),
        threshold_unit=torch.tensor(compensation_threshold(target_unit), dtype=torch.float32),
        bounds_read=compensation_bounds(read, target_unit),
        bounds_programmed=compensation_bounds(programmed, target_unit),
    )


def slice_knots(samples: torch.Tensor, n_knots: int = N_KNOTS) -> torch.Tensor:
    """``n_knots`` equally likely values per row of ``samples`` (R, S) that keep each row's mean and, to first
    order, its variance, tails included.

    The sorted samples are cut into ``n_knots`` slices of equal probability. A slice of the bulk is narrow and
    its knot is its mean; a slice that straddles a gap (the bulk and a few stuck cells at 40 µS) would lose
    most of its spread to a mean or a quantile, and stuck cells dominate the error energy of a matrix-vector
    product. So each knot sits at the slice's root-mean-square distance from the row mean, on the side of the
    slice's mean; a final shift puts the knots' mean on the row mean. The knots come back sorted.
    """
    rows, n = samples.shape
    if n % n_knots:
        raise ValueError(f"{n} samples per row do not split into {n_knots} slices")
    ordered = samples.sort(dim=1).values.double()  # sorted in the samples' own dtype (float32: 3x faster)
    center = ordered.mean(dim=1, keepdim=True)
    dev = (ordered - center).view(rows, n_knots, n // n_knots)
    side = torch.where(dev.mean(dim=2) < 0, -1.0, 1.0).to(dev.dtype)
    knots = center + side * dev.square().mean(dim=2).sqrt()
    # sorted: a slice that straddles the mean with its mean on one side and its spread on the other (a level with
    # two modes) can land past its neighbour; the set of values, and so mean and variance, stay the same
    return (knots - (knots.mean(dim=1, keepdim=True) - center)).sort(dim=1).values


def levels_and_sign(w_unit: torch.Tensor, level_of_fine: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The weight -> (level of the active device, sign) rule shared by the analog layers and deployment.

    ``w_unit`` holds weights already scaled into ``[-1, 1]`` (a row divided by its ``max|w|``);
    ``level_of_fine`` is the ``|w| -> level`` lookup of ``N_FINE`` entries (``ConductanceTables.level_of_fine``).
    Returns ``(level, sign)``, both shaped like ``w_unit``: ``level`` (int) indexes the profile's levels sorted
    by target conductance and is the level the active device of the pair is programmed to (the idle device
    sits at level 0); ``sign`` is ``-1.0`` where ``w_unit < 0`` (active device on G-) and ``+1.0`` otherwise
    (active device on G+).
    """
    # as the kernels: NaN takes index 0 (the result stays NaN through the weight itself)
    # in float32 whatever the weight dtype: bfloat16 would round index 1023 up to 1024
    fine_idx = (w_unit.float().abs() * (N_FINE - 1) + 0.5).nan_to_num(0.0).floor().clamp(0, N_FINE - 1).to(torch.int32)
    level = level_of_fine[fine_idx]
    sign = torch.where(w_unit < 0, -1.0, 1.0).to(w_unit.dtype)
    return level, sign


def compensation_threshold(target_unit: torch.Tensor) -> float:
    """Half the smallest gap between adjacent level targets (float32): a device off its target by less can
    never move its partner to another level (:func:`compensate_pairs` checks only pairs beyond it)."""
    return float((target_unit[1:] - target_unit[:-1]).min().float() / 2)


def compensation_bounds(knots: torch.Tensor, target_unit: torch.Tensor) -> torch.Tensor:
    """int32 ``[lo_active, hi_active, lo_idle, hi_idle]``: knot indices within which no device of a sorted knot
    table (L*K) is beyond :func:`compensation_threshold` of its target, at any level (active) or at the lowest
    level (idle). The kernels examine only pairs with a knot outside (a level's failed knots are its first and
    last: the tables are sorted). An empty range comes back as ``(K, -1)``: every knot examined."""
    table = knots.view(target_unit.numel(), -1)
    off = (table - target_unit[:, None]).abs() > compensation_threshold(target_unit)
    k = table.shape[1]
    index = torch.arange(k)
    # first and last healthy knot of each level (a level without one: an empty range)
    lo = torch.where(off, k, index).amin(dim=1)
    hi = torch.where(off, -1, index).amax(dim=1)
    bounded = (~off).cumsum(dim=1)
    if bool((off & (bounded > 0) & (bounded < bounded[:, -1:])).any()):
        raise ValueError("knot tables must be sorted per level")
    active, idle = (int(lo.max()), int(hi.min())), (int(lo[0]), int(hi[0]))
    # no knot healthy at every level (one level healthy only high, another only low): examine every pair
    active, idle = ((a, b) if a <= b else (k, -1) for a, b in (active, idle))
    return torch.tensor([*active, *idle], dtype=torch.int32)


def redraw_byte(u: torch.Tensor) -> torch.Tensor:
    """A device's random byte mapped to another (a bijection of 0..255) for the draw at its new level."""
    return (u.to(torch.int32) * 157 + 101) & 255


def compensate_pairs(
    v_active: torch.Tensor,
    v_idle: torch.Tensor,
    level: torch.Tensor,
    target_unit: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pair compensation, the rule deployment applies on the chip (:func:`cimcal.deploy_plan.compensation_moves`):
    in a pair whose devices hold ``v_active`` (target level ``level``) and ``v_idle`` (target level 0), the device
    farther from its target (the active one on a tie) is taken as failed, and its partner is re-programmed to the
    level whose target is nearest ``partner's target + failed device's error``, which restores the pair's
    difference as closely as the levels allow (a stuck-on idle device at 46 µS moves the active one up; a stuck
    active device moves the idle one). Returns ``(new_active_level, new_idle_level)`` with -1 where the device
    stays; float32 arithmetic in the kernels' order, ties between levels to the lower one."""
    e_active = v_active - target_unit[level]
    e_idle = v_idle - target_unit[0]
    active_failed = e_active.abs() >= e_idle.abs()
    want = torch.where(active_failed, target_unit[0] + e_active, target_unit[level] + e_idle)
    nearest = nearest_levels(want, target_unit).to(level.dtype)
    move_idle = active_failed & (nearest != 0)
    move_active = ~active_failed & (nearest != level)
    stay = torch.full_like(nearest, -1)
    return torch.where(move_active, nearest, stay), torch.where(move_idle, nearest, stay)


def _compensated(
    v_active: torch.Tensor, v_idle: torch.Tensor, level: torch.Tensor, target_unit: torch.Tensor,
    redraw: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Values of the pairs after :func:`compensate_pairs`: a moved device is drawn anew at its new level by
    ``redraw(device, at, new_level)`` (device 0 active, 1 idle; ``at`` the moved pairs' indices). Only pairs with a device
    beyond :func:`compensation_threshold` are examined (the kernels' order)."""
    threshold = compensation_threshold(target_unit)
    candidates = torch.maximum((v_active - target_unit[level]).abs(), (v_idle - target_unit[0]).abs()) > threshold
    if not bool(candidates.any()):
        return v_active, v_idle
    where = candidates.nonzero(as_tuple=True)
    new_active, new_idle = compensate_pairs(v_active[where], v_idle[where], level[where], target_unit)
    v_active, v_idle = v_active.clone(), v_idle.clone()
    for device, new, values in ((0, new_active, v_active), (1, new_idle, v_idle)):
        moved = new >= 0
        if bool(moved.any()):
            at = tuple(index[moved] for index in where)
            values[at] = redraw(device, at, new[moved])
    return v_active, v_idle


def noisy_unit_weight(
    w_unit: torch.Tensor,
    u_active: torch.Tensor,
    u_idle: torch.Tensor,
    level_of_fine: torch.Tensor,
    read_unit: torch.Tensor,
    target_unit: torch.Tensor | None = None,
) -> torch.Tensor:
    """One read of every pair: sign * (G_active - G_idle) in unit space; u_* are uint8 knot indices.
    ``target_unit``: compensate failed devices (:func:`compensate_pairs`; a moved device's read is drawn at its
    new level with :func:`redraw_byte` of its byte); None: no compensation."""
    level, sign = levels_and_sign(w_unit, level_of_fine)
    g_active = read_unit[level * N_KNOTS + u_active.to(torch.int32)]
    g_idle = read_unit[u_idle.to(torch.int32)]  # the idle device sits at the lowest level (row 0)
    if target_unit is not None:
        byte = (u_active, u_idle)
        g_active, g_idle = _compensated(
            g_active, g_idle, level, target_unit,
            lambda device, at, new: read_unit[new.to(torch.int32) * N_KNOTS + redraw_byte(byte[device][at])],
        )
    return sign * (g_active - g_idle) + (w_unit - w_unit)  # non-finite weights stay non-finite, as in the kernels


def instance_unit_weight(
    w_unit: torch.Tensor,
    rank_active: torch.Tensor,
    rank_idle: torch.Tensor,
    u_active: torch.Tensor,
    u_idle: torch.Tensor,
    level_of_fine: torch.Tensor,
    programmed_unit: torch.Tensor,
    read_noise_unit: torch.Tensor,
    target_unit: torch.Tensor | None = None,
) -> torch.Tensor:
    """Fixed chip instance: each cell keeps its programming-error quantile rank; read noise is fresh.
    ``target_unit``: compensate failed devices, judged on their programmed values (:func:`compensate_pairs`; a
    moved device's programmed value is drawn at its new level with :func:`redraw_byte` of its rank, so it stays
    with the instance); None: no compensation."""
    level, sign = levels_and_sign(w_unit, level_of_fine)
    row = level * N_KNOTS
    p_active = programmed_unit[row + rank_active.to(torch.int32)]
    p_idle = programmed_unit[rank_idle.to(torch.int32)]
    n_active = read_noise_unit[row + u_active.to(torch.int32)]
    n_idle = read_noise_unit[u_idle.to(torch.int32)]
    if target_unit is not None:
        rank, byte, noise = (rank_active, rank_idle), (u_active, u_idle), [n_active, n_idle]

        def redraw(device: int, at: tuple[torch.Tensor, ...], new: torch.Tensor) -> torch.Tensor:
            rows = new.to(torch.int32) * N_KNOTS
            noise[device] = noise[device].clone()
            noise[device][at] = read_noise_unit[rows + byte[device][at].to(torch.int32)]
            return programmed_unit[rows + redraw_byte(rank[device][at])]

        p_active, p_idle = _compensated(p_active, p_idle, level, target_unit, redraw)
        n_active, n_idle = noise
    g_active = p_active + n_active
    g_idle = p_idle + n_idle
    return sign * (g_active - g_idle) + (w_unit - w_unit)


def read_back_unit_weight(
    unit: torch.Tensor,
    level: torch.Tensor,
    sign: torch.Tensor,
    u_active: torch.Tensor,
    u_idle: torch.Tensor,
    read_noise_unit: torch.Tensor,
    noise_scale: float = 1.0,
    idle_level: torch.Tensor | None = None,
) -> torch.Tensor:
    """Cells read back from a chip (``unit``: their ``(G+ - G-)`` in unit-weight space) at one forward: fresh read
    noise of both devices added as :func:`instance_unit_weight` adds it (``sign * (n_active - n_idle)``), times
    ``noise_scale``; the active device's noise at ``level``, the idle one's at ``idle_level`` (None: level 0)."""
    noise_active = read_noise_unit[level * N_KNOTS + u_active.to(torch.int32)]
    idle_row = 0 if idle_level is None else idle_level * N_KNOTS
    noise = noise_active - read_noise_unit[idle_row + u_idle.to(torch.int32)]
    return unit + sign * (noise * noise_scale)


def nearest_levels(g_unit: torch.Tensor, target_unit: torch.Tensor) -> torch.Tensor:
    """The level whose target is nearest each conductance ``g_unit`` (unit space, ``(G - g_min) / (g_max -
    g_min)``; ``target_unit`` sorted ascending), as int64: the |w| -> level lookup, pair compensation's new level
    and the state a read-back device sits in. A tie goes to the lower level (torch's argmin, as the kernels'
    ``_nearest_level``); NaN to the lowest."""
    return (g_unit.unsqueeze(-1) - target_unit).abs().argmin(dim=-1)


def level_unit_weight(w_unit: torch.Tensor, level_of_fine: torch.Tensor, target_unit: torch.Tensor) -> torch.Tensor:
    """Noise-free programmed weight: sign * (target(level) - target(lowest)), the mapping's quantization."""
    level, sign = levels_and_sign(w_unit, level_of_fine)
    return sign * (target_unit[level] - target_unit[0])
