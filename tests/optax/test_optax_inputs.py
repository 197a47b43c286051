"""Inputs a user may reasonably pass: array candidates, raw keys, a one-element loss, complex params."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import pulseopt_optax
from pulseopt_optax import aees


def test_a_one_element_value_is_the_loss() -> None:
    tx = aees(optax.sgd(0.1), episode_length=1, seed=0)
    params = jnp.zeros(2)
    updates, state = jax.jit(tx.update)(
        jnp.ones(2), tx.init(params), params, value=jnp.array([3.0])
    )
    np.testing.assert_allclose(updates, -0.1 * jnp.ones(2))
    assert pulseopt_optax.get_logs(state)["episode_start_losses"] == [3.0]


def test_a_value_with_several_elements_is_refused_naming_value() -> None:
    tx = aees(optax.sgd(0.1), seed=0)
    params = jnp.zeros(2)
    with pytest.raises(ValueError, match=r"value must be the loss.*shape \(2,\)"):
        tx.update(jnp.ones(2), tx.init(params), params, value=jnp.array([3.0, 4.0]))


def test_candidates_may_be_numpy_or_jax_arrays() -> None:
    geometric = aees(optax.sgd(0.1), lr_candidates=np.geomspace(0.5, 2, 3), seed=0)
    listed = aees(optax.sgd(0.1), lr_candidates=(0.5, 1.0, 2.0), seed=0)
    params = jnp.zeros(2)
    assert geometric.init(params).aees_structure == listed.init(params).aees_structure
    noisy = aees(optax.sgd(0.1), noise_candidates=jnp.array([0.0, 0.01]), seed=0)
    assert noisy.init(params).aees_structure.noise_candidates == (0.0, pytest.approx(0.01))
    scalars = aees(optax.sgd(0.1), lr_candidates=[np.float32(0.5), jnp.float32(2.0)], seed=0)
    assert scalars.init(params).aees_structure.lr_candidates == (0.5, 2.0)


def test_a_two_dimensional_candidate_array_is_refused_naming_the_knob() -> None:
    with pytest.raises(ValueError, match=r"lr_candidates must be a sequence.*\(1, 3\)"):
        aees(optax.sgd(0.1), lr_candidates=np.ones((1, 3)))


def test_a_raw_prng_key_is_a_seed() -> None:
    params = jnp.zeros(2)
    raw = aees(optax.sgd(0.1), seed=jax.random.PRNGKey(3)).init(params)
    typed = aees(optax.sgd(0.1), seed=jax.random.key(3)).init(params)
    np.testing.assert_array_equal(
        jax.random.key_data(raw.aees_core_state.rng_key),
        jax.random.key_data(typed.aees_core_state.rng_key),
    )


def test_a_float_array_seed_is_refused_naming_seed() -> None:
    with pytest.raises(ValueError, match="seed must be"):
        aees(optax.sgd(0.1), seed=np.zeros(2, np.float32)).init(jnp.zeros(2))


def test_finalize_closes_every_member_of_a_vmapped_state() -> None:
    tx = aees(optax.sgd(0.1), lr_candidates=(0.5, 2.0), episode_length=10, seed=0)
    params = jnp.zeros((3, 2))
    losses = jnp.asarray([[3.0, 2.0], [5.0, 1.0], [4.0, 4.0]])

    def run(params, losses):
        state = tx.init(params)
        for index in range(2):
            state = tx.update(jnp.ones(2), state, params, value=losses[index])[1]
        return state

    states = jax.vmap(run)(params, losses)
    closed = pulseopt_optax.finalize(states)
    for member in range(3):
        alone = pulseopt_optax.finalize(run(params[member], losses[member]))
        logs = pulseopt_optax.get_logs(jax.tree.map(lambda leaf, m=member: leaf[m], closed))
        assert logs == pulseopt_optax.get_logs(alone)
        assert logs["episode_end_losses"] == [float(losses[member, 1])]


def test_the_update_norm_of_complex_parameters_uses_their_moduli() -> None:
    tx = aees(optax.sgd(1.0), episode_length=1, seed=0)
    params = jnp.zeros(4, jnp.complex64)
    _, state = tx.update(jnp.full(4, 1j, jnp.complex64), tx.init(params), params, value=1.0)
    assert pulseopt_optax.get_logs(state)["mean_update_norms"] == [pytest.approx(2.0)]


@pytest.mark.parametrize("shape", [(256, 256), (8, 64, 48), (40000,), (300, 3)])
def test_the_logged_update_norm_is_the_norm_of_the_returned_updates(shape) -> None:
    # Large leaves of two axes or more are reduced by a matrix-vector product,
    # the others by a plain sum: both give the update's L2 norm.
    tx = aees(optax.sgd(1.0), episode_length=1, seed=0)
    params = {"w": jnp.zeros(shape), "b": jnp.zeros(5)}
    grads = {
        "w": jax.random.normal(jax.random.key(0), shape),
        "b": jnp.arange(5.0),
    }
    step = jax.jit(lambda g, s: tx.update(g, s, params, value=1.0))
    updates, state = step(grads, tx.init(params))
    expected = float(optax.global_norm(updates))
    logged = pulseopt_optax.get_logs(state)["mean_update_norms"]
    assert logged == [pytest.approx(expected, rel=1e-5)]
