"""One rank of the FSDP2 test: a sharded MLP trained with AEES in three configurations.

Usage: python fsdp_worker.py RANK WORLD_SIZE PORT OUTPUT

Every Linear and the model are wrapped with ``fully_shard`` (gloo, CPU), so
every parameter, gradient and AdamW state tensor is a DTensor sharded over the
two ranks (unevenly: the last layer's one row lives on rank 0). Each rank sees
its own batches. Saves, per configuration, the logs, the losses AEES recorded
(averaged over ranks, as it does), the guard's rollbacks and whether every
local shard equals the snapshot right after the rollback.
"""

from __future__ import annotations

import math
import sys
from typing import Any

import torch
import torch.distributed as dist
from aees_torch_helpers import loss_at, tiny_model
from torch.distributed.fsdp import fully_shard

from pulseopt_torch import AEES

CONFIGURATIONS: dict[str, dict[str, Any]] = {
    "lr_only": {"lr_candidates": [0.5, 1.0, 2.0], "noise_candidates": [0.0]},
    "noise": {"lr_candidates": [0.5, 1.0, 2.0], "noise_candidates": [0.0, 0.02, 0.05]},
    "robust": {"lr_candidates": [0.5, 1.0, 2.0], "preset": "robust", "guard_warmup_steps": 4},
}
EPISODE_LENGTH = 4
STEPS = 24
# The robust run gets a NaN loss here, after its first snapshot: a spike that rolls back.
SPIKE_STEP = 14


def _sharded_model() -> torch.nn.Module:
    model = tiny_model()
    for layer in model:
        if isinstance(layer, torch.nn.Linear):
            fully_shard(layer)
    fully_shard(model)
    return model


def _run(rank: int, world_size: int, knobs: dict[str, Any], spike: bool) -> dict[str, Any]:
    model = _sharded_model()
    aees = AEES(
        torch.optim.AdamW(model.parameters(), lr=2e-2),
        episode_length=EPISODE_LENGTH,
        seed=7,
        **knobs,
    )
    recorded = []
    shards_equal_snapshot = None
    for step in range(STEPS):
        aees.step_start(step)
        aees.optimizer.zero_grad()
        loss = loss_at(model, step, rank)
        if spike and step == SPIKE_STEP:
            loss = loss * math.nan
        loss.backward()
        mean = loss.detach().double().clone()
        dist.all_reduce(mean)
        recorded.append(float(mean) / world_size)
        aees.step_end(loss)
        if spike and step == SPIKE_STEP:
            snapshot = aees._snapshot
            assert snapshot is not None
            shards_equal_snapshot = all(
                torch.equal(param.to_local(), saved)
                for param, saved in zip(snapshot.params, snapshot.saved_params, strict=True)
            )
    aees.finalize()
    state = aees.core_state
    return {
        "logs": aees.get_logs(),
        "losses": recorded,
        "rollbacks": int(state.guard.total_rollbacks),
        "shards_equal_snapshot": shards_equal_snapshot,
        "local_shapes": [tuple(p.to_local().shape) for p in model.parameters()],
    }


def main() -> None:
    rank, world_size, port = (int(arg) for arg in sys.argv[1:4])
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size
    )
    results = {
        name: _run(rank, world_size, knobs, spike=name == "robust")
        for name, knobs in CONFIGURATIONS.items()
    }
    torch.save(results, sys.argv[4])
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
