"""The robust preset in the optax adapter: snapshots, exact rollback, back-off, memory."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import pulseopt_optax

EPISODE = 4
PARAMS = {"w": jnp.linspace(-1.0, 1.0, 6, dtype=jnp.float32), "b": jnp.ones((2,), jnp.float32)}


def _tx() -> optax.GradientTransformationExtraArgs:
    return pulseopt_optax.aees(
        optax.adam(1e-2), episode_length=EPISODE, preset="robust", guard_warmup_steps=2, seed=0
    )


def _loss(params):
    return jnp.sum(params["w"] ** 2) + jnp.sum((params["b"] - 2.0) ** 2)


@jax.jit
def _step(params, state, scale):
    loss, grads = jax.value_and_grad(_loss)(params)
    updates, state = _tx().update(grads, state, params, value=loss * scale)
    return optax.apply_updates(params, updates), state


def _train(steps: int, spike_at: int | None = None, params=PARAMS):
    state = _tx().init(params)
    history = []
    for step in range(steps):
        history.append((params, state))
        params, state = _step(params, state, 1e4 if step == spike_at else 1.0)
    return params, state, history


def test_the_robust_preset_keeps_a_snapshot_and_the_default_does_not() -> None:
    assert isinstance(_tx().init(PARAMS).aees_snapshot, pulseopt_optax.GuardSnapshot)
    plain = pulseopt_optax.aees(optax.adam(1e-2)).init(PARAMS)
    assert jax.tree.leaves(plain.aees_snapshot) == []


def test_snapshots_hold_the_params_and_inner_state_of_the_episode_boundary() -> None:
    _, state, history = _train(EPISODE)
    boundary_params, boundary_state = history[EPISODE - 1]
    snapshot = state.aees_snapshot
    jax.tree.map(np.testing.assert_array_equal, snapshot.snapshot_params, boundary_params)
    jax.tree.map(
        np.testing.assert_array_equal,
        jax.tree.leaves(snapshot.snapshot_inner_state),
        jax.tree.leaves(boundary_state.aees_inner_state),
    )


def test_a_spike_rolls_back_to_the_snapshot() -> None:
    spike = 2 * EPISODE + 1
    params, state, history = _train(spike + 1, spike_at=spike)
    saved_params, saved_state = history[2 * EPISODE - 1]
    # The inner state is restored as it was; the parameters through
    # ``params + (snapshot - params)``, exact up to that addition's rounding.
    jax.tree.map(
        np.testing.assert_array_equal, state.aees_inner_state, saved_state.aees_inner_state
    )
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), params, saved_params
    )
    assert int(optax.tree.get(state, "total_rollbacks")) == 1
    before = float(pulseopt_optax.current_candidate(history[spike][1]).lr_multiplier)
    assert float(pulseopt_optax.current_candidate(state).lr_multiplier) == before / 2


def test_training_goes_on_after_a_rollback() -> None:
    params, state, _ = _train(40, spike_at=2 * EPISODE + 1)
    assert float(_loss(params)) < float(_loss(PARAMS))
    assert int(optax.tree.get(state, "total_rollbacks")) == 1


def test_a_non_finite_loss_rolls_back_with_the_preset() -> None:
    state = _tx().init(PARAMS)
    params = PARAMS
    for step in range(6):
        params, state = _step(params, state, float("nan") if step == 5 else 1.0)
    assert int(optax.tree.get(state, "total_rollbacks")) == 1
    assert int(optax.tree.get(state, "skipped_steps")) == 0


def test_the_guard_needs_params() -> None:
    tx = _tx()
    state = tx.init(PARAMS)
    with pytest.raises(ValueError, match="params"):
        tx.update(PARAMS, state, value=1.0)


def test_an_unknown_preset_is_rejected() -> None:
    with pytest.raises(ValueError, match="preset"):
        pulseopt_optax.aees(optax.sgd(0.1), preset="fastest")


def test_the_snapshot_costs_one_copy_of_params_and_inner_state() -> None:
    def size(tree) -> int:
        return sum(leaf.size for leaf in jax.tree.leaves(tree))

    guarded = _tx().init(PARAMS)
    plain = pulseopt_optax.aees(optax.adam(1e-2), episode_length=EPISODE).init(PARAMS)
    extra = size(guarded) - size(plain)
    # Plus four scalars: the check that the updates reached the parameters.
    assert extra == size(PARAMS) + size(optax.adam(1e-2).init(PARAMS)) + 4


def _linear_run(tx: optax.GradientTransformationExtraArgs, steps: int):
    """SGD on a loss whose gradient never changes: every update has the same direction."""
    params = {"w": jnp.zeros((3,), jnp.float32)}

    def loss_fn(p):
        return 10.0 - jnp.sum(p["w"] * jnp.asarray([1.0, 2.0, 2.0]))

    @jax.jit
    def step(params, state):
        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, state = tx.update(grads, state, params, value=loss)
        return optax.apply_updates(params, updates), state

    state = tx.init(params)
    multipliers = []
    for _ in range(steps):
        multipliers.append(float(pulseopt_optax.current_candidate(state).lr_multiplier))
        params, state = step(params, state)
    return state, multipliers


def test_the_robust_preset_grows_the_multiplier_along_a_straight_path() -> None:
    tx = pulseopt_optax.aees(optax.sgd(1e-4), episode_length=EPISODE, preset="robust", seed=0)
    state, multipliers = _linear_run(tx, 9 * EPISODE)
    assert multipliers[::EPISODE] == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 64.0, 64.0]
    # The adapter's distance between snapshots equals the path it measured.
    assert float(optax.tree.get(state, "straightness")) == pytest.approx(1.0, rel=1e-5)


def test_growth_measures_the_distance_between_snapshots_on_a_winding_path() -> None:
    # Momentum on an elongated bowl: the path overshoots and turns, so the
    # distance between snapshots is well below the path length.
    tx = pulseopt_optax.aees(
        optax.sgd(0.05, momentum=0.9), episode_length=EPISODE, preset="robust", seed=0
    )
    params = {"w": jnp.asarray([3.0, -2.0], jnp.float32), "b": jnp.asarray([1.5], jnp.float32)}

    def loss_fn(p):
        return 10.0 * p["w"][0] ** 2 + p["w"][1] ** 2 + 4.0 * p["b"][0] ** 2 + 0.1

    @jax.jit
    def step(params, state):
        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, state = tx.update(grads, state, params, value=loss)
        return optax.apply_updates(params, updates), state

    def flat(p) -> np.ndarray:
        return np.concatenate([np.asarray(leaf, np.float64) for leaf in jax.tree.leaves(p)])

    state = tx.init(params)
    history, snapshots, measured = [flat(params)], [], []
    for index in range(6 * EPISODE):
        params, state = step(params, state)
        history.append(flat(params))
        if bool(optax.tree.get(state, "take_snapshot")):
            snapshots.append(index)
            measured.append(float(optax.tree.get(state, "straightness")))
    # A step that takes a snapshot keeps the parameters it started from; its
    # own update opens the next segment.
    assert len(snapshots) >= 4
    for previous, current, straightness in zip(
        snapshots[1:-1], snapshots[2:], measured[2:], strict=True
    ):
        distance = np.linalg.norm(history[current] - history[previous])
        path = sum(np.linalg.norm(history[j + 1] - history[j]) for j in range(previous, current))
        assert straightness == pytest.approx(distance / path, rel=1e-4)
    assert min(measured[2:]) < 0.9


def test_growth_off_keeps_the_multiplier() -> None:
    tx = pulseopt_optax.aees(
        optax.sgd(1e-4), episode_length=EPISODE, guard=True, max_lr_scale=64.0, seed=0
    )
    _, multipliers = _linear_run(tx, 5 * EPISODE)
    assert set(multipliers) == {1.0}


def test_growth_needs_the_update_norm() -> None:
    with pytest.raises(ValueError, match="track_update_norm"):
        pulseopt_optax.aees(optax.sgd(0.1), preset="robust", track_update_norm=False)


def test_explicit_knobs_win_over_the_preset() -> None:
    tx = pulseopt_optax.aees(
        optax.sgd(1e-4), episode_length=EPISODE, preset="robust", max_lr_scale=4.0, seed=0
    )
    _, multipliers = _linear_run(tx, 5 * EPISODE)
    assert max(multipliers) == 4.0


def test_a_vmapped_robust_population_equals_separate_runs() -> None:
    """Members spike at different steps, so their snapshots and rollbacks differ."""
    spikes = jnp.asarray([5, 2 * EPISODE + 1, 100])

    def run(spike_at):
        def body(carry, step):
            params, state = carry
            return _step(params, state, jnp.where(step == spike_at, 1e4, 1.0)), None

        (params, state), _ = jax.lax.scan(body, (PARAMS, _tx().init(PARAMS)), jnp.arange(20))
        return params, state

    def same(a, b) -> None:
        if jnp.issubdtype(a.dtype, jax.dtypes.prng_key):
            a, b = jax.random.key_data(a), jax.random.key_data(b)
        if jnp.issubdtype(a.dtype, jnp.floating):
            # Batched and unbatched programs fuse differently: last-bit
            # rounding, which the rewards' difference of logs magnifies.
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
        else:
            np.testing.assert_array_equal(a, b)

    together = jax.jit(jax.vmap(run))(spikes)
    for member, spike in enumerate(spikes):
        alone = jax.jit(run)(spike)
        jax.tree.map(same, jax.tree.map(lambda leaf, i=member: leaf[i], together), alone)
    assert [int(n) for n in optax.tree.get(together[1], "total_rollbacks")] == [1, 1, 0]
