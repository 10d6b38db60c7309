"""Hardware-in-the-loop inference: program a trained model onto a chip and measure it there.

:func:`deploy_model` (and :func:`deploy_checkpoint`, what ``cimcal deploy`` runs):

1. converts the model for the chip's profile and calibrates its DAC / partial-sum scales exactly as
   Monte-Carlo evaluation does (:func:`cimcal.train.evaluate.evaluate_model`), so prediction and chip
   share the same constants;
2. plans every analog layer onto the chip (:mod:`cimcal.deploy_plan`: differential pairs, tiles, ADC
   columns, read voltage and read-out gain);
3. programs the cells with program-and-verify through the tester driver, resumably
   (:mod:`cimcal.deploy_state`), and runs the task's test split with every MVM on the chip and the
   digital parts in torch (:mod:`cimcal.deploy_chip`);
4. reports the on-chip metric beside the predicted one (mean over ``mc`` chip instances) and the gap, and
   beside the prediction from the programmed cells themselves (read back just before each slot's MVMs,
   :func:`predict_from_cells`): the profile's read and ADC model without the programming lottery.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cimcal.data.sources import sha256_file as file_sha256
from cimcal.errors import ConfigError

__all__ = ["DeployResult", "deploy_model", "deploy_checkpoint", "calibrated_analog_model", "file_sha256", "ClockWait"]


@dataclass
class DeployResult:
    """On-chip and predicted figures of one deployment, and what it took."""

    metric: str
    on_chip: float
    predicted: float
    predicted_std: float
    predicted_worst: float
    noise_free: float
    mc: int
    gap: float  # on_chip - predicted
    n_items: int
    # fraction of the simulated chip instances the chip did as well as or better than (None without them):
    # one deployment is one draw of the chip's fixed defects, so a gap is read against this, not against 0
    on_chip_rank: float | None
    instrument_idn: str
    # the model simulated on the conductances the deployment programmed and read back (mean +- std over
    # CELL_DRAWS draws of read and ADC noise): the profile's read and ADC model, without the instance lottery of
    # programming; None when a slot never ran. on_chip - predicted_cells is what the profile's converters and
    # read noise leave unexplained, predicted_cells - predicted what this programming drew
    predicted_cells: float | None = None
    predicted_cells_std: float | None = None
    layers: list[dict[str, Any]] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)
    deviations: list[str] = field(default_factory=list)
    state_path: str | None = None
    resumed: bool = False  # some cells were found already programmed and verified (not reprogrammed)
    t_eval_s: float = 0.0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (what ``cimcal deploy --json`` prints)."""
        return dataclasses.asdict(self)

    def summary(self) -> str:
        """Human lines: measured vs predicted (over chip instances, and from the programmed cells), and what was
        programmed."""
        scale, unit = (100.0, " %") if self.metric == "accuracy" else (1.0, "")
        s = self.stats
        return (
            f"{self.metric} on chip {scale * self.on_chip:.2f}{unit}; predicted {scale * self.predicted:.2f} "
            f"+- {scale * self.predicted_std:.2f}{unit} over {self.mc} chip instances "
            f"(worst {scale * self.predicted_worst:.2f}); gap {scale * self.gap:+.2f}{unit}"
            + ("" if self.on_chip_rank is None else
               f", as good as or better than {100 * self.on_chip_rank:.0f} % of the simulated instances")
            + f"; noise-free {scale * self.noise_free:.2f}{unit}\n"
            + ("" if self.predicted_cells is None else
               f"predicted from the programmed cells (read back): {scale * self.predicted_cells:.2f} "
               f"+- {scale * (self.predicted_cells_std or 0.0):.2f}{unit}, gap "
               f"{scale * (self.on_chip - self.predicted_cells):+.2f}{unit}\n")
            + f"{len(self.layers)} layers in {sum(layer['slots'] for layer in self.layers)} slots "
            f"on {self.instrument_idn}: "
            f"{s.get('cells_programmed', 0)} cells programmed, {s.get('cells_skipped', 0)} already verified "
            f"(skipped), {s.get('cells_failed_verify', 0)} failed verify"
            + (f", {s['cells_compensated']} re-programmed to compensate a failed partner" if s.get("cells_compensated")
               else "")
            + f"; {s.get('mvm_vectors', 0)} input vectors "
            f"in {s.get('mvm_calls', 0)} block transfers; {self.seconds:.1f} s"
        )


def _rank(on_chip: float, values: list[float] | None, metric: str) -> float | None:
    """Fraction of Monte-Carlo instance figures ``values`` that ``on_chip`` equals or beats."""
    if not values:
        return None
    better = (lambda v: on_chip >= v) if metric == "accuracy" else (lambda v: on_chip <= v)  # perplexity: lower wins
    return sum(1 for v in values if better(v)) / len(values)


def _profiled_arrays(profile: Any, n_arrays: int) -> list[int] | None:
    """The chip arrays the profile's ADC model was measured on, if recorded and all on this chip."""
    recorded = (getattr(profile, "provenance", None) or {}).get("adc", {}).get("arrays") or []
    arrays = sorted({int(a) for a in recorded})
    return arrays if arrays and all(0 <= a < n_arrays for a in arrays) else None


def calibrated_analog_model(model: nn.Module, task: Any, profile: Any, analog_config: Any, *, seed: int = 0,
                            t_s: float | None = None, calib_batches: int = 4, batch_size: int = 256) -> nn.Module:
    """The converted model with the DAC / partial-sum calibration Monte-Carlo evaluation uses (same seed)."""
    from cimcal.analog import analog_layers, convert, new_instance
    from cimcal.train.evaluate import calibrate_ranges, instance_config
    from cimcal.train.loop import noise_seed

    analog = convert(copy.deepcopy(model), profile, instance_config(analog_config, t_s))
    generator = torch.Generator().manual_seed(noise_seed(seed, 0, stream=9))
    for layer in analog_layers(analog):
        layer.generator = generator
    new_instance(analog, generator)
    calibrate_ranges(analog, task.train, calib_batches, batch_size)
    analog.eval()
    return analog


_FRESH_AGE_S = 60.0  # a fresh run's own cells are read up to this old (programming an array takes seconds)


def _max_cell_age(profile: Any, t_eval_s: float) -> float | None:
    """Oldest age (s) at which a resume reuses cells an earlier run verified: the end of the profile's drift data,
    but never less than a fresh run's own cells reach when read (10 t_eval or a minute), so a profile without
    drift data does not make every resume reprogram. None without a conductance model."""
    conductance = getattr(profile, "conductance", None)
    if conductance is None:
        return None
    from cimcal.analog.layers import drift_time_limits_s

    return max(drift_time_limits_s(conductance)[1], 10.0 * t_eval_s, _FRESH_AGE_S)


CELL_DRAWS = 5  # draws of read and ADC noise behind DeployResult.predicted_cells


def predict_from_cells(analog: nn.Module, plan: Any, readback: dict[str, Any], task: Any, split: str = "test", *,
                       seed: int = 0, draws: int = CELL_DRAWS, batch_size: int = 256) -> tuple[float, float] | None:
    """The metric of ``analog`` (the calibrated model a deployment ran) simulated on the conductances the chip's
    slots were programmed to and read back (``readback``: slot key -> µS in the slot's cell order), read and ADC
    noise drawn from the profile: (mean, std) over ``draws`` draws, or None if a slot was never read back. The
    read-back is a mean of :data:`cimcal.deploy_chip.READBACK_READS` reads and keeps that share of one read's
    noise variance; the fresh read noise drawn makes up the rest (:meth:`AnalogLayer.use_programmed`'s
    ``noise_kept``), each device's at the level nearest its read-back conductance."""
    from cimcal.analog import analog_layers
    from cimcal.deploy_chip import READBACK_READS
    from cimcal.train.loop import noise_seed, run_split

    if draws < 1:
        raise ConfigError(f"draws must be >= 1, got {draws}")
    model = copy.deepcopy(analog)
    modules = dict(model.named_modules())
    for name, layer_plan in plan.layers.items():
        layer = modules[name]
        g_min, g_max = layer.g_range_us
        devices = torch.zeros(2, layer_plan.n_out, layer_plan.n_in)  # G+ and G- of each pair, unit space
        for slot in layer_plan.slots:
            g = readback.get(slot.key)
            if g is None:
                return None
            half = slot.n_cells // 2
            length = slot.in_stop - slot.in_start
            outs = torch.as_tensor(slot.outputs).repeat(length)
            rows = torch.arange(slot.in_start, slot.in_stop).repeat_interleave(len(slot.outputs))
            g_unit = torch.as_tensor((g - g_min) / (g_max - g_min), dtype=torch.float32)
            devices[0, outs, rows], devices[1, outs, rows] = g_unit[:half], g_unit[half:]
        layer.use_programmed(devices=devices, noise_kept=1.0 / READBACK_READS)
    values = []
    for draw in range(draws):
        generator = torch.Generator().manual_seed(noise_seed(seed, 0, stream=1_000_000 + draw))  # apart from MC's
        for layer in analog_layers(model):
            layer.generator = generator
        values.append(run_split(model, task, getattr(task, split), batch_size)[1])
    tensor = torch.tensor(values, dtype=torch.float64)
    return float(tensor.mean()), float(tensor.std()) if draws > 1 else 0.0


class ClockWait:
    """Wait until the tester's clock reaches a time: age a simulated chip (``CLOCk:ADVance``), sleep on silicon."""

    def __init__(self, simulated: bool, poll_s: float = 1.0) -> None:
        self.simulated = simulated
        self.poll_s = poll_s

    def until(self, tester: Any, clock_s: float) -> None:
        while (left := clock_s - tester.clock()) > 0:
            if self.simulated:
                tester.advance(left)
                return
            time.sleep(min(left, self.poll_s))


def _pick_wait(idn: str) -> ClockWait:
    return ClockWait(simulated="SIMCHIP" in idn.upper())


def deploy_model(
    model: nn.Module,
    task: Any,
    profile: Any,
    tester: Any,
    analog_config: Any = None,
    *,
    key: str = "",
    state_path: str | os.PathLike | None = None,
    mc: int = 20,
    seed: int = 0,
    t_s: float | None = None,
    split: str = "test",
    predicted: Any = None,
    batch_vectors: int = 2048,
    chunk_cells: int = 4096,
    progress: bool = False,
    on_chunk: Callable[[int], None] | None = None,
    arrays: list[int] | None = None,
) -> DeployResult:
    """Deploy the digital ``model`` of ``task`` onto the chip behind ``tester`` and measure it.

    Parameters
    ----------
    profile : the chip's ChipProfile (conductance and ADC models) the prediction and mapping use.
    tester : an open :class:`cimcal.drivers.tester.CIMTester` (any object with its methods).
    analog_config : the AnalogConfig the model was trained/evaluated with (its ``t_s`` and converters).
    key : identifies the model for resume (``deploy_checkpoint`` uses the checkpoint's sha256).
    state_path : JSON state file that makes an interrupted deployment resumable (None: no resume).
    mc, seed : Monte-Carlo chip instances and seed of the prediction (``mc`` unused if ``predicted`` is given;
        ``seed`` also seeds the DAC and partial-sum calibration).
    predicted : an :class:`cimcal.train.EvalResult` already computed for this model and profile.
    on_chunk : called with the running count of programming chunks (tests use it to interrupt).
    arrays : the arrays to use; slots beyond them are programmed in turns. Default: the arrays the profile's
        ADC columns were measured on (``profile.provenance["adc"]["arrays"]``: the profile has one transfer curve
        per column index, so other arrays' converters would be unprofiled), else all.
    """
    from cimcal.analog import AnalogConfig
    from cimcal.deploy_chip import ChipRunner, chip_model
    from cimcal.deploy_plan import ChipGeometry, plan_deployment
    from cimcal.deploy_state import DeployState
    from cimcal.train.evaluate import effective_t_s, evaluate_model, instance_config

    started = time.perf_counter()
    if split not in ("test", "val"):
        raise ConfigError(f"split must be 'test' or 'val', got {split!r}")
    analog_config = analog_config or AnalogConfig()
    if predicted is None:
        predicted = evaluate_model(model, task, profile, instance_config(analog_config, t_s), mc=mc, t_s=t_s,
                                   seed=seed, split=split)
    analog = calibrated_analog_model(model, task, profile, analog_config, seed=seed, t_s=t_s)
    limits = getattr(tester, "limits", None)
    geometry = ChipGeometry.from_tester_config(tester.config, getattr(limits, "v_read_max_v", None))
    plan = plan_deployment(analog, profile, geometry)
    if arrays is None:
        arrays = _profiled_arrays(profile, geometry.arrays)
        if arrays is not None and len(arrays) < geometry.arrays:
            plan.deviations.append(f"layers run on array(s) {', '.join(map(str, arrays))} only, whose ADC columns the "
                                   "profile measured (in turns if they do not fit); --arrays overrides")
    idn = tester.idn
    state = DeployState(state_path, f"{key}|{idn}|{getattr(profile, 'sha256', '')}")
    t_eval = effective_t_s(profile, analog_config, t_s)  # the plan above needs a conductance model: a float
    runner = ChipRunner(tester, plan, state, t_eval_s=t_eval, batch_vectors=batch_vectors, chunk_cells=chunk_cells,
                        wait=_pick_wait(idn), progress=progress, on_chunk=on_chunk, arrays=arrays,
                        max_age_s=_max_cell_age(profile, t_eval))
    analog_model_for_cells = copy.deepcopy(analog)  # chip_model swaps the analog layers out of ``analog``
    try:
        runner.program_all()
        on_chip_model = chip_model(analog, runner)
        inputs, targets = getattr(task, split).tensors[:2]
        with torch.no_grad():
            logits = on_chip_model(inputs)
            loss = float(task.loss(logits, targets)) * targets.numel()
            correct = int((logits.argmax(-1) == targets).sum())
    finally:
        runner.close()
    on_chip = task.score(loss, correct, targets.numel())
    from_cells = predict_from_cells(analog_model_for_cells, plan, runner.readback, task, split, seed=seed)
    deviations = list(plan.deviations) + runner.deviations
    for name in runner.stats["signed_input_layers"]:
        deviations.append(f"{name}: signed inputs on a unipolar DAC: two MVM passes (x+ and x-) and two conversions "
                          "per output per tile instead of one")
    return DeployResult(
        metric=task.metric, on_chip=float(on_chip), predicted=float(predicted.mean), predicted_std=float(predicted.std),
        predicted_worst=float(predicted.worst), noise_free=float(predicted.noise_free), mc=int(predicted.mc),
        gap=float(on_chip - predicted.mean), n_items=int(targets.numel()),
        on_chip_rank=_rank(on_chip, getattr(predicted, "values", None), task.metric), instrument_idn=idn,
        predicted_cells=None if from_cells is None else from_cells[0],
        predicted_cells_std=None if from_cells is None else from_cells[1],
        layers=[layer.to_dict() for layer in plan.layers.values()], stats=dict(runner.stats),
        deviations=deviations, state_path=None if state_path is None else str(state_path),
        resumed=runner.stats["cells_skipped"] > 0,
        t_eval_s=t_eval, seconds=time.perf_counter() - started,
    )


def deploy_checkpoint(
    path: str | os.PathLike,
    profile: Any,
    *,
    resource: str = "sim",
    task: str | None = None,
    preset: str = "rram",
    chip_seed: int = 0,
    state_path: str | os.PathLike | None = None,
    tester: Any = None,
    limits: Any = None,
    overrides: dict[str, Any] | None = None,
    **options: Any,
) -> DeployResult:
    """Load a checkpoint of a built-in task and :func:`deploy_model` it (``overrides``: AnalogConfig fields that
    replace the checkpoint's, e.g. ``{"pair_compensation": True}``).

    ``resource`` is a VISA resource string, or ``"sim"``: the simulated chip (``preset``, ``chip_seed``)
    served in-process on an ephemeral loopback port, reached through pyvisa-py like any instrument.
    Pass an open ``tester`` instead to deploy several models to one chip. ``state_path`` defaults to
    ``<checkpoint>.deploy.json`` beside the checkpoint. ``limits``: the driver's ``SafeLimits``.
    """
    from cimcal.train.builtin import config_from_json
    from cimcal.train.checkpoint import BUILTIN_META, load_checkpoint
    from cimcal.train.tasks import load_task

    checkpoint = load_checkpoint(path, task=task, require=BUILTIN_META)
    meta = checkpoint.meta
    the_task = load_task(meta["task"], seed=meta["split_seed"], **meta.get("task_options", {}))
    model = checkpoint.build_model(the_task.info)
    config = config_from_json(meta.get("analog_config"))
    if overrides:
        config = config.replace(**overrides)
    if state_path is None:
        state_path = Path(path).with_name(Path(path).name + ".deploy.json")
    key = file_sha256(path)
    if tester is not None:
        return deploy_model(model, the_task, profile, tester, config, key=key, state_path=state_path, **options)
    import cimcal.drivers as drivers

    with drivers.open_tester(resource, preset=preset, seed=chip_seed, limits=limits) as (opened, _provenance):
        return deploy_model(model, the_task, profile, opened, config, key=key, state_path=state_path, **options)
