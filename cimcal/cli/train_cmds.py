"""``cimcal train`` and ``cimcal evaluate``: parse, call :mod:`cimcal.train`, print."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

__all__ = ["train", "evaluate"]


def _load_profiles(paths: tuple[str, ...]) -> list:
    from cimcal.noise.profile import ChipProfile

    return [ChipProfile.load(path) for path in paths]


@click.command()
@click.option("--task", required=True, type=click.Choice(["digits", "charlm"]), help="Built-in task.")
@click.option("--profile", "profiles", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="Chip profile (.cimprof); repeat for a fleet (each step samples one chip).")
@click.option("--method", default="ste", show_default=True, type=click.Choice(["ste", "gaussian", "clean"]))
@click.option("--model", default=None, help="Model name (digits: mlp|cnn; charlm: transformer).")
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="Epochs (task default if omitted).")
@click.option("--batch-size", type=click.IntRange(min=1), default=None)
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=None)
@click.option("--seed", type=int, default=0, show_default=True, help="Split, init, data order and noise seed (with --init: data order and noise).")
@click.option("--max-steps", type=click.IntRange(min=1), default=None, help="Stop after this many steps.")
@click.option("--hparam", "hparams", multiple=True, metavar="KEY=JSON",
              help="Model hyperparameter, e.g. --hparam hidden=[64] (repeatable).")
@click.option("--t-s", type=float, default=None, help="Inference time after programming (s) seen in training.")
@click.option("--compile/--no-compile", "use_compile", default=True, show_default=True,
              help="Compiled sampling kernels (numba; --no-compile: the eager torch reference, same values, slower).")
@click.option("--grad-x-weight", type=click.Choice(["clean", "noisy"]), default="clean", show_default=True,
              help="STE: weight used in grad_x = g W (noisy: the forward's sampled weights; better under strong noise).")
@click.option("--pair-compensation/--no-pair-compensation", default=False, show_default=True,
              help="Model (and record for deploy) pair compensation: the partner of a device that missed its level "
                   "is re-programmed to restore the pair's difference.")
@click.option("--init", "init_path", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Start from this checkpoint (fine-tune; keeps its model and data split).")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Checkpoint to write.")
def train(task, profiles, method, model, epochs, batch_size, lr, seed, max_steps, hparams, t_s, use_compile,
          grad_x_weight, pair_compensation, init_path, output) -> None:
    """Train a built-in model against chip profiles and write a checkpoint."""
    from cimcal.errors import ConfigError
    from cimcal.train import distributed
    from cimcal.train.builtin import train_builtin
    from cimcal.train.checkpoint import save_checkpoint

    if method != "clean" and not profiles:
        raise ConfigError(f"--method {method} needs at least one --profile")
    parsed = {}
    for item in hparams:
        key, sep, value = item.partition("=")
        try:
            parsed[key] = json.loads(value)
        except json.JSONDecodeError:
            raise ConfigError(f"--hparam {item!r}: expected KEY=JSON, e.g. hidden=[64,64]") from None
        if not sep:
            raise ConfigError(f"--hparam {item!r}: expected KEY=JSON")
    loaded = _load_profiles(profiles)
    init = None
    if init_path is not None:
        from cimcal.train.checkpoint import load_checkpoint

        init = load_checkpoint(init_path, task=task)
    from cimcal.analog import AnalogConfig

    analog_config = AnalogConfig(t_s=t_s, compile=use_compile, grad_x_weight=grad_x_weight,
                                 pair_compensation=pair_compensation).validate()
    joined = distributed.init_from_env()
    try:
        net, meta, result = train_builtin(
            task, loaded, method=method, model=model, hparams=parsed, analog_config=analog_config, epochs=epochs,
            batch_size=batch_size, lr=lr, seed=seed, max_steps=max_steps, progress=sys.stderr.isatty(), init=init,
        )
        meta["profiles"] = [Path(p).name for p in profiles]
        if distributed.rank() == 0:
            path = save_checkpoint(output, net, meta)
            last = result.history[-1] if result.history else {}
            figures = ", ".join(f"{k} {v:.4g}" for k, v in last.items() if k != "epoch")
            click.echo(f"wrote {path} ({task}/{meta['model']}, method {method}, {len(result.chips)} steps"
                       f"{', ' + figures if figures else ''}, {1e3 * result.step_s:.1f} ms/step)")
    finally:
        if joined:
            distributed.shutdown()


@click.command()
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.option("--profile", required=True, type=click.Path(exists=True, dir_okay=False), help="Chip profile.")
@click.option("--mc", type=click.IntRange(min=1), default=20, show_default=True, help="Chip instances.")
@click.option("--t-s", type=float, default=None, help="Inference time after programming (s), for drift.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the chip instances.")
@click.option("--split", type=click.Choice(["test", "val"]), default="test", show_default=True)
@click.option("--compile/--no-compile", "use_compile", default=None,
              help="Override the checkpoint's AnalogConfig.compile.")
@click.option("--pair-compensation/--no-pair-compensation", default=None,
              help="Override the checkpoint's AnalogConfig.pair_compensation.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def evaluate(checkpoint, profile, mc, t_s, seed, split, use_compile, pair_compensation, as_json) -> None:
    """Monte-Carlo evaluate a checkpoint over MC chip instances (fresh programming error each)."""
    from cimcal.train.evaluate import evaluate_checkpoint

    (loaded,) = _load_profiles((profile,))
    overrides = {} if use_compile is None else {"compile": use_compile}
    if pair_compensation is not None:
        overrides["pair_compensation"] = pair_compensation
    result = evaluate_checkpoint(checkpoint, loaded, mc=mc, t_s=t_s, seed=seed, split=split, overrides=overrides)
    if as_json:
        click.echo(json.dumps(result.to_dict()))
        return
    scale, unit = (100.0, " %") if result.metric == "accuracy" else (1.0, "")
    click.echo(
        f"{result.metric} over {result.mc} chip instances ({split} split"
        f"{'' if result.t_s is None else f', t = {result.t_s:g} s'}): "
        f"{scale * result.mean:.2f} +- {scale * result.std:.2f}{unit}, worst {scale * result.worst:.2f}{unit}; "
        f"noise-free {scale * result.noise_free:.2f}{unit}"
    )
