"""DistributedDataParallel under torchrun (gloo, 2 CPU processes): same weights, own noise per rank."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


def _torchrun(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parent)}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=0",
               "--rdzv_backend=c10d", "--rdzv_endpoint=127.0.0.1:0", *args]
    return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow  # 37 s measured on the shared 2-core machine (two interpreters importing torch)
def test_ddp_ranks_share_weights_but_draw_their_own_noise(fleet_profiles, tmp_path):
    paths = [str(p.save(tmp_path / f"chip{i}.cimprof")) for i, p in enumerate(fleet_profiles)]
    worker = str(Path(__file__).with_name("ddp_worker.py"))
    done = _torchrun([worker, *paths, str(tmp_path / "out")], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"out.{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2]
    assert ranks[0]["weights"] == ranks[1]["weights"]  # DDP kept the replicas identical
    assert ranks[0]["chips"] != ranks[1]["chips"]  # each rank samples its own chips ...
    assert ranks[0]["noisy"] != ranks[1]["noisy"]  # ... and its own noise
    assert ranks[0]["finite"] and ranks[1]["finite"]


@pytest.mark.slow
def test_cli_train_under_torchrun(chip_profile_path, tmp_path):
    out = tmp_path / "ddp.ckpt"
    done = _torchrun(["-m", "cimcal", "train", "--task", "digits", "--profile", str(chip_profile_path),
                      "--method", "ste", "--max-steps", "6", "--hparam", "hidden=[16]", "--no-compile", "-o", str(out)], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    from cimcal.train import load_checkpoint

    assert load_checkpoint(out).meta["train"]["world_size"] == 2
