"""Growth of the LR scale: straightness measured between snapshots, patience, cap, ceiling."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pulseopt_core as core

EPISODE = 5
CONFIG = core.AEESConfig(
    episode_length=EPISODE,
    guard=True,
    growth=True,
    guard_warmup_steps=5,
    max_lr_scale=8.0,
    seed=0,
)


def _walk(
    config: core.AEESConfig, directions: list[float], losses: list[float] | None = None
) -> tuple[core.AEESState, list[float], list[float | None]]:
    """Move a 1-D parameter by ``direction * multiplier`` per step, as an adapter would.

    Returns the final state, the multiplier of every step, and the distance
    reported at every step (``None`` where no snapshot was taken).
    """
    state = core.init(config)
    position, snapshot = 0.0, None
    multipliers, reported = [], []
    for step, direction in enumerate(directions):
        loss = 1.0 if losses is None else losses[step]
        decision = core.guard_check(config, state, loss)
        distance = None
        if bool(decision.rollback):
            multiplier = 0.0
            position = snapshot
        else:
            if bool(decision.take_snapshot):
                distance = 0.0 if snapshot is None else abs(position - snapshot)
                snapshot = position
            multiplier = float(core.current_candidate(state).lr_multiplier)
            position += direction * multiplier
        state = core.record_step(
            config,
            state,
            loss,
            abs(direction * multiplier),
            displacement_norm=0.0 if distance is None else distance,
        )
        multipliers.append(multiplier)
        reported.append(distance)
    return state, multipliers, reported


def _per_episode(multipliers: list[float]) -> list[float]:
    return multipliers[::EPISODE]


def test_a_straight_path_doubles_the_scale_every_episode_up_to_the_cap() -> None:
    state, multipliers, _ = _walk(CONFIG, [1.0] * (7 * EPISODE))
    assert _per_episode(multipliers) == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0, 8.0]
    assert float(state.guard.straightness) == pytest.approx(1.0)


def test_a_zigzag_path_never_grows() -> None:
    state, multipliers, _ = _walk(CONFIG, [1.0, -1.0] * (3 * EPISODE))
    assert set(multipliers) == {1.0}
    assert float(state.guard.straightness) < 0.5
    assert int(state.guard.timid_streak) == 0


def test_straightness_is_distance_over_the_path_since_the_previous_snapshot() -> None:
    # Snapshots before steps 0, 4 and 9. Steps 0..3: +1 +1 -1 +1 move 2 over a
    # path of 4; steps 4..8: +1 +1 -1 +1 +1 move 3 over a path of 5.
    directions = [1.0, 1.0, -1.0, 1.0, 1.0, 1.0, -1.0, 1.0, 1.0, 1.0]
    config = CONFIG.replace(growth_threshold=0.9)
    state, multipliers, reported = _walk(config, directions)
    assert reported[4] == 2.0 and reported[9] == 3.0
    assert float(state.guard.straightness) == pytest.approx(3.0 / 5.0)
    assert multipliers[-1] == 1.0


def test_patience_needs_consecutive_timid_episodes() -> None:
    config = CONFIG.replace(growth_patience=2)
    _, multipliers, _ = _walk(config, [1.0] * (6 * EPISODE))
    assert _per_episode(multipliers) == [1.0, 1.0, 2.0, 2.0, 4.0, 4.0]


def test_after_a_rollback_growth_stays_below_the_cut_scale() -> None:
    steps = 8 * EPISODE
    losses = [1.0] * steps
    losses[3 * EPISODE + 2] = 100.0  # a spike at multiplier 8 -> cut to 4
    state, multipliers, _ = _walk(CONFIG, [1.0] * steps, losses)
    assert int(state.guard.total_rollbacks) == 1
    assert float(state.guard.lr_ceiling) == 4.0
    after = [m for m in multipliers[3 * EPISODE + 3 :] if m > 0.0]
    assert set(after) == {4.0}


def test_no_growth_without_the_growth_knob() -> None:
    _, multipliers, _ = _walk(CONFIG.replace(growth=False), [1.0] * (4 * EPISODE))
    assert set(multipliers) == {1.0}


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"growth": True, "guard": False}, "growth=True needs guard=True"),
        ({"growth": 1}, "growth must be a bool"),
        ({"growth_threshold": 1.0}, "growth_threshold"),
        ({"growth_threshold": 0.0}, "growth_threshold"),
        ({"growth_factor": 1.0}, "growth_factor"),
        ({"growth_factor": float("inf")}, "growth_factor"),
        ({"growth_patience": 0}, "growth_patience"),
    ],
)
def test_growth_knobs_are_validated(changes: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        CONFIG.replace(**changes)


def test_the_robust_preset_turns_growth_on() -> None:
    config = core.apply_preset(core.AEESConfig(), "robust")
    assert config.guard and config.growth and config.max_lr_scale == 64.0


def test_growth_runs_in_a_vmapped_scan() -> None:
    """Straight and zigzag members side by side, the adapter's distance computed in-graph."""

    def run(sign: jax.Array) -> jax.Array:
        def step(carry, t):
            state, position, snapshot = carry
            decision = core.guard_check(CONFIG, state, 1.0)
            distance = jnp.where(decision.take_snapshot, jnp.abs(position - snapshot), 0.0)
            snapshot = jnp.where(decision.take_snapshot, position, snapshot)
            multiplier = core.current_candidate(state).lr_multiplier
            move = jnp.where(t % 2 == 0, 1.0, sign) * multiplier
            state = core.record_step(CONFIG, state, 1.0, jnp.abs(move), displacement_norm=distance)
            return (state, position + move, snapshot), multiplier

        start = (core.init(CONFIG), jnp.zeros(()), jnp.zeros(()))
        _, multipliers = jax.lax.scan(step, start, jnp.arange(6 * EPISODE))
        return multipliers[-1]

    last = jax.jit(jax.vmap(run))(jnp.asarray([1.0, -1.0]))
    np.testing.assert_array_equal(last, [8.0, 1.0])


def test_a_preset_fills_only_the_knobs_left_at_their_defaults() -> None:
    config = core.apply_preset(core.AEESConfig(max_lr_scale=16.0), "robust")
    assert config.growth and config.max_lr_scale == 16.0
