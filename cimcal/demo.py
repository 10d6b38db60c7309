"""The whole loop on the embedded simulated chip, as one library function (``cimcal demo`` calls it).

measure the chip (levels, read noise, drift, ADC campaigns over VISA) -> fit a profile -> validate it on
a second measurement -> train digits three ways (clean; gaussian and STE-LUT fine-tuned from it) -> Monte-Carlo evaluate ->
deploy each model to the same chip -> one results table and ``report.html``.

Every stage writes its files under ``workdir`` and is timed; :func:`run_demo` returns them all.
``quick=True`` is the reduced size the tests use (smaller campaigns, a one-hidden-layer MLP, few epochs).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["DemoRow", "DemoResult", "run_demo", "train_demo_model", "format_table", "METHOD_LABELS"]

METHOD_LABELS = {"clean": "clean", "gaussian": "gaussian", "ste": "STE-LUT"}


@dataclass
class DemoRow:
    """One line of the results table (metrics are fractions; times in seconds; memory in MiB)."""

    method: str
    predicted: float
    predicted_std: float
    on_chip: float
    gap: float
    on_chip_rank: float | None  # share of the Monte-Carlo chip instances the chip matched or beat
    noise_free: float
    train_s: float
    peak_mib: float
    checkpoint: str
    predicted_cells: float | None = None  # the model simulated on the conductances programmed and read back
    init: str | None = None  # the checkpoint this method was fine-tuned from (train_s counts the fine-tuning only)


@dataclass
class DemoResult:
    """What the demo produced: the table, the stage timings and every output file."""

    rows: list[DemoRow]
    validation_passed: bool
    stage_s: dict[str, float] = field(default_factory=dict)
    stage_cpu_s: dict[str, float] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    deviations: list[str] = field(default_factory=list)
    deploys: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def format_table(rows: list[DemoRow]) -> str:
    """The results table as aligned text."""
    head = (f"{'method':<10} {'predicted acc':>16} {'on-chip acc':>12} {'gap':>7} {'rank':>5} {'from cells':>10} "
            f"{'train time':>11} {'peak mem':>10}")
    lines = [head, "-" * len(head)]
    for r in rows:
        rank = "-" if r.on_chip_rank is None else f"{100 * r.on_chip_rank:.0f}%"
        cells = "-" if r.predicted_cells is None else f"{100 * r.predicted_cells:.2f}%"
        lines.append(
            f"{METHOD_LABELS.get(r.method, r.method):<10} {100 * r.predicted:>8.2f} +- {100 * r.predicted_std:4.2f} "
            f"{100 * r.on_chip:>11.2f}% {100 * r.gap:>+7.2f} {rank:>5} {cells:>10} {r.train_s:>10.1f}s "
            f"{r.peak_mib:>7.1f}MiB"
        )
    tuned = [METHOD_LABELS.get(r.method, r.method) for r in rows if r.init]
    if tuned:
        lines.append(f"{' and '.join(tuned)}: fine-tuned from the clean model (train time: the fine-tuning alone)")
    lines.append("rank: share of the simulated chip instances the chip matched or beat (a gap is read against it)")
    lines.append("from cells: predicted from the conductances this deployment programmed and read back (the profile's "
                 "read and ADC noise only)")
    return "\n".join(lines)


# ---------------------------------------------------------------------- peak memory of a stage
def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm", "rb") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def _trim_heap() -> None:
    """Return freed heap memory to the OS (glibc), so a stage's RSS growth is not hidden by earlier frees."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


@contextmanager
def _peak_rss(out: dict[str, float], interval_s: float = 0.005) -> Iterator[None]:
    """Peak resident-set growth (MiB) above the level at entry, sampled by a background thread."""
    import gc

    gc.collect()
    _trim_heap()
    base = _rss_bytes()
    peak = [base]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], _rss_bytes())
            stop.wait(interval_s)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        peak[0] = max(peak[0], _rss_bytes())
        out["peak_mib"] = (peak[0] - base) / 2**20


# ---------------------------------------------------------------------- sizes
def demo_sizes(quick: bool) -> dict[str, Any]:
    """Campaign plans, model and training sizes of the demo (``quick``: the reduced smoke run)."""
    if quick:
        return {"levels": dict(rows=(0, 64), cols=(0, 64), n_reads=2),
                "readnoise": dict(rows=(0, 32), cols=(0, 32), n_reads=20, reads_per_chunk=10),
                "drift": dict(rows=(0, 32), cols=(0, 64), times_s=(1.0, 100.0, 1e4), n_reads=2),
                "adc": dict(cols=(0, 8), n_points=128, n_repeats=32, cols_per_chunk=8),
                "val_levels": dict(rows=(0, 64), cols=(0, 64), n_reads=1, pattern_seed=1),
                "val_adc": dict(cols=(0, 4), n_points=128, n_repeats=128, cols_per_chunk=4),
                "hidden": [16], "epochs": 3, "mc": 3}
    return {"levels": dict(rows=(0, 256), cols=(0, 256), n_reads=2),
            "readnoise": dict(rows=(0, 64), cols=(0, 64), n_reads=50, reads_per_chunk=10),
            "drift": dict(rows=(0, 128), cols=(0, 128), times_s=(1.0, 100.0, 1e4), n_reads=2),
            "adc": dict(cols=(0, 128), n_points=256, n_repeats=16, cols_per_chunk=32),
            "val_levels": dict(rows=(0, 64), cols=(0, 256), n_reads=1, pattern_seed=1),
            # 16 k held-out conversions per column: a perfect model's TV over 256 codes is then ~0.05, under the
            # 0.1 threshold (at 1 k it is ~0.2 and the TV check could not pass)
            "val_adc": dict(cols=(0, 8), n_points=256, n_repeats=64, cols_per_chunk=8),
            # noise-aware fine-tuning of the clean model (half its epochs) at 2/3 of its learning rate
            "hidden": [128, 128], "epochs": 12, "finetune_lr": 2e-3, "mc": 20}


def _sim_limits(preset: str) -> Any:
    """Safe limits for the embedded simulated chip: the defaults, with the program-voltage limit raised to
    the preset's own rating when it is higher (an explicit choice for a chip known to be rated for it)."""
    import cimcal.drivers as drivers
    from cimcal.drivers.sim.config import load_preset

    defaults = drivers.SafeLimits()
    rating = float(load_preset(preset).v_prog_max_v)
    return defaults.replace(v_prog_max_v=rating) if rating > defaults.v_prog_max_v else defaults


def measure_chip(tester: Any, data: Path, sizes: dict[str, Any], provenance: Any, *, progress: bool = False) -> dict[str, str]:
    """The demo's measurement campaigns (``sizes``: :func:`demo_sizes`) into ``data``: levels, read noise and drift
    each on its own array so no cell is measured at two levels, then the ADC; each resumes a directory that already
    exists. Returns campaign -> directory ("levels", "readnoise", "drift", "adc")."""
    import cimcal.drivers as drivers

    out: dict[str, str] = {}
    for campaign, array in {"levels": 0, "readnoise": 1, "drift": 2}.items():
        plan = drivers.default_conductance_plan(campaign, array=array, **sizes[campaign])
        target = data / campaign
        drivers.run_conductance_campaign(tester, str(target), plan, resume=target.exists(), progress=progress,
                                         provenance=provenance)
        out[campaign] = str(target)
    target = data / "adc"
    drivers.run_adc_campaign(tester, str(target), drivers.AdcPlan(**sizes["adc"]), resume=target.exists(),
                             progress=progress, provenance=provenance)
    out["adc"] = str(target)
    return out


def train_demo_model(method: str, profile: Any, sizes: dict[str, Any], config: Any, *, epochs: int, seed: int,
                     init: Any = None, progress: bool = False) -> tuple[Any, dict[str, Any]]:
    """One of the demo's digits models (``sizes``: :func:`demo_sizes`): (digital model, checkpoint metadata).
    ``init`` (the clean model's :class:`~cimcal.train.checkpoint.Checkpoint`) makes it a fine-tuning run: half
    the epochs, at the sizes' ``finetune_lr``."""
    from cimcal.train.builtin import train_builtin

    tuned = init is not None
    net, meta, _ = train_builtin(
        "digits", [profile], method=method, hparams={"hidden": sizes["hidden"]}, analog_config=config,
        epochs=max(1, epochs // 2) if tuned else epochs, lr=sizes.get("finetune_lr") if tuned else None, seed=seed,
        progress=progress, init=init)
    return net, meta


def run_demo(
    workdir: str | os.PathLike = "cimcal-demo",
    *,
    preset: str = "rram-inl",
    seed: int = 0,
    quick: bool = False,
    methods: tuple[str, ...] = ("clean", "gaussian", "ste"),
    epochs: int | None = None,
    mc: int | None = None,
    t_s: float | None = None,
    pair_compensation: bool = True,
    finetune: bool = True,
    progress: bool = False,
    echo: Callable[[str], None] = print,
) -> DemoResult:
    """Run the loop end to end on a simulated chip (``preset``, ``seed``) and write everything to ``workdir``.

    ``t_s``: inference time after programming (s) trained for, predicted at and waited for on the chip
    (drift); None = the profile's earliest measured time point (its mean t_s, ~1.1 s on the simulated chip).
    ``pair_compensation``: :class:`~cimcal.analog.AnalogConfig`'s, for training, prediction and deployment alike.
    ``finetune``: gaussian and STE-LUT start from the clean model and train half its epochs (the usual
    hardware-aware recipe; both noise-aware methods get the same start and budget); False: all from scratch.
    ``echo`` receives one line per finished stage.
    Returns the table rows, stage timings and file paths.
    """
    from cimcal.analog import AnalogConfig
    from cimcal.deploy import deploy_model
    import cimcal.drivers as drivers
    from cimcal.noise.fit import fit_profile
    from cimcal.noise.validation import validate_profile
    from cimcal.train.builtin import train_builtin
    from cimcal.train.checkpoint import save_checkpoint
    from cimcal.train.evaluate import evaluate_model
    from cimcal.train.tasks import load_task

    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    sizes = demo_sizes(quick)
    epochs = sizes["epochs"] if epochs is None else epochs
    mc = sizes["mc"] if mc is None else mc
    result = DemoResult(rows=[], validation_passed=False)
    files = result.files
    clock = time.perf_counter
    cpu_mark = [time.process_time()]

    def stage(name: str, started: float, what: str) -> None:
        # wall time, and this process's CPU time (all threads): on a shared machine the second is the steadier
        result.stage_s[name] = clock() - started
        now = time.process_time()
        result.stage_cpu_s[name] = now - cpu_mark[0]
        cpu_mark[0] = now
        echo(f"[{name}] {what} ({result.stage_s[name]:.1f} s, CPU {result.stage_cpu_s[name]:.1f} s)")

    limits = _sim_limits(preset)
    if limits.v_prog_max_v > drivers.SafeLimits().v_prog_max_v:
        echo(f"note: safe program-voltage limit raised to {limits.v_prog_max_v:g} V, the simulated {preset} chip's "
             "own rating (LIMit:VPRog?)")
    with drivers.open_tester("sim", preset=preset, seed=seed, limits=limits) as (tester, provenance):
        # 1. measure (each campaign on its own array)
        started = clock()
        data = work / "data"
        measured = measure_chip(tester, data, sizes, provenance, progress=progress)
        files.update({f"measure {campaign}": path for campaign, path in measured.items()})
        stage("measure", started, f"levels, read noise, drift and ADC tables in {data}")

        # 2. fit the profile
        started = clock()
        profile = fit_profile(conductance=[measured["levels"], measured["readnoise"], measured["drift"]],
                              adc=measured["adc"], progress=progress)
        profile_path = profile.save(work / "chip.cimprof")
        files["profile"] = str(profile_path)
        stage("fit", started, f"profile {profile_path}")

        # 3. validate on a second, independent measurement (other array, other pattern, fresh conversions)
        started = clock()
        val_levels = data / "validation_levels"
        plan = drivers.default_conductance_plan("levels", array=3, **sizes["val_levels"])
        drivers.run_conductance_campaign(tester, str(val_levels), plan, resume=val_levels.exists(),
                                         progress=progress, provenance=provenance)
        val_adc = data / "validation_adc"
        drivers.run_adc_campaign(tester, str(val_adc), drivers.AdcPlan(**sizes["val_adc"]), resume=val_adc.exists(),
                                 progress=progress, provenance=provenance)
        files["validation levels"], files["validation adc"] = str(val_levels), str(val_adc)
        validation = validate_profile(profile, str(val_levels), str(val_adc))
        failures = validation.failures()  # cimcal validate's default thresholds
        result.validation_passed = not failures
        stage("validate", started, "profile PASSES validation on a second measurement" if not failures else
              f"profile FAILS validation on a second measurement: {failures[0]}"
              + (f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""))

        # 4-6. train three ways, Monte-Carlo evaluate, deploy to the chip
        task = load_task("digits", seed=seed)
        config = AnalogConfig(t_s=t_s, pair_compensation=pair_compensation)
        models = work / "models"
        # warm-up: one-time allocations (torch's thread pools, the profile's tables, loading the compiled
        # sampling kernels) would otherwise count as the first method that needs them's peak memory
        for method in methods:
            train_builtin("digits", [profile], method=method, hparams={"hidden": sizes["hidden"]}, analog_config=config,
                          epochs=1, max_steps=2, seed=seed)
        init = None
        order = ("clean",) + tuple(m for m in methods if m != "clean") if finetune else methods
        for method in order:
            started = clock()
            memory: dict[str, float] = {}
            t0 = clock()
            tuned = init is not None and method != "clean"
            with _peak_rss(memory):
                net, meta = train_demo_model(method, profile, sizes, config, epochs=epochs, seed=seed,
                                             init=init if tuned else None, progress=progress)
            train_s = clock() - t0
            meta["profiles"] = [profile_path.name]
            checkpoint = save_checkpoint(models / f"{method}.ckpt", net, meta)
            stage(f"train {method}", started, f"{checkpoint}" + (" (fine-tuned from the clean model)" if tuned else ""))
            if method == "clean" and finetune:
                from cimcal.train.checkpoint import load_checkpoint

                init = load_checkpoint(checkpoint)
            if method not in methods:  # trained only as the start of the others
                continue
            files[f"model {method}"] = str(checkpoint)

            started = clock()
            predicted = evaluate_model(net, task, profile, config, mc=mc, seed=seed, t_s=t_s)
            stage(f"evaluate {method}", started, f"predicted accuracy {100 * predicted.mean:.2f} +- "
                                                 f"{100 * predicted.std:.2f} % over {mc} chip instances")

            started = clock()
            from cimcal.deploy import file_sha256

            deployed = deploy_model(net, task, profile, tester, config, key=file_sha256(checkpoint),
                                    state_path=models / f"{method}.ckpt.deploy.json", seed=seed, t_s=t_s,
                                    predicted=predicted, progress=progress)
            result.deploys[method] = deployed.to_dict()
            result.deviations += [d for d in deployed.deviations if d not in result.deviations]
            stage(f"deploy {method}", started, f"on-chip accuracy {100 * deployed.on_chip:.2f} %")
            result.rows.append(DemoRow(method, deployed.predicted, deployed.predicted_std, deployed.on_chip,
                                       deployed.gap, deployed.on_chip_rank, deployed.noise_free, train_s,
                                       memory["peak_mib"], str(checkpoint), deployed.predicted_cells,
                                       str(init.path) if tuned else None))

    # 7. report
    started = clock()
    from cimcal.demo_report import write_demo_report

    report = write_demo_report(work / "report.html", profile, result, format_table(result.rows),
                               conductance=str(val_levels), adc=str(val_adc))
    files["report"] = str(report)
    table_path = work / "results.json"
    import json

    table_path.write_text(json.dumps(result.to_dict(), indent=1, default=str), encoding="utf-8")
    files["results"] = str(table_path)
    stage("report", started, str(report))
    return result
