"""Checkpoints: bit-exact round trip, tamper detection, task/model mismatch."""

from __future__ import annotations

import json
import struct

import pytest
import torch

from cimcal.errors import CheckpointError
from cimcal.train import build_model, load_checkpoint, load_task, save_checkpoint


@pytest.fixture()
def saved(tmp_path):
    task = load_task("digits")
    torch.manual_seed(0)
    model = build_model("digits", "cnn", task.info, {"channels": [4, 8], "hidden": 16})
    meta = {"task": "digits", "model": "cnn", "hparams": {"channels": [4, 8], "hidden": 16},
            "task_info": {"n_classes": 10, "in_shape": [1, 8, 8]}, "method": "ste", "seed": 7,
            "analog_config": {"noise": "lut", "tile_rows": 256}, "profile_sha256": ["ab" * 32]}
    return model, meta, save_checkpoint(tmp_path / "model.ckpt", model, meta)


def test_round_trip_is_bit_exact_and_keeps_metadata(saved):
    model, meta, path = saved
    loaded = load_checkpoint(path, task="digits", model="cnn")
    state = model.state_dict()
    assert set(loaded.state_dict) == set(state)
    for name, tensor in state.items():
        assert loaded.state_dict[name].dtype == tensor.dtype
        assert torch.equal(loaded.state_dict[name].view(torch.uint8), tensor.contiguous().view(torch.uint8))
    for key, value in meta.items():
        assert loaded.meta[key] == value
    assert {"cimcal_version", "format_version", "created"} <= set(loaded.meta)
    rebuilt = loaded.build_model()
    x = torch.rand(2, 1, 8, 8)
    assert torch.equal(rebuilt(x), model(x))


def test_no_pickle_in_the_file(saved):
    raw = saved[2].read_bytes()
    (header_len,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + header_len])
    assert "cimcal" in header["__metadata__"] and "checksum" in header["__metadata__"]
    assert b"\x80\x04" not in raw[:16]  # not a pickle / torch.save zip


def _flip_weight_byte(path):
    raw = bytearray(path.read_bytes())
    raw[-3] ^= 0x01
    path.write_bytes(bytes(raw))


def _edit_metadata(path):
    raw = path.read_bytes()
    (header_len,) = struct.unpack("<Q", raw[:8])
    header = raw[8 : 8 + header_len].replace(b'\\"seed\\":7', b'\\"seed\\":8')
    assert header != raw[8 : 8 + header_len]
    path.write_bytes(raw[:8] + header + raw[8 + header_len :])


@pytest.mark.parametrize("tamper", [_flip_weight_byte, _edit_metadata])
def test_tampered_checkpoint_is_refused(saved, tamper):
    path = saved[2]
    tamper(path)
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        load_checkpoint(path)


def test_garbage_and_missing_files_are_checkpoint_errors(tmp_path):
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="bad.ckpt"):
        load_checkpoint(bad)
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "missing.ckpt")


def test_mismatched_task_or_model_is_a_clear_error(saved):
    path = saved[2]
    with pytest.raises(CheckpointError, match="trained on task 'digits', not 'charlm'"):
        load_checkpoint(path, task="charlm")
    with pytest.raises(CheckpointError, match="holds model 'cnn', not 'mlp'"):
        load_checkpoint(path, model="mlp")


def test_weights_that_do_not_fit_name_the_first_offending_weight(saved, tmp_path):
    model, meta, _ = saved
    wider = save_checkpoint(tmp_path / "wider.ckpt", model, {**meta, "hparams": {"channels": [4, 8], "hidden": 32}})
    with pytest.raises(CheckpointError, match=r"wider.ckpt: weights do not fit model 'cnn': weight "
                                              r"'classifier.0.weight' has shape \(16, 128\), the model needs \(32, 128\)"):
        load_checkpoint(wider).build_model()
    mlp = save_checkpoint(tmp_path / "mlp.ckpt", model, {**meta, "model": "mlp", "hparams": {"hidden": [8]}})
    with pytest.raises(CheckpointError, match=r"mlp.ckpt: weights do not fit model 'mlp': missing weight 'net.1"):
        load_checkpoint(mlp).build_model()


def test_missing_metadata_keys_are_named_before_use(saved, tmp_path):
    from cimcal.deploy import deploy_checkpoint
    from cimcal.train.evaluate import evaluate_checkpoint

    model, meta, path = saved
    assert "split_seed" not in meta  # a checkpoint for your own data loads without it
    assert load_checkpoint(path).meta["task"] == "digits"
    with pytest.raises(CheckpointError, match=r"model.ckpt: checkpoint metadata lacks 'split_seed'"):
        evaluate_checkpoint(path, None)
    with pytest.raises(CheckpointError, match=r"model.ckpt: checkpoint metadata lacks 'split_seed'"):
        deploy_checkpoint(path, None, tester=object())
    no_hparams = save_checkpoint(tmp_path / "bare.ckpt", model, {k: v for k, v in meta.items() if k != "hparams"})
    with pytest.raises(CheckpointError, match=r"bare.ckpt: checkpoint metadata lacks 'hparams'"):
        load_checkpoint(no_hparams, require=("task", "model", "hparams"))
