"""The robust preset's controller of the running LR scale: spike guard, growth, eval control.

Three mechanisms move ``GuardState.lr_scale``, the factor every episode's LR
multiplier is taken from:

* the **spike guard** asks the adapter to roll back to its last snapshot when
  the loss spikes or turns non-finite, and cuts the scale;
* **growth** doubles the scale while the parameters keep moving in one
  direction (a timid learning rate), but never while the loss rises and never
  once the training loss has nearly reached zero, where moving straight means
  growing margins on memorised data rather than being too timid;
* **eval control** (when the adapter is handed a held-out loss) vetoes growth
  that does not improve it and cuts the scale when it stops improving.

Everything here is a pure function of the static config and a `GuardState`;
`pulseopt_core.episode` composes them into `record_step` and `record_eval`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from pulseopt_core import bandit
from pulseopt_core.config import AEESConfig
from pulseopt_core.state import GuardDecision, GuardState, count_up


def initial_guard(config: AEESConfig) -> GuardState:
    """The guard before any step: scale 1, no snapshot, no eval seen."""
    dtype = bandit.float_dtype()
    int_zero = jnp.zeros((), jnp.int32)
    false = jnp.zeros((), bool)
    return GuardState(
        lr_scale=jnp.ones((), dtype),
        guard_fast_loss=jnp.zeros((), dtype),
        guard_slow_loss=jnp.zeros((), dtype),
        guard_first_loss=jnp.zeros((), dtype),
        guard_steps=int_zero,
        snapshot_loss=jnp.zeros((), dtype),
        has_snapshot=false,
        consecutive_rollbacks=int_zero,
        total_rollbacks=int_zero,
        take_snapshot=false,
        rolled_back=false,
        path_since_snapshot=jnp.zeros((), dtype),
        straightness=jnp.full((), jnp.nan, dtype),
        timid_streak=int_zero,
        lr_ceiling=jnp.asarray(config.max_lr_scale, dtype),
        eval_best_loss=jnp.full((), jnp.inf, dtype),
        eval_stale=int_zero,
        eval_count=int_zero,
        eval_improved=false,
        eval_cuts=int_zero,
    )


def averages(config: AEESConfig, guard: GuardState, loss: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The fast and slow loss EMAs with ``loss`` folded in (both start at the first loss)."""
    first = guard.guard_steps == 0
    fast = config.guard_fast_alpha * loss + (1.0 - config.guard_fast_alpha) * guard.guard_fast_loss
    slow = config.guard_slow_alpha * loss + (1.0 - config.guard_slow_alpha) * guard.guard_slow_loss
    return jnp.where(first, loss, fast), jnp.where(first, loss, slow)


def _first_loss(guard: GuardState, loss: jax.Array) -> jax.Array:
    """The loss the run started at (``loss`` itself on the very first step)."""
    return jnp.where(guard.guard_steps == 0, loss, guard.guard_first_loss)


def check(
    config: AEESConfig, guard: GuardState, loss: jax.Array, closes: jax.Array
) -> GuardDecision:
    """The spike test and the snapshot request for a step whose loss is ``loss``.

    A step spikes when its loss is not finite, or when the fast EMA exceeds
    ``guard_spike_ratio`` times a reference level plus ``guard_spike_floor``
    times the starting loss. The reference is the slow EMA before this step,
    and during the
    first ``guard_warmup_steps`` steps (while the slow EMA still settles) the
    larger of it and the starting loss, so a run diverging from its first step
    is caught at once. The floor keeps a near-zero training loss, whose
    minibatch values jump by large factors, from counting as a spike.
    """
    finite = jnp.isfinite(loss)
    safe = jnp.where(finite, loss, guard.guard_slow_loss)
    fast, _ = averages(config, guard, safe)
    start = _first_loss(guard, safe)
    warm = guard.guard_steps >= config.guard_warmup_steps
    # The level before this step: the slow EMA without this loss folded in.
    level = jnp.where(guard.guard_steps == 0, safe, guard.guard_slow_loss)
    reference = jnp.where(warm, level, jnp.maximum(level, start))
    threshold = config.guard_spike_ratio * reference + config.guard_spike_floor * jnp.abs(start)
    spike = ~finite | (fast > threshold)
    armed = guard.has_snapshot & (guard.consecutive_rollbacks < config.guard_max_consecutive)
    return GuardDecision(
        rollback=spike & armed,
        take_snapshot=~spike & (~guard.has_snapshot | closes),
    )


def fitted(config: AEESConfig, guard: GuardState) -> jax.Array:
    """Whether the training loss has nearly reached zero: below ``growth_fit_fraction`` of its start.

    The loss level is the lower of the fast and the slow EMA, so a loss that
    falls quickly counts at once rather than after the slow EMA's lag. Only a
    positive starting loss defines the fraction; a loss that starts at or below
    zero is never considered fitted.
    """
    start = guard.guard_first_loss
    level = jnp.minimum(guard.guard_fast_loss, guard.guard_slow_loss)
    return (start > 0.0) & (level < config.growth_fit_fraction * start)


def stepped(
    config: AEESConfig,
    guard: GuardState,
    loss: jax.Array,
    decision: GuardDecision,
    closes: jax.Array,
    displacement_norm: jax.Array | float | None,
) -> GuardState:
    """The guard after a recorded (finite, not rolled back) step, before its update's norm."""
    fast, slow = averages(config, guard, loss)
    taken = decision.take_snapshot
    if config.growth:
        guard = _measure_straightness(config, guard, taken, fast, displacement_norm)
    return guard._replace(
        guard_fast_loss=fast,
        guard_slow_loss=slow,
        guard_first_loss=_first_loss(guard, loss),
        guard_steps=count_up(guard.guard_steps),
        snapshot_loss=jnp.where(taken, slow, guard.snapshot_loss),
        has_snapshot=guard.has_snapshot | taken,
        consecutive_rollbacks=jnp.where(closes, 0, guard.consecutive_rollbacks),
        take_snapshot=taken,
    )


def _measure_straightness(
    config: AEESConfig,
    guard: GuardState,
    taken: jax.Array,
    fast: jax.Array,
    displacement_norm: jax.Array | float | None,
) -> GuardState:
    """Score the segment a new snapshot ends: distance moved over path length.

    The path is the sum of the update norms folded in since the previous
    snapshot; this step's own update is applied after the snapshot, so its
    norm, folded in after this, starts the next segment. A segment counts as timid when it was straight, the loss did not
    rise over it (fast EMA now at most the slow EMA at the previous snapshot),
    the run has not fitted its training data, and no held-out loss says
    otherwise (the latest eval, if any, was a new best). A measured segment
    extends or resets the run of timid episodes.
    """
    path = guard.path_since_snapshot
    dtype = path.dtype
    distance = (
        jnp.zeros((), dtype)
        if displacement_norm is None
        else jnp.asarray(displacement_norm).astype(dtype)
    )
    measured = taken & guard.has_snapshot & (path > 0.0) & jnp.isfinite(distance)
    straightness = jnp.where(measured, distance / jnp.where(path > 0.0, path, 1.0), jnp.nan)
    falling = fast <= guard.snapshot_loss
    eval_agrees = (guard.eval_count == 0) | (guard.eval_stale == 0)
    timid = (
        measured
        & (straightness > config.growth_threshold)
        & falling
        & ~fitted(config, guard)
        & eval_agrees
    )
    return guard._replace(
        path_since_snapshot=jnp.where(taken, 0.0, path),
        straightness=jnp.where(measured, straightness, guard.straightness),
        timid_streak=jnp.where(
            measured, jnp.where(timid, count_up(guard.timid_streak), 0), guard.timid_streak
        ),
    )


def boundary_scale(
    config: AEESConfig, guard: GuardState, scale: jax.Array, cut: jax.Array | bool
) -> GuardState:
    """The guard with the LR scale of the next episode: cut, grown, relaxed or kept.

    ``scale`` is the scale the finished episode ran at. A rollback (``cut``)
    multiplies it by ``guard_backoff`` and lowers the growth ceiling there.
    With growth, enough timid episodes multiply it by ``growth_factor`` (up to
    the ceiling), and a run that has fitted its training data drops any scale
    above 1 back to 1: what is left to learn there is memorisation.
    """
    if not config.guard:
        return guard._replace(lr_scale=scale)
    cut = jnp.asarray(cut, bool)
    cut_scale = jnp.maximum(scale * config.guard_backoff, config.min_lr_scale)
    if config.growth:
        grow = ~cut & (guard.timid_streak >= config.growth_patience)
        grown = jnp.minimum(scale * config.growth_factor, guard.lr_ceiling)
        scale = jnp.where(grow, jnp.maximum(grown, scale), scale)
        scale = jnp.where(fitted(config, guard), jnp.minimum(scale, 1.0), scale)
        guard = guard._replace(
            timid_streak=jnp.where(cut | grow, 0, guard.timid_streak),
            lr_ceiling=jnp.where(cut, cut_scale, guard.lr_ceiling),
        )
    return guard._replace(lr_scale=jnp.where(cut, cut_scale, scale))


def after_rollback(guard: GuardState) -> GuardState:
    """Restart the loss EMAs at the snapshot's level and count the rollback."""
    return guard._replace(
        guard_fast_loss=guard.snapshot_loss,
        guard_slow_loss=guard.snapshot_loss,
        consecutive_rollbacks=count_up(guard.consecutive_rollbacks),
        total_rollbacks=count_up(guard.total_rollbacks),
        take_snapshot=jnp.zeros((), bool),
        rolled_back=jnp.ones((), bool),
        path_since_snapshot=jnp.zeros_like(guard.path_since_snapshot),
    )


def observe_eval(config: AEESConfig, guard: GuardState, eval_loss: jax.Array) -> GuardState:
    """Fold a held-out loss into the guard (a non-finite one changes nothing).

    The best eval loss is tracked always (adapters keep the best parameters
    with ``restore_best``). With ``config.guard`` an eval that is not a new best
    (by more than ``eval_min_delta``, relative) makes the next segment ineligible
    for growth, and after ``eval_patience`` such evals in a row the scale is
    multiplied by ``guard_backoff`` (down to ``min_lr_scale``) and the growth
    ceiling follows it: a reduce-on-plateau on the held-out loss. A cut applies
    from the next episode on.
    """
    finite = jnp.isfinite(eval_loss)
    best = guard.eval_best_loss
    improved = finite & (eval_loss < best - config.eval_min_delta * jnp.abs(best))
    improved = improved | (finite & ~jnp.isfinite(best))
    stale = jnp.where(finite, jnp.where(improved, 0, count_up(guard.eval_stale)), guard.eval_stale)
    guard = guard._replace(
        eval_best_loss=jnp.where(improved, eval_loss, best),
        eval_count=count_up(guard.eval_count, finite.astype(jnp.int32)),
        eval_improved=improved,
        eval_stale=stale,
    )
    if not config.guard:
        return guard
    plateau = stale >= config.eval_patience
    cut_scale = jnp.maximum(guard.lr_scale * config.guard_backoff, config.min_lr_scale)
    return guard._replace(
        lr_scale=jnp.where(plateau, cut_scale, guard.lr_scale),
        lr_ceiling=jnp.where(plateau, jnp.minimum(guard.lr_ceiling, cut_scale), guard.lr_ceiling),
        timid_streak=jnp.where(finite & ~improved, 0, guard.timid_streak),
        eval_stale=jnp.where(plateau, 0, stale),
        eval_cuts=count_up(guard.eval_cuts, plateau.astype(jnp.int32)),
    )
