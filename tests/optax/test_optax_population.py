"""A vmapped population: one jit trains members with their own keys and inner LRs."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

import pulseopt_optax

SEEDS = tuple(range(8))
LEARNING_RATES = (1e-3, 3e-3, 1e-2, 3e-2, 1e-3, 3e-3, 1e-2, 3e-2)
KNOBS = {"lr_candidates": (0.5, 1.0, 2.0), "noise_candidates": (0.0, 0.01), "episode_length": 5}
TARGET = jnp.array([1.0, -2.0, 3.0])


def _loss(params):
    return jnp.sum((params - TARGET) ** 2) + 0.1


def _inner(learning_rate):
    return optax.inject_hyperparams(optax.adam)(learning_rate=learning_rate)


def _train_step(tx, params, state):
    value, grads = jax.value_and_grad(_loss)(params)
    updates, state = tx.update(grads, state, params, value=value)
    return optax.apply_updates(params, updates), state


def _run(tx, params, state, steps=60):
    def body(carry, _):
        return _train_step(tx, *carry), None

    return jax.lax.scan(body, (params, state), length=steps)[0]


def test_a_vmapped_population_equals_separate_runs():
    params = jnp.zeros(3)
    tx = pulseopt_optax.aees(_inner(1e-3), **KNOBS)

    def init_member(key, learning_rate):
        # A traced key as seed gives each member its own decisions and noise.
        member = pulseopt_optax.aees(_inner(learning_rate), seed=key, **KNOBS)
        return member.init(params)

    keys = jax.vmap(jax.random.key)(jnp.asarray(SEEDS))
    states = jax.vmap(init_member)(keys, jnp.asarray(LEARNING_RATES))
    batched_params = jnp.broadcast_to(params, (len(SEEDS), 3))
    population = jax.jit(jax.vmap(lambda p, s: _run(tx, p, s)))(batched_params, states)

    for member, (seed, learning_rate) in enumerate(zip(SEEDS, LEARNING_RATES, strict=True)):
        alone = pulseopt_optax.aees(_inner(learning_rate), seed=seed, **KNOBS)
        params_alone, state_alone = jax.jit(lambda p, s, tx=alone: _run(tx, p, s))(
            params, alone.init(params)
        )
        mine = jax.tree.map(lambda x, i=member: x[i], population)
        np.testing.assert_allclose(mine[0], params_alone, rtol=1e-5, atol=1e-6)
        got, want = pulseopt_optax.get_logs(mine[1]), pulseopt_optax.get_logs(state_alone)
        assert got["selected_combined_names"] == want["selected_combined_names"]
        np.testing.assert_allclose(
            got["episode_rewards"], want["episode_rewards"], rtol=1e-4, atol=1e-6
        )

    names = {
        tuple(
            pulseopt_optax.get_logs(jax.tree.map(lambda x, i=i: x[i], population[1]))[
                "selected_combined_names"
            ]
        )
        for i in range(len(SEEDS))
    }
    assert len(names) > 1
