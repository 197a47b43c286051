"""The robust preset stays safe: no growth on memorisation or a rising loss, eval-aware control."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pulseopt_core as core
from tests.core.test_growth import CONFIG, EPISODE, _per_episode, _walk


def test_a_memorisation_like_run_grows_nothing_once_the_loss_is_near_zero() -> None:
    # Straight steps all along (margins growing on separable data), while the
    # loss falls from 2.3 to ~1e-4: the scale grows only while the loss is
    # still well above its floor, then drops back to 1.
    steps = 60 * EPISODE
    losses = [2.3 * math.exp(-0.05 * t) for t in range(steps)]
    state, multipliers, _ = _walk(CONFIG, [1.0] * steps, losses)
    per_episode = _per_episode(multipliers)
    assert max(per_episode) == CONFIG.max_lr_scale
    assert per_episode[-10:] == [1.0] * 10
    assert float(state.guard.guard_slow_loss) < CONFIG.growth_fit_fraction * 2.3


def test_without_the_fit_rule_the_same_run_grows_to_the_cap() -> None:
    steps = 60 * EPISODE
    losses = [2.3 * math.exp(-0.05 * t) for t in range(steps)]
    config = CONFIG.replace(growth_fit_fraction=0.0)
    _, multipliers, _ = _walk(config, [1.0] * steps, losses)
    assert _per_episode(multipliers)[-1] == config.max_lr_scale


def test_nothing_grows_while_the_loss_rises() -> None:
    steps = 6 * EPISODE
    losses = [1.0 + 0.01 * t for t in range(steps)]  # slow drift up: no spike
    state, multipliers, _ = _walk(CONFIG, [1.0] * steps, losses)
    assert set(multipliers) == {1.0}
    assert int(state.guard.total_rollbacks) == 0


def test_near_zero_losses_that_jump_by_large_factors_are_not_spikes() -> None:
    config = core.AEESConfig(episode_length=5, guard=True, guard_warmup_steps=5, seed=0)
    losses = [2.3] + [1e-4] * 400 + [2e-2, 1e-4, 3e-2, 5e-2]
    state = core.init(config)
    for loss in losses:
        assert not bool(core.guard_check(config, state, loss).rollback)
        state = core.record_step(config, state, loss, 0.1)
    unfloored = config.replace(guard_spike_floor=0.0)
    state = core.init(unfloored)
    rollbacks = 0
    for loss in losses:
        rollbacks += int(core.guard_check(unfloored, state, loss).rollback)
        state = core.record_step(unfloored, state, loss, 0.1)
    assert rollbacks > 0


def _eval_walk(evals: dict[int, float], steps: int) -> tuple[core.AEESState, list[float]]:
    """A straight walk at a constant training loss, with held-out losses at some steps."""
    state = core.init(CONFIG)
    position, snapshot = 0.0, 0.0
    multipliers = []
    for step in range(steps):
        if step in evals:
            state = core.record_eval(CONFIG, state, evals[step])
        decision = core.guard_check(CONFIG, state, 1.0)
        distance = 0.0
        if bool(decision.take_snapshot):
            distance = abs(position - snapshot)
            snapshot = position
        multiplier = float(core.current_candidate(state).lr_multiplier)
        position += multiplier
        state = core.record_step(CONFIG, state, 1.0, multiplier, displacement_norm=distance)
        multipliers.append(multiplier)
    return state, multipliers


def test_an_improving_eval_loss_lets_growth_go_on() -> None:
    evals = {EPISODE * k + 2: 1.0 - 0.1 * k for k in range(6)}
    _, multipliers = _eval_walk(evals, 6 * EPISODE)
    assert _per_episode(multipliers) == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]


def test_an_eval_loss_that_stops_improving_vetoes_growth_and_cuts_the_scale() -> None:
    # Evals improve for two episodes, then rise: growth stops at once, and
    # after eval_patience (2) stale evals the scale is halved, for good.
    evals = {EPISODE * k + 2: [1.0, 0.9, 0.95, 0.97, 0.99, 1.0, 1.1, 1.2][k] for k in range(8)}
    state, multipliers = _eval_walk(evals, 8 * EPISODE)
    per_episode = _per_episode(multipliers)
    assert per_episode[:3] == [1.0, 2.0, 4.0]
    assert per_episode[3] == 4.0  # the stale eval at step 12 vetoed this growth
    assert per_episode[4] == 2.0  # the second stale eval cut the scale
    assert max(per_episode[4:]) <= 2.0
    assert int(state.guard.eval_cuts) >= 2
    assert float(state.guard.eval_best_loss) == pytest.approx(0.9)


def test_a_nan_eval_loss_means_no_eval() -> None:
    state = core.init(CONFIG)
    after = core.record_eval(CONFIG, state, float("nan"))
    assert jax.tree.all(
        jax.tree.map(lambda a, b: bool(jnp.all(a == b) | jnp.all(a != a)), state, after)
    )
    assert int(after.guard.eval_count) == 0


def test_the_best_eval_is_tracked_without_the_guard_too() -> None:
    config = core.AEESConfig(seed=0)
    state = core.init(config)
    flags = []
    for value in [3.0, 2.0, 2.5, 1.0]:
        state = core.record_eval(config, state, value)
        flags.append(bool(state.guard.eval_improved))
    assert flags == [True, True, False, True]
    assert float(state.guard.eval_best_loss) == 1.0
    assert float(state.guard.lr_scale) == 1.0


def test_eval_control_runs_under_vmap() -> None:
    evals = jnp.asarray([[1.0, 0.9, 0.8, 0.7], [1.0, 1.1, 1.2, 1.3]])

    def run(sequence: jax.Array) -> jax.Array:
        state = core.init(CONFIG)
        state, _ = jax.lax.scan(
            lambda s, e: (core.record_eval(CONFIG, s, e), None), state, sequence
        )
        return state.guard.eval_cuts

    np.testing.assert_array_equal(jax.jit(jax.vmap(run))(evals), [0, 1])


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"guard_spike_floor": -0.1}, "guard_spike_floor"),
        ({"growth_fit_fraction": 1.0}, "growth_fit_fraction"),
        ({"eval_patience": 0}, "eval_patience"),
        ({"eval_min_delta": -1.0}, "eval_min_delta"),
        ({"restore_best": 1}, "restore_best must be a bool"),
    ],
)
def test_the_safety_knobs_are_validated(changes: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        CONFIG.replace(**changes)


def test_explicit_knobs_equal_to_the_defaults_still_win_over_the_preset() -> None:
    given = core.AEESConfig(growth=False, max_lr_scale=1.0)
    config = core.apply_preset(given, "robust", explicit={"growth", "max_lr_scale"})
    assert config.guard and not config.growth and config.max_lr_scale == 1.0
