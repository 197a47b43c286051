"""`AEESOptimizer`: AEES behind ``optimizer.step(closure)``, with schedulers, checkpoints and
`torch.amp.GradScaler`; the same decisions as the `AEES` loop for the same losses."""

from __future__ import annotations

import copy
import io
from collections.abc import Callable
from typing import Any

import pytest
import torch
from aees_torch_helpers import loss_at, tiny_model, train

from pulseopt_torch import AEES, AEESOptimizer

KNOBS: dict[str, Any] = {
    "lr_candidates": [0.5, 1.0, 2.0],
    "noise_candidates": [0.0, 0.01],
    "episode_length": 4,
    "seed": 3,
}
STEPS = 24


def _params(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def _loop_reference(
    scheduled: bool = False, **knobs: Any
) -> tuple[list[torch.Tensor], dict[str, list[Any]]]:
    """The `AEES` step_start/step_end loop the optimizer face must reproduce."""
    model = tiny_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-2)
    scheduler = (
        torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=STEPS) if scheduled else None
    )
    aees = AEES(optimizer, lr_scheduler=scheduler, **{**KNOBS, **knobs})
    train(aees, model, range(STEPS))
    aees.finalize()
    return _params(model), aees.get_logs()


def _closure_for(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, step: int
) -> Callable[[], torch.Tensor]:
    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = loss_at(model, step)
        loss.backward()
        return loss

    return closure


def _optimizer_face(**knobs: Any) -> tuple[torch.nn.Module, AEESOptimizer]:
    model = tiny_model()
    optimizer = AEESOptimizer(torch.optim.AdamW(model.parameters(), lr=2e-2), **{**KNOBS, **knobs})
    return model, optimizer


def test_step_with_a_closure_takes_the_same_decisions_as_the_aees_loop() -> None:
    expected_params, expected_logs = _loop_reference()
    model, optimizer = _optimizer_face()
    for step in range(STEPS):
        loss = optimizer.step(_closure_for(model, optimizer, step))
        assert isinstance(loss, torch.Tensor)
    optimizer.finalize()
    assert optimizer.get_logs() == expected_logs
    assert all(torch.equal(a, b) for a, b in zip(_params(model), expected_params, strict=True))


def test_observe_then_step_takes_the_same_decisions_as_the_aees_loop() -> None:
    expected_params, expected_logs = _loop_reference()
    model, optimizer = _optimizer_face()
    for step in range(STEPS):
        optimizer.zero_grad()
        loss = loss_at(model, step)
        loss.backward()
        optimizer.observe(loss)
        assert optimizer.step() is None
    optimizer.finalize()
    assert optimizer.get_logs() == expected_logs
    assert all(torch.equal(a, b) for a, b in zip(_params(model), expected_params, strict=True))


def test_a_scheduler_attached_to_it_moves_the_wrapped_lrs_like_the_aees_loop() -> None:
    expected_params, expected_logs = _loop_reference(scheduled=True)
    model, optimizer = _optimizer_face()
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=STEPS)
    for step in range(STEPS):
        optimizer.step(_closure_for(model, optimizer, step))
        scheduler.step()
    optimizer.finalize()
    assert optimizer.get_logs() == expected_logs
    assert all(torch.equal(a, b) for a, b in zip(_params(model), expected_params, strict=True))
    assert optimizer.optimizer.param_groups[0]["lr"] == scheduler.get_last_lr()[0]


def test_step_without_a_loss_raises_and_changes_nothing() -> None:
    model, optimizer = _optimizer_face()
    loss = loss_at(model, 0)
    loss.backward()
    before = _params(model)
    with pytest.raises(RuntimeError, match="observe"):
        optimizer.step()
    assert all(torch.equal(a, b) for a, b in zip(_params(model), before, strict=True))
    optimizer.observe(loss)
    optimizer.step()
    assert int(optimizer.core_state.global_step) == 1


def test_it_is_a_torch_optimizer_sharing_the_wrapped_groups_state_and_gradients() -> None:
    model, optimizer = _optimizer_face()
    assert isinstance(optimizer, torch.optim.Optimizer)
    assert optimizer.param_groups is optimizer.optimizer.param_groups
    optimizer.step(_closure_for(model, optimizer, 0))
    assert optimizer.state is optimizer.optimizer.state
    assert len(optimizer.state) == len(list(model.parameters()))
    optimizer.zero_grad()
    assert all(p.grad is None for p in model.parameters())


def test_an_lr_scheduler_knob_is_refused() -> None:
    inner = torch.optim.SGD(tiny_model().parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(inner, step_size=1)
    with pytest.raises(TypeError, match="lr_scheduler"):
        AEESOptimizer(inner, lr_scheduler=scheduler)


def test_observe_rejects_a_non_number() -> None:
    _, optimizer = _optimizer_face()
    with pytest.raises(TypeError, match="loss"):
        optimizer.observe("0.5")  # type: ignore[arg-type]


# ---------------------------------------------------------------- checkpoints


def test_a_weights_only_checkpoint_resumes_exactly() -> None:
    model, optimizer = _optimizer_face(preset="robust")
    for step in range(STEPS):
        optimizer.step(_closure_for(model, optimizer, step))
    optimizer.finalize()
    expected_logs, expected_params = optimizer.get_logs(), _params(model)

    model, optimizer = _optimizer_face(preset="robust")
    for step in range(10):
        optimizer.step(_closure_for(model, optimizer, step))
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)

    resumed_model, resumed = _optimizer_face(preset="robust")
    resumed_model.load_state_dict(saved["model"])
    resumed.load_state_dict(saved["optimizer"])
    for step in range(10, STEPS):
        resumed.step(_closure_for(resumed_model, resumed, step))
    resumed.finalize()
    assert resumed.get_logs() == expected_logs
    assert all(
        torch.equal(a, b) for a, b in zip(_params(resumed_model), expected_params, strict=True)
    )


@pytest.mark.parametrize(
    ("edit", "named"),
    [
        (lambda saved: None, "NoneType"),
        (lambda saved: {k: v for k, v in saved.items() if k != "aees"}, "aees"),
        (lambda saved: {**saved, "next_step": -1}, "next_step"),
        (lambda saved: {**saved, "aees": {**saved["aees"], "seed": None}}, "seed"),
    ],
)
def test_a_malformed_state_dict_raises_value_error_and_changes_nothing(
    edit: Callable[[dict[str, Any]], Any], named: str
) -> None:
    model, optimizer = _optimizer_face()
    for step in range(6):
        optimizer.step(_closure_for(model, optimizer, step))
    before = copy.deepcopy(optimizer.state_dict())
    with pytest.raises(ValueError, match=named):
        optimizer.load_state_dict(edit(copy.deepcopy(before)))
    after = optimizer.state_dict()
    assert after["next_step"] == before["next_step"]
    assert after["aees"]["logs"] == before["aees"]["logs"]
    assert torch.equal(
        after["optimizer"]["state"][0]["exp_avg"], before["optimizer"]["state"][0]["exp_avg"]
    )


# ---------------------------------------------------------------- GradScaler

OVERFLOW_STEP = 6


def _scaled_run(
    preset: str | None, overflow_steps: set[int]
) -> tuple[list[torch.Tensor], AEESOptimizer, torch.amp.GradScaler, list[list[torch.Tensor]]]:
    """Train with ``scaler.step(optimizer)``; an infinite scaled gradient at ``overflow_steps``."""
    model, optimizer = _optimizer_face(preset=preset)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    starts = []
    for step in range(STEPS):
        starts.append(_params(model))
        optimizer.zero_grad()
        loss = loss_at(model, step)
        scaler.scale(loss).backward()
        if step in overflow_steps:
            model[0].weight.grad[0, 0] = float("inf")  # type: ignore[index]
        optimizer.observe(loss)
        scaler.step(optimizer)
        scaler.update()
    return _params(model), optimizer, scaler, starts


def test_with_a_grad_scaler_and_no_overflow_the_run_equals_the_unscaled_one() -> None:
    # Scaling by a power of two and unscaling is exact.
    expected_params, expected_logs = _loop_reference()
    params, optimizer, _, _ = _scaled_run(None, set())
    optimizer.finalize()
    assert optimizer.get_logs() == expected_logs
    assert all(torch.equal(a, b) for a, b in zip(params, expected_params, strict=True))


def test_a_step_the_grad_scaler_skips_for_overflow_is_counted_as_skipped() -> None:
    params, optimizer, scaler, starts = _scaled_run(None, {OVERFLOW_STEP})
    assert int(optimizer.core_state.skipped_steps) == 1
    assert scaler.get_scale() == 2.0**9
    model_after_skip = starts[OVERFLOW_STEP + 1]
    assert all(
        torch.equal(a, b) for a, b in zip(starts[OVERFLOW_STEP], model_after_skip, strict=True)
    )
    assert all(bool(torch.isfinite(p).all()) for p in params)


def test_with_the_robust_preset_an_overflow_is_not_a_spike() -> None:
    _, optimizer, _, _ = _scaled_run("robust", {OVERFLOW_STEP})
    assert int(optimizer.core_state.skipped_steps) == 1
    assert int(optimizer.core_state.guard.total_rollbacks) == 0


def test_unscale_then_clip_then_scaler_step_equals_clipping_without_a_scaler() -> None:
    def run(scaled: bool) -> list[torch.Tensor]:
        model, optimizer = _optimizer_face()
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8, enabled=scaled)
        for step in range(8):
            optimizer.zero_grad()
            loss = loss_at(model, step)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=0.1)
            optimizer.observe(loss)
            scaler.step(optimizer)
            scaler.update()
        return _params(model)

    assert all(torch.equal(a, b) for a, b in zip(run(True), run(False), strict=True))


def test_with_the_robust_preset_a_spike_rolls_back_through_step() -> None:
    model, optimizer = _optimizer_face(preset="robust", guard_warmup_steps=2)
    for step in range(9):
        optimizer.step(_closure_for(model, optimizer, step))
    before = _params(model)

    def spiking() -> torch.Tensor:
        optimizer.zero_grad()
        loss = loss_at(model, 9) * 1e4
        loss.backward()
        return loss

    optimizer.step(spiking)
    assert int(optimizer.core_state.guard.total_rollbacks) == 1
    assert not all(torch.equal(a, b) for a, b in zip(_params(model), before, strict=True)), (
        "restored to the snapshot of the last boundary, not to the spike's start"
    )
    optimizer.step(_closure_for(model, optimizer, 10))
