"""The reward equals the reference's on arbitrary loss sequences, and is safe off its domain."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pulseopt.reward
import pulseopt.types
from hypothesis import given, settings
from hypothesis import strategies as st

import pulseopt_core as core

CONFIG = core.AEESConfig(reward_instability_lambda=0.3, reward_clip_min=-0.5, reward_clip_max=0.8)

losses_strategy = st.lists(
    st.floats(min_value=1e-3, max_value=1e3, allow_nan=False, allow_infinity=False),
    min_size=1,
    max_size=24,
)


@jax.jit
def _fold(losses: jax.Array, count: jax.Array) -> core.RewardBreakdown:
    """Fold the first ``count`` losses (the rest is padding) and score them."""
    dtype = losses.dtype
    zero = jnp.zeros((), dtype)

    def body(carry, inputs):
        index, loss = inputs
        folded = core.accumulate_loss(CONFIG, *carry, loss)
        return jax.tree.map(
            lambda new, old: jnp.where(index < count, new, old), folded, carry
        ), None

    init = (jnp.zeros((), jnp.int32), zero, zero, zero, zero)
    (steps, first, ema, mean, m2), _ = jax.lax.scan(body, init, (jnp.arange(len(losses)), losses))
    return core.reward_from_statistics(CONFIG, first, ema, mean, m2, steps)


def _ours(losses: list[float]) -> core.RewardBreakdown:
    padded = np.zeros(24, core.float_dtype())
    padded[: len(losses)] = losses
    return _fold(jnp.asarray(padded), jnp.asarray(len(losses)))


def _reference(losses: list[float]) -> dict[str, float]:
    reward = pulseopt.reward.NormalizedLossImprovementReward(
        reward_epsilon=CONFIG.reward_epsilon,
        reward_instability_lambda=CONFIG.reward_instability_lambda,
        reward_clip_min=CONFIG.reward_clip_min,
        reward_clip_max=CONFIG.reward_clip_max,
    )
    ema = losses[0]
    for loss in losses[1:]:
        ema = CONFIG.ema_alpha * loss + (1.0 - CONFIG.ema_alpha) * ema
    summary = pulseopt.types.EpisodeSummary(
        episode_index=0,
        mode_id=0,
        mode_name="arm",
        start_step=0,
        end_step=len(losses) - 1,
        steps=len(losses),
        loss_start=losses[0],
        loss_end=losses[-1],
        ema_abs_loss_delta=0.0,
        ema_loss_start=losses[0],
        ema_loss_end=ema,
        step_losses=tuple(losses),
    )
    reward.compute(summary)
    return reward.get_last_details()


def _assert_close(ours: core.RewardBreakdown, theirs: dict[str, float], rel: float, floor: float):
    pairs = {
        "reward_base": ours.base,
        "reward_instability": ours.instability,
        "reward_penalty": ours.penalty,
        "reward_final_unclipped": ours.unclipped,
        "reward_final_clipped": ours.reward,
    }
    for name, value in pairs.items():
        assert math.isclose(float(value), theirs[name], rel_tol=rel, abs_tol=floor), name


@settings(max_examples=200, deadline=None)
@given(losses_strategy)
def test_reward_matches_reference_in_float64(losses: list[float]) -> None:
    with jax.enable_x64(True):
        ours = _ours(losses)
    # Welford's variance differs from the two-pass one only in the last bits.
    _assert_close(ours, _reference(losses), rel=1e-12, floor=1e-13)


@settings(max_examples=200, deadline=None)
@given(losses_strategy)
def test_reward_matches_reference_in_float32(losses: list[float]) -> None:
    losses = [float(np.float32(loss)) for loss in losses]
    # A difference of two logarithms near zero has no relative precision in
    # float32, hence the absolute floor.
    _assert_close(_ours(losses), _reference(losses), rel=1e-5, floor=1e-5)


def test_episode_reward_folds_a_whole_sequence_like_the_online_path() -> None:
    losses = [3.0, 2.5, 2.7, 1.9, 2.0]
    whole = core.episode_reward(CONFIG, jnp.asarray(losses))
    online = _ours(losses)
    for a, b in zip(whole, online, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6)


def test_reward_is_clipped_to_the_configured_range() -> None:
    config = CONFIG.replace(ema_alpha=1.0, reward_instability_lambda=0.0)
    falling = core.episode_reward(config, jnp.asarray([100.0, 1.0, 0.01]))
    rising = core.episode_reward(config, jnp.asarray([0.01, 1.0, 100.0]))
    assert float(falling.unclipped) > config.reward_clip_max
    assert float(falling.reward) == np.float32(config.reward_clip_max)
    assert float(rising.unclipped) < config.reward_clip_min
    assert float(rising.reward) == np.float32(config.reward_clip_min)


def test_negative_losses_are_unscorable_and_every_part_is_nan() -> None:
    score = core.episode_reward(CONFIG, jnp.asarray([-2.0, -2.5, -3.0]))
    assert not bool(score.scorable)
    assert all(np.isnan(np.asarray(part)) for part in score[:-1])


def test_negative_losses_whose_ema_stays_positive_are_scored() -> None:
    score = core.episode_reward(CONFIG, jnp.asarray([1.0, -0.5, 0.8]))
    assert bool(score.scorable)
    assert np.isfinite(float(score.reward))
