"""The compatibility checks optax applies to its own wrappers, applied to `aees`."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import pulseopt_optax
from pulseopt_optax import aees


def _parabola(dtype):
    final = jnp.array([1.0, -1.0, 1.0], dtype)
    return jnp.array([-1.0, 10.0, 1.0], dtype), final, lambda p: jnp.sum((p - final) ** 2)


def _rosenbrock(dtype):
    def loss(p):
        return (1.0 - p[0]) ** 2 + 100.0 * (p[1] - p[0] ** 2) ** 2

    return jnp.zeros((2,), dtype), jnp.array([1.0, 1.0], dtype), loss


def _matrix(dtype):
    final = jnp.array([[3.0, -2.0], [1.0, 4.0]], dtype)
    return jnp.zeros((2, 2), dtype), final, lambda p: jnp.sum((p - final) ** 2)


def _mixed_tree(dtype):
    final = (jnp.array([1.0, -1.0, 2.0], dtype), jnp.array([[1.0, 0.0], [-1.0, 1.0]], dtype))

    def loss(p):
        return jnp.sum((p[0] - final[0]) ** 2) + jnp.sum((p[1] - final[1]) ** 2)

    return (jnp.zeros((3,), dtype), jnp.zeros((2, 2), dtype)), final, loss


def _tx(**knobs):
    knobs = {"lr_candidates": (0.5, 1.0, 2.0), "episode_length": 20, "seed": 0, **knobs}
    return aees(optax.adam(1e-2), **knobs)


def test_update_accepts_unexpected_extra_args_and_does_not_recompile():
    params, _, loss_fn = _rosenbrock(jnp.float32)
    tx = _tx()

    @jax.jit
    def step(params, state):
        value, grads = jax.value_and_grad(loss_fn)(params)
        updates, state = tx.update(
            grads, state, params, value=value, unexpected_extra_args_your_optimizer_doesnt_expect=1
        )
        return optax.apply_updates(params, updates), state

    state = tx.init(params)
    params, state = step(params, state)
    params, state = step(params, state)
    assert step._cache_size() == 1


@pytest.mark.parametrize("target", [_parabola, _rosenbrock, _matrix, _mixed_tree])
def test_converges_inside_a_30k_step_scan(target):
    params, final, loss_fn = target(jnp.float32)
    tx = _tx()

    def step(carry, _):
        params, state = carry
        value, grads = jax.value_and_grad(loss_fn)(params)
        updates, state = tx.update(grads, state, params, value=value)
        return (optax.apply_updates(params, updates), state), None

    (params, state), _ = jax.jit(lambda p, s: jax.lax.scan(step, (p, s), length=30_000))(
        params, tx.init(params)
    )
    for got, want in zip(jax.tree.leaves(params), jax.tree.leaves(final), strict=True):
        np.testing.assert_allclose(got, want, rtol=3e-2, atol=3e-2)
    assert int(optax.tree.get(state, "episodes_closed")) == 30_000 // 20


def test_map_params_works_on_the_state():
    params, _, _ = _mixed_tree(jnp.float32)
    tx = _tx()
    state = tx.init(params)
    mapped = optax.tree.map_params(tx, lambda p: p + 1.0, state)
    mu = optax.tree.get(mapped, "mu")
    assert all(bool(jnp.all(leaf == 1.0)) for leaf in jax.tree.leaves(mu))
    assert jax.tree.structure(mapped) == jax.tree.structure(state)


def test_multisteps_counts_the_emitting_mini_steps_value_and_noises_once_per_update():
    params = jnp.array([1.0, 2.0])
    tx = optax.MultiSteps(
        aees(optax.identity(), noise_candidates=(0.5,), episode_length=2, seed=0),
        every_k_schedule=4,
    )
    state = tx.init(params)
    grads = jnp.zeros(2)
    values = [10.0, 20.0, 30.0, 4.0, 5.0, 6.0, 7.0, 3.0]
    emitted = []
    step = jax.jit(tx.update)
    for value in values:
        updates, state = step(grads, state, params, value=jnp.float32(value))
        emitted.append(updates)
    logs = pulseopt_optax.get_logs(state)
    assert logs["episode_start_losses"] == [4.0]
    assert logs["episode_end_losses"] == [3.0]
    assert int(optax.tree.get(state, "global_step")) == 2
    # Two real updates, each with fresh noise on zero gradients; mini-steps emit zeros.
    nonzero = [i for i, u in enumerate(emitted) if bool(jnp.any(u != 0))]
    assert nonzero == [3, 7]
    assert not np.allclose(emitted[3], emitted[7])


def test_multisteps_mid_step_updates_are_zero_in_bfloat16_and_float32():
    for dtype in (jnp.bfloat16, jnp.float32):
        params = jnp.array([1.0, 2.0], dtype)
        tx = optax.MultiSteps(_tx(), every_k_schedule=4)
        value, grads = jax.value_and_grad(lambda p: jnp.sum(p.astype(jnp.float32) ** 2))(params)
        state = jax.jit(tx.init)(params)
        updates, _ = jax.jit(tx.update)(grads, state, params, value=value)
        assert updates.dtype == dtype
        np.testing.assert_array_equal(updates, jnp.zeros_like(grads))


def test_wrapped_in_inject_hyperparams_matches_the_plain_transformation():
    knobs = {
        "lr_candidates": (0.5, 1.0),
        "noise_candidates": (0.0, 0.1),
        "episode_length": 3,
        "exploration_coef": 0.5,
        "reward_instability_lambda": 0.2,
        "warmup_rounds": 1,
        "seed": 3,
    }
    inner = optax.sgd(0.1)
    plain = aees(inner, **knobs)
    injected = optax.inject_hyperparams(
        functools.partial(aees, inner), static_args=pulseopt_optax.STRUCTURAL_KNOBS
    )(**knobs)
    params = [jnp.negative(jnp.ones((2, 3))), jnp.ones((2, 5, 2))]
    loss_fn = lambda p: sum(jnp.sum(x**2) for x in p)  # noqa: E731

    def run(tx):
        state = jax.jit(tx.init)(params)
        p = params
        step = jax.jit(
            lambda p, s: (lambda v, g: tx.update(g, s, p, value=v))(*jax.value_and_grad(loss_fn)(p))
        )
        for _ in range(10):
            updates, state = step(p, state)
            p = optax.apply_updates(p, updates)
        return p, state

    plain_params, plain_state = run(plain)
    injected_params, injected_state = run(injected)
    jax.tree.map(np.testing.assert_allclose, injected_params, plain_params)
    assert jax.tree.structure(injected_state.inner_state) == jax.tree.structure(plain_state)
    jax.tree.map(
        lambda a, b: (
            np.testing.assert_allclose(jax.random.key_data(a), jax.random.key_data(b))
            if jnp.issubdtype(a.dtype, jax.dtypes.prng_key)
            else np.testing.assert_allclose(a, b, rtol=1e-6)
        ),
        injected_state.inner_state,
        plain_state,
    )


def test_injected_knobs_take_effect_when_changed_in_the_state():
    params = jnp.ones(3)
    tx = optax.inject_hyperparams(
        functools.partial(aees, optax.sgd(0.1)), static_args=pulseopt_optax.STRUCTURAL_KNOBS
    )(lr_candidates=(0.5, 1.0), episode_length=10, seed=0)
    state = tx.init(params)
    state.hyperparams["episode_length"] = jnp.asarray(2)
    step = jax.jit(lambda s: tx.update(jnp.ones(3), s, params, value=jnp.float32(1.0))[1])
    for _ in range(4):
        state = step(state)
    assert int(optax.tree.get(state, "episodes_closed")) == 2


def test_structural_knobs_must_be_static_under_inject_hyperparams():
    tx = optax.inject_hyperparams(functools.partial(aees, optax.sgd(0.1)))()
    with pytest.raises(ValueError, match="static_args"):
        jax.jit(tx.init)(jnp.ones(2))


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32", "float64"])
def test_updates_keep_the_params_dtype(dtype):
    with jax.enable_x64(dtype == "float64"):
        params = jnp.array([1.0, 2.0], dtype)
        tx = _tx(noise_candidates=(0.01,))
        value, grads = jax.value_and_grad(lambda p: jnp.sum(p**2))(params)
        updates, state = jax.jit(tx.update)(grads, jax.jit(tx.init)(params), params, value=value)
        assert updates.dtype == params.dtype
        assert optax.tree.get(state, "loss_ema").dtype == (
            jnp.float64 if dtype == "float64" else jnp.float32
        )


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32", "float64"])
def test_state_dtypes_are_stable_under_lax_cond_with_a_float16_value(dtype):
    with jax.enable_x64(dtype == "float64"):
        params, _, loss_fn = _parabola(jnp.dtype(dtype))
        tx = _tx()

        @jax.jit
        def step(params, state):
            value, grads = jax.value_and_grad(loss_fn)(params)
            value = value.astype(jnp.float16 if dtype != "float16" else jnp.bfloat16)
            take = jax.random.randint(jax.random.key(0), (), 0, 2) == 0
            updates, state = jax.lax.cond(
                take,
                lambda: tx.update(grads, state, params, value=value),
                lambda: (jax.tree.map(jnp.zeros_like, params), state),
            )
            return optax.apply_updates(params, updates), state

        state = tx.init(params)
        for _ in range(2):
            params, state = step(params, state)
            assert params.dtype == jnp.dtype(dtype)
