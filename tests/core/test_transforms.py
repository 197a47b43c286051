"""The core under jit, vmap and scan, and its determinism by seed."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import pulseopt_core as core
from tests.core.conftest import run_core, trending_losses

CONFIG = core.AEESConfig(
    lr_candidates=(0.5, 1.0, 2.0),
    noise_candidates=(0.0, 0.01),
    episode_length=3,
    context_mode="trend",
    structured_control_mode="conditional",
)
LOSSES = trending_losses(np.random.default_rng(0), 60, segment=6)


def _assert_trees_equal(a, b) -> None:
    a, b = (
        jax.tree.map(lambda x: np.asarray(jax.random.key_data(x) if _is_key(x) else x), t)
        for t in (a, b)
    )
    jax.tree.map(np.testing.assert_array_equal, a, b)


def _is_key(x) -> bool:
    return jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


def _stepwise(config: core.AEESConfig, losses: np.ndarray) -> core.AEESState:
    state = core.init(config, 0)
    for loss in losses:
        state = core.record_step(config, state, loss, 0.1)
    return state


def test_step_by_step_calls_and_one_jitted_scan_give_identical_states() -> None:
    stepwise = _stepwise(CONFIG, LOSSES)
    scanned = run_core(CONFIG, LOSSES, np.full(len(LOSSES), 0.1), key=0, finalize=False)
    _assert_trees_equal(stepwise, scanned)


def test_op_by_op_execution_takes_the_same_decisions() -> None:
    with jax.disable_jit():
        eager = _stepwise(CONFIG, LOSSES)
    jitted = _stepwise(CONFIG, LOSSES)
    integers = lambda s: [x for x in jax.tree.leaves(s) if jnp.issubdtype(x.dtype, jnp.integer)]  # noqa: E731
    for a, b in zip(integers(eager), integers(jitted), strict=True):
        np.testing.assert_array_equal(a, b)
    # Compiled code may fuse a multiply and an add into one FMA; op-by-op
    # execution rounds twice. In float32 those last-bit differences pass
    # through the reward's difference of logs (which loses relative precision)
    # into the discounted UCB sums, so floats agree to about 1e-5 only.
    floats = lambda s: [x for x in jax.tree.leaves(s) if jnp.issubdtype(x.dtype, jnp.floating)]  # noqa: E731
    for a, b in zip(floats(eager), floats(jitted), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4)


def test_vmap_over_eight_seeds_equals_eight_separate_runs() -> None:
    keys = jax.random.split(jax.random.key(42), 8)

    @jax.jit
    def population(keys: jax.Array) -> core.AEESState:
        def one(key):
            state = core.init(CONFIG, key)
            state, _ = jax.lax.scan(
                lambda s, loss: (core.record_step(CONFIG, s, loss), None), state, LOSSES
            )
            return state

        return jax.vmap(one)(keys)

    batched = population(keys)
    for member, key in enumerate(keys):
        alone = run_core(CONFIG, LOSSES, key=key, finalize=False)
        _assert_trees_equal(jax.tree.map(lambda x, m=member: x[m], batched), alone)


def test_same_seed_gives_the_same_run() -> None:
    first = core.episode_logs(CONFIG, run_core(CONFIG, LOSSES, key=5))
    second = core.episode_logs(CONFIG, run_core(CONFIG, LOSSES, key=5))
    assert first == second


def test_different_seeds_give_different_runs() -> None:
    runs = {
        tuple(
            core.episode_logs(CONFIG, run_core(CONFIG, LOSSES, key=seed))["selected_combined_names"]
        )
        for seed in range(4)
    }
    assert len(runs) > 1


def test_config_seed_and_explicit_key_agree() -> None:
    seeded = core.init(CONFIG.replace(seed=9))
    keyed = core.init(CONFIG, jax.random.key(9))
    _assert_trees_equal(seeded, keyed)


def test_state_dtypes_follow_x64_mode(x64) -> None:
    state = core.init(CONFIG, 0)
    assert state.episode.loss_ema.dtype == jnp.float64
    state = core.record_step(CONFIG, state, jnp.float16(1.5))
    assert state.episode.loss_ema.dtype == jnp.float64


def test_state_dtypes_do_not_change_when_the_loss_arrives_as_float16() -> None:
    state = core.init(CONFIG, 0)
    stepped = core.record_step(CONFIG, state, jnp.float16(1.5), jnp.float16(0.1))
    assert jax.tree.map(lambda x: x.dtype, stepped) == jax.tree.map(lambda x: x.dtype, state)


def test_first_episode_arms_are_chosen_at_init() -> None:
    config = core.AEESConfig(lr_candidates=(0.5, 1.0, 2.0), tie_break="lowest")
    candidate = core.current_candidate(core.init(config, 0))
    assert float(candidate.lr_multiplier) == 0.5
    assert int(candidate.lr_index) == 0


def test_restart_episode_at_moves_an_empty_episode_only() -> None:
    config = core.AEESConfig(episode_length=4, context_mode="trend_phase", total_training_steps=30)
    state = core.init(config, 0)
    moved = core.restart_episode_at(config, state, 20)
    assert int(moved.episode.start_step) == 20
    assert int(moved.episode.context_phase) == 2
    started = core.record_step(config, state, 1.0)
    kept = core.restart_episode_at(config, started, 20)
    assert int(kept.episode.start_step) == 0
    assert int(kept.global_step) == 20
