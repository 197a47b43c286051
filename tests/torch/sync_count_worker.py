"""One rank of the distributed host-sync count: DDP on gloo, per-step counts of what blocks.

For each configuration, after a first episode, every step counts the calls
that make the host wait: ``aten._local_scalar_dense`` (``.item()``,
``float()``), the wrapper's reads of its device buffer (`StepRecords.read`)
and blocking collectives issued from Python (``all_reduce``/``broadcast``
without ``async_op=True``; DDP's own gradient all-reduce is the model's, not
the wrapper's, and runs in C++).

Usage: python sync_count_worker.py RANK WORLD_SIZE PORT OUTPUT
"""

from __future__ import annotations

import sys
from typing import Any

import torch
import torch.distributed as dist
from aees_torch_helpers import ScalarReads, loss_at, tiny_model

from pulseopt_torch import AEES
from pulseopt_torch._step_records import StepRecords

EPISODE_LENGTH = 5
STEPS = 20
CONFIGURATIONS: dict[str, dict[str, Any]] = {
    "default": {},
    "robust": {"preset": "robust"},
}

counts = {"scalar": 0, "buffer": 0, "collective": 0}


def _counted(function: Any, key: str, *, blocking_only: bool) -> Any:
    def counted(*args: Any, **kwargs: Any) -> Any:
        if not (blocking_only and kwargs.get("async_op", False)):
            counts[key] += 1
        return function(*args, **kwargs)

    return counted


def main() -> None:
    rank, world_size, port = (int(arg) for arg in sys.argv[1:4])
    output_path = sys.argv[4]
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size
    )
    StepRecords.read = _counted(StepRecords.read, "buffer", blocking_only=False)  # type: ignore[method-assign]
    dist.all_reduce = _counted(dist.all_reduce, "collective", blocking_only=True)
    dist.broadcast = _counted(dist.broadcast, "collective", blocking_only=True)

    results = {}
    for name, knobs in CONFIGURATIONS.items():
        model = torch.nn.parallel.DistributedDataParallel(tiny_model())
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)
        aees = AEES(
            optimizer, lr_candidates=[0.5, 1.0, 2.0], episode_length=EPISODE_LENGTH, **knobs
        )
        per_step = []
        for step in range(EPISODE_LENGTH + STEPS):
            before = dict(counts)
            with ScalarReads() as scalars:
                aees.step_start(step)
                optimizer.zero_grad()
                loss = loss_at(model, step, rank)
                loss.backward()
                aees.step_end(loss)
            counts["scalar"] += scalars.count
            if step >= EPISODE_LENGTH:
                per_step.append({key: counts[key] - before[key] for key in counts})
        results[name] = per_step
    torch.save(results, output_path)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
