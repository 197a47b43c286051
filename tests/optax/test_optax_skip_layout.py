"""The in-jit skip: what a skipped step leaves, and the memory the skip costs a donated step."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from pulseopt_optax import aees

LR = (0.5, 1.0, 2.0)


def _inner(name):
    if name == "adam":
        return optax.adam(1e-2)
    if name == "sgd_momentum":
        return optax.sgd(1e-2, momentum=0.9)
    if name == "chain_schedule":
        schedule = optax.linear_schedule(1e-2, 1e-3, transition_steps=10)
        return optax.chain(
            optax.clip_by_global_norm(1.0), optax.scale_by_adam(), optax.scale_by_schedule(schedule)
        )
    if name == "updates_in_another_dtype":
        # Updates of another dtype than the gradients: the skip falls back on a conditional.
        def update(updates, state, params=None):
            return jax.tree.map(lambda g: (g * 0.1).astype(jnp.bfloat16), updates), state

        return optax.chain(
            optax.scale_by_adam(),
            optax.GradientTransformation(lambda p: optax.EmptyState(), update),
        )
    raise ValueError(name)


def _params():
    return {"w": jnp.linspace(-1.0, 1.0, 12).reshape(3, 4), "b": jnp.arange(4.0)}


def _bits(tree):
    def leaf_bits(x):
        if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
            x = jax.random.key_data(x)
        return np.asarray(x).tobytes()

    return [leaf_bits(x) for x in jax.tree.leaves(tree)]


def _without_skip_count(state):
    core_state = state.aees_core_state._replace(skipped_steps=jnp.zeros((), jnp.int32))
    return state._replace(aees_core_state=core_state)


# Under the guard a non-finite loss is a spike (a rollback), not a skip, and the
# guard's rollback needs updates in the parameters' dtype: those pairs are not skips.
SKIP_CASES = [
    (inner, preset, bad)
    for inner in ("adam", "sgd_momentum", "chain_schedule", "updates_in_another_dtype")
    for preset in (None, "robust")
    for bad in ("nan_gradient", "nan_value")
    if preset is None or (bad == "nan_gradient" and inner != "updates_in_another_dtype")
]


@pytest.mark.parametrize(("inner", "preset", "bad"), SKIP_CASES)
def test_a_skipped_donated_step_changes_nothing_but_the_skip_count(inner, preset, bad):
    _check_skip(inner, preset, bad, donate=True)


@pytest.mark.parametrize("preset", [None, "robust"])
def test_an_infinite_gradient_skips_an_undonated_step(preset):
    _check_skip("adam", preset, "inf_gradient", donate=False)


def _check_skip(inner, preset, bad, donate):
    tx = aees(_inner(inner), lr_candidates=LR, episode_length=2, seed=0, preset=preset)
    params = _params()
    step = jax.jit(
        lambda g, s, p, v: tx.update(g, s, p, value=v), donate_argnums=(1,) if donate else ()
    )
    grads = jax.tree.map(lambda p: 0.1 * p + 0.05, params)
    # Distinct buffers for every leaf: an initial state may share one array between
    # two leaves, which cannot be donated twice.
    state = jax.tree.map(jnp.copy, tx.init(params))
    for loss in (3.0, 2.5, 2.0):  # a few sound steps, across an episode boundary
        updates, state = step(grads, state, params, jnp.float32(loss))
        params = optax.apply_updates(params, updates)
    before = _bits(_without_skip_count(state))
    before_inner = _bits(state.aees_inner_state)
    count = int(state.aees_core_state.skipped_steps)
    value = jnp.float32(1.5)
    if bad == "nan_value":
        value = jnp.float32(jnp.nan)
    else:
        poison = jnp.nan if bad == "nan_gradient" else jnp.inf
        grads = {**grads, "w": grads["w"].at[1, 2].set(poison)}
    updates, skipped = step(grads, state, params, value)
    for leaf in jax.tree.leaves(updates):
        np.testing.assert_array_equal(leaf, np.zeros_like(leaf))
    assert int(skipped.aees_core_state.skipped_steps) == count + 1
    assert _bits(skipped.aees_inner_state) == before_inner
    if preset is None:
        assert _bits(_without_skip_count(skipped)) == before
    # Training goes on from the unchanged state.
    grads = jax.tree.map(lambda p: 0.1 * p + 0.05, params)
    updates, _ = step(grads, skipped, params, jnp.float32(1.0))
    assert all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree.leaves(updates))
    assert any(bool(jnp.any(leaf != 0)) for leaf in jax.tree.leaves(updates))


# ----------------------------------------------------------------------------- memory


def _chain(layers, width, batch):
    """``layers`` chained ``tanh(h @ W_i)``: the optimizer's update of a leaf can run as
    soon as its gradient exists, so adamw never holds all the gradients at once."""
    keys = jax.random.split(jax.random.key(0), layers)
    params = {
        f"w{i:02d}": jax.random.normal(k, (width, width)) / width**0.5 for i, k in enumerate(keys)
    }
    x = jnp.ones((batch, width))

    def loss_fn(p):
        h = x
        for key in sorted(p):
            h = jnp.tanh(h @ p[key])
        return jnp.mean(h**2)

    return params, loss_fn


def _mlp():
    """An MLP whose largest gradient is most of the parameters: adamw holds it too."""
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    params = {
        "w1": jax.random.normal(k1, (32, 512)) / 6,
        "b1": jnp.zeros(512),
        "w2": jax.random.normal(k2, (512, 512)) / 22,
        "b2": jnp.zeros(512),
        "w3": jax.random.normal(k3, (512, 10)) / 22,
    }
    x = jax.random.normal(k3, (64, 32))

    def loss_fn(p):
        h = jax.nn.relu(x @ p["w1"] + p["b1"])
        h = jax.nn.relu(h @ p["w2"] + p["b2"])
        return jnp.mean((h @ p["w3"]) ** 2)

    return params, loss_fn


def _temporaries(tx, params, loss_fn):
    """Temporaries of the donated train step, in units of the parameters' size."""
    tx = optax.with_extra_args_support(tx)

    def train_step(p, s):
        value, grads = jax.value_and_grad(loss_fn)(p)
        updates, s = tx.update(grads, s, p, value=value)
        return optax.apply_updates(p, updates), s

    state = jax.eval_shape(tx.init, params)
    compiled = jax.jit(train_step, donate_argnums=(0, 1)).lower(params, state).compile()
    stats = compiled.memory_analysis()
    if stats is None:
        pytest.skip("this backend gives no memory analysis")
    return stats.temp_size_in_bytes / sum(leaf.nbytes for leaf in jax.tree.leaves(params))


VARIANTS = {
    "defaults": {},
    "no_norm": {"track_update_norm": False},
    "noise_arms": {"noise_candidates": (0.0, 0.01)},
    "robust": {"preset": "robust"},
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_the_skip_holds_no_more_than_the_gradients(variant):
    # The skip needs the finiteness of every gradient before it updates any leaf,
    # so it holds the gradients (1 P) where adamw holds less; beyond that, at
    # most 0.1 P (a conditional held 2 P: the gradients and the updates).
    params, loss_fn = _chain(8, 128, 4)
    adamw = _temporaries(optax.adamw(1e-3), params, loss_fn)
    tx = aees(optax.adamw(1e-3), lr_candidates=LR, seed=0, **VARIANTS[variant])
    assert _temporaries(tx, params, loss_fn) <= max(adamw, 1.0) + 0.1


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_the_skip_costs_no_temporaries_where_adamw_holds_the_gradients(variant):
    params, loss_fn = _mlp()
    adamw = _temporaries(optax.adamw(1e-3), params, loss_fn)
    tx = aees(optax.adamw(1e-3), lr_candidates=LR, seed=0, **VARIANTS[variant])
    assert _temporaries(tx, params, loss_fn) <= adamw + 0.1
