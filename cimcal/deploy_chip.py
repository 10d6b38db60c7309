"""Execute a :class:`~cimcal.deploy_plan.DeployPlan` on a chip through the CIMTester driver.

:class:`ChipRunner` programs slots into arrays with program-and-verify (``PROG:CELLs`` in chunks,
resumable through :class:`~cimcal.deploy_state.DeployState`), waits until the cells are as old as the
profile's inference time, reads the programmed cells back (``READ:MAP?``, for the prediction from the
programmed cells) and runs a layer's MVMs as binary-block transfers of at most ``batch_vectors`` input vectors
(``MVM:DIFFerential?``). :func:`chip_model` swaps the analog layers of a calibrated model for thin modules that
call the runner, so the digital parts stay in torch.

The tester is duck-typed (``config``, ``program_cells``, ``program_result``, ``program_time``, ``read_map``,
``mvm_differential``, ``clock``, ``advance``, ``idn``): the core never imports the drivers.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cimcal.deploy_plan import DeployPlan, LayerPlan, SlotPlan
from cimcal.deploy_state import DeployState, stamp_digest
from cimcal.errors import ConfigError

READBACK_READS = 4  # reads averaged per read-back: their read noise is 1/4 of one read's variance

__all__ = ["ChipRunner", "ChipLayer", "chip_model"]


class ChipRunner:
    """Programs slots on demand and runs layer MVMs on the chip; counts what it did.

    Slots fit the chip at once -> slot ``i`` lives in array ``i`` for the whole run. Otherwise arrays are
    reprogrammed in turns (round robin, in execution order), which a whole-test-set batch needs once.
    """

    def __init__(self, tester: Any, plan: DeployPlan, state: DeployState, *, t_eval_s: float,
                 batch_vectors: int = 2048, chunk_cells: int = 4096, wait: Any = None, progress: bool = False,
                 on_chunk: Callable[[int], None] | None = None, arrays: list[int] | None = None,
                 max_age_s: float | None = None) -> None:
        self.tester = tester
        self.plan = plan
        self.state = state
        self.t_eval_s = float(t_eval_s)
        self.batch_vectors = int(batch_vectors)
        self.chunk_cells = int(chunk_cells)
        self.wait = wait
        self.progress = progress
        self.on_chunk = on_chunk
        self.max_age_s = None if max_age_s is None else float(max_age_s)
        self.deviations: list[str] = []
        self.geometry = plan.geometry
        self.arrays = list(range(self.geometry.arrays)) if arrays is None else [int(a) for a in arrays]
        if not self.arrays or any(not 0 <= a < self.geometry.arrays for a in self.arrays):
            raise ConfigError(f"arrays must be a non-empty subset of 0..{self.geometry.arrays - 1}, got {arrays}")
        slots = plan.slots
        self.static = len(slots) <= len(self.arrays)
        self.home = {slot.key: self.arrays[i] for i, slot in enumerate(slots)} if self.static else {}
        self.resident: dict[int, str] = {}
        self.ready_clock: dict[int, float] = {}
        self._next_array = 0
        self._chunks_run = 0
        self.stats = {"cells_programmed": 0, "cells_skipped": 0, "cells_aged": 0, "cells_failed_verify": 0,
                      "cells_compensated": 0,
                      "programmings": 0, "mvm_vectors": 0, "mvm_calls": 0, "program_s": 0.0, "mvm_s": 0.0,
                      "wait_s": 0.0, "readback_s": 0.0, "signed_input_layers": []}
        # each slot's cells read back (mean of READBACK_READS reads, µS, in cell order) when its MVMs ran
        self.readback: dict[str, np.ndarray] = {}
        self._bars: dict[str, Any] = {}

    # ------------------------------------------------------------------ progress
    def _bar(self, name: str, unit: str) -> Any:
        if name not in self._bars:
            from tqdm import tqdm

            self._bars[name] = tqdm(total=0, desc=name, unit=unit, unit_scale=True, disable=not self.progress,
                                    dynamic_ncols=True, leave=True)
        return self._bars[name]

    def close(self) -> None:
        for bar in self._bars.values():
            bar.close()

    # ------------------------------------------------------------------ programming
    def _array_for(self, slot: SlotPlan) -> int:
        if self.static:
            return self.home[slot.key]
        for array, key in self.resident.items():
            if key == slot.key:
                return array
        for array in self.arrays:  # an array this slot was (partly) programmed into before
            if array not in self.resident and self.state.holds(array, slot.key, slot.digest):
                return array
        array = self.arrays[self._next_array]
        self._next_array = (self._next_array + 1) % len(self.arrays)
        return array

    def program_all(self) -> None:
        """Program every slot now (only when they all fit the chip at once)."""
        if self.static:
            for slot in self.plan.slots:
                self.ensure(slot)

    def _chunks(self, slot: SlotPlan) -> list[tuple[int, slice]]:
        """The slot's programming chunks, (index, cell range): the units the state file stamps."""
        return [(index, slice(start, min(start + self.chunk_cells, slot.n_cells)))
                for index, start in enumerate(range(0, slot.n_cells, self.chunk_cells))]

    def ensure(self, slot: SlotPlan) -> int:
        """The array holding ``slot``, programming (or finishing) it first if needed."""
        array = self._array_for(slot)
        if self.resident.get(array) == slot.key:
            return array
        started = time.perf_counter()
        digest = slot.digest
        record = self.state.holds(array, slot.key, digest) or self.state.start(array, slot.key, digest)
        times = self.tester.program_time(array)
        results = self.tester.program_result(array)
        bar = self._bar("program", "cell")
        bar.total += slot.n_cells
        bar.refresh()
        # cells verified by an earlier run are reused only while younger than the profile's drift data
        clock_s = self.tester.clock() if record["chunks"] and self.max_age_s is not None else None
        oldest_s = 0.0
        aged = 0
        programmed = False
        for index, cut in self._chunks(slot):
            r, c, levels = slot.cell_rows[cut], slot.cell_cols[cut], slot.cell_levels[cut]
            stamp = record["chunks"].get(str(index))
            if stamp is not None and (results[r, c] != 0).all() and stamp == stamp_digest(times[r, c], results[r, c]):
                age_s = None if clock_s is None else clock_s - float(np.nanmin(times[r, c]))
                if age_s is None or age_s <= self.max_age_s:
                    self.stats["cells_skipped"] += r.size
                    bar.update(r.size)
                    continue
                aged += r.size
                oldest_s = max(oldest_s, age_s)
            self.tester.program_cells(array, r, c, levels)
            programmed = True
            times = self.tester.program_time(array)
            results = self.tester.program_result(array)
            self.state.chunk_done(array, index, stamp_digest(times[r, c], results[r, c]))
            self.stats["cells_programmed"] += r.size
            self._chunks_run += 1
            bar.update(r.size)
            if self.on_chunk is not None:
                self.on_chunk(self._chunks_run)
        if aged:
            self.stats["cells_aged"] += aged
            self.deviations.append(
                f"array {array}: {aged} cells verified by an earlier run were up to {oldest_s:.3g} s old, beyond the "
                f"profile's drift data (to {self.max_age_s:.3g} s): reprogrammed"
            )
        # pair compensation after any (re)programming, or when a run stopped before it; without it, cells an earlier
        # run moved go back to their planned levels
        wanted, moves = self.plan.layers[slot.layer].pair_compensation, record.get("moves")
        if wanted and (programmed or not isinstance(moves, dict)):
            times, results = self._compensate(array, slot, record)
        elif not wanted and moves:
            self._restore(array, slot, moves)
            times, results = self._record_stamps(array, slot, None)
        cells = (slot.cell_rows, slot.cell_cols)
        self.readback.pop(slot.key, None)  # programmed anew: read again before its next MVMs
        self.stats["cells_failed_verify"] += int((results[cells] < 0).sum())
        self.stats["programmings"] += 1
        self.resident[array] = slot.key
        self.ready_clock[array] = float(np.nanmax(times[cells])) + self.t_eval_s
        self.stats["program_s"] += time.perf_counter() - started
        return array

    def _compensate(self, array: int, slot: SlotPlan, record: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        """Pair compensation (:meth:`DeployPlan.compensation_moves`) of a programmed slot: cells an earlier run moved
        go back to their planned levels first (a chunk reprogrammed since may hold their partners), then the slot is
        read (mean of :data:`READBACK_READS` reads) and the partners of failed devices are programmed to their new
        levels. The moves and the chunks' new stamps go to the state file, so a rerun keeps them. Returns the
        array's ``PROG:TIME?`` and ``PROG:RES?`` after it."""
        self._restore(array, slot, record.get("moves"))
        cells, levels = self.plan.compensation_moves(slot, self._read_slot(array, slot))
        if cells.size:
            self.tester.program_cells(array, slot.cell_rows[cells], slot.cell_cols[cells], levels)
        self.stats["cells_compensated"] += int(cells.size)
        return self._record_stamps(array, slot, {str(int(c)): int(v) for c, v in zip(cells, levels)})

    def _restore(self, array: int, slot: SlotPlan, moves: Any) -> None:
        """Program the cells an earlier run's compensation moved (``moves``: the state's record) back to the plan."""
        if not isinstance(moves, dict):
            return
        back = np.array(sorted({int(k) for k in moves if isinstance(k, str) and k.isascii() and k.isdigit()
                                and int(k) < slot.n_cells}), dtype=np.int64)
        if back.size:
            self.tester.program_cells(array, slot.cell_rows[back], slot.cell_cols[back], slot.cell_levels[back])

    def _record_stamps(self, array: int, slot: SlotPlan, moves: dict[str, int] | None) -> tuple[np.ndarray, np.ndarray]:
        """Record in the state file the slot's compensation ``moves`` (None: as planned) and every chunk's stamps now
        (cells were programmed after the chunks' own stamps). Returns the array's ``PROG:TIME?`` and ``PROG:RES?``."""
        times = self.tester.program_time(array)
        results = self.tester.program_result(array)
        stamps = {}
        for index, cut in self._chunks(slot):
            r, c = slot.cell_rows[cut], slot.cell_cols[cut]
            stamps[str(index)] = stamp_digest(times[r, c], results[r, c])
        self.state.compensated(array, moves, stamps)
        return times, results

    def _wait_until_ready(self, array: int) -> None:
        started = time.perf_counter()
        if self.wait is not None:
            self.wait.until(self.tester, self.ready_clock[array])
        self.stats["wait_s"] += time.perf_counter() - started

    def _read_back(self, array: int, slot: SlotPlan) -> None:
        """The slot's conductances as its MVMs see them (after the wait): mean of a few block reads of its rows."""
        started = time.perf_counter()
        self.readback[slot.key] = self._read_slot(array, slot).astype(np.float32)
        self.stats["readback_s"] += time.perf_counter() - started

    def _read_slot(self, array: int, slot: SlotPlan) -> np.ndarray:
        """The slot's cells in cell order (µS): mean of :data:`READBACK_READS` block reads of its rows."""
        rows = (0, int(slot.cell_rows.max()) + 1)
        g = np.mean([self.tester.read_map(array, rows=rows) for _ in range(READBACK_READS)], axis=0)
        return g[slot.cell_rows, slot.cell_cols]

    # ------------------------------------------------------------------ compute
    def _mvm(self, array: int, volts: np.ndarray, gain: float, offset_ua: float) -> np.ndarray:
        out = np.empty((volts.shape[0], self.geometry.pairs), dtype=np.int16)
        bar = self._bar("mvm", "vec")
        bar.total += volts.shape[0]
        bar.refresh()
        for start in range(0, volts.shape[0], self.batch_vectors):
            stop = min(start + self.batch_vectors, volts.shape[0])
            out[start:stop] = self.tester.mvm_differential(array, volts[start:stop], gain, offset_ua)
            self.stats["mvm_calls"] += 1
            bar.update(stop - start)
        self.stats["mvm_vectors"] += volts.shape[0]
        return out

    @torch.no_grad()
    def run_layer(self, layer: LayerPlan, x2d: torch.Tensor) -> torch.Tensor:
        """``x2d @ W.T`` of one layer on the chip (no bias), as the analog layer computes it."""
        from cimcal.analog.converters import dac_quantize

        xq = dac_quantize(x2d.float(), layer.input_full_scale, layer.dac_bits)
        passes = [(xq.clamp_min(0.0), 1.0)]
        if bool((xq < 0).any()):  # the chip's DAC is unipolar: a second pass for the negative part
            passes.append(((-xq).clamp_min(0.0), -1.0))
            if layer.name not in self.stats["signed_input_layers"]:
                self.stats["signed_input_layers"].append(layer.name)
        n = x2d.shape[0]
        acc = torch.zeros(n, layer.n_out, dtype=torch.float32)
        for slot in layer.slots:
            array = self.ensure(slot)
            self._wait_until_ready(array)
            if slot.key not in self.readback:
                self._read_back(array, slot)
            outs = torch.as_tensor(slot.outputs)
            cols = torch.as_tensor(slot.adc_cols)
            started = time.perf_counter()
            for unit, sign in passes:
                volts = np.zeros((n, self.geometry.rows), dtype=np.float32)
                volts[:, : slot.in_stop - slot.in_start] = (unit[:, slot.in_start: slot.in_stop] * layer.v_fs_v).numpy()
                codes = torch.as_tensor(self._mvm(array, volts, layer.gain, layer.offset_ua))
                code = codes[:, cols].float()
                acc[:, outs] += sign * (code * layer.deq_gain[outs] + layer.deq_offset[outs])
            self.stats["mvm_s"] += time.perf_counter() - started
        return acc * (layer.w_max * layer.input_full_scale)


class ChipLayer(nn.Module):
    """Stands in for one analog layer: its MVMs on the chip, its bias (and im2col for convs) in torch."""

    def __init__(self, runner: ChipRunner, layer_plan: LayerPlan, source: nn.Module) -> None:
        super().__init__()
        self.runner = runner
        self.layer_plan = layer_plan
        self.bias = None if source.bias is None else source.bias.detach().clone()
        self.conv = None
        if isinstance(source, nn.Conv2d):
            self.conv = {"kernel_size": source.kernel_size, "stride": source.stride, "padding": source.padding,
                         "dilation": source.dilation, "out_channels": source.out_channels}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.conv is None:
            y = self.runner.run_layer(self.layer_plan, x.reshape(-1, x.shape[-1]))
            y = y.reshape(*x.shape[:-1], self.layer_plan.n_out)
            return y if self.bias is None else y + self.bias
        c = self.conv
        unbatched = x.dim() == 3
        x = x.unsqueeze(0) if unbatched else x
        n, _, h, w = x.shape
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = c["kernel_size"], c["stride"], c["padding"], c["dilation"]
        oh = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
        ow = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
        cols = F.unfold(x, (kh, kw), dilation=c["dilation"], padding=c["padding"], stride=c["stride"])
        y2d = self.runner.run_layer(self.layer_plan, cols.transpose(1, 2).reshape(n * oh * ow, -1))
        y = y2d.view(n, oh * ow, c["out_channels"]).transpose(1, 2).reshape(n, c["out_channels"], oh, ow)
        if self.bias is not None:
            y = y + self.bias.view(1, -1, 1, 1)
        return y.squeeze(0) if unbatched else y


def chip_model(analog_model: nn.Module, runner: ChipRunner) -> nn.Module:
    """Replace every planned analog layer of ``analog_model`` (in place) by a :class:`ChipLayer`."""
    for name, layer_plan in runner.plan.layers.items():
        owner_name, _, attr = name.rpartition(".")
        owner = analog_model.get_submodule(owner_name) if owner_name else analog_model
        setattr(owner, attr, ChipLayer(runner, layer_plan, getattr(owner, attr)))
    return analog_model
