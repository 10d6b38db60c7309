"""Pair compensation: the rule, the kernels against the eager reference, and what it does to the weights."""

from __future__ import annotations

import pytest
import torch

from cimcal.analog.crossbar import sample_unit_weight
from cimcal.analog.mapping import N_FINE, compensate_pairs, compensation_bounds, compensation_threshold

TARGETS = torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0])


@pytest.mark.parametrize(
    ("v_active", "v_idle", "level", "expected"),
    [
        (0.52, 0.01, 2, (-1, -1)),  # both near their targets: nothing moves
        (1.3, 0.0, 2, (-1, 3)),  # active stuck high (+0.8): idle goes to the level nearest 0 + 0.8
        (0.26, 0.9, 1, (4, -1)),  # idle stuck high (+0.9): active to the level nearest 0.25 + 0.9, the top one
        (0.0, 0.05, 3, (-1, -1)),  # active stuck low (-0.75): the idle device cannot go below the lowest level
        (0.6, 0.1, 1, (-1, 1)),  # active +0.35, idle +0.1: the active one failed; 0 + 0.35 is nearest 0.25
        (0.5, 0.5, 0, (-1, 2)),  # a tie of errors counts the active device as failed
        (0.625, 0.0, 1, (-1, 1)),  # a tie between two levels goes to the lower one (0.375: 0.25 and 0.5 equally near)
    ],
)
def test_the_device_farther_from_its_target_moves_its_partner_to_the_nearest_compensating_level(
    v_active, v_idle, level, expected
):
    new_active, new_idle = compensate_pairs(torch.tensor([v_active]), torch.tensor([v_idle]), torch.tensor([level]),
                                            TARGETS)
    assert (int(new_active), int(new_idle)) == expected


def _tables(n_levels: int = 8, seed: int = 0) -> dict[str, torch.Tensor]:
    """Knot tables whose levels each hold a few failed devices: stuck high, stuck low and a half-way one."""
    gen = torch.Generator().manual_seed(seed)
    target = torch.linspace(0.0, 1.0, n_levels)
    knots = target[:, None] + 0.01 * torch.randn(n_levels, 256, generator=gen)
    knots[:, -3:] = torch.tensor([0.62, 1.1, 1.15])  # stuck on (far above most levels)
    knots[:, :2] = torch.tensor([-0.02, 0.01])  # stuck off (near the lowest level)
    knots = knots.sort(dim=1).values
    fine = torch.linspace(0.0, 1.0, N_FINE)
    return {
        "level_of_fine": (fine[:, None] - target[None, :]).abs().argmin(dim=1).to(torch.int32),
        "read_unit": knots.reshape(-1).contiguous(),
        "programmed_unit": knots.reshape(-1).contiguous(),
        "read_noise_unit": (0.003 * torch.randn(n_levels * 256, generator=gen)).contiguous(),
        "target_unit": target,
        "threshold_unit": torch.tensor(compensation_threshold(target)),
        "bounds_read": compensation_bounds(knots.reshape(-1), target),
        "bounds_programmed": compensation_bounds(knots.reshape(-1), target),
    }


@pytest.mark.parametrize("instance", [False, True])
def test_compensated_kernels_equal_the_eager_reference(instance):
    tables = _tables()
    w = torch.randn(300, 700, generator=torch.Generator().manual_seed(1))
    ranks = torch.randint(0, 256, (2, 300, 700), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    ranks = ranks if instance else None
    plain, _ = sample_unit_weight(w, tables, ranks, (11, 12), True, False)
    compiled, w_max = sample_unit_weight(w, tables, ranks, (11, 12), True, True)
    eager, w_max_eager = sample_unit_weight(w, tables, ranks, (11, 12), False, True)
    assert torch.equal(compiled, eager) and torch.equal(w_max, w_max_eager)
    assert 0.005 < float((compiled != plain).float().mean()) < 0.05  # some pairs moved, most did not


def test_compensation_moves_only_pairs_with_a_failed_device_and_shrinks_their_error():
    tables = _tables()
    w = torch.randn(400, 500, generator=torch.Generator().manual_seed(3))
    ranks = torch.randint(0, 256, (2, 400, 500), dtype=torch.uint8, generator=torch.Generator().manual_seed(4))
    plain, w_max = sample_unit_weight(w, tables, ranks, (5, 6), True, False)
    fixed, _ = sample_unit_weight(w, tables, ranks, (5, 6), True, True)
    # where each device was programmed, in the instance's terms: a device off by more than the threshold failed
    from cimcal.analog.mapping import levels_and_sign

    level, sign = levels_and_sign(w / w_max[:, None], tables["level_of_fine"])
    knots = tables["programmed_unit"].view(-1, 256)
    target = tables["target_unit"]
    off_active = (knots[level, ranks[0].long()] - target[level]).abs() > compensation_threshold(target)
    off_idle = (knots[0, ranks[1].long()] - target[0]).abs() > compensation_threshold(target)
    failed = off_active | off_idle
    assert torch.equal(fixed[~failed], plain[~failed])  # healthy pairs keep every bit, read noise included
    ideal = sign * (target[level] - target[0])
    before = float((plain[failed] - ideal[failed]).square().mean())
    after = float((fixed[failed] - ideal[failed]).square().mean())
    assert after < 0.25 * before, (before, after)


def test_levels_healthy_at_disjoint_knots_make_the_kernels_examine_every_pair():
    """One level healthy only at its high knots, another only at its low ones: no knot index is healthy at every
    level, so the kernels' pre-filter must pass every pair (else they skip failed devices the eager path moves)."""
    tables = _tables()
    target = tables["target_unit"]
    knots = (target[:, None] + 0.001 * torch.linspace(-1, 1, 256)[None, :]).clone()
    knots[3, :200] = target[3] - 0.3
    knots[5, 100:] = target[5] + 0.3
    knots = knots.sort(dim=1).values.reshape(-1).contiguous()
    tables.update(read_unit=knots, programmed_unit=knots, bounds_read=compensation_bounds(knots, target),
                  bounds_programmed=compensation_bounds(knots, target))
    assert tables["bounds_read"][:2].tolist() == [256, -1]
    w = torch.randn(300, 700, generator=torch.Generator().manual_seed(5))
    ranks = torch.randint(0, 256, (2, 300, 700), dtype=torch.uint8, generator=torch.Generator().manual_seed(6))
    for instance in (None, ranks):
        compiled, _ = sample_unit_weight(w, tables, instance, (7, 8), True, True)
        eager, _ = sample_unit_weight(w, tables, instance, (7, 8), False, True)
        assert torch.equal(compiled, eager)
