"""One rank of the distributed test: DDP on gloo, AEES with noise arms, rank-specific batches.

Usage: python distributed_worker.py RANK WORLD_SIZE PORT OUTPUT
"""

from __future__ import annotations

import sys

import torch
import torch.distributed as dist
from aees_torch_helpers import loss_at, tiny_model, train

from pulseopt_torch import AEES

rank, world_size, port = (int(arg) for arg in sys.argv[1:4])
output_path = sys.argv[4]
dist.init_process_group(
    "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size
)
model = torch.nn.parallel.DistributedDataParallel(tiny_model())
optimizer = torch.optim.AdamW(model.parameters(), lr=2e-2)
# No seed: the seed drawn on rank 0 must reach every rank.
aees = AEES(
    optimizer, lr_candidates=[0.5, 1.0, 2.0], noise_candidates=[0.0, 0.02, 0.05], episode_length=4
)
# Each rank sees its own batches, so its local loss differs from the others'.
train(aees, model, range(24), lambda m, step: loss_at(m, step, rank))
aees.finalize()
torch.save(
    {"params": [p.detach() for p in model.parameters()], "logs": aees.get_logs()}, output_path
)
dist.destroy_process_group()
