"""Counters saturate at 2**31 - 1 instead of wrapping, and the phase context never overflows."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import pulseopt_core as core
from pulseopt_core.state import COUNTER_MAX, count_up

LIMIT = jnp.int32(COUNTER_MAX)


def test_count_up_stops_at_the_limit() -> None:
    assert int(count_up(LIMIT - 2)) == COUNTER_MAX - 1
    assert int(count_up(LIMIT - 1)) == COUNTER_MAX
    assert int(count_up(LIMIT)) == COUNTER_MAX
    assert int(count_up(LIMIT - 1, jnp.int32(5))) == COUNTER_MAX
    assert int(count_up(jnp.int32(3), jnp.int32(0))) == 3


def _at_the_limit(state: core.AEESState) -> core.AEESState:
    """``state`` with every unbounded counter one step short of the limit."""
    near = LIMIT - 1

    def full(stats: core.UCBStats) -> core.UCBStats:
        return stats._replace(total_updates=jnp.full_like(stats.total_updates, near))

    lr = state.lr_controller
    return state._replace(
        global_step=near,
        episodes_closed=near,
        skipped_steps=near,
        unscored_episodes=near,
        lr_controller=lr._replace(prior=full(lr.prior), buckets=full(lr.buckets)),
        guard=state.guard._replace(guard_steps=near, total_rollbacks=near),
    )


def test_a_run_past_the_limit_keeps_counting_at_it_and_keeps_deciding() -> None:
    config = core.AEESConfig(
        lr_candidates=(0.5, 1.0, 2.0),
        episode_length=2,
        context_mode="trend_phase",
        total_training_steps=3 * COUNTER_MAX,
        guard=True,
        seed=0,
    )
    record = jax.jit(core.record_step, static_argnums=0)
    state = core.init(config)
    for loss in (1.0, 0.95):  # a snapshot and a started guard, then the limit
        state = record(config, state, jnp.float32(loss), 0.1)
    state = _at_the_limit(state)
    for loss in (0.9, 0.8, jnp.nan, 0.7, 0.6, 0.5):
        state = record(config, state, jnp.float32(loss), 0.1)
    for counter in (
        state.global_step,
        state.episodes_closed,
        jnp.max(state.lr_controller.prior.total_updates),
        state.guard.guard_steps,
    ):
        assert int(counter) == COUNTER_MAX
    assert int(state.guard.total_rollbacks) == COUNTER_MAX  # the NaN rolled back
    arm = int(core.current_candidate(state).lr_index)
    assert 0 <= arm < 3
    # The newest log entry is the last episode (the ring rewrites its newest slot).
    logs = core.episode_logs(config, state)
    assert logs["episode_end_losses"][-1] == np.float32(0.6)


def test_the_phase_of_a_step_near_the_limit_does_not_overflow() -> None:
    config = core.AEESConfig(context_mode="trend_phase", total_training_steps=3 * COUNTER_MAX)
    phases = [
        int(core.training_phase(config, jnp.int32(step)))
        for step in (0, COUNTER_MAX - 1, COUNTER_MAX)
    ]
    assert phases == [0, 0, 1]
    small = core.AEESConfig(context_mode="trend_phase", total_training_steps=10)
    got = [int(core.training_phase(small, jnp.int32(s))) for s in range(11)]
    assert got == [0 if 3 * s < 10 else 1 if 3 * s < 20 else 2 for s in range(11)]
    assert int(core.training_phase(small, LIMIT)) == 2
