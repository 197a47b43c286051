"""Subprocess half of the checkpoint test: load a checkpoint in a fresh process, continue.

Usage: python resume_worker.py CHECKPOINT FIRST_STEP LAST_STEP OUTPUT
"""

from __future__ import annotations

import sys

import torch
from aees_torch_helpers import checkpointed_training, tiny_model, train

checkpoint_path, first_step, last_step, output_path = sys.argv[1:]
# A different init proves that everything comes from the checkpoint.
model = tiny_model(seed=123)
aees, scheduler = checkpointed_training(model)
checkpoint = torch.load(checkpoint_path, weights_only=True)
model.load_state_dict(checkpoint["model"])
aees.optimizer.load_state_dict(checkpoint["optimizer"])
scheduler.load_state_dict(checkpoint["scheduler"])
aees.load_state_dict(checkpoint["aees"])
train(aees, model, range(int(first_step), int(last_step)))
aees.finalize()
torch.save(
    {"params": [p.detach() for p in model.parameters()], "logs": aees.get_logs()}, output_path
)
