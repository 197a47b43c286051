"""A jitted train step that donates params and optimizer state runs with every setting."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax
import pytest

import pulseopt_optax

SETTINGS = {
    "defaults": {},
    "noise_arms": {"noise_candidates": (0.0, 0.01)},
    "robust": {"preset": "robust"},
    "robust_restore_best": {"preset": "robust", "restore_best": True},
}


@pytest.mark.parametrize("name", SETTINGS)
def test_a_donated_train_step_runs_across_episodes(name: str) -> None:
    tx = pulseopt_optax.aees(optax.adamw(1e-2), episode_length=3, seed=0, **SETTINGS[name])
    params = {"w": jnp.ones((4, 4)), "b": jnp.zeros(4)}
    state = tx.init(params)
    leaves = jax.tree.leaves((params, state))
    assert len({id(leaf) for leaf in leaves}) == len(leaves), "init shares an array between leaves"

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(params, state, eval_value):
        loss, grads = jax.value_and_grad(lambda p: jnp.sum(p["w"] ** 2) + jnp.sum(p["b"]))(params)
        updates, state = tx.update(grads, state, params, value=loss, eval_value=eval_value)
        return optax.apply_updates(params, updates), state

    for t in range(10):
        params, state = step(params, state, jnp.float32(1.0 / (t + 1) if t % 4 == 0 else jnp.nan))
    assert int(optax.tree.get(state, "global_step")) == 10
