"""Deploy on the simulated chip over loopback VISA: round trip of the programmed cells, resume."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cimcal.train.evaluate import EvalResult

# a stand-in prediction: these tests are about the chip side (the Monte-Carlo side is cimcal.train's)
PREDICTED = EvalResult("accuracy", 0.5, 0.0, 0.5, 0.5, 1)


def _deploy(model, digits, profile, tester, tmp_path, **options):
    from cimcal.analog import AnalogConfig
    from cimcal.deploy import deploy_model

    return deploy_model(model, digits, profile, tester, AnalogConfig(compile=False), key="small",
                        state_path=tmp_path / "state.json", predicted=options.pop("predicted", PREDICTED), **options)


@pytest.mark.parametrize(("metric", "on_chip", "expected"), [("accuracy", 0.9, 0.5), ("perplexity", 21.0, 0.25)])
def test_on_chip_rank_counts_the_simulated_instances_the_chip_matches_or_beats(metric, on_chip, expected):
    from cimcal.deploy import _rank

    values = [0.8, 0.9, 0.95, 0.99] if metric == "accuracy" else [18.0, 19.0, 20.0, 25.0]  # perplexity: lower wins
    assert _rank(on_chip, values, metric) == expected and _rank(on_chip, [], metric) is None


def test_deploy_round_trip_reads_back_the_programmed_levels(trained_small, digits, profile, served, tmp_path):
    chip, tester, _ = served
    result = _deploy(trained_small, digits, profile, tester, tmp_path, mc=1, predicted=None)
    assert result.metric == "accuracy" and result.n_items == len(digits.test)
    # a gross mapping error (sign, scale, column) costs tens of points; one chip instance of this tiny model
    # spreads a few points around the Monte-Carlo mean (one stuck cell weighs 1/8 of a hidden unit's sum)
    assert abs(result.gap) < 0.15, result.summary()
    # one simulated instance (mc=1): the chip either matches-or-beats it or not
    assert result.on_chip_rank == (1.0 if result.on_chip >= result.predicted else 0.0)
    assert result.stats["mvm_vectors"] >= len(digits.test) and result.stats["cells_failed_verify"] >= 0
    assert result.stats["programmings"] == 5  # 2 + 3 slots (4 measured ADC columns), in turns

    state = json.loads((tmp_path / "state.json").read_text())
    # the profile's ADC columns were measured on array 0: every layer ran there (another array's ADCs are unprofiled)
    assert profile.provenance["adc"]["arrays"] == [0] and set(state["arrays"]) == {"0"}
    assert any("array(s) 0 only" in note for note in result.deviations)
    from cimcal.deploy import calibrated_analog_model
    from cimcal.deploy_plan import ChipGeometry, plan_deployment
    from cimcal.analog import AnalogConfig

    analog = calibrated_analog_model(trained_small, digits, profile, AnalogConfig(compile=False))
    plan = plan_deployment(analog, profile, ChipGeometry.from_tester_config(tester.config))
    slots = {slot.key: slot for slot in plan.slots}
    tol_us = chip.config.tol_us
    checked = 0
    for array, record in state["arrays"].items():
        slot = slots[record["slot"]]
        a = int(array)
        pulses = tester.program_result(a)[slot.cell_rows, slot.cell_cols]
        g_us = np.mean([tester.read_map(a)[slot.cell_rows, slot.cell_cols] for _ in range(8)], axis=0)
        target = np.asarray(tester.config.targets_us)[slot.cell_levels]
        verified = pulses > 0
        err = np.abs(g_us - target)[verified]
        assert verified.mean() > 0.9  # stuck cells fail verify (about 1 % of cells)
        # program-and-verify stopped when a (noisy) verify read was within tol; the cell then relaxes a little
        # (~1 % of G): most cells stay within tol, nearly all within 1.5 tol
        q50, q90 = np.quantile(err, [0.5, 0.9])
        assert q50 < tol_us / 2 and q90 < 1.5 * tol_us and np.mean(err <= tol_us) > 0.8, (q50, q90)
        checked += slot.n_cells
    assert checked > 0


def test_interrupted_deploy_resumes_without_reprogramming_verified_cells(trained_small, digits, profile, served,
                                                                        tmp_path):
    chip, tester, _ = served

    def interrupt_after_three(chunks_run: int) -> None:
        if chunks_run == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _deploy(trained_small, digits, profile, tester, tmp_path, chunk_cells=128, on_chunk=interrupt_after_three)
    state = json.loads((tmp_path / "state.json").read_text())
    assert [len(r["chunks"]) for r in state["arrays"].values()] == [3]
    (array, record), = state["arrays"].items()
    times_before = tester.program_time(int(array))

    snapshots = []  # the chip's own programming stamps after each chunk the rerun programs
    result = _deploy(trained_small, digits, profile, tester, tmp_path, chunk_cells=128,
                     on_chunk=lambda n: snapshots.append(chip.program_time(int(array))))
    assert result.resumed
    assert result.stats["cells_skipped"] == 3 * 128
    done = ~np.isnan(times_before)
    assert done.sum() == 3 * 128
    first_slot = snapshots[0]  # the rerun's first chunk completed the interrupted slot (4 chunks of 128)
    assert (~np.isnan(first_slot)).sum() == 4 * 128
    np.testing.assert_array_equal(first_slot[done], times_before[done])  # the verified cells were not reprogrammed


def test_signed_inputs_run_as_two_unipolar_passes_and_are_reported(trained_small, digits, profile, served):
    from cimcal.analog import AnalogConfig
    from cimcal.deploy import ClockWait, calibrated_analog_model
    from cimcal.deploy_chip import ChipRunner
    from cimcal.deploy_plan import ChipGeometry, plan_deployment
    from cimcal.deploy_state import DeployState

    _, tester, _ = served
    analog = calibrated_analog_model(trained_small, digits, profile, AnalogConfig(compile=False))
    plan = plan_deployment(analog, profile, ChipGeometry.from_tester_config(tester.config))
    runner = ChipRunner(tester, plan, DeployState(None, "signed"), t_eval_s=1.0, wait=ClockWait(True))
    layer = plan.layers["net.1"]
    x = digits.test.tensors[0].reshape(len(digits.test), -1)[:64]
    ideal = x @ trained_small.net[1].weight.detach().T
    scale = float(ideal.abs().mean())
    positive = runner.run_layer(layer, x)
    negative = runner.run_layer(layer, -x)  # the unipolar DAC takes -x as a second pass
    assert runner.stats["signed_input_layers"] == ["net.1"]
    assert float((positive - ideal).abs().mean()) < 0.5 * scale
    assert float((negative + ideal).abs().mean()) < 0.5 * scale


@pytest.mark.parametrize("text", [
    "[]", "{not json", '{"version": 1, "key": "k"}', '{"version": 1, "key": "k", "arrays": []}',
    '{"version": 1, "key": "k", "arrays": {"0": {"slot": "s", "digest": "d"}}}',  # a record without chunks
    '{"arrays": {}}', '{"key": "k", "arrays": {}}',  # no version / key
])
def test_a_state_file_of_another_shape_counts_as_absent(tmp_path, text):
    from cimcal.deploy_state import DeployState

    path = tmp_path / "state.json"
    path.write_text(text)
    state = DeployState(path, "k")
    assert state.arrays == {} and not state.resumed and state.holds(0, "s", "d") is None
    state.start(0, "s", "d")  # and is overwritten by the next programming
    assert DeployState(path, "k").holds(0, "s", "d") == {"slot": "s", "digest": "d", "chunks": {}}


def test_resume_reprograms_cells_aged_beyond_the_profile_drift_data(trained_small, digits, profile, served, tmp_path):
    chip, tester, _ = served
    arrays = [0, 1, 2, 3]  # 5 slots in turns on 4 arrays: a rerun finds most of them still programmed
    first = _deploy(trained_small, digits, profile, tester, tmp_path, arrays=arrays)
    again = _deploy(trained_small, digits, profile, tester, tmp_path, arrays=arrays)
    assert again.stats["cells_skipped"] > 0 and again.stats["cells_aged"] == 0
    assert not any("reprogrammed" in line for line in again.deviations)
    last_s = float(profile.conductance.t_span_s_[-1, 1])
    tester.advance(1e7)  # the chip sat powered for months: its cells are far older than any measured drift
    aged = _deploy(trained_small, digits, profile, tester, tmp_path, arrays=arrays)
    assert aged.stats["cells_skipped"] == 0 and aged.stats["cells_aged"] > 0
    assert aged.stats["cells_programmed"] == first.stats["cells_programmed"]
    notes = [line for line in aged.deviations if "reprogrammed" in line]
    assert notes and "beyond the profile's drift data" in notes[0]
    # the slots now on the chip were programmed in this run, not 1e7 s ago
    from cimcal.analog import AnalogConfig
    from cimcal.deploy import calibrated_analog_model
    from cimcal.deploy_plan import ChipGeometry, plan_deployment

    analog = calibrated_analog_model(trained_small, digits, profile, AnalogConfig(compile=False))
    plan = plan_deployment(analog, profile, ChipGeometry.from_tester_config(tester.config))
    slots = {slot.key: slot for slot in plan.slots}
    for array, record in json.loads((tmp_path / "state.json").read_text())["arrays"].items():
        slot = slots[record["slot"]]
        assert chip.clock_s - float(tester.program_time(int(array))[slot.cell_rows, slot.cell_cols].min()) < last_s


def test_the_reuse_age_is_never_below_what_a_fresh_run_reads():
    """A profile without drift data (reads at ~1 s) must not make every resume reprogram: cells are reused up to
    the end of the drift data, but at least 10 t_eval or a minute (a fresh run's own cells reach that)."""
    from types import SimpleNamespace

    from cimcal.deploy import _max_cell_age

    class OneSecond:
        def t_limits_s(self):
            return 0.8, 1.3

    class Long:
        def t_limits_s(self):
            return 0.8, 1.1e4

    assert _max_cell_age(SimpleNamespace(conductance=OneSecond()), 1.1) == 60.0
    assert _max_cell_age(SimpleNamespace(conductance=OneSecond()), 30.0) == 300.0
    assert _max_cell_age(SimpleNamespace(conductance=Long()), 1.1) == 1.1e4
    assert _max_cell_age(SimpleNamespace(conductance=None), 1.1) is None


def _stick_output_layer_cells(chip) -> None:
    """A quarter of the output layer's cells stuck on at 46 uS: the 10-output layer sits on rows 0-7 of array 0,
    columns 0-3 / 128-131 (the 4 profiled ADC columns' differential pairs, turn by turn)."""
    rng = np.random.default_rng(0)
    rows, cols = np.indices((8, 4))
    cols = np.concatenate([cols, cols + 128], axis=1)
    rows = np.concatenate([rows, rows], axis=1)
    hit = rng.random(rows.shape) < 0.25
    chip._stuck[0, rows[hit], cols[hit]] = 1
    chip._g0_us[0, rows[hit], cols[hit]] = 46.0
    chip._nu[0, rows[hit], cols[hit]] = 0.0


def test_prediction_from_the_read_back_cells_follows_stuck_cells_the_profile_cannot_know(
        trained_small, digits, profile, served, tmp_path):
    """Cells stuck on at the output layer's busiest rows cost the chip many points: the Monte-Carlo prediction
    (random chip instances) cannot see them, the prediction from the programmed cells, read back, does."""
    chip, tester, _ = served
    fine = _deploy(trained_small, digits, profile, tester, tmp_path / "fine", mc=4, predicted=None)
    assert fine.predicted_cells is not None and 0.0 < fine.predicted_cells_std < 0.05
    assert abs(fine.on_chip - fine.predicted_cells) < 0.03, fine.summary()

    _stick_output_layer_cells(chip)
    damaged = _deploy(trained_small, digits, profile, tester, tmp_path / "damaged", predicted=None, mc=4)
    assert damaged.on_chip < fine.on_chip - 0.05, (fine.summary(), damaged.summary())
    assert damaged.predicted == pytest.approx(fine.predicted)  # same profile, same instances
    assert abs(damaged.on_chip - damaged.predicted_cells) < 0.03, damaged.summary()


def test_pair_compensation_moves_the_partners_of_stuck_cells_and_recovers_the_accuracy(
        trained_small, digits, profile, served, tmp_path):
    from cimcal.analog import AnalogConfig
    from cimcal.deploy import deploy_model

    chip, tester, _ = served
    fine = _deploy(trained_small, digits, profile, tester, tmp_path / "fine", predicted=None, mc=1)
    _stick_output_layer_cells(chip)
    damaged = _deploy(trained_small, digits, profile, tester, tmp_path / "damaged", predicted=None, mc=1)
    compensated = deploy_model(trained_small, digits, profile, tester, AnalogConfig(compile=False, pair_compensation=True),
                               key="small", state_path=tmp_path / "state.json", predicted=PREDICTED)
    assert damaged.stats["cells_compensated"] == 0 and compensated.stats["cells_compensated"] > 0
    # a good part of what the stuck cells cost comes back (not all: a stuck-on idle device at 46 uS, above the
    # top level, leaves the pair short by the active device's target)
    assert compensated.on_chip - damaged.on_chip > 0.25 * (fine.on_chip - damaged.on_chip) > 0.02, (
        fine.on_chip, damaged.on_chip, compensated.on_chip)
    # the output layer's slot is the last one programmed (array 0 holds it): its moves are on the chip
    record = json.loads((tmp_path / "state.json").read_text())["arrays"]["0"]
    from cimcal.deploy import calibrated_analog_model
    from cimcal.deploy_plan import ChipGeometry, plan_deployment

    analog = calibrated_analog_model(trained_small, digits, profile, AnalogConfig(compile=False, pair_compensation=True))
    plan = plan_deployment(analog, profile, ChipGeometry.from_tester_config(tester.config))
    slot = {s.key: s for s in plan.slots}[record["slot"]]
    moves = {int(k): v for k, v in record["moves"].items()}
    assert moves
    half = slot.n_cells // 2
    g = np.mean([tester.read_map(0)[slot.cell_rows, slot.cell_cols] for _ in range(4)], axis=0)
    target = np.asarray(tester.config.targets_us)[slot.cell_levels]
    for cell, level in moves.items():
        r, c = slot.cell_rows[cell], slot.cell_cols[cell]
        partner = cell + half if cell < half else cell - half
        assert chip._level[0, r, c] == level != slot.cell_levels[cell]  # moved off its planned level
        assert chip._stuck[0, slot.cell_rows[partner], slot.cell_cols[partner]] != 0  # because its partner is stuck
        # the pair's difference is nearer its target than with the cell where the plan put it
        plus, minus = min(cell, partner), max(cell, partner)
        error_now = (g[plus] - g[minus]) - (target[plus] - target[minus])
        error_planned = error_now - (g[cell] - target[cell]) * (1 if cell == plus else -1)
        assert abs(error_now) < abs(error_planned), (cell, error_now, error_planned)


def test_a_rerun_keeps_the_pair_compensation_of_a_finished_slot(trained_small, digits, profile, served, tmp_path):
    from cimcal.analog import AnalogConfig
    from cimcal.deploy import calibrated_analog_model
    from cimcal.deploy_chip import ChipRunner
    from cimcal.deploy_plan import ChipGeometry, plan_deployment
    from cimcal.deploy_state import DeployState

    chip, tester, _ = served
    _stick_output_layer_cells(chip)
    analog = calibrated_analog_model(trained_small, digits, profile, AnalogConfig(compile=False, pair_compensation=True))
    plan = plan_deployment(analog, profile, ChipGeometry.from_tester_config(tester.config))
    slot = plan.slots[-1]  # the output layer's
    first = ChipRunner(tester, plan, DeployState(tmp_path / "state.json", "k"), t_eval_s=1.0, arrays=[0])
    first.ensure(slot)
    assert first.stats["cells_compensated"] > 0
    times = tester.program_time(0)
    # the MVMs wait for the compensation's programming too
    assert first.ready_clock[0] >= np.nanmax(times[slot.cell_rows, slot.cell_cols]) + 1.0
    rerun = ChipRunner(tester, plan, DeployState(tmp_path / "state.json", "k"), t_eval_s=1.0, arrays=[0])
    rerun.ensure(slot)
    assert rerun.stats["cells_skipped"] == slot.n_cells and rerun.stats["cells_compensated"] == 0
    np.testing.assert_array_equal(tester.program_time(0), times)  # nothing reprogrammed, the moves stay
    # deployed again without compensation: the moved cells go back to their planned levels, nothing else is touched
    plain = plan_deployment(calibrated_analog_model(trained_small, digits, profile, AnalogConfig(compile=False)), profile,
                            ChipGeometry.from_tester_config(tester.config))
    moved = np.flatnonzero(chip._level[0, slot.cell_rows, slot.cell_cols] != slot.cell_levels)
    assert moved.size == first.stats["cells_compensated"]
    state = json.loads((tmp_path / "state.json").read_text())
    state["arrays"]["0"]["moves"]["\u00b2"] = 1  # an edited file: a key that is no cell index is ignored
    (tmp_path / "state.json").write_text(json.dumps(state))
    undo = ChipRunner(tester, plain, DeployState(tmp_path / "state.json", "k"), t_eval_s=1.0, arrays=[0])
    undo.ensure(plain.slots[-1])
    np.testing.assert_array_equal(chip._level[0, slot.cell_rows, slot.cell_cols], slot.cell_levels)
    after = tester.program_time(0)
    changed = ~((after == times) | (np.isnan(after) & np.isnan(times)))
    assert {(int(r), int(c)) for r, c in zip(*np.nonzero(changed))} == {
        (int(slot.cell_rows[i]), int(slot.cell_cols[i])) for i in moved}
