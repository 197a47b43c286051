"""pulseopt_torch and pulseopt_optax take the same decisions from the same losses.

Both adapters run the same core functions with the same key derivation, so the
same config, seed and loss sequence give the same arms, buckets and rewards.
The torch adapter keeps its statistics in float64; the optax run here uses
JAX's x64 mode too, so that rewards compare exactly (the same decisions in
optax's default float32 are tested in tests/optax/test_optax_default_precision.py).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
import torch
from aees_torch_helpers import tiny_model, train

import pulseopt_optax
from pulseopt_torch import AEES

KNOBS = {
    "lr_candidates": (0.5, 1.0, 2.0),
    "noise_candidates": (0.0, 0.01),
    "episode_length": 4,
    "context_mode": "trend",
    "seed": 11,
}


def _optax_logs(losses: list[float]) -> dict:
    tx = pulseopt_optax.aees(optax.sgd(0.1), **KNOBS)  # type: ignore[arg-type]
    with jax.enable_x64(True):
        params = jnp.zeros(3)
        state = tx.init(params)
        update = jax.jit(lambda state, loss: tx.update(jnp.ones(3), state, params, value=loss)[1])
        for loss in losses:
            state = update(state, jnp.asarray(loss))
        return pulseopt_optax.get_logs(state)


def test_torch_and_optax_take_the_same_decisions_on_the_same_losses() -> None:
    model = tiny_model()
    aees = AEES(torch.optim.AdamW(model.parameters(), lr=2e-2), **KNOBS)  # type: ignore[arg-type]
    losses = train(aees, model, range(40))

    expected = _optax_logs(losses)
    logs = aees.get_logs()
    for key in ("selected_lr_indices", "selected_noise_indices", "context_bucket_ids"):
        assert logs[key] == expected[key], key
    assert logs["episode_rewards"] == expected["episode_rewards"]
    assert len(set(logs["selected_combined_names"])) > 1
