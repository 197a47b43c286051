"""The discounted UCB equals the reference controller, arm for arm and count for count."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pulseopt.controller
from hypothesis import given, settings
from hypothesis import strategies as st

import pulseopt_core as core
from tests.core.reference import lowest_tie_break


@jax.jit(static_argnums=0)
def _select(config: core.AEESConfig, stats: core.UCBStats) -> jax.Array:
    return core.ucb_select(config, stats, jnp.uint32(0))


@jax.jit(static_argnums=0)
def _update(config, stats, arm, reward):
    return core.ucb_update(config, stats, arm, reward)


@settings(max_examples=60, deadline=None)
@given(
    num_arms=st.integers(1, 5),
    warmup_rounds=st.integers(0, 3),
    exploration_coef=st.sampled_from([0.0, 0.5, 1.0, 2.0]),
    discount=st.sampled_from([0.5, 0.9, 0.95, 1.0]),
    rewards=st.lists(st.floats(-1.0, 1.0), min_size=1, max_size=40),
)
def test_ucb_select_and_update_match_reference(
    num_arms, warmup_rounds, exploration_coef, discount, rewards
) -> None:
    config = core.AEESConfig(
        warmup_rounds=warmup_rounds,
        exploration_coef=exploration_coef,
        discount=discount,
        tie_break="lowest",
    )
    with jax.enable_x64(True), lowest_tie_break():
        reference = pulseopt.controller.DiscountedUCBController(
            n_arms=num_arms,
            exploration_coef=exploration_coef,
            discount=discount,
            warmup_rounds=warmup_rounds,
        )
        stats = core.bandit.init_ucb(num_arms)
        for reward in rewards:
            arm = int(_select(config, stats))
            assert arm == reference.select_mode()
            stats = _update(config, stats, jnp.asarray(arm), jnp.asarray(reward))
            reference.update(arm, reward)

        expected = reference.get_state()
        np.testing.assert_allclose(stats.discounted_counts, expected["counts"], rtol=1e-12)
        np.testing.assert_allclose(
            stats.discounted_reward_sums, expected["reward_sums"], rtol=1e-12, atol=1e-15
        )
        np.testing.assert_array_equal(stats.warmup_counts, expected["warmup_counts"])
        assert int(stats.total_updates) == expected["total_updates"]


def test_random_tie_break_picks_every_tied_arm() -> None:
    candidates = jnp.asarray([True, False, True, True])
    picks = {
        int(core.bandit.break_tie(candidates, jnp.uint32(seed), "random")) for seed in range(64)
    }
    assert picks == {0, 2, 3}


def test_lowest_tie_break_picks_the_first_tied_arm() -> None:
    candidates = jnp.asarray([False, True, False, True])
    assert int(core.bandit.break_tie(candidates, jnp.uint32(0), "lowest")) == 1


def test_warmup_tries_every_arm_before_scoring() -> None:
    config = core.AEESConfig(warmup_rounds=1, tie_break="random")
    stats = core.bandit.init_ucb(4)
    seen = []
    for step in range(4):
        arm = core.ucb_select(config, stats, jnp.uint32(step))
        seen.append(int(arm))
        stats = core.ucb_update(config, stats, arm, jnp.asarray(0.0, stats.discounted_counts.dtype))
    assert sorted(seen) == [0, 1, 2, 3]


def test_a_bucket_reads_the_prior_until_its_first_update() -> None:
    config = core.AEESConfig(lr_candidates=(1.0, 2.0), context_mode="trend", tie_break="lowest")
    controller = core.bandit.init_controller(config, 2)
    reward = jnp.asarray(0.5, controller.prior.discounted_counts.dtype)
    controller = core.controller_update(config, controller, jnp.asarray(1), jnp.asarray(1), reward)
    untouched = core.bandit.active_stats(controller, jnp.asarray(2))
    np.testing.assert_array_equal(untouched.discounted_counts, controller.prior.discounted_counts)
    assert not bool(controller.bucket_initialized[2])
    controller = core.controller_update(config, controller, jnp.asarray(2), jnp.asarray(0), reward)
    own = core.bandit.active_stats(controller, jnp.asarray(2))
    # The bucket started from the prior (one update on arm 1) and added its own.
    np.testing.assert_allclose(own.discounted_counts, [1.0, 0.95], rtol=1e-6)
