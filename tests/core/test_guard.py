"""The spike guard: detection, rollback requests, compounding back-off, its cap, snapshots."""

from __future__ import annotations

import jax
import numpy as np
import pytest

import pulseopt_core as core

CONFIG = core.AEESConfig(episode_length=5, guard=True, guard_warmup_steps=5, seed=0)


def _run(config: core.AEESConfig, losses: list[float]) -> tuple[core.AEESState, list]:
    """Record the losses one by one; returns the final state and each step's decision."""
    state = core.init(config)
    decisions = []
    for loss in losses:
        decision = core.guard_check(config, state, loss)
        state = core.record_step(config, state, loss, 0.1)
        assert bool(state.guard.rolled_back) == bool(decision.rollback)
        assert bool(state.guard.take_snapshot) == bool(decision.take_snapshot)
        decisions.append((bool(decision.rollback), bool(decision.take_snapshot)))
    return state, decisions


def test_the_first_sound_step_and_every_episode_boundary_take_a_snapshot() -> None:
    _, decisions = _run(CONFIG, [1.0] * 10)
    snapshots = [step for step, (_, take) in enumerate(decisions) if take]
    assert snapshots == [0, 4, 9]


def test_a_loss_spike_rolls_back_and_halves_the_lr_scale() -> None:
    state, decisions = _run(CONFIG, [1.0] * 12 + [5.0])
    assert decisions[-1] == (True, False)
    assert float(state.guard.lr_scale) == 0.5
    assert float(core.current_candidate(state).lr_multiplier) == 0.5
    assert int(state.guard.total_rollbacks) == 1


def test_a_non_finite_loss_rolls_back_once_a_snapshot_exists() -> None:
    state, decisions = _run(CONFIG, [1.0] * 3 + [float("nan")])
    assert decisions[-1] == (True, False)
    assert int(state.skipped_steps) == 0


def test_a_non_finite_loss_before_any_snapshot_is_skipped() -> None:
    state, decisions = _run(CONFIG, [float("inf")])
    assert decisions == [(False, False)]
    assert int(state.skipped_steps) == 1


def test_during_warmup_a_spike_is_judged_against_the_starting_loss() -> None:
    _, decisions = _run(CONFIG, [1.0, 1.0, 9.0])
    assert [rollback for rollback, _ in decisions] == [False, False, True]


def test_a_loss_falling_from_its_start_does_not_spike_during_warmup() -> None:
    _, decisions = _run(CONFIG, [2.0, 0.5, 1.5, 1.0])
    assert not any(rollback for rollback, _ in decisions)


def test_cuts_compound_down_to_the_floor() -> None:
    config = CONFIG.replace(guard_max_consecutive=100, min_lr_scale=0.125)
    state, _ = _run(config, [1.0] * 6 + [50.0] * 6)
    assert int(state.guard.total_rollbacks) == 6
    assert float(state.guard.lr_scale) == 0.125


def test_consecutive_rollbacks_are_capped_until_an_episode_closes_cleanly() -> None:
    config = CONFIG.replace(guard_max_consecutive=2)
    state, decisions = _run(config, [1.0] * 6 + [50.0] * 4)
    assert [rollback for rollback, _ in decisions[6:]] == [True, True, False, False]
    assert float(state.guard.lr_scale) == 0.25
    state, decisions = _run(config, [1.0] * 6 + [50.0, 50.0] + [1.0] * 5 + [50.0])
    assert decisions[-1][0]


def test_a_rollback_closes_the_open_episode_without_the_spiking_loss() -> None:
    state, _ = _run(CONFIG, [1.0] * 7 + [9.0])
    logs = core.episode_logs(CONFIG, state)
    assert logs["episode_end_steps"] == [4, 6]
    assert logs["episode_end_losses"] == [1.0, 1.0]
    assert int(state.episode.start_step) == 8


def test_a_rollback_before_an_episodes_first_step_only_opens_the_next_episode() -> None:
    config = CONFIG.replace(guard_max_consecutive=100)
    state, decisions = _run(config, [1.0] * 6 + [50.0, 50.0])
    assert [rollback for rollback, _ in decisions[6:]] == [True, True]
    logs = core.episode_logs(config, state)
    # The first rollback closes the episode holding step 5; the second finds an
    # empty episode: nothing is scored, learned or logged, the scale is cut again.
    assert logs["episode_end_steps"] == [4, 5]
    assert int(state.episodes_closed) == 2
    assert int(state.unscored_episodes) == 0
    assert int(state.episode.start_step) == 8
    assert float(state.guard.lr_scale) == 0.25
    assert int(state.guard.total_rollbacks) == 2


def test_the_loss_averages_restart_at_the_snapshot_level() -> None:
    state, _ = _run(CONFIG, [2.0] * 7 + [30.0])
    assert float(state.guard.guard_fast_loss) == pytest.approx(2.0)
    assert float(state.guard.guard_slow_loss) == pytest.approx(2.0)


def test_without_the_guard_nothing_is_ever_requested() -> None:
    config = CONFIG.replace(guard=False)
    state, decisions = _run(config, [1.0] * 8 + [100.0, float("nan")])
    assert not any(rollback or take for rollback, take in decisions)
    assert float(state.guard.lr_scale) == 1.0


def test_relative_arms_compound_within_the_scale_bounds() -> None:
    config = core.AEESConfig(
        lr_candidates=(2.0,),
        multiplier_mode="relative",
        max_lr_scale=4.0,
        episode_length=1,
    )
    state = core.init(config)
    multipliers = []
    for _ in range(4):
        multipliers.append(float(core.current_candidate(state).lr_multiplier))
        state = core.record_step(config, state, 1.0)
    assert multipliers == [2.0, 4.0, 4.0, 4.0]


def test_the_guard_runs_under_vmap() -> None:
    losses = np.asarray([1.0] * 8 + [40.0], np.float32)

    def run(key):
        state = core.init(CONFIG, key)
        state, _ = jax.lax.scan(lambda s, l: (core.record_step(CONFIG, s, l), None), state, losses)
        return state.guard.total_rollbacks

    totals = jax.jit(jax.vmap(run))(jax.random.split(jax.random.key(0), 3))
    np.testing.assert_array_equal(totals, [1, 1, 1])


GROWING = core.AEESConfig(episode_length=4, guard=True, growth=True, guard_warmup_steps=2, seed=3)


def _record_both_ways(
    config: core.AEESConfig, steps: list[tuple[float, float, float]]
) -> tuple[core.AEESState, core.AEESState]:
    """Each (loss, update norm, displacement) recorded with its norm, and with the norm late."""
    together = late = core.init(config)
    for loss, norm, displacement in steps:
        together = core.record_step(config, together, loss, norm, displacement_norm=displacement)
        late = core.record_step(config, late, loss, None, displacement_norm=displacement)
        if not bool(late.guard.rolled_back):  # a rolled-back step applied no update
            late = core.record_update_norm(config, late, norm)
    return together, late


def test_a_late_update_norm_records_exactly_what_the_norm_with_its_step_records() -> None:
    rng = np.random.default_rng(0)
    steps = [
        (float(loss), float(norm), float(moved))
        for loss, norm, moved in zip(
            np.linspace(2.0, 1.0, 15),
            rng.uniform(0.1, 0.2, 15),
            rng.uniform(0.3, 0.5, 15),
            strict=True,
        )
    ]
    steps[9] = (40.0, 0.15, 0.4)  # a spike: rolled back
    steps[12] = (1.1, float("nan"), 0.4)  # a non-finite norm is left out
    together, late = _record_both_ways(GROWING, steps)
    assert int(together.guard.total_rollbacks) == 1
    assert late.rng_key == together.rng_key
    plain = [state._replace(rng_key=None) for state in (late, together)]
    for got, want in zip(*map(jax.tree.leaves, plain), strict=True):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_with_the_guard_a_closing_steps_update_counts_in_the_next_episode() -> None:
    # The closing step's update is applied after the snapshot that ends the
    # episode, so its norm joins the next episode and the next growth segment.
    norms = [1.0, 2.0, 3.0, 10.0, 4.0, 5.0, 6.0, 20.0]
    steps = [(1.0, norm, 0.5) for norm in norms]
    state, _ = _record_both_ways(GROWING, steps)
    logs = core.episode_logs(GROWING, state)
    assert logs["mean_update_norms"] == [pytest.approx(2.0), pytest.approx((10 + 4 + 5 + 6) / 4)]
    assert float(state.guard.path_since_snapshot) == 20.0


def test_without_the_guard_a_late_update_norm_is_refused() -> None:
    config = core.AEESConfig(episode_length=4)
    with pytest.raises(ValueError, match=r"record_update_norm needs config\.guard"):
        core.record_update_norm(config, core.init(config), 1.0)
