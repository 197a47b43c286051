"""The episode reward: log-EMA loss improvement minus a variance penalty, clipped.

Math, for the losses ``l_1..l_n`` of one episode and ``eps = reward_epsilon``::

    e_1 = l_1;  e_t = a * l_t + (1 - a) * e_{t-1}        (a = ema_alpha)
    base = log(e_1 + eps) - log(e_n + eps)
    instability = var(l) / (mean(l)**2 + eps)             (population variance)
    reward = clip(base - lambda * instability, clip_min, clip_max)

Everything is computed online (running EMA and Welford mean/M2), so no loss
buffer is needed. The reward's domain: both ``e_1 + eps`` and ``e_n + eps``
must be positive. Losses that can be negative (a log-likelihood, a shifted
objective) may leave it undefined; such an episode is *unscorable*: its reward
and parts are NaN and no controller learns from it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from pulseopt_core.config import AEESConfig
from pulseopt_core.state import RewardBreakdown


def accumulate_loss(
    config: AEESConfig,
    steps: jax.Array,
    first_loss: jax.Array,
    loss_ema: jax.Array,
    loss_mean: jax.Array,
    loss_m2: jax.Array,
    loss: jax.Array,
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array, jax.Array]:
    """Fold one loss into the running statistics of an episode.

    Args:
      config: supplies ``ema_alpha``.
      steps: losses folded in so far.
      first_loss, loss_ema, loss_mean, loss_m2: the running statistics.
      loss: the new loss.

    Returns:
      ``(steps, first_loss, loss_ema, loss_mean, loss_m2)`` after the update.
    """
    is_first = steps == 0
    alpha = config.ema_alpha
    new_steps = steps + 1
    ema = jnp.where(is_first, loss, alpha * loss + (1.0 - alpha) * loss_ema)
    delta = loss - loss_mean
    mean = loss_mean + delta / new_steps.astype(loss.dtype)
    m2 = loss_m2 + delta * (loss - mean)
    return new_steps, jnp.where(is_first, loss, first_loss), ema, mean, m2


def reward_from_statistics(
    config: AEESConfig,
    ema_start: jax.Array,
    ema_end: jax.Array,
    loss_mean: jax.Array,
    loss_m2: jax.Array,
    steps: jax.Array,
) -> RewardBreakdown:
    """The reward of an episode from its online statistics (see the module docstring).

    Returns:
      A `RewardBreakdown`; when ``ema_start + eps <= 0`` or ``ema_end + eps <= 0``
      every part is NaN and ``scorable`` is False.
    """
    eps = config.reward_epsilon
    start, end = ema_start + eps, ema_end + eps
    scorable = (start > 0) & (end > 0) & jnp.isfinite(start) & jnp.isfinite(end)
    one = jnp.ones_like(start)
    base = jnp.log(jnp.where(scorable, start, one)) - jnp.log(jnp.where(scorable, end, one))
    count = jnp.maximum(steps, 1).astype(loss_m2.dtype)
    instability = loss_m2 / (count * (loss_mean * loss_mean + eps))
    penalty = config.reward_instability_lambda * instability
    unclipped = base - penalty
    clipped = jnp.clip(unclipped, config.reward_clip_min, config.reward_clip_max)
    nan = jnp.full_like(start, jnp.nan)

    def guard(x: jax.Array) -> jax.Array:
        return jnp.where(scorable, x, nan)

    return RewardBreakdown(
        base=guard(base),
        instability=guard(instability),
        penalty=guard(penalty),
        unclipped=guard(unclipped),
        reward=guard(clipped),
        scorable=scorable,
    )


def episode_reward(config: AEESConfig, losses: jax.Array) -> RewardBreakdown:
    """The reward of a whole episode given its losses ``f[n]`` (n >= 1).

    A convenience over `accumulate_loss` and `reward_from_statistics`, folding
    the losses in order with `jax.lax.scan`.
    """
    losses = jnp.asarray(losses)
    zero = jnp.zeros((), losses.dtype)

    def fold(carry, loss):
        steps, first, ema, mean, m2 = carry
        return accumulate_loss(config, steps, first, ema, mean, m2, loss), None

    init = (jnp.zeros((), jnp.int32), zero, zero, zero, zero)
    (steps, first, ema, mean, m2), _ = jax.lax.scan(fold, init, losses)
    return reward_from_statistics(config, first, ema, mean, m2, steps)
