"""Run by test_train_distributed.py under ``torchrun --nproc_per_node=2``: a tiny STE fleet run.

Each rank writes a JSON line with a digest of its trained weights, the chips it drew and the
output of the analog view on a fixed input (noise drawn from this rank's generators).
"""

from __future__ import annotations

import hashlib
import json
import sys

import numpy as np
import torch

from cimcal.train import distributed, load_task, train_model, build_model
from cimcal.train.loop import analog_view


def main(profile_paths: list[str], out_prefix: str) -> None:
    from cimcal.analog import AnalogConfig
    from cimcal.noise.profile import ChipProfile

    assert distributed.init_from_env()
    rank = distributed.rank()
    profiles = [ChipProfile.load(p) for p in profile_paths]
    task = load_task("digits", seed=0)
    torch.manual_seed(0)
    model = build_model("digits", "mlp", task.info, {"hidden": [16]})
    config = AnalogConfig(compile=False)
    result = train_model(model, task, profiles, method="ste", analog_config=config, epochs=1, batch_size=32,
                         seed=5, max_steps=8)
    weights = b"".join(p.detach().numpy().tobytes() for p in result.model.parameters())
    view = analog_view(result.model, profiles[0], config.replace(noise="lut"))
    view.train()
    with torch.no_grad():
        noisy = view(task.val.tensors[0][:8]).flatten().tolist()
    record = {"rank": rank, "world": distributed.world_size(), "weights": hashlib.sha256(weights).hexdigest(),
              "chips": result.chips, "noisy": noisy, "finite": bool(np.isfinite(noisy).all())}
    with open(f"{out_prefix}.{rank}.json", "w") as handle:
        json.dump(record, handle)
    distributed.shutdown()


if __name__ == "__main__":
    main(sys.argv[1:-1], sys.argv[-1])
