"""Episode bookkeeping: initialise, record a step, close an episode, pick the next arms.

These are the functions both adapters run. Each takes the static `AEESConfig`
first and returns a new `AEESState`; none has a Python branch on a traced
value, so they jit (config static), vmap over states and run inside
`jax.lax.scan`.

Randomness: the state's ``rng_key`` never changes. The arms of episode ``e``
use a counter hash of the key's data, ``SELECT_STREAM`` and ``e`` (see
`pulseopt_core.hashing`); the gradient noise of step
``t`` uses ``fold_in(fold_in(key, NOISE_STREAM), t)``. The same config, key
and loss sequence therefore give the same decisions in every adapter, on
every run, and after any checkpoint/resume.
"""

from __future__ import annotations

import secrets
from typing import Any

import jax
import jax.numpy as jnp

from pulseopt_core import bandit, context, guard, hashing, reward
from pulseopt_core.config import AEESConfig
from pulseopt_core.state import (
    COUNTER_MAX,
    LOG_FLOAT_COLUMNS,
    LOG_INT_COLUMNS,
    AEESState,
    Candidate,
    EpisodeLog,
    GuardDecision,
    OpenEpisode,
    count_up,
)

SELECT_STREAM = 0
NOISE_STREAM = 1


def make_key(config: AEESConfig, key: jax.Array | int | None = None) -> jax.Array:
    """The typed key a state is built on: ``key`` if given, else ``config.seed``.

    With neither, fresh entropy is drawn, so runs differ.
    """
    if key is None:
        key = config.seed if config.seed is not None else secrets.randbits(32)
    if isinstance(key, int):
        return jax.random.key(key)
    key = jnp.asarray(key)
    if not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        raise ValueError(
            f"key must be an int or a typed JAX key (jax.random.key), got {key.dtype}."
        )
    return key


def _empty_log(config: AEESConfig) -> EpisodeLog:
    capacity = config.log_capacity
    return EpisodeLog(
        log_ints=jnp.full((capacity, len(LOG_INT_COLUMNS)), -1, jnp.int32),
        log_floats=jnp.full((capacity, len(LOG_FLOAT_COLUMNS)), jnp.nan, bandit.float_dtype()),
    )


def _select(pick_new: jax.Array, new: Any, old: Any) -> Any:
    """``new`` where ``pick_new``, else ``old``, leaf by leaf (a leaf both share is kept as is)."""
    return jax.tree.map(lambda a, b: a if a is b else jnp.where(pick_new, a, b), new, old)


def _selected_values(
    config: AEESConfig, lr_index: jax.Array, noise_index: jax.Array
) -> tuple[jax.Array, jax.Array]:
    dtype = bandit.float_dtype()
    lr_values = jnp.asarray(config.lr_candidates, dtype)
    noise_values = jnp.asarray(config.noise_candidates, dtype)
    return lr_values[lr_index], noise_values[noise_index]


def _episode_scale(config: AEESConfig, lr_scale: jax.Array, lr_arm: jax.Array) -> jax.Array:
    """The LR scale an episode runs at: a relative arm moves the running scale."""
    if config.multiplier_mode == "absolute":
        return lr_scale
    return jnp.clip(lr_scale * lr_arm, config.min_lr_scale, config.max_lr_scale)


def _noise_controller_of(config: AEESConfig, lr_index: jax.Array) -> jax.Array:
    """Which noise controller belongs to an LR arm (always 0 unless conditional)."""
    if config.num_noise_controllers == 1:
        return jnp.zeros((), jnp.int32)
    return lr_index


def _open_episode(config: AEESConfig, state: AEESState) -> OpenEpisode:
    """Choose the arms of the next episode (starting at ``state.global_step``)."""
    words = jax.random.key_data(state.rng_key).reshape(-1)
    episode = (*(words[i] for i in range(words.shape[0])), state.episodes_closed)
    lr_seed = hashing.mix(*episode, salt=2 * SELECT_STREAM)
    noise_seed = hashing.mix(*episode, salt=2 * SELECT_STREAM + 1)
    bucket, trend, phase = context.context_bucket(
        config, state.trend_end_losses, state.trend_count, state.global_step
    )
    zero_index = jnp.zeros((), jnp.int32)
    lr_index = (
        bandit.controller_select(config, state.lr_controller, bucket, lr_seed)
        if config.num_lr_arms > 1
        else zero_index
    )
    if config.num_noise_arms > 1:
        owner = _noise_controller_of(config, lr_index)
        noise_controller = jax.tree.map(lambda leaf: leaf[owner], state.noise_controller)
        noise_index = bandit.controller_select(config, noise_controller, bucket, noise_seed)
    else:
        noise_index = zero_index
    lr_arm, noise_std = _selected_values(config, lr_index, noise_index)
    scale = _episode_scale(config, state.guard.lr_scale, lr_arm)
    lr_multiplier = scale if config.multiplier_mode == "relative" else lr_arm * scale
    zero = jnp.zeros((), bandit.float_dtype())
    return OpenEpisode(
        lr_index=lr_index,
        noise_index=noise_index,
        lr_multiplier=lr_multiplier,
        noise_std=noise_std,
        context_bucket=bucket,
        context_trend=trend,
        context_phase=phase,
        start_step=state.global_step,
        episode_steps=zero_index,
        first_loss=zero,
        last_loss=zero,
        loss_ema=zero,
        loss_mean=zero,
        loss_m2=zero,
        update_norm_sum=zero,
        update_norm_count=zero_index,
    )


def init(config: AEESConfig, key: jax.Array | int | None = None) -> AEESState:
    """A fresh state whose first episode's arms are already chosen.

    Args:
      config: the AEES configuration.
      key: an int seed or a typed JAX key overriding ``config.seed`` (for example
        one key per member of a vmapped population).

    Returns:
      The initial `AEESState`.

    Example:
      >>> import pulseopt_core as core
      >>> config = core.AEESConfig(lr_candidates=(0.5, 1.0, 2.0), seed=0)
      >>> state = core.init(config)
      >>> float(core.current_candidate(state).lr_multiplier)
      0.5
    """
    return _init(config, make_key(config, key))


@jax.jit(static_argnums=0)
def _init(config: AEESConfig, key: jax.Array) -> AEESState:
    dtype = bandit.float_dtype()
    int_zero = jnp.zeros((), jnp.int32)
    noise_batch = (config.num_noise_controllers,)
    state = AEESState(
        lr_controller=bandit.init_controller(config, config.num_lr_arms),
        noise_controller=bandit.init_controller(config, config.num_noise_arms, noise_batch),
        episode=None,  # type: ignore[arg-type]
        trend_end_losses=jnp.zeros((config.context_trend_window,), dtype),
        trend_count=int_zero,
        global_step=int_zero,
        rng_key=key,
        episodes_closed=int_zero,
        skipped_steps=int_zero,
        unscored_episodes=int_zero,
        episode_log=_empty_log(config),
        guard=guard.initial_guard(config),
    )
    return state._replace(episode=_open_episode(config, state))


def current_candidate(state: AEESState) -> Candidate:
    """The LR multiplier, noise std and arm indices in force for the next step."""
    episode = state.episode
    return Candidate(
        lr_multiplier=episode.lr_multiplier,
        noise_std=episode.noise_std,
        lr_index=episode.lr_index,
        noise_index=episode.noise_index,
    )


def noise_key(state: AEESState) -> jax.Array:
    """The key of this step's gradient noise (fold in a leaf index per leaf)."""
    return jax.random.fold_in(jax.random.fold_in(state.rng_key, NOISE_STREAM), state.global_step)


def _next_episode(config: AEESConfig, state: AEESState, cut: jax.Array | bool) -> AEESState:
    """Commit the finished episode's LR scale (cut on a rollback) and open the next episode."""
    lr_arm, _ = _selected_values(config, state.episode.lr_index, state.episode.noise_index)
    scale = _episode_scale(config, state.guard.lr_scale, lr_arm)
    committed = state._replace(guard=guard.boundary_scale(config, state.guard, scale, cut))
    return committed._replace(episode=_open_episode(config, committed))


def _close_episode(
    config: AEESConfig,
    state: AEESState,
    cut: jax.Array | bool = False,
    scored: jax.Array | bool = True,
) -> AEESState:
    """Score the open episode, update its controllers, log it, open the next one.

    ``cut``: the episode ended in a rollback (the LR scale is cut). With
    ``scored`` false nothing is scored, learned or logged and only the next
    episode opens (a rollback before the episode's first step): one body for
    both, so the program holds one copy of it.
    """
    episode = state.episode
    scored = jnp.asarray(scored, bool)
    score = reward.reward_from_statistics(
        config,
        episode.first_loss,
        episode.loss_ema,
        episode.loss_mean,
        episode.loss_m2,
        episode.episode_steps,
    )
    learn = score.scorable & scored
    bucket = episode.context_bucket

    lr_controller = state.lr_controller
    if config.num_lr_arms > 1:
        updated = bandit.controller_update(
            config, lr_controller, bucket, episode.lr_index, score.reward
        )
        lr_controller = _select(learn, updated, lr_controller)
    noise_controller = state.noise_controller
    if config.num_noise_arms > 1:
        owner = _noise_controller_of(config, episode.lr_index)
        mine = jax.tree.map(lambda leaf: leaf[owner], noise_controller)
        updated = bandit.controller_update(config, mine, bucket, episode.noise_index, score.reward)
        updated = _select(learn, updated, mine)
        noise_controller = jax.tree.map(
            lambda all_, one: all_.at[owner].set(one), noise_controller, updated
        )

    has_norm = episode.update_norm_count > 0
    mean_norm = jnp.where(
        has_norm,
        episode.update_norm_sum
        / jnp.maximum(episode.update_norm_count, 1).astype(episode.update_norm_sum.dtype),
        jnp.nan,
    )
    ints = {
        "lr_index": episode.lr_index,
        "noise_index": episode.noise_index,
        "start_step": episode.start_step,
        "end_step": episode.start_step + episode.episode_steps - 1,
        "context_bucket": bucket,
        "context_trend": episode.context_trend,
        "context_phase": episode.context_phase,
    }
    floats = {
        "start_loss": episode.first_loss,
        "end_loss": episode.last_loss,
        "ema_loss_start": episode.first_loss,
        "ema_loss_end": episode.loss_ema,
        "reward_base": score.base,
        "reward_instability": score.instability,
        "reward_penalty": score.penalty,
        "reward_unclipped": score.unclipped,
        "reward": score.reward,
        "mean_update_norm": mean_norm,
    }
    # Past the counter's limit the newest slot is rewritten (see `count_up`).
    # One row per array: each write is a kernel of its own in the compiled step.
    slot = jnp.minimum(state.episodes_closed, COUNTER_MAX - 1) % config.log_capacity

    def write(table: jax.Array, columns: tuple[str, ...], values: dict[str, Any]) -> jax.Array:
        row = jnp.stack([jnp.asarray(values[name]).astype(table.dtype) for name in columns])
        row = jnp.where(scored, row, table[slot])
        return jax.lax.dynamic_update_index_in_dim(table, row, slot, 0)

    log = state.episode_log
    episode_log = EpisodeLog(
        log_ints=write(log.log_ints, LOG_INT_COLUMNS, ints),
        log_floats=write(log.log_floats, LOG_FLOAT_COLUMNS, floats),
    )
    trend_end_losses, trend_count = context.push_end_loss(
        state.trend_end_losses, state.trend_count, episode.last_loss
    )
    closed = state._replace(
        lr_controller=lr_controller,
        noise_controller=noise_controller,
        trend_end_losses=jnp.where(scored, trend_end_losses, state.trend_end_losses),
        trend_count=jnp.where(scored, trend_count, state.trend_count),
        episodes_closed=count_up(state.episodes_closed, scored.astype(jnp.int32)),
        unscored_episodes=count_up(
            state.unscored_episodes, (scored & ~score.scorable).astype(jnp.int32)
        ),
        episode_log=episode_log,
    )
    return _next_episode(config, closed, cut)


@jax.jit(static_argnums=0)
def guard_check(config: AEESConfig, state: AEESState, loss: jax.Array | float) -> GuardDecision:
    """What the spike guard asks of the adapter for a step whose loss is ``loss``.

    A step spikes when its loss is not finite, or when the fast loss EMA
    exceeds ``guard_spike_ratio`` times the slow one (during the first
    ``guard_warmup_steps`` steps: the larger of the slow one and the starting
    loss) plus ``guard_spike_floor`` times the starting loss. A spike rolls
    back when a snapshot exists and fewer than ``guard_max_consecutive``
    rollbacks happened since the last clean episode. A sound step snapshots the
    parameters it starts from when none is held yet (the first step: the
    starting point) or when it closes its episode. `record_step` applies the
    same decision to the state; adapters call this first to know what to do
    with the step.

    Returns:
      A `GuardDecision`; both flags are always false without ``config.guard``.
    """
    false = jnp.zeros((), bool)
    if not config.guard:
        return GuardDecision(rollback=false, take_snapshot=false)
    loss = jnp.asarray(loss).astype(bandit.float_dtype())
    closes = state.episode.episode_steps + 1 >= config.episode_length
    return guard.check(config, state.guard, loss, closes)


@jax.jit(static_argnums=0)
def record_step(
    config: AEESConfig,
    state: AEESState,
    loss: jax.Array | float,
    update_norm: jax.Array | float | None = None,
    *,
    skip: jax.Array | bool = False,
    displacement_norm: jax.Array | float | None = None,
) -> AEESState:
    """Record one training step; close the episode and pick new arms when it is full.

    Args:
      config: the AEES configuration (static under jit).
      state: the current state.
      loss: the loss at the parameters before this step's update.
      update_norm: the L2 norm of this step's parameter update, or ``None`` if
        not tracked (then ``mean_update_norms`` logs ``None``). With
        ``config.guard`` the update is applied after the snapshot a closing
        step takes, so its norm joins the episode (and the growth segment)
        this step leaves open, as `record_update_norm` would fold it in.
      skip: when true the step is not recorded and never rolls back (a step
        whose gradients are non-finite should instead be reported to the guard
        with a non-finite loss, which counts as a spike).
      displacement_norm: with ``config.growth``, on a step that `guard_check`
        asked to snapshot, the L2 distance between the parameters this step
        starts from and the previous snapshot (ignored on other steps).

    Returns:
      The new state. A skipped step, or one whose loss or update norm is not
      finite, leaves everything unchanged except ``skipped_steps`` (+1): a NaN
      never reaches the episode statistics or the controllers. With
      ``config.guard`` only the loss decides that (a non-finite update norm is
      left out of the norm statistics; the next loss is then not finite, a
      spike), and a step that `guard_check` rolls back instead closes the
      open episode without this loss, cuts the LR scale and opens a new one.
    """
    dtype = bandit.float_dtype()
    loss = jnp.asarray(loss).astype(dtype)
    norm = jnp.zeros((), dtype) if update_norm is None else jnp.asarray(update_norm).astype(dtype)
    valid = jnp.isfinite(loss) & ~jnp.asarray(skip, bool)
    if not config.guard:
        valid = valid & jnp.isfinite(norm)
    safe_loss = jnp.where(valid, loss, 0.0)
    # With the guard the norm is folded in after the step (see `record_update_norm`).
    with_norm = update_norm is not None and not config.guard
    safe_norm = jnp.where(valid & with_norm, norm, 0.0)

    episode = state.episode
    steps, first, ema, mean, m2 = reward.accumulate_loss(
        config,
        episode.episode_steps,
        episode.first_loss,
        episode.loss_ema,
        episode.loss_mean,
        episode.loss_m2,
        safe_loss,
    )
    counted = episode._replace(
        episode_steps=steps,
        first_loss=first,
        last_loss=safe_loss,
        loss_ema=ema,
        loss_mean=mean,
        loss_m2=m2,
        update_norm_sum=episode.update_norm_sum + safe_norm,
        update_norm_count=episode.update_norm_count + int(with_norm),
    )
    # Only the leaves a step touches are selected here; the controllers and
    # the log change only when an episode closes or a rollback fires, each
    # behind a conditional, so a plain step costs a handful of scalar ops.
    closes = valid & (steps >= config.episode_length)
    quiet = jnp.zeros((), bool)

    moved = state._replace(
        episode=_select(valid, counted, episode),
        global_step=jnp.where(valid, count_up(state.global_step), state.global_step),
        skipped_steps=jnp.where(valid, state.skipped_steps, count_up(state.skipped_steps)),
    )
    if config.guard:
        decision = guard_check(config, state, loss)
        stepped = guard.stepped(config, state.guard, safe_loss, decision, closes, displacement_norm)
        moved = moved._replace(
            guard=_select(valid, stepped, state.guard)._replace(
                take_snapshot=valid & decision.take_snapshot, rolled_back=quiet
            )
        )
    if not config.guard:
        return jax.lax.cond(closes, lambda s: _close_episode(config, s), lambda s: s, moved)
    # A step the adapter skipped on its own account (for example a GradScaler
    # overflow) is never a spike, whatever loss came with it.
    rollback = decision.rollback & ~jnp.asarray(skip, bool)
    # A rollback leaves this step unrecorded (the state before it, one step
    # on), closes the open episode as it stands (when it has steps), cuts the
    # LR scale and restarts the loss EMAs. It shares the episode's closing
    # body with a full episode, so the program compiles that body once.
    rolled = state._replace(global_step=count_up(state.global_step))
    base = _select(rollback, rolled, moved)
    scored = ~rollback | (state.episode.episode_steps > 0)
    ended = jax.lax.cond(
        closes | rollback,
        lambda s: _close_episode(config, s, cut=rollback, scored=scored),
        lambda s: s,
        base,
    )
    ended = ended._replace(guard=_select(rollback, guard.after_rollback(ended.guard), ended.guard))
    if update_norm is None:
        return ended
    return _fold_update_norm(config, ended, norm, valid & ~rollback)


def _fold_update_norm(
    config: AEESConfig, state: AEESState, norm: jax.Array, applies: jax.Array
) -> AEESState:
    """Add an applied update's norm to the open episode's statistics and the growth path."""
    add = applies & jnp.isfinite(norm)
    amount = jnp.where(add, norm, 0.0)
    episode = state.episode._replace(
        update_norm_sum=state.episode.update_norm_sum + amount,
        update_norm_count=state.episode.update_norm_count + add.astype(jnp.int32),
    )
    state = state._replace(episode=episode)
    if not config.growth:
        return state
    path = state.guard.path_since_snapshot + amount
    return state._replace(guard=state.guard._replace(path_since_snapshot=path))


@jax.jit(static_argnums=0)
def record_update_norm(
    config: AEESConfig, state: AEESState, update_norm: jax.Array | float
) -> AEESState:
    """With ``config.guard``: fold in the norm of the update the last recorded step applied.

    For adapters that know a step's loss before its update is applied, and
    the update's norm only later: they record the step with
    ``record_step(..., update_norm=None)`` as soon as the loss is known (so
    an episode closes, and its successor's arms are chosen, without waiting
    for the update), then hand the norm here before recording the next step.
    The result equals recording the step with its norm. A non-finite norm is
    left out.

    Raises:
      ValueError: without ``config.guard``, where a step's norm belongs to the
        episode the step ends and must come with it.
    """
    if not config.guard:
        raise ValueError(
            "record_update_norm needs config.guard; without the guard pass the update "
            "norm to record_step with its step."
        )
    norm = jnp.asarray(update_norm).astype(bandit.float_dtype()).reshape(())
    return _fold_update_norm(config, state, norm, jnp.ones((), bool))


@jax.jit(static_argnums=0)
def finalize(config: AEESConfig, state: AEESState) -> AEESState:
    """Close a partial episode (one with at least one step) and open the next one."""
    return jax.lax.cond(
        state.episode.episode_steps > 0,
        lambda s: _close_episode(config, s),
        lambda s: s,
        state,
    )


def restart_episode_at(
    config: AEESConfig, state: AEESState, global_step: jax.Array | int
) -> AEESState:
    """Move the step counter; an episode with no steps yet re-picks its arms there.

    Used by adapters whose caller numbers the steps itself. Only the phase of
    the context can change the choice, since nothing else has changed.
    """
    moved = state._replace(global_step=jnp.asarray(global_step, jnp.int32))
    fresh = moved._replace(episode=_open_episode(config, moved))
    return _select(state.episode.episode_steps == 0, fresh, moved)


@jax.jit(static_argnums=0)
def record_eval(config: AEESConfig, state: AEESState, eval_loss: jax.Array | float) -> AEESState:
    """Hand AEES a held-out (validation) loss measured at the current parameters.

    Optional, at any cadence; a NaN (no eval at this step) changes nothing. The
    best value is tracked, and ``state.guard.eval_improved`` tells an adapter
    with ``restore_best`` to copy the parameters. With ``config.guard`` (the
    robust preset) the eval loss also steers the LR scale: growth needs the
    latest eval to be a new best, and ``eval_patience`` evals in a row without
    one cut the scale by ``guard_backoff`` from the next episode on.

    Args:
      config: the AEES configuration (static under jit).
      state: the current state.
      eval_loss: a scalar held-out loss, or NaN when there is none.

    Returns:
      The new state.
    """
    eval_loss = jnp.asarray(eval_loss).astype(bandit.float_dtype()).reshape(())
    return state._replace(guard=guard.observe_eval(config, state.guard, eval_loss))
