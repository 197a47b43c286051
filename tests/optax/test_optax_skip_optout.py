"""``skip_nonfinite_grads=False``: no gradient check, the same steps when everything is finite."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import pulseopt_optax
from pulseopt_optax import aees

PARAMS = {"w": jnp.linspace(-1.0, 1.0, 6).reshape(2, 3), "b": jnp.ones(3)}


def _loss(params: dict) -> jax.Array:
    return jnp.sum((params["w"] - 0.3) ** 2) + jnp.sum(params["b"] ** 2)


def _run(tx: optax.GradientTransformation, steps: int, nan_value_at: int = -1):
    @jax.jit
    def step(params, state, index):
        value, grads = jax.value_and_grad(_loss)(params)
        value = jnp.where(index == nan_value_at, jnp.nan, value)
        updates, state = tx.update(grads, state, params, value=value)
        return optax.apply_updates(params, updates), state

    params, state = PARAMS, tx.init(PARAMS)
    for index in range(steps):
        params, state = step(params, state, index)
    return params, state


@pytest.mark.parametrize(
    "inner",
    [
        pytest.param(optax.adamw(0.05), id="adamw"),
        pytest.param(optax.chain(optax.add_noise(0.01, 0.0, 0), optax.sgd(0.05)), id="keyed"),
    ],
)
@pytest.mark.parametrize("preset", [None, "robust"])
def test_finite_runs_match_the_checked_default(inner, preset) -> None:
    """With the guard, a NaN value rolls back in both; without, the runs stay finite."""
    knobs = {"lr_candidates": (0.5, 1.0, 2.0), "episode_length": 4, "seed": 0, "preset": preset}
    nan_at = 9 if preset else -1
    checked = _run(aees(inner, **knobs), 20, nan_value_at=nan_at)
    trusting = _run(aees(inner, skip_nonfinite_grads=False, **knobs), 20, nan_value_at=nan_at)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), checked[0], trusting[0])
    # Fused differently, the arithmetic may round differently: the same decisions.
    logs, other = pulseopt_optax.get_logs(checked[1]), pulseopt_optax.get_logs(trusting[1])
    for key in ("selected_lr_indices", "selected_noise_indices"):
        assert logs[key] == other[key]
    np.testing.assert_allclose(logs["episode_end_losses"], other["episode_end_losses"], rtol=1e-5)
    assert int(optax.tree.get(trusting[1], "global_step")) == int(
        optax.tree.get(checked[1], "global_step")
    )


def test_a_nan_value_is_only_left_out_of_the_statistics() -> None:
    """Without the guard the step is taken as plain optax would; AEES records nothing."""
    tx = aees(optax.adam(0.1), skip_nonfinite_grads=False, seed=0)
    state = tx.init(PARAMS)
    grads = jax.grad(_loss)(PARAMS)
    updates, after = jax.jit(tx.update)(grads, state, PARAMS, value=jnp.float32(jnp.nan))
    plain, _ = optax.adam(0.1).update(grads, optax.adam(0.1).init(PARAMS), PARAMS)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), updates, plain)
    assert int(optax.tree.get(after, "skipped_steps")) == 1
    assert int(optax.tree.get(after, "global_step")) == 0


def test_non_finite_gradients_pass_through_as_in_plain_optax() -> None:
    """What the opt-out gives up: the step is taken; the core still records nothing."""
    tx = aees(optax.sgd(0.1), skip_nonfinite_grads=False, seed=0)
    state = tx.init(PARAMS)
    grads = jax.tree.map(lambda g: g.at[0].set(jnp.nan), jax.grad(_loss)(PARAMS))
    updates, after = jax.jit(tx.update)(grads, state, PARAMS, value=jnp.float32(1.0))
    assert not all(bool(jnp.all(jnp.isfinite(u))) for u in jax.tree.leaves(updates))
    assert int(optax.tree.get(after, "skipped_steps")) == 1


def test_the_option_must_be_a_bool() -> None:
    with pytest.raises(ValueError, match="skip_nonfinite_grads"):
        aees(optax.sgd(0.1), skip_nonfinite_grads=1)  # type: ignore[arg-type]
