"""The gradient noise: N(0, std^2), independent across steps, leaves and seeds."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import stats

import pulseopt_optax
from pulseopt_core.noise import add_gradient_noise, counter_normal

SAMPLES = 1_000_000


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_counter_normals_pass_a_kolmogorov_smirnov_test(seed):
    z = np.asarray(jax.jit(counter_normal, static_argnums=1)(jax.random.key(seed), (SAMPLES,)))
    assert stats.kstest(z.astype(np.float64), "norm").pvalue > 1e-3
    assert abs(z.mean()) < 5.0 / np.sqrt(SAMPLES)
    assert abs(z.std() - 1.0) < 0.01


def _noise_of_steps(generator, steps=2, seed=0, std=0.5):
    """The noise aees added to zero gradients on two leaves over ``steps`` steps."""
    params = {"a": jnp.zeros((1000, 500)), "b": jnp.zeros((500_000,))}
    tx = pulseopt_optax.aees(
        optax.sgd(1.0),
        noise_candidates=(std,),
        noise_generator=generator,
        seed=seed,
        track_update_norm=False,
    )
    state = tx.init(params)
    step = jax.jit(lambda s: tx.update(jax.tree.map(jnp.zeros_like, params), s, value=1.0))
    draws = []
    for _ in range(steps):
        updates, state = step(state)
        draws.append({k: -np.asarray(v).ravel() for k, v in updates.items()})
    return draws


@pytest.mark.parametrize("generator", ["counter", "threefry"])
def test_noise_has_mean_zero_and_the_configured_std(generator):
    (noise,) = _noise_of_steps(generator, steps=1, std=0.5)
    for leaf in noise.values():
        assert abs(leaf.mean()) < 5.0 * 0.5 / np.sqrt(leaf.size)
        assert abs(leaf.std() / 0.5 - 1.0) < 0.01


@pytest.mark.parametrize("generator", ["counter", "threefry"])
def test_noise_is_uncorrelated_across_steps_and_leaves(generator):
    first, second = _noise_of_steps(generator, steps=2)
    bound = 5.0 / np.sqrt(first["b"].size)
    assert abs(np.corrcoef(first["a"], second["a"])[0, 1]) < bound
    assert abs(np.corrcoef(first["b"], second["b"])[0, 1]) < bound
    assert abs(np.corrcoef(first["a"], first["b"])[0, 1]) < bound


def test_noise_differs_under_different_seeds():
    (one,) = _noise_of_steps("counter", steps=1, seed=0)
    (other,) = _noise_of_steps("counter", steps=1, seed=1)
    assert abs(np.corrcoef(one["a"], other["a"])[0, 1]) < 5.0 / np.sqrt(one["a"].size)


def test_noise_keeps_low_precision_dtypes():
    grads = {"h": jnp.zeros(8, jnp.bfloat16), "f": jnp.zeros(8, jnp.float16)}
    noisy = add_gradient_noise(grads, jax.random.key(0), jnp.float32(1.0))
    assert {k: v.dtype for k, v in noisy.items()} == {k: v.dtype for k, v in grads.items()}


def test_a_zero_std_arm_adds_no_noise():
    tx = pulseopt_optax.aees(
        optax.sgd(1.0), noise_candidates=(0.0, 0.5), tie_break="lowest", seed=0
    )
    updates, _ = tx.update(jnp.ones(4), tx.init(jnp.ones(4)), value=1.0)
    np.testing.assert_array_equal(updates, -jnp.ones(4))
