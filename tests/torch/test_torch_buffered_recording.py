"""Without the guard, steps are buffered on the host and recorded in one core call.

The buffered path must give exactly the state that recording every step at
once gives, including across a full buffer in the middle of an episode and
with skipped (non-finite) steps in between, and must not call the core on
ordinary steps.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
import torch
from aees_torch_helpers import count_calls, loss_at, tiny_model, train

import pulseopt_core as core
from pulseopt_torch import AEES, _runtime
from pulseopt_torch.aees import _PENDING_CAPACITY


def _assert_same_state(a: core.AEESState, b: core.AEESState) -> None:
    plain = [s._replace(rng_key=jax.random.key_data(s.rng_key)) for s in (a, b)]
    with _runtime.on_cpu_in_float64():
        jax.tree.map(np.testing.assert_array_equal, *jax.device_get(plain))


@pytest.mark.parametrize("track_update_norm", [False, True])
def test_record_steps_equals_one_record_step_per_entry(track_update_norm: bool) -> None:
    config = core.AEESConfig(lr_candidates=(0.5, 1.0, 2.0), episode_length=5)
    rng = np.random.default_rng(0)
    count = 37
    losses = rng.uniform(0.5, 2.0, _PENDING_CAPACITY)
    losses[[3, 20]] = (np.nan, np.inf)
    norms = rng.uniform(0.0, 1.0, _PENDING_CAPACITY)
    skips = np.zeros(_PENDING_CAPACITY, bool)
    skips[[3, 20, 30]] = True
    with _runtime.on_cpu_in_float64():
        one_by_one = core.init(config, jax.random.key(1))
        for i in range(count):
            norm = float(norms[i]) if track_update_norm else None
            one_by_one = core.record_step(
                config, one_by_one, float(losses[i]), norm, skip=bool(skips[i])
            )
        batched = _runtime.record_steps(
            config,
            core.init(config, jax.random.key(1)),
            losses,
            norms,
            skips,
            np.int32(count),
            with_norms=track_update_norm,
        )
        assert int(batched.skipped_steps) == 3
        assert int(batched.episodes_closed) == (count - 3) // 5
    _assert_same_state(batched, one_by_one)


def test_the_wrapper_state_matches_recording_every_step() -> None:
    # Episodes longer than the buffer, so it fills in the middle of one, and
    # non-finite losses that the wrapper skips.
    episode_length = _PENDING_CAPACITY + 40
    knobs = {
        "lr_candidates": [0.5, 1.0],
        "episode_length": episode_length,
        "seed": 3,
        "track_update_norm": False,
        "skip_nonfinite": True,
    }
    bad_steps = {5, 150, 300}

    def loss_fn(model: torch.nn.Module, step: int) -> torch.Tensor:
        loss = loss_at(model, step)
        return loss * float("nan") if step in bad_steps else loss

    model = tiny_model()
    aees = AEES(torch.optim.SGD(model.parameters(), lr=0.05), **knobs)
    steps = range(2 * episode_length + 50)
    losses = train(aees, model, steps, loss_fn)

    config = aees.config.replace(seed=None)
    with _runtime.on_cpu_in_float64():
        expected = core.init(config, aees.config.seed)
        for step, loss in zip(steps, losses, strict=True):
            # As the wrapper does: an episode starts at the caller's step number.
            if int(expected.episode.episode_steps) == 0 and int(expected.global_step) != step:
                expected = _runtime.restart_episode_at(config, expected, step)
            expected = core.record_step(config, expected, loss, None, skip=step in bad_steps)
    _assert_same_state(aees.core_state, expected)
    assert int(aees.core_state.skipped_steps) == len(bad_steps)
    assert len(aees.get_logs()["episode_rewards"]) == 2


def test_ordinary_steps_do_not_call_the_core(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = count_calls(monkeypatch, _runtime, ["record_step_after_norm", "record_steps"])
    model = tiny_model()
    aees = AEES(torch.optim.SGD(model.parameters(), lr=0.05), episode_length=10, seed=0)
    train(aees, model, range(9))
    assert calls == {"record_step_after_norm": 0, "record_steps": 0}
    assert int(aees.core_state.global_step) == 9  # reading the state records the buffer
    assert calls == {"record_step_after_norm": 0, "record_steps": 1}
    train(aees, model, range(9, 19))
    # The first episode's last step is recorded when the second episode's
    # arms are read (at step 10); steps 10-18 stay buffered.
    assert calls == {"record_step_after_norm": 0, "record_steps": 2}
