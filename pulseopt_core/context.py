"""Context buckets: the loss trend over recent episodes and the training phase."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from pulseopt_core.config import AEESConfig

IMPROVING, STABLE, WORSENING = 0, 1, 2


def loss_trend(config: AEESConfig, end_losses: jax.Array, count: jax.Array) -> jax.Array:
    """Trend index (0 improving, 1 stable, 2 worsening) of the recent episode-end losses.

    Args:
      config: supplies ``context_trend_epsilon``.
      end_losses: ``f[W]`` the window, newest last; only the last ``count`` are valid.
      count: ``i32[]`` valid entries; fewer than two read as stable.

    Returns:
      ``i32[]``: the mean per-episode change ``(last - first) / (count - 1)``
      below ``-eps`` is improving, above ``eps`` worsening, else stable.
    """
    window = end_losses.shape[0]
    first = end_losses[jnp.clip(window - count, 0, window - 1)]
    slope = (end_losses[-1] - first) / jnp.maximum(count - 1, 1).astype(end_losses.dtype)
    eps = config.context_trend_epsilon
    trend = jnp.where(slope < -eps, IMPROVING, jnp.where(slope > eps, WORSENING, STABLE))
    return jnp.where(count < 2, STABLE, trend).astype(jnp.int32)


def training_phase(config: AEESConfig, step: jax.Array) -> jax.Array:
    """Phase index (0 early, 1 middle, 2 late) of ``step / total_training_steps``.

    Compared in integers (``3 * step < total``, as ``step < ceil(total / 3)``
    with the bounds computed in Python), so no float rounding moves a boundary
    and no product overflows ``int32``.
    """
    total = config.total_training_steps or 1
    step = jnp.maximum(step, 0)

    def below(k: int) -> jax.Array:
        bound = -(-k * total // 3)  # ceil(k * total / 3): 3 * step < k * total
        return jnp.ones_like(step, bool) if bound > jnp.iinfo(step.dtype).max else step < bound

    return jnp.where(below(1), 0, jnp.where(below(2), 1, 2)).astype(jnp.int32)


def context_bucket(
    config: AEESConfig, end_losses: jax.Array, count: jax.Array, step: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(bucket, trend, phase)`` indices for an episode starting at ``step``.

    All three are -1 without a context mode; ``phase`` is -1 in ``"trend"`` mode.
    Buckets are ordered as `AEESConfig.bucket_names`.
    """
    none = jnp.asarray(-1, jnp.int32)
    if config.context_mode == "none":
        return none, none, none
    trend = loss_trend(config, end_losses, count)
    if config.context_mode == "trend":
        return trend, trend, none
    phase = training_phase(config, step)
    return phase * 3 + trend, trend, phase


def push_end_loss(
    end_losses: jax.Array, count: jax.Array, loss: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Append an episode-end loss to the trend window (dropping the oldest)."""
    window = end_losses.shape[0]
    shifted = jnp.concatenate([end_losses[1:], loss[None].astype(end_losses.dtype)])
    return shifted, jnp.minimum(count + 1, window)
