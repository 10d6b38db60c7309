"""``cimcal train`` / ``cimcal evaluate`` end to end on a tiny config, and evaluation semantics."""

from __future__ import annotations

import copy
import json
import re

import pytest

from cimcal.cli import main
from cimcal.train import evaluate_model, load_checkpoint, train_model, build_model


@pytest.fixture(scope="module")
def trained_ckpt(chip_profile_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("ckpt") / "tiny.ckpt"
    rc = main(["train", "--task", "digits", "--profile", str(chip_profile_path), "--method", "ste",
               "--epochs", "1", "--max-steps", "20", "--seed", "3", "--hparam", "hidden=[24]", "--no-compile", "-o", str(out)])
    assert rc == 0
    return out


def test_cli_train_writes_a_checkpoint_with_full_metadata(trained_ckpt, fleet_profiles, capsys):
    meta = load_checkpoint(trained_ckpt, task="digits", model="mlp").meta
    assert meta["method"] == "ste" and meta["seed"] == 3 and meta["hparams"] == {"hidden": [24]}
    assert meta["analog_config"]["noise"] == "lut"
    assert meta["profile_sha256"] == [fleet_profiles[1].sha256]
    assert meta["cimcal_version"]


def test_cli_evaluate_json_shape(trained_ckpt, chip_profile_path, capsys):
    capsys.readouterr()
    rc = main(["evaluate", str(trained_ckpt), "--profile", str(chip_profile_path), "--mc", "3", "--no-compile", "--json"])
    assert rc == 0
    result = json.loads(capsys.readouterr().out)
    assert {"metric", "mean", "std", "worst", "noise_free", "mc"} <= set(result)
    assert result["metric"] == "accuracy" and result["mc"] == 3 and len(result["values"]) == 3
    assert result["worst"] == min(result["values"]) and 0.0 <= result["mean"] <= 1.0
    assert len(set(result["values"])) > 1  # the chip instances differ


def test_cli_evaluate_human_output_and_drift(trained_ckpt, chip_profile_path, capsys):
    capsys.readouterr()
    rc = main(["evaluate", str(trained_ckpt), "--profile", str(chip_profile_path), "--mc", "2", "--t-s", "3600", "--no-compile"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "accuracy over 2 chip instances" in out and "t = 3600 s" in out and "noise-free" in out


def test_cli_evaluate_reports_and_range_checks_the_checkpoint_t_s(trained_ckpt, chip_profile_path, tmp_path, capsys):
    from cimcal.train import save_checkpoint

    loaded = load_checkpoint(trained_ckpt)

    def with_t_s(t_s):
        meta = copy.deepcopy(loaded.meta)
        meta["analog_config"]["t_s"] = t_s
        return save_checkpoint(tmp_path / f"t{t_s:g}.ckpt", loaded.build_model(), meta)

    args = ["--profile", str(chip_profile_path), "--mc", "1", "--no-compile"]
    capsys.readouterr()
    assert main(["evaluate", str(with_t_s(3600.0)), *args, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["t_s"] == 3600.0  # the checkpoint's, not null
    late = with_t_s(1e9)
    assert main(["evaluate", str(late), *args]) == 2
    err = capsys.readouterr().err
    assert str(late) in err and "AnalogConfig.t_s=1e+09 s" in err and "--t-s" in err and "Traceback" not in err


def test_cli_errors_exit_2(trained_ckpt, chip_profile_path, tmp_path, capsys):
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(trained_ckpt.read_bytes()[:-5] + b"xxxxx")
    assert main(["evaluate", str(bad), "--profile", str(chip_profile_path)]) == 2
    assert "checksum mismatch" in capsys.readouterr().err
    assert main(["train", "--task", "digits", "--method", "ste", "-o", str(tmp_path / "x.ckpt")]) == 2
    assert "needs at least one --profile" in capsys.readouterr().err


def test_cli_train_fine_tunes_from_a_checkpoint(trained_ckpt, chip_profile_path, tmp_path, capsys):
    """--init starts from the checkpoint's weights (a vanishing learning rate keeps them), keeps its model and data
    split while --seed sets the run's own order and noise, and records the checkpoint it started from."""
    import hashlib

    import torch

    common = ["train", "--task", "digits", "--profile", str(chip_profile_path), "--method", "ste", "--epochs", "1",
              "--max-steps", "3", "--seed", "5", "--lr", "1e-12", "--no-compile"]
    assert main([*common, "--init", str(trained_ckpt), "-o", str(tmp_path / "tuned.ckpt")]) == 0
    assert main([*common, "--hparam", "hidden=[24]", "-o", str(tmp_path / "fresh.ckpt")]) == 0
    base, tuned, fresh = (load_checkpoint(p) for p in (trained_ckpt, tmp_path / "tuned.ckpt", tmp_path / "fresh.ckpt"))
    for name, tensor in base.state_dict.items():
        assert torch.allclose(tuned.state_dict[name], tensor, atol=1e-6), name
    first = next(name for name in base.state_dict if name.endswith("weight"))
    assert not torch.allclose(fresh.state_dict[first], base.state_dict[first], atol=1e-3)
    assert tuned.meta["split_seed"] == 3 and fresh.meta["split_seed"] == 5 and tuned.meta["seed"] == 5
    assert tuned.meta["hparams"] == base.meta["hparams"] and tuned.meta["model"] == "mlp"
    assert tuned.meta["init"] == {"file": trained_ckpt.name, "sha256": hashlib.sha256(trained_ckpt.read_bytes()).hexdigest(),
                                  "method": "ste", "seed": 3}
    assert "init" not in fresh.meta
    capsys.readouterr()
    # a run that would change the model, or another task, is refused in one line naming the checkpoint
    assert main([*common, "--init", str(trained_ckpt), "--hparam", "hidden=[32]", "-o", str(tmp_path / "x.ckpt")]) == 2
    err = capsys.readouterr().err
    assert str(trained_ckpt) in err and "hidden=[24], asked for [32]" in err and "Traceback" not in err
    assert main(["train", "--task", "charlm", "--method", "clean", "--init", str(trained_ckpt), "--max-steps", "1",
                 "-o", str(tmp_path / "y.ckpt")]) == 2
    assert "digits" in capsys.readouterr().err


def test_fine_tuning_accepts_requests_that_match_the_checkpoint(trained_ckpt):
    """What the checkpoint already fixes may be asked for again: hyperparameters in any JSON-equal form (a tuple
    for a list) and task options at their recorded or default values; anything else is refused."""
    from cimcal.errors import ConfigError
    from cimcal.train import train_builtin
    from cimcal.train.builtin import _from_init
    from cimcal.train.checkpoint import Checkpoint

    base = load_checkpoint(trained_ckpt)
    _, meta, _ = train_builtin("digits", method="clean", init=base, hparams={"hidden": (24,)}, model="mlp", max_steps=1)
    assert meta["hparams"] == base.meta["hparams"] and meta["split_seed"] == 3
    lm = Checkpoint({}, {"task": "charlm", "model": "transformer", "hparams": {}, "split_seed": 1,
                         "task_options": {"max_chars": 1000}}, None)
    assert _from_init(lm, "charlm", None, None, {"seq_len": 64, "max_chars": 1000})[2] == {"max_chars": 1000}
    for options in ({"seq_len": 32}, {"max_chars": 2000}):
        with pytest.raises(ConfigError, match="trained with task options"):
            _from_init(lm, "charlm", None, None, options)


def test_wrong_hyperparameter_types_are_one_line_config_errors(chip_profile_path, tmp_path, capsys):
    from cimcal.errors import ConfigError

    capsys.readouterr()
    assert main(["train", "--task", "digits", "--profile", str(chip_profile_path), "--method", "ste",
                 "--hparam", "hidden=64", "--no-compile", "-o", str(tmp_path / "x.ckpt")]) == 2
    err = capsys.readouterr().err
    assert "hidden must be a list of ints >= 1, got 64" in err and "Traceback" not in err
    for name, hparams, message in [("mlp", {"hidden": [0]}, "hidden must be a list of ints >= 1, got [0]"),
                                   ("cnn", {"hidden": 2.5}, "hidden must be an int >= 1, got 2.5"),
                                   ("cnn", {"channels": [4]}, "channels must be a list of 2 ints >= 1, got [4]")]:
        with pytest.raises(ConfigError, match=re.escape(message)):
            build_model("digits", name, {}, hparams)


def test_mc_instances_differ_and_are_reproducible(digits_task, fleet_profiles, analog_config):
    model = build_model("digits", "mlp", digits_task.info, {"hidden": [24]})
    train_model(model, digits_task, [], method="clean", epochs=3, batch_size=32, lr=2e-2)
    first = evaluate_model(model, digits_task, fleet_profiles[1], analog_config, mc=3, seed=1, split="val")
    again = evaluate_model(model, digits_task, fleet_profiles[1], analog_config, mc=3, seed=1, split="val")
    assert first.values == again.values and len(set(first.values)) > 1
    assert first.worst == min(first.values) and first.noise_free >= 0.85


def test_pair_compensation_is_recorded_by_train_and_overridden_by_evaluate(trained_ckpt, chip_profile_path, tmp_path,
                                                                           capsys):
    out = tmp_path / "comp.ckpt"
    assert main(["train", "--task", "digits", "--profile", str(chip_profile_path), "--method", "ste", "--epochs", "1",
                 "--max-steps", "2", "--hparam", "hidden=[24]", "--no-compile", "--pair-compensation", "-o", str(out)]) == 0
    assert load_checkpoint(out).meta["analog_config"]["pair_compensation"] is True
    assert load_checkpoint(trained_ckpt).meta["analog_config"]["pair_compensation"] is False  # the default
    values = {}
    for flag in ("--no-pair-compensation", "--pair-compensation"):
        capsys.readouterr()
        assert main(["evaluate", str(trained_ckpt), "--profile", str(chip_profile_path), "--mc", "3", "--json", flag]) == 0
        values[flag] = json.loads(capsys.readouterr().out)["values"]
    # same instances (seed), other weights where a device failed: the sample chip has ~1 % stuck cells
    assert values["--no-pair-compensation"] != values["--pair-compensation"]
