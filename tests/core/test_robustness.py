"""Losses the reward cannot score, and non-finite inputs, never poison the state."""

from __future__ import annotations

import math

import jax
import numpy as np

import pulseopt_core as core
from tests.core.conftest import run_core

CONFIG = core.AEESConfig(
    lr_candidates=(0.5, 1.0),
    noise_candidates=(0.0, 0.01),
    episode_length=4,
    seed=0,
)


def _controller_stats(state: core.AEESState) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree.leaves((state.lr_controller, state.noise_controller))]


def test_an_unscorable_episode_is_logged_with_nan_and_teaches_nothing() -> None:
    state = run_core(CONFIG, [-3.0, -3.5, -4.0, -4.5], finalize=False)
    logs = core.episode_logs(CONFIG, state)
    assert math.isnan(logs["episode_rewards"][0])
    assert logs["episode_end_losses"] == [-4.5]
    assert int(state.unscored_episodes) == 1
    assert int(state.episodes_closed) == 1
    for leaf in _controller_stats(state):
        assert not np.any(leaf)


def test_scoring_resumes_after_an_unscorable_episode() -> None:
    state = run_core(CONFIG, [-3.0, -3.5, -4.0, -4.5, 4.0, 3.0, 2.0, 1.0], finalize=False)
    rewards = core.episode_logs(CONFIG, state)["episode_rewards"]
    assert math.isnan(rewards[0])
    assert rewards[1] > 0.0
    assert int(state.lr_controller.prior.total_updates) == 1


def test_non_finite_losses_are_skipped_and_counted() -> None:
    losses = [2.0, float("nan"), 1.9, float("inf"), 1.8, -float("inf"), 1.7, 1.6]
    state = run_core(CONFIG, losses, finalize=False)
    logs = core.episode_logs(CONFIG, state)
    assert int(state.skipped_steps) == 3
    assert logs["episode_start_losses"] == [2.0]
    assert logs["episode_end_losses"] == [np.float32(1.7)]
    for leaf in _controller_stats(state):
        assert np.all(np.isfinite(leaf))


def test_a_skipped_step_changes_nothing_but_the_counter() -> None:
    state = core.init(CONFIG)
    skipped = core.record_step(CONFIG, state, 1.0, 0.5, skip=True)
    assert int(skipped.skipped_steps) == 1

    def rest(s: core.AEESState) -> list[np.ndarray]:
        return [np.asarray(x) for x in jax.tree.leaves(s._replace(skipped_steps=0, rng_key=0))]

    for a, b in zip(rest(state), rest(skipped), strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_non_finite_update_norm_skips_the_step() -> None:
    state = core.record_step(CONFIG, core.init(CONFIG), 1.0, float("nan"))
    assert int(state.skipped_steps) == 1
    assert int(state.episode.episode_steps) == 0


def test_untracked_update_norms_log_none() -> None:
    logs = core.episode_logs(CONFIG, run_core(CONFIG, [2.0, 1.5, 1.2, 1.0]))
    assert logs["mean_update_norms"] == [None]


def test_finalize_without_steps_changes_nothing() -> None:
    state = core.init(CONFIG)
    assert int(core.finalize(CONFIG, state).episodes_closed) == 0


def test_the_log_keeps_only_the_most_recent_episodes() -> None:
    config = CONFIG.replace(episode_length=1, log_capacity=3)
    logs = core.episode_logs(config, run_core(config, [5.0, 4.0, 3.0, 2.0, 1.0], finalize=False))
    assert logs["episode_start_losses"] == [3.0, 2.0, 1.0]
    assert logs["episode_start_steps"] == [2, 3, 4]


def test_the_log_holds_each_closed_episode_in_one_row_of_each_table() -> None:
    config = CONFIG.replace(episode_length=2, log_capacity=4)
    state = run_core(config, [5.0, 4.0, 3.0, 2.0, 1.0, 0.5], finalize=False)
    log = state.episode_log
    assert log.log_ints.shape == (4, len(core.LOG_INT_COLUMNS))
    assert log.log_floats.shape == (4, len(core.LOG_FLOAT_COLUMNS))
    np.testing.assert_array_equal(np.asarray(log.column("start_step")), [0, 2, 4, -1])
    np.testing.assert_array_equal(np.asarray(log.column("end_step")), [1, 3, 5, -1])
    np.testing.assert_array_equal(np.asarray(log.column("start_loss"))[:3], [5.0, 3.0, 1.0])
    assert np.isnan(np.asarray(log.column("reward"))[3])
    logs = core.episode_logs(config, state)
    assert logs["episode_end_losses"] == [4.0, 2.0, 0.5]
    with np.testing.assert_raises_regex(KeyError, "not an episode log column"):
        log.column("log_reward")
