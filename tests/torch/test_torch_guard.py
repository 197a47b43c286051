"""The robust preset in the torch adapter: in-place rollback, back-off, resume."""

from __future__ import annotations

import copy
import io

import jax
import numpy as np
import pytest
import torch

import pulseopt_core as core
from pulseopt_torch import AEES, _runtime
from tests.torch.aees_torch_helpers import count_calls, loss_at, tiny_model

EPISODE = 4
SPIKE_STEP = 9  # in the third episode; the last snapshot was taken at step 7


def _guarded(model: torch.nn.Module) -> AEES:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    return AEES(optimizer, episode_length=EPISODE, preset="robust", guard_warmup_steps=2, seed=0)


def _step(aees: AEES, model: torch.nn.Module, step: int, scale: float = 1.0) -> None:
    aees.step_start(step)
    aees.optimizer.zero_grad()
    loss = loss_at(model, step) * scale
    loss.backward()
    aees.step_end(loss)


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [
        value.clone()
        for state in optimizer.state.values()
        for value in state.values()
        if isinstance(value, torch.Tensor)
    ]


def test_a_spike_restores_params_and_optimizer_state_exactly() -> None:
    model = tiny_model()
    aees = _guarded(model)
    for step in range(SPIKE_STEP):
        if step == 7:
            params = [p.detach().clone() for p in model.parameters()]
            state = _optimizer_tensors(aees.optimizer)
        _step(aees, model, step)
    _step(aees, model, SPIKE_STEP, scale=1e4)

    for saved, now in zip(params, model.parameters(), strict=True):
        assert torch.equal(saved, now)
    for saved, now in zip(state, _optimizer_tensors(aees.optimizer), strict=True):
        assert torch.equal(saved, now)


def test_a_spike_halves_the_lr_multiplier_for_the_next_steps() -> None:
    model = tiny_model()
    aees = _guarded(model)
    for step in range(SPIKE_STEP):
        _step(aees, model, step)
    before = aees.step_start(SPIKE_STEP).lr_multiplier
    aees.optimizer.zero_grad()
    loss = loss_at(model, SPIKE_STEP) * 1e4
    loss.backward()
    aees.step_end(loss)
    assert aees.step_start(SPIKE_STEP + 1).lr_multiplier == before / 2
    assert int(aees.core_state.guard.total_rollbacks) == 1


def test_a_non_finite_loss_rolls_back_instead_of_raising() -> None:
    model = tiny_model()
    aees = _guarded(model)
    for step in range(5):
        _step(aees, model, step)
    before = [p.detach().clone() for p in model.parameters()]
    _step(aees, model, 5, scale=float("nan"))
    assert int(aees.core_state.guard.total_rollbacks) == 1
    assert not all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True)), (
        "the snapshot is from step 3, not step 5"
    )
    _step(aees, model, 6)


def test_without_a_preset_no_snapshot_is_kept() -> None:
    aees = AEES(torch.optim.SGD(tiny_model().parameters(), lr=0.1))
    assert aees.state_dict()["guard_snapshot"] is None
    assert not aees.config.guard


def test_a_guarded_run_resumes_exactly_from_its_state_dict() -> None:
    model = tiny_model()
    aees = _guarded(model)
    for step in range(6):
        _step(aees, model, step)
    buffer = io.BytesIO()
    torch.save(
        {
            "aees": aees.state_dict(),
            "model": model.state_dict(),
            "optimizer": aees.optimizer.state_dict(),
        },
        buffer,
    )
    resumed_model = tiny_model(seed=1)
    resumed = _guarded(resumed_model)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    resumed_model.load_state_dict(saved["model"])
    resumed.optimizer.load_state_dict(saved["optimizer"])
    resumed.load_state_dict(saved["aees"])

    for run_model, run in ((model, aees), (resumed_model, resumed)):
        for step in range(6, 14):
            _step(run, run_model, step, scale=1e4 if step == SPIKE_STEP else 1.0)
    for a, b in zip(model.parameters(), resumed_model.parameters(), strict=True):
        assert torch.equal(a, b)
    assert copy.deepcopy(aees.get_logs()) == resumed.get_logs()


def test_the_robust_preset_grows_the_multiplier_along_a_straight_path() -> None:
    weight = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))
    direction = torch.tensor([1.0, 2.0, 2.0], dtype=torch.float64)
    aees = AEES(torch.optim.SGD([weight], lr=1e-4), episode_length=EPISODE, preset="robust")
    multipliers = []
    for step in range(7 * EPISODE):
        multipliers.append(aees.step_start(step).lr_multiplier)
        aees.optimizer.zero_grad()
        loss = 10.0 - torch.dot(weight, direction)
        loss.backward()
        aees.step_end(loss)
    assert multipliers[::EPISODE] == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0]
    assert float(aees.core_state.guard.straightness) == pytest.approx(1.0, rel=1e-9)


def test_growth_needs_the_update_norm() -> None:
    with pytest.raises(ValueError, match="track_update_norm"):
        AEES(
            torch.optim.SGD(tiny_model().parameters(), lr=0.1),
            preset="robust",
            track_update_norm=False,
        )


def test_the_guarded_adapter_records_what_the_core_records_for_the_same_steps() -> None:
    # The adapter records each step as soon as its loss is read and hands the
    # update's norm over a step later (so no step reads the device twice); the
    # result must be what the core records from each step's loss, update norm
    # and snapshot distance handed over together, as the optax adapter does.
    torch.manual_seed(0)
    model = torch.nn.Linear(6, 1, dtype=torch.float64)
    aees = AEES(
        torch.optim.SGD(model.parameters(), lr=0.02),
        episode_length=EPISODE,
        preset="robust",
        guard_warmup_steps=2,
        growth_patience=1,
        seed=0,
    )
    inputs = torch.randn(32, 6, dtype=torch.float64)
    targets = inputs.sum(dim=1, keepdim=True)
    with jax.enable_x64(True):  # the adapter's core statistics are float64
        state = core.init(aees.config, 0)
        snapshot = None
        for step in range(30):
            before = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
            aees.step_start(step)
            aees.optimizer.zero_grad()
            loss = ((model(inputs) - targets) ** 2).mean()
            loss.backward()
            judged = loss.item() + (50.0 if step == 21 else 0.0)  # one spike: a rollback
            aees.step_end(judged)
            after = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

            decision = core.guard_check(aees.config, state, judged)
            displacement = 0.0
            if bool(decision.take_snapshot):
                if snapshot is not None:
                    displacement = float(torch.linalg.vector_norm(before - snapshot))
                snapshot = before
            if bool(decision.rollback):
                assert torch.equal(after, snapshot)
                state = core.record_step(aees.config, state, judged, None)
                continue
            norm = float(torch.linalg.vector_norm(after - before))
            state = core.record_step(
                aees.config, state, judged, norm, displacement_norm=displacement
            )
        got = aees.core_state
    assert int(state.guard.total_rollbacks) == 1
    assert float(state.guard.lr_scale) != 1.0  # growth and the cut both acted
    assert got.rng_key == state.rng_key
    plain = [s._replace(rng_key=None) for s in (got, state)]
    for mine, want in zip(*map(jax.tree.leaves, plain), strict=True):
        np.testing.assert_allclose(np.asarray(mine), np.asarray(want), rtol=1e-12, atol=1e-15)


def test_with_the_guard_each_step_calls_the_core_twice(monkeypatch: pytest.MonkeyPatch) -> None:
    # The guard's check, then the step's record carrying the previous step's
    # update norm: no third call for the norm, also at episode boundaries.
    calls = count_calls(
        monkeypatch, _runtime, ["guard_check", "record_step_after_norm", "record_update_norm"]
    )
    model = tiny_model()
    aees = _guarded(model)
    steps = 5 * EPISODE + 1
    for step in range(steps):
        _step(aees, model, step)
    assert calls == {"guard_check": steps, "record_step_after_norm": steps, "record_update_norm": 0}
    # Reading the state hands the core the last step's update norm.
    assert int(aees.core_state.episode.update_norm_count) == 2
    assert calls["record_update_norm"] == 1
