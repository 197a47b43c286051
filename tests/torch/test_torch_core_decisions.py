"""pulseopt_torch decides exactly what the shared core decides from the same losses.

The optax adapter drives the same core functions (`core.init` with the seed,
then `core.record_step` once per step), so the same config, seed and loss
sequence give the same decisions in both adapters.
"""

from __future__ import annotations

import jax
import torch
from aees_torch_helpers import tiny_model, train

import pulseopt_core as core
from pulseopt_torch import AEES

KNOBS = {
    "lr_candidates": (0.5, 1.0, 2.0),
    "noise_candidates": (0.0, 0.01),
    "episode_length": 4,
    "context_mode": "trend",
    "seed": 11,
}


def test_decisions_equal_the_core_run_on_the_same_losses() -> None:
    model = tiny_model()
    aees = AEES(torch.optim.AdamW(model.parameters(), lr=2e-2), **KNOBS)  # type: ignore[arg-type]
    losses = train(aees, model, range(40))

    config = core.AEESConfig(**KNOBS)  # type: ignore[arg-type]
    record = jax.jit(core.record_step, static_argnums=0)
    with jax.enable_x64(True):
        state = core.init(config)
        for loss in losses:
            state = record(config, state, loss)
        expected = core.episode_logs(config, state)

    logs = aees.get_logs()
    for key in ("selected_lr_indices", "selected_noise_indices", "context_bucket_ids"):
        assert logs[key] == expected[key], key
    assert logs["episode_rewards"] == expected["episode_rewards"]
    assert len(set(logs["selected_combined_names"])) > 1
