"""Where `aees` may sit with the spike guard on, and what the guard's snapshot may touch.

Rollback returns the updates that carry the parameters back onto the
snapshot, so nothing may change `aees`'s updates on their way to the
parameters. Where something does, the first update after a snapshot records
it: the guard stops rolling back, and `get_logs`, `finalize` and the next
un-jitted update raise.
A skipped step leaves the snapshot alone, and the snapshot hides its copy of
the inner state from `optax.tree.get`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import pulseopt_optax
from pulseopt_optax import aees

START = jnp.full((3,), 2.0, jnp.float32)


def _loss(params: jax.Array) -> jax.Array:
    return jnp.sum((params - 0.5) ** 2) + 0.1


def _robust(inner: optax.GradientTransformation, **knobs: object) -> optax.GradientTransformation:
    return aees(inner, preset="robust", episode_length=5, seed=0, **knobs)  # type: ignore[arg-type]


def _run(tx: optax.GradientTransformation, steps: int, nan_at: int | None = None):
    """Train on `_loss`; the loss handed to `aees` is NaN at step ``nan_at``.

    Returns the parameters and states before every step, and the final ones.
    """

    @jax.jit
    def step(params, state, scale):
        value, grads = jax.value_and_grad(_loss)(params)
        updates, state = tx.update(grads, state, params, value=value * scale)
        return optax.apply_updates(params, updates), state

    params, state = START, tx.init(START)
    history = []
    for index in range(steps):
        history.append((params, state))
        scale = jnp.float32(jnp.nan if index == nan_at else 1.0)
        params, state = step(params, state, scale)
    return history, (params, state)


def _comparable(leaf: jax.Array) -> jax.Array:
    return jax.random.key_data(leaf) if jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key) else leaf


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: _robust(optax.adam(0.1)), id="alone"),
        pytest.param(
            lambda: optax.chain(optax.clip_by_global_norm(1.0), _robust(optax.adam(0.1))),
            id="last-in-a-chain",
        ),
        pytest.param(lambda: optax.MultiSteps(_robust(optax.adam(0.1)), 1), id="in-multisteps"),
        pytest.param(
            lambda: optax.inject_hyperparams(
                functools.partial(aees, optax.adam(0.1)),
                static_args=pulseopt_optax.STRUCTURAL_KNOBS,
            )(preset="robust", episode_length=5, seed=0),
            id="in-inject-hyperparams",
        ),
    ],
)
def test_rollback_lands_on_the_snapshot_where_aees_may_sit(make) -> None:
    history, (_, state) = _run(make(), 14, nan_at=12)
    assert int(optax.tree.get(state, "total_rollbacks")) == 1
    saved = pulseopt_optax.find_aees_state(history[12][1]).aees_snapshot.snapshot_params
    assert any(bool(jnp.all(saved == before)) for before, _ in history[1:12])
    np.testing.assert_allclose(history[13][0], saved, rtol=1e-6)


def _refused(state: optax.OptState) -> None:
    with pytest.raises(ValueError, match="must be the last transformation"):
        pulseopt_optax.get_logs(state)
    with pytest.raises(ValueError, match="must be the last transformation"):
        pulseopt_optax.finalize(state)


def test_something_after_aees_in_a_chain_is_reported_after_the_second_update() -> None:
    tx = optax.chain(_robust(optax.scale_by_adam()), optax.scale_by_learning_rate(0.1))
    history, (_, state) = _run(tx, 2)
    pulseopt_optax.get_logs(history[1][1])  # the first update is not checked yet
    _refused(state)
    # Un-jitted, the next update raises.
    value, grads = jax.value_and_grad(_loss)(START)
    with pytest.raises(ValueError, match="must be the last transformation"):
        tx.update(grads, state, START, value=value)


def test_a_wrapper_that_rewrites_the_updates_is_reported_and_never_rolls_back() -> None:
    tx = optax.contrib.schedule_free(_robust(optax.sgd(0.1)), learning_rate=0.1)
    _, (_, state) = _run(tx, 14, nan_at=12)
    _refused(state)
    assert int(optax.tree.get(state, "total_rollbacks")) == 0


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16, jnp.float32])
def test_the_placement_check_allows_rounding_in_low_precision(dtype) -> None:
    """Tiny updates on large parameters round away; that is not a misplaced aees."""
    tx = _robust(optax.adam(1e-4))
    params = jnp.full((64,), 300.0, dtype)
    state = tx.init(params)

    @jax.jit
    def step(params, state, step_index):
        value, grads = jax.value_and_grad(lambda p: jnp.sum(p.astype(jnp.float32) ** 2))(params)
        value = jnp.where(step_index == 17, jnp.nan, value)
        updates, state = tx.update(grads, state, params, value=value)
        return optax.apply_updates(params, updates), state

    for index in range(25):
        params, state = step(params, state, index)
    jax.block_until_ready(params)
    assert int(optax.tree.get(state, "total_rollbacks")) == 1


def test_a_skipped_step_at_an_episode_boundary_changes_only_skipped_steps() -> None:
    tx = aees(optax.sgd(1e-3), episode_length=5, seed=0, preset="robust")
    update = jax.jit(lambda g, s, p: tx.update(g, s, p, value=jnp.float32(1.0)))
    params = jnp.zeros(3)
    state = tx.init(params)
    for index in range(11):
        before = state
        grads = jnp.full(3, jnp.nan) if index == 9 else jnp.ones(3)
        updates, state = update(grads, state, params)
        params = optax.apply_updates(params, updates)
        if index == 9:
            assert int(optax.tree.get(state, "skipped_steps")) == 1
            unskipped = state._replace(
                aees_core_state=state.aees_core_state._replace(
                    skipped_steps=before.aees_core_state.skipped_steps
                )
            )
            jax.tree.map(
                lambda a, b: np.testing.assert_array_equal(_comparable(a), _comparable(b)),
                unskipped,
                before,
            )
    # Every step moved the parameters the same way: a straight path, so growth doubled
    # the scale at both boundaries (steps 4 and 10).
    assert float(optax.tree.get(state, "straightness")) == pytest.approx(1.0, rel=1e-5)
    assert float(optax.tree.get(state, "lr_scale")) == 4.0


def test_the_snapshot_does_not_shadow_the_inner_states_fields() -> None:
    inner = optax.inject_hyperparams(optax.adam)(learning_rate=1e-2)
    state = aees(inner, preset="robust", seed=0).init(jnp.zeros(2))
    assert float(optax.tree.get(state, "learning_rate")) == pytest.approx(1e-2)
    np.testing.assert_array_equal(optax.tree.get(state, "mu"), jnp.zeros(2))


def test_injected_knob_names_are_found_once() -> None:
    tx = optax.inject_hyperparams(
        functools.partial(aees, optax.sgd(0.1)), static_args=pulseopt_optax.STRUCTURAL_KNOBS
    )(episode_length=7, preset="robust", seed=0)
    state = tx.init(jnp.zeros(2))
    assert int(optax.tree.get(state, "episode_length")) == 7
