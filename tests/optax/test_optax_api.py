"""Reading AEES back out of optax states, non-finite safety, negative losses, memory."""

from __future__ import annotations

import inspect
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import pulseopt_core as core
import pulseopt_optax
from pulseopt_optax import aees


def _train(tx, params, losses, grads=None):
    state = tx.init(params)
    step = jax.jit(lambda g, s, v: tx.update(g, s, params, value=v))
    grads = jnp.ones_like(params) if grads is None else grads
    for loss in losses:
        _, state = step(grads, state, jnp.float32(loss))
    return state


def test_get_logs_finds_the_state_inside_a_chain_and_multisteps():
    tx = optax.MultiSteps(
        optax.chain(optax.clip(1.0), aees(optax.sgd(0.1), episode_length=2, seed=0)),
        every_k_schedule=1,
    )
    state = _train(tx, jnp.ones(2), [3.0, 2.0, 1.0, 0.5])
    logs = pulseopt_optax.get_logs(state)
    assert logs["episode_start_losses"] == [3.0, 1.0]
    assert logs["episode_end_losses"] == [2.0, 0.5]
    assert set(logs) == set(core.LOG_KEYS)


def test_named_fields_are_found_by_optax_tree_get():
    tx = optax.chain(optax.adam(1e-3), aees(optax.sgd(0.1), lr_candidates=(2.0,), seed=0))
    state = tx.init(jnp.ones(2))
    assert float(optax.tree.get(state, "lr_multiplier")) == 2.0
    assert float(optax.tree.get(state, "noise_std")) == 0.0
    assert int(optax.tree.get(state, "skipped_steps")) == 0


def test_current_candidate_reads_the_active_arms():
    tx = aees(optax.sgd(0.1), lr_candidates=(0.5, 2.0), tie_break="lowest", seed=0)
    candidate = pulseopt_optax.current_candidate(tx.init(jnp.ones(2)))
    assert float(candidate.lr_multiplier) == 0.5
    assert int(candidate.lr_index) == 0


def test_the_multiplier_scales_this_step_only_and_the_inner_schedule_keeps_its_count():
    schedule = optax.linear_schedule(1.0, 0.0, 10)
    plain = optax.sgd(schedule)
    scaled = aees(optax.sgd(schedule), lr_candidates=(0.5,), seed=0)
    params = jnp.ones(2)
    plain_state, scaled_state = plain.init(params), scaled.init(params)
    for _ in range(3):
        plain_updates, plain_state = plain.update(jnp.ones(2), plain_state, params)
        scaled_updates, scaled_state = scaled.update(
            jnp.ones(2), scaled_state, params, value=jnp.float32(1.0)
        )
        np.testing.assert_allclose(scaled_updates, 0.5 * plain_updates)
    assert int(optax.tree.get(scaled_state, "count")) == 3


def test_finalize_closes_the_partial_episode():
    tx = aees(optax.sgd(0.1), episode_length=10, seed=0)
    state = _train(tx, jnp.ones(2), [3.0, 2.0, 1.5])
    assert pulseopt_optax.get_logs(state)["episode_rewards"] == []
    logs = pulseopt_optax.get_logs(pulseopt_optax.finalize(state))
    assert logs["episode_end_steps"] == [2]
    assert logs["episode_end_losses"] == [1.5]


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_non_finite_value_skips_the_step(bad):
    tx = aees(optax.adam(0.1), episode_length=3, seed=0)
    params = jnp.ones(2)
    state = _train(tx, params, [3.0])
    updates, skipped = jax.jit(lambda s: tx.update(jnp.ones(2), s, params, value=bad))(state)
    np.testing.assert_array_equal(updates, jnp.zeros(2))
    assert int(optax.tree.get(skipped, "skipped_steps")) == 1
    same = skipped._replace(
        aees_core_state=skipped.aees_core_state._replace(skipped_steps=jnp.zeros((), jnp.int32))
    )
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(*map(_comparable, (a, b))), same, state)


def _comparable(x):
    return jax.random.key_data(x) if jnp.issubdtype(x.dtype, jax.dtypes.prng_key) else x


def test_non_finite_gradients_skip_the_step_and_training_continues():
    tx = aees(optax.adam(0.1), episode_length=2, seed=0)
    params = jnp.ones(3)
    state = tx.init(params)
    step = jax.jit(lambda g, s, v: tx.update(g, s, params, value=v))
    bad = jnp.array([1.0, jnp.nan, 1.0])
    updates, state = step(bad, state, jnp.float32(1.0))
    np.testing.assert_array_equal(updates, jnp.zeros(3))
    assert int(optax.tree.get(state, "count")) == 0
    for loss in (2.0, 1.0):
        updates, state = step(jnp.ones(3), state, jnp.float32(loss))
        assert bool(jnp.all(updates != 0))
    assert int(optax.tree.get(state, "skipped_steps")) == 1
    logs = pulseopt_optax.get_logs(state)
    assert logs["episode_start_losses"] == [2.0]
    assert all(math.isfinite(r) for r in logs["episode_rewards"])


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("shape", [(256, 256), (8, 64, 48), (40000,), (5000, 4)])
def test_all_finite_finds_every_bad_element(dtype, shape):
    # The first two shapes take the matrix-vector path, the last two the plain sum.
    check = jax.jit(pulseopt_optax.all_finite)
    size = math.prod(shape)
    clean = {"big": jnp.ones(shape, dtype), "small": jnp.ones(3, dtype)}
    assert bool(check(clean))
    # Large finite values must not overflow into a false alarm.
    assert bool(check({"big": jnp.full(shape, jnp.finfo(dtype).max, dtype)}))
    for bad in (jnp.nan, jnp.inf, -jnp.inf):
        for index in (0, size // 2 + 7, size - 1):
            leaf = jnp.ones(size, dtype).at[index].set(bad).reshape(shape)
            assert not bool(check({**clean, "big": leaf})), (bad, index)
        assert not bool(check({**clean, "small": jnp.ones(3, dtype).at[1].set(bad)}))


def test_no_nan_reaches_the_controller_statistics():
    tx = aees(optax.sgd(0.1), lr_candidates=(0.5, 1.0), episode_length=2, seed=0)
    losses = [3.0, float("nan"), 2.0, float("inf"), 1.0, 0.5, float("-inf"), 0.4]
    state = _train(tx, jnp.ones(2), losses)
    core_state = optax.tree.get(state, "aees_core_state")
    for leaf in jax.tree.leaves((core_state.lr_controller, core_state.noise_controller)):
        assert bool(jnp.all(jnp.isfinite(leaf)))
    assert int(core_state.skipped_steps) == 3
    assert all(math.isfinite(r) for r in pulseopt_optax.get_logs(state)["episode_rewards"])


def test_negative_losses_leave_the_state_valid_and_show_an_unscored_episode():
    tx = aees(optax.sgd(0.1), lr_candidates=(0.5, 1.0), episode_length=2, seed=0)
    state = _train(tx, jnp.ones(2), [-1.0, -2.0, 3.0, 2.0])
    logs = pulseopt_optax.get_logs(state)
    assert math.isnan(logs["episode_rewards"][0])
    assert math.isfinite(logs["episode_rewards"][1])
    assert int(optax.tree.get(state, "unscored_episodes")) == 1
    core_state = optax.tree.get(state, "aees_core_state")
    assert int(core_state.lr_controller.prior.total_updates) == 1


def test_the_state_holds_no_parameter_sized_buffer_beyond_the_inner_state():
    def sizes(width: int) -> tuple[int, list[int]]:
        params = {"w": jnp.zeros((width, width)), "b": jnp.zeros(width)}
        inner = optax.adamw(1e-3)
        tx = aees(inner, lr_candidates=(0.5, 1.0, 2.0), noise_candidates=(0.0, 0.01))
        state = tx.init(params)
        inner_size = sum(x.size for x in jax.tree.leaves(inner.init(params)))
        assert sum(x.size for x in jax.tree.leaves(state.aees_inner_state)) == inner_size
        leaves = jax.tree.leaves((state.aees_core_state, state.aees_dynamic_knobs))
        return width * width + width, [x.size for x in leaves]

    _, small = sizes(64)
    large_params, large = sizes(512)
    # AEES's own state does not grow with the parameters: only the log (its
    # capacity, a knob) and the arm statistics set its size.
    assert small == large
    assert sum(large) < large_params / 10


def test_invalid_knobs_raise_value_errors_naming_them():
    with pytest.raises(ValueError, match="lr_candidates"):
        aees(optax.sgd(0.1), lr_candidates=())
    with pytest.raises(ValueError, match="noise_generator"):
        aees(optax.sgd(0.1), noise_generator="mersenne")
    with pytest.raises(ValueError, match="seed"):
        aees(optax.sgd(0.1), seed="zero")  # type: ignore[arg-type]


def test_a_state_from_another_arm_set_is_rejected():
    state = aees(optax.sgd(0.1), lr_candidates=(0.5, 1.0)).init(jnp.ones(2))
    other = aees(optax.sgd(0.1), lr_candidates=(0.5, 2.0))
    with pytest.raises(ValueError, match="structural"):
        other.update(jnp.ones(2), state, value=1.0)


def test_every_core_knob_is_a_keyword_with_the_cores_default():
    """Knobs a preset sets default to None ("not given"), so a value given always wins."""
    parameters = inspect.signature(aees).parameters
    preset_knobs = {name for preset in core.PRESETS.values() for name in preset}
    defaults = core.AEESConfig()
    assert set(core.KNOBS) == set(defaults.as_dict()) - {"seed"}
    assert preset_knobs == set(core.PRESET_KNOBS)
    for name in core.KNOBS:
        assert parameters[name].kind is inspect.Parameter.KEYWORD_ONLY
        expected = None if name in preset_knobs else getattr(defaults, name)
        assert parameters[name].default == expected
    assert parameters["track_update_norm"].default is True


def test_the_robust_preset_is_the_guard_with_growth():
    params = jnp.zeros(3)
    by_preset = aees(optax.sgd(0.1), preset="robust").init(params)
    by_knob = aees(optax.sgd(0.1), guard=True, growth=True, max_lr_scale=64.0).init(params)
    assert by_preset.aees_structure == by_knob.aees_structure
