"""``cimcal deploy`` and ``cimcal demo``: parse, call :mod:`cimcal.deploy` / :mod:`cimcal.demo`, print."""

from __future__ import annotations

import json
import sys

import click

from cimcal.demo import demo_sizes

__all__ = ["deploy", "demo"]

_FULL, _QUICK = demo_sizes(quick=False), demo_sizes(quick=True)


@click.command()
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.option("--profile", required=True, type=click.Path(exists=True, dir_okay=False),
              help="The chip's profile (.cimprof): mapping, read-out scaling and the prediction use it.")
@click.option("--resource", default="sim", show_default=True,
              help="VISA resource string of the tester, or 'sim' (the simulated chip on a loopback port).")
@click.option("--task", default=None, type=click.Choice(["digits", "charlm"]),
              help="Expected task (checked against the checkpoint).")
@click.option("--preset", default="rram", show_default=True, help="Simulated chip preset (sim only).")
@click.option("--seed", "chip_seed", default=0, show_default=True, type=int, help="Simulated chip seed (sim only).")
@click.option("--mc", type=click.IntRange(min=1), default=20, show_default=True,
              help="Chip instances of the Monte-Carlo prediction.")
@click.option("--eval-seed", default=0, show_default=True, type=int, help="Seed of the prediction and calibration.")
@click.option("--t-s", type=float, default=None,
              help="Inference time after programming (s); default: the checkpoint's training t_s, else the profile's "
                   "earliest measured time.")
@click.option("--state", "state_path", type=click.Path(dir_okay=False), default=None,
              help="Resume state file (default: <checkpoint>.deploy.json).")
@click.option("--batch-vectors", type=click.IntRange(min=1), default=2048, show_default=True,
              help="Input vectors per MVM block transfer.")
@click.option("--arrays", default=None, metavar="A,B,...",
              help="Arrays to use (default: those whose ADCs the profile measured, else all).")
@click.option("--limits", "limits_text", default=None,
              help="Safe-limit overrides, e.g. 'v_prog_max_v=4' (the pcm preset is rated for 4 V).")
@click.option("--pair-compensation/--no-pair-compensation", default=None,
              help="Override the checkpoint's AnalogConfig.pair_compensation (re-program the partner of a device that "
                   "missed its level; the prediction models the same).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--progress/--no-progress", default=None, help="Progress bars (default: when stderr is a terminal).")
def deploy(checkpoint, profile, resource, task, preset, chip_seed, mc, eval_seed, t_s, state_path, batch_vectors,
           arrays, limits_text, pair_compensation, as_json, progress) -> None:
    """Program a trained model onto a chip, run the test split on it, compare with the prediction."""
    from cimcal.deploy import deploy_checkpoint
    from cimcal.noise.profile import ChipProfile

    from cimcal.errors import ConfigError

    chosen = None
    if arrays:
        try:
            chosen = sorted({int(item) for item in arrays.split(",") if item.strip()})
        except ValueError:
            raise ConfigError(f"--arrays {arrays!r}: expected comma-separated array indices, e.g. 0,1") from None
    limits = None
    if limits_text:
        from cimcal.drivers.limits import SafeLimits

        limits = SafeLimits.parse(limits_text)
    loaded = ChipProfile.load(profile)
    from cimcal.errors import InstrumentError

    try:
        result = deploy_checkpoint(
            checkpoint, loaded, resource=resource, task=task, preset=preset, chip_seed=chip_seed,
            state_path=state_path, mc=mc, seed=eval_seed, t_s=t_s, batch_vectors=batch_vectors, arrays=chosen,
            limits=limits, progress=sys.stderr.isatty() if progress is None else progress,
            overrides=None if pair_compensation is None else {"pair_compensation": pair_compensation},
        )
    except (KeyboardInterrupt, InstrumentError):
        where = state_path or f"{checkpoint}.deploy.json"
        click.echo(f"note: programming progress is kept in {where}; rerun the same command on the same chip to "
                   "continue without reprogramming verified cells", err=True)
        raise
    if as_json:
        click.echo(json.dumps(result.to_dict()))
        return
    click.echo(result.summary())
    for line in result.deviations:
        click.echo(f"note: {line}")
    if result.state_path:
        click.echo(f"state: {result.state_path}")


@click.command()
@click.option("--workdir", default="cimcal-demo", show_default=True, type=click.Path(file_okay=False),
              help="Directory for every output (tables, profile, models, report.html).")
@click.option("--preset", default="rram-inl", show_default=True,
              help="Simulated chip preset: rram-inl (RRAM read through bowed ADCs), rram or pcm.")
@click.option("--seed", default=0, show_default=True, type=int, help="Chip, split, init and noise seed.")
@click.option("--quick", is_flag=True, help="Reduced size (small campaigns and model, few epochs): a smoke run.")
@click.option("--epochs", type=click.IntRange(min=1), default=None,
              help=f"Training epochs (default {_FULL['epochs']}; quick {_QUICK['epochs']}).")
@click.option("--mc", type=click.IntRange(min=1), default=None,
              help=f"Chip instances of the prediction (default {_FULL['mc']}; quick {_QUICK['mc']}).")
@click.option("--t-s", type=float, default=None,
              help="Inference time after programming (s, drift) to train for, predict and wait for on the chip.")
@click.option("--pair-compensation/--no-pair-compensation", default=True, show_default=True,
              help="Re-program the partner of a device that missed its level (trained for, predicted and deployed).")
@click.option("--finetune/--from-scratch", default=True, show_default=True,
              help="gaussian and STE-LUT fine-tune the clean model (half its epochs), or train from scratch.")
@click.option("--progress/--no-progress", default=None, help="Progress bars (default: when stderr is a terminal).")
def demo(workdir, preset, seed, quick, epochs, mc, t_s, pair_compensation, finetune, progress) -> None:
    """The whole loop on the embedded simulated chip: measure, fit, validate, train, evaluate, deploy."""
    from cimcal.demo import format_table, run_demo

    result = run_demo(workdir, preset=preset, seed=seed, quick=quick, epochs=epochs, mc=mc, t_s=t_s,
                      pair_compensation=pair_compensation, finetune=finetune,
                      progress=sys.stderr.isatty() if progress is None else progress, echo=click.echo)
    click.echo("")
    click.echo(format_table(result.rows))
    for line in result.deviations:
        click.echo(f"note: {line}")
    click.echo("")
    click.echo(f"total {sum(result.stage_s.values()):.1f} s wall, {sum(result.stage_cpu_s.values()):.1f} s CPU; files:")
    for name, path in result.files.items():
        click.echo(f"  {name:<20} {path}")
