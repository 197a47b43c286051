"""The AEES state: NamedTuple pytrees of arrays whose shapes the config fixes.

Shapes use these names: ``L`` LR arms, ``N`` noise arms, ``M`` noise
controllers (``L`` in conditional mode with several LR arms, else 1), ``B``
context buckets (one unused slot without a context mode), ``W`` the trend window and ``C``
the log capacity. ``f`` is the core's float dtype: float32, or float64 when
JAX's x64 mode is on. Field names are unique across the whole state so that
``optax.tree.get(state, name)`` finds exactly one leaf.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class UCBStats(NamedTuple):
    """Discounted-UCB statistics of one controller (leading axes are batch axes).

    Attributes:
      discounted_counts: ``f[..., k]`` discounted number of updates per arm.
      discounted_reward_sums: ``f[..., k]`` discounted sum of rewards per arm.
      warmup_counts: ``i32[..., k]`` undiscounted number of updates per arm.
      total_updates: ``i32[...]`` number of updates received.
    """

    discounted_counts: jax.Array
    discounted_reward_sums: jax.Array
    warmup_counts: jax.Array
    total_updates: jax.Array


class ControllerState(NamedTuple):
    """A global-prior UCB plus one UCB per context bucket.

    A bucket that was never updated reads as the global prior; its own copy
    starts from the prior on its first update (the first time it is used).

    Attributes:
      prior: statistics with arm axis ``k`` (and the controller axis, if any).
      buckets: per-bucket statistics, bucket axis just before the arm axis.
      bucket_initialized: ``bool[..., B]`` whether a bucket owns its statistics.
    """

    prior: UCBStats
    buckets: UCBStats
    bucket_initialized: jax.Array


class OpenEpisode(NamedTuple):
    """The arms chosen for the open episode and its running accumulators.

    Attributes:
      lr_index: ``i32[]`` selected LR arm.
      noise_index: ``i32[]`` selected noise arm.
      lr_multiplier: ``f[]`` the selected LR multiplier.
      noise_std: ``f[]`` the selected gradient-noise standard deviation.
      context_bucket: ``i32[]`` bucket the arms were chosen in (-1: no context).
      context_trend: ``i32[]`` index into ``TRENDS`` (-1: no context).
      context_phase: ``i32[]`` index into ``PHASES`` (-1: no phase).
      start_step: ``i32[]`` global step of the episode's first step.
      episode_steps: ``i32[]`` steps recorded so far.
      first_loss: ``f[]`` loss of the first step.
      last_loss: ``f[]`` loss of the latest step.
      loss_ema: ``f[]`` episode-local EMA of the loss (starts at the first loss).
      loss_mean: ``f[]`` running mean of the losses (Welford).
      loss_m2: ``f[]`` running sum of squared deviations (Welford).
      update_norm_sum: ``f[]`` sum of the recorded update norms.
      update_norm_count: ``i32[]`` how many steps recorded an update norm.
    """

    lr_index: jax.Array
    noise_index: jax.Array
    lr_multiplier: jax.Array
    noise_std: jax.Array
    context_bucket: jax.Array
    context_trend: jax.Array
    context_phase: jax.Array
    start_step: jax.Array
    episode_steps: jax.Array
    first_loss: jax.Array
    last_loss: jax.Array
    loss_ema: jax.Array
    loss_mean: jax.Array
    loss_m2: jax.Array
    update_norm_sum: jax.Array
    update_norm_count: jax.Array


# The episode log's columns, in the order of their rows' entries.
LOG_INT_COLUMNS = (
    "lr_index",
    "noise_index",
    "start_step",
    "end_step",
    "context_bucket",
    "context_trend",
    "context_phase",
)
LOG_FLOAT_COLUMNS = (
    "start_loss",
    "end_loss",
    "ema_loss_start",
    "ema_loss_end",
    "reward_base",
    "reward_instability",
    "reward_penalty",
    "reward_unclipped",
    "reward",
    "mean_update_norm",
)


class EpisodeLog(NamedTuple):
    """Ring buffer of the last ``C`` closed episodes, one row per episode.

    The integer and the float columns are stacked in one array each, so
    closing an episode writes two rows rather than one element of every
    column (each write is a kernel of its own in the compiled step). Read a
    column by name with `column`.

    Unscored episodes carry NaN rewards; episodes without update norms carry a
    NaN ``mean_update_norm``. Empty rows hold -1 and NaN.

    Attributes:
      log_ints: ``i32[C, len(LOG_INT_COLUMNS)]`` arm indices, steps and context.
      log_floats: ``f[C, len(LOG_FLOAT_COLUMNS)]`` losses, reward parts and the
        mean update norm.
    """

    log_ints: jax.Array
    log_floats: jax.Array

    def column(self, name: str) -> jax.Array:
        """The ``[C]`` column ``name`` (one of `LOG_INT_COLUMNS` or `LOG_FLOAT_COLUMNS`).

        Raises:
          KeyError: if ``name`` is not a column of the log.
        """
        if name in LOG_INT_COLUMNS:
            return self.log_ints[:, LOG_INT_COLUMNS.index(name)]
        if name in LOG_FLOAT_COLUMNS:
            return self.log_floats[:, LOG_FLOAT_COLUMNS.index(name)]
        raise KeyError(
            f"{name!r} is not an episode log column; columns: "
            f"{LOG_INT_COLUMNS + LOG_FLOAT_COLUMNS}."
        )


class GuardState(NamedTuple):
    """The spike guard and the running LR scale.

    Attributes:
      lr_scale: ``f[]`` running scale on the LR arm (guard cuts, relative moves).
      guard_fast_loss: ``f[]`` fast EMA of the recorded losses.
      guard_slow_loss: ``f[]`` slow EMA of the recorded losses.
      guard_first_loss: ``f[]`` the first recorded loss (the run's starting level).
      guard_steps: ``i32[]`` losses folded into the EMAs.
      snapshot_loss: ``f[]`` slow EMA when the snapshot was taken (the EMAs
        restart there after a rollback).
      has_snapshot: ``bool[]`` whether the adapter holds a snapshot.
      consecutive_rollbacks: ``i32[]`` rollbacks since the last clean episode.
      total_rollbacks: ``i32[]`` rollbacks so far.
      take_snapshot: ``bool[]`` the latest step asked the adapter to snapshot
        the parameters and inner state it started from.
      rolled_back: ``bool[]`` the latest step asked the adapter to restore the
        snapshot instead of applying its update.
      path_since_snapshot: ``f[]`` sum of the update norms recorded since the
        last snapshot (growth only).
      straightness: ``f[]`` distance moved over path length, measured at the
        latest episode boundary (NaN before the first measurement).
      timid_streak: ``i32[]`` consecutive episodes whose straightness passed
        ``growth_threshold`` since the last growth or cut.
      lr_ceiling: ``f[]`` growth never takes the LR scale above this: starts at
        ``max_lr_scale``, set to the cut scale by every rollback or eval cut.
      eval_best_loss: ``f[]`` the best held-out loss handed in (inf before any).
      eval_stale: ``i32[]`` evals in a row that were not a new best.
      eval_count: ``i32[]`` finite held-out losses handed in.
      eval_improved: ``bool[]`` the latest eval was a new best (an adapter with
        ``restore_best`` copies the parameters then).
      eval_cuts: ``i32[]`` LR-scale cuts made because the eval loss stalled.
    """

    lr_scale: jax.Array
    guard_fast_loss: jax.Array
    guard_slow_loss: jax.Array
    guard_first_loss: jax.Array
    guard_steps: jax.Array
    snapshot_loss: jax.Array
    has_snapshot: jax.Array
    consecutive_rollbacks: jax.Array
    total_rollbacks: jax.Array
    take_snapshot: jax.Array
    rolled_back: jax.Array
    path_since_snapshot: jax.Array
    straightness: jax.Array
    timid_streak: jax.Array
    lr_ceiling: jax.Array
    eval_best_loss: jax.Array
    eval_stale: jax.Array
    eval_count: jax.Array
    eval_improved: jax.Array
    eval_cuts: jax.Array


class GuardDecision(NamedTuple):
    """What the guard asks of the adapter for the step whose loss was just seen.

    Attributes:
      rollback: ``bool[]`` restore the snapshot instead of applying this step.
      take_snapshot: ``bool[]`` snapshot the parameters and inner state this
        step starts from (their loss was just seen to be sound).
    """

    rollback: jax.Array
    take_snapshot: jax.Array


class AEESState(NamedTuple):
    """Everything AEES knows, as one pytree of arrays.

    Attributes:
      lr_controller: LR-arm statistics, arm axis ``L``.
      noise_controller: noise-arm statistics, shapes ``[M, ..., N]``.
      episode: the open episode (its arms are always already chosen).
      trend_end_losses: ``f[W]`` the last episode-end losses, newest last.
      trend_count: ``i32[]`` how many entries of ``trend_end_losses`` are valid.
      global_step: ``i32[]`` the step the next recorded loss belongs to.
      rng_key: typed PRNG key every random choice derives from.
      episodes_closed: ``i32[]`` closed episodes, scored or not.
      skipped_steps: ``i32[]`` steps the core ignored (non-finite or skipped).
      unscored_episodes: ``i32[]`` closed episodes whose reward was undefined.
      episode_log: the last ``C`` closed episodes.
      guard: the spike guard and the running LR scale (inert unless enabled).
    """

    lr_controller: ControllerState
    noise_controller: ControllerState
    episode: OpenEpisode
    trend_end_losses: jax.Array
    trend_count: jax.Array
    global_step: jax.Array
    rng_key: jax.Array
    episodes_closed: jax.Array
    skipped_steps: jax.Array
    unscored_episodes: jax.Array
    episode_log: EpisodeLog
    guard: GuardState


class RewardBreakdown(NamedTuple):
    """The reward of one episode and its parts (NaN where unscorable).

    Attributes:
      base: ``log(ema_start + eps) - log(ema_end + eps)``.
      instability: population variance over ``mean**2 + eps``.
      penalty: ``reward_instability_lambda * instability``.
      unclipped: ``base - penalty``.
      reward: ``unclipped`` clipped to ``[reward_clip_min, reward_clip_max]``.
      scorable: ``bool[]`` whether both logarithms were defined.
    """

    base: jax.Array
    instability: jax.Array
    penalty: jax.Array
    unclipped: jax.Array
    reward: jax.Array
    scorable: jax.Array


class Candidate(NamedTuple):
    """The arms in force for the current step.

    Attributes:
      lr_multiplier: ``f[]`` multiplier on the inner optimizer's update.
      noise_std: ``f[]`` gradient-noise standard deviation.
      lr_index: ``i32[]`` index into ``lr_candidates``.
      noise_index: ``i32[]`` index into ``noise_candidates``.
    """

    lr_multiplier: jax.Array
    noise_std: jax.Array
    lr_index: jax.Array
    noise_index: jax.Array


COUNTER_MAX = 2**31 - 1


def count_up(counter: jax.Array, by: jax.Array | int = 1) -> jax.Array:
    """``counter + by`` for a non-negative ``int32`` counter, stopping at `COUNTER_MAX`.

    Counters saturate instead of wrapping to negative values: a run of more
    than ``2**31 - 1`` steps keeps counting at the limit (the phase context
    stays "late"; the log ring keeps writing its newest slot).
    """
    by = jnp.asarray(by, counter.dtype)
    return counter + jnp.minimum(by, COUNTER_MAX - counter)
