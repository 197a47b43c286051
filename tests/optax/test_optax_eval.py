"""Handing `aees` a held-out loss: eval-aware scale control and the best parameters."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import pulseopt_optax

EPISODE = 5


def _train(tx: optax.GradientTransformationExtraArgs, evals: dict[int, float], steps: int):
    """SGD-like steps on a 1-D straight path; ``evals`` maps a step to its eval loss."""
    params = jnp.zeros(2)
    state = tx.init(params)
    history = []

    @jax.jit
    def step(params, state, eval_value):
        updates, state = tx.update(jnp.ones(2), state, params, value=1.0, eval_value=eval_value)
        return optax.apply_updates(params, updates), state

    for t in range(steps):
        history.append(params)
        params, state = step(params, state, jnp.float32(evals.get(t, jnp.nan)))
    return params, state, history


def test_eval_value_reaches_the_core_and_nan_means_no_eval() -> None:
    tx = pulseopt_optax.aees(optax.sgd(0.1), episode_length=EPISODE, seed=0, preset="robust")
    _, state, _ = _train(tx, {3: 2.0, 8: 1.5}, 12)
    guard = pulseopt_optax.find_aees_state(state).aees_core_state.guard
    assert int(guard.eval_count) == 2
    assert float(guard.eval_best_loss) == 1.5


def test_a_rising_eval_loss_cuts_the_multiplier() -> None:
    tx = pulseopt_optax.aees(optax.sgd(0.1), episode_length=EPISODE, seed=0, preset="robust")
    evals = {EPISODE * k + 1: 1.0 + 0.1 * k for k in range(6)}
    _, state, _ = _train(tx, evals, 6 * EPISODE)
    core_state = pulseopt_optax.find_aees_state(state).aees_core_state
    assert int(core_state.guard.eval_cuts) >= 2
    assert float(pulseopt_optax.current_candidate(state).lr_multiplier) < 1.0


def test_restore_best_returns_the_parameters_of_the_best_eval_exactly() -> None:
    tx = pulseopt_optax.aees(
        optax.sgd(0.1), episode_length=EPISODE, seed=0, preset="robust", restore_best=True
    )
    evals = {2: 3.0, 6: 1.0, 9: 2.0, 13: 1.5}
    params, state, history = _train(tx, evals, 16)
    best = pulseopt_optax.best_params(state, params)
    np.testing.assert_array_equal(best, history[6])
    assert not np.array_equal(best, params)


def test_best_params_keep_the_current_ones_when_their_own_eval_is_better() -> None:
    tx = pulseopt_optax.aees(optax.sgd(0.1), seed=0, restore_best=True)
    params, state, history = _train(tx, {2: 3.0, 6: 1.0}, 10)
    np.testing.assert_array_equal(pulseopt_optax.best_params(state, params, eval_value=0.5), params)
    np.testing.assert_array_equal(
        pulseopt_optax.best_params(state, params, eval_value=1.5), history[6]
    )


def test_best_params_before_any_eval_are_the_current_ones() -> None:
    tx = pulseopt_optax.aees(optax.sgd(0.1), seed=0, restore_best=True)
    params, state, _ = _train(tx, {}, 3)
    np.testing.assert_array_equal(pulseopt_optax.best_params(state, params), params)


def test_best_params_needs_restore_best() -> None:
    tx = pulseopt_optax.aees(optax.sgd(0.1), seed=0)
    params = jnp.zeros(2)
    with pytest.raises(ValueError, match="restore_best=True"):
        pulseopt_optax.best_params(tx.init(params), params)


def test_restore_best_keeps_one_copy_of_the_parameters() -> None:
    params = {"w": jnp.zeros((4, 3)), "b": jnp.zeros(3)}
    plain = pulseopt_optax.aees(optax.sgd(0.1), seed=0).init(params)
    keeping = pulseopt_optax.aees(optax.sgd(0.1), seed=0, restore_best=True).init(params)

    def size(tree: object) -> int:
        return sum(leaf.size for leaf in jax.tree.leaves(tree))

    assert size(keeping) - size(plain) == size(params)
