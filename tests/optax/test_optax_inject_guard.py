"""`optax.inject_hyperparams(aees)` with the spike guard: under jit, lax.scan and MultiSteps."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import pulseopt_optax
from pulseopt_optax import aees

KNOBS = {"episode_length": 3, "seed": 0, "preset": "robust"}
STEPS = 12
SPIKE = 8


def _injected() -> optax.GradientTransformation:
    return optax.inject_hyperparams(aees, static_args=pulseopt_optax.STRUCTURAL_KNOBS)(
        optax.adam(1e-2), **KNOBS
    )


def _loss(params: jax.Array) -> jax.Array:
    return jnp.sum((params - 1.0) ** 2) + 0.1


def _step(tx: optax.GradientTransformation, params, state, index):
    value, grads = jax.value_and_grad(_loss)(params)
    value = jnp.where(index == SPIKE, jnp.nan, value)  # one rollback
    updates, state = tx.update(grads, state, params, value=value)
    return optax.apply_updates(params, updates), state


def _reference() -> jax.Array:
    """The plain transformation, one jitted step at a time."""
    tx = aees(optax.adam(1e-2), **KNOBS)  # type: ignore[arg-type]
    params = jnp.zeros(2)
    state = tx.init(params)
    step = jax.jit(functools.partial(_step, tx))
    for index in range(STEPS):
        params, state = step(params, state, index)
    assert int(optax.tree.get(state, "total_rollbacks")) == 1
    return params


def test_under_jit() -> None:
    tx = _injected()
    params = jnp.zeros(2)
    state = jax.jit(tx.init)(params)
    step = jax.jit(functools.partial(_step, tx))
    for index in range(STEPS):
        params, state = step(params, state, index)
    assert int(optax.tree.get(state, "total_rollbacks")) == 1
    np.testing.assert_allclose(params, _reference(), rtol=1e-6)


def test_under_scan() -> None:
    tx = _injected()

    def body(carry, index):
        return _step(tx, *carry, index), None

    params = jnp.zeros(2)
    (params, state), _ = jax.jit(lambda p: jax.lax.scan(body, (p, tx.init(p)), jnp.arange(STEPS)))(
        params
    )
    assert int(optax.tree.get(state, "total_rollbacks")) == 1
    np.testing.assert_allclose(params, _reference(), rtol=1e-6)


def test_under_multisteps() -> None:
    tx = optax.MultiSteps(_injected(), every_k_schedule=2)
    params = jnp.zeros(2)
    state = tx.init(params)
    step = jax.jit(functools.partial(_step, tx))
    for index in range(2 * STEPS):
        params, state = step(params, state, index)
    assert int(optax.tree.get(state, "episodes_closed")) >= 2
    assert bool(jnp.all(jnp.isfinite(params)))


@pytest.mark.parametrize("length", [2, 4])
def test_an_injected_episode_length_takes_effect_with_the_guard(length: int) -> None:
    tx = _injected()
    params = jnp.zeros(2)
    state = tx.init(params)
    state.hyperparams["episode_length"] = jnp.asarray(length)
    step = jax.jit(lambda p, s: _step(tx, p, s, -1))
    for _ in range(8):
        params, state = step(params, state)
    assert int(optax.tree.get(state, "episodes_closed")) == 8 // length
