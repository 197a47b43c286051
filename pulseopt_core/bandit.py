"""Discounted-UCB arm selection and update, plain and bucketed by context.

All functions are pure, branch-free on traced values, and work on a single
controller; batch several controllers with `jax.vmap`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from pulseopt_core import hashing
from pulseopt_core.config import AEESConfig
from pulseopt_core.state import ControllerState, UCBStats, count_up

# Counts below this are treated as this value, as in the published algorithm.
_COUNT_FLOOR = 1e-12
# Scores within this distance of the best one tie.
_SCORE_TIE_TOLERANCE = 1e-12


def float_dtype() -> jnp.dtype:
    """The core's float dtype: float64 when JAX's x64 mode is on, else float32."""
    return jnp.dtype(jax.dtypes.canonicalize_dtype(jnp.float64))


def init_ucb(num_arms: int, batch_shape: tuple[int, ...] = ()) -> UCBStats:
    """Empty statistics for ``num_arms`` arms, with optional leading batch axes."""
    shape = (*batch_shape, num_arms)
    return UCBStats(
        discounted_counts=jnp.zeros(shape, float_dtype()),
        discounted_reward_sums=jnp.zeros(shape, float_dtype()),
        warmup_counts=jnp.zeros(shape, jnp.int32),
        total_updates=jnp.zeros(batch_shape, jnp.int32),
    )


def break_tie(candidates: jax.Array, seed: jax.Array, tie_break: str) -> jax.Array:
    """Index of one ``True`` entry of ``candidates``: the lowest, or uniform at random.

    ``seed`` is a ``uint32``; each arm's random score is a hash of it and the
    arm's index (see `pulseopt_core.hashing`), float32 whatever JAX's x64 mode,
    so both modes pick the same arm.
    """
    if tie_break == "lowest":
        return jnp.argmax(candidates).astype(jnp.int32)
    arms = jnp.arange(candidates.shape[-1], dtype=jnp.uint32)
    scores = hashing.uniform(hashing.mix(seed, arms))
    return jnp.argmax(jnp.where(candidates, scores, -1.0)).astype(jnp.int32)


def ucb_scores(stats: UCBStats, exploration_coef: float) -> jax.Array:
    """``mean_i + coef * sqrt(log(N + 1) / c_i)`` with counts floored at 1e-12."""
    counts = jnp.maximum(stats.discounted_counts, _COUNT_FLOOR)
    log_term = jnp.log(jnp.sum(stats.discounted_counts) + 1.0)
    return stats.discounted_reward_sums / counts + exploration_coef * jnp.sqrt(log_term / counts)


def ucb_select(config: AEESConfig, stats: UCBStats, seed: jax.Array) -> jax.Array:
    """Choose an arm: warm-up first (least tried pending arm), then the best UCB score.

    Args:
      config: supplies ``warmup_rounds``, ``exploration_coef`` and ``tie_break``.
      stats: one controller's statistics (arm axis only).
      seed: ``uint32`` random bits, used only when ``tie_break="random"``.

    Returns:
      ``i32[]`` the chosen arm.
    """
    warmup = stats.warmup_counts
    pending = warmup < config.warmup_rounds
    fewest = jnp.min(jnp.where(pending, warmup, jnp.iinfo(jnp.int32).max))
    warmup_candidates = pending & (warmup == fewest)
    scores = ucb_scores(stats, config.exploration_coef)
    score_candidates = jnp.abs(scores - jnp.max(scores)) <= _SCORE_TIE_TOLERANCE
    candidates = jnp.where(jnp.any(pending), warmup_candidates, score_candidates)
    return break_tie(candidates, seed, config.tie_break)


def ucb_update(config: AEESConfig, stats: UCBStats, arm: jax.Array, reward: jax.Array) -> UCBStats:
    """Discount every arm, then credit ``reward`` to ``arm``."""
    hit = jnp.arange(stats.discounted_counts.shape[-1]) == arm
    dtype = stats.discounted_counts.dtype
    return UCBStats(
        discounted_counts=stats.discounted_counts * config.discount + hit.astype(dtype),
        discounted_reward_sums=stats.discounted_reward_sums * config.discount
        + jnp.where(hit, reward, 0.0).astype(dtype),
        warmup_counts=count_up(stats.warmup_counts, hit.astype(jnp.int32)),
        total_updates=count_up(stats.total_updates),
    )


def init_controller(
    config: AEESConfig, num_arms: int, batch_shape: tuple[int, ...] = ()
) -> ControllerState:
    """A fresh controller: empty prior and empty, uninitialised buckets.

    Without a context mode one bucket slot is kept and never used: zero-size
    arrays would be awkward for checkpointing libraries.
    """
    slots = max(config.num_buckets, 1)
    return ControllerState(
        prior=init_ucb(num_arms, batch_shape),
        buckets=init_ucb(num_arms, (*batch_shape, slots)),
        bucket_initialized=jnp.zeros((*batch_shape, slots), bool),
    )


def active_stats(controller: ControllerState, bucket: jax.Array) -> UCBStats:
    """The statistics selection uses: the bucket's own, or the prior if it has none.

    ``bucket`` is ``-1`` without a context mode, which always reads the prior.
    With a context mode it is always a valid bucket index.
    """
    safe = jnp.maximum(bucket, 0)
    owned = (bucket >= 0) & controller.bucket_initialized[safe]
    own = jax.tree.map(lambda leaf: leaf[safe], controller.buckets)
    return jax.tree.map(lambda mine, prior: jnp.where(owned, mine, prior), own, controller.prior)


def controller_select(
    config: AEESConfig, controller: ControllerState, bucket: jax.Array, seed: jax.Array
) -> jax.Array:
    """Select an arm with the active bucket's statistics (``control_mode`` aware).

    ``seed`` (``uint32`` random bits) draws the arm in random control and
    breaks ties otherwise.
    """
    num_arms = controller.prior.discounted_counts.shape[-1]
    if config.control_mode == "random":
        drawn = jnp.floor(hashing.uniform(seed) * num_arms).astype(jnp.int32)
        return jnp.minimum(drawn, num_arms - 1)
    return ucb_select(config, active_stats(controller, bucket), seed)


def controller_update(
    config: AEESConfig,
    controller: ControllerState,
    bucket: jax.Array,
    arm: jax.Array,
    reward: jax.Array,
) -> ControllerState:
    """Credit ``reward`` to ``arm`` in the prior and in the active bucket."""
    prior = ucb_update(config, controller.prior, arm, reward)
    if config.num_buckets == 0:
        return controller._replace(prior=prior)
    updated = ucb_update(config, active_stats(controller, bucket), arm, reward)
    buckets = jax.tree.map(lambda all_, one: all_.at[bucket].set(one), controller.buckets, updated)
    return ControllerState(
        prior=prior,
        buckets=buckets,
        bucket_initialized=controller.bucket_initialized.at[bucket].set(True),
    )
