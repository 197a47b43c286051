"""What a demanding user hits: non-finite gradients, late param groups, foreign checkpoints,
float16 norms, the caller's loss under DDP, malformed state dicts and NumPy/tensor inputs."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from aees_torch_helpers import loss_at, tiny_model, train

import pulseopt_core as core
import pulseopt_torch.aees as aees_module
from pulseopt_torch import AEES

INPUTS = torch.randn(32, 4, generator=torch.Generator().manual_seed(0))
TARGETS = INPUTS.sum(dim=1, keepdim=True)


def _linear_run(
    preset: str | None, bad_gradient_steps: set[int], steps: int, **knobs: Any
) -> tuple[torch.nn.Linear, AEES, list[list[torch.Tensor]]]:
    """``Linear(4, 1)`` with ``SGD(lr=0.1)``; an infinite gradient element at the given steps.

    Returns the model, the wrapper and the parameters each step started from.
    """
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    aees = AEES(
        torch.optim.SGD(model.parameters(), lr=0.1),
        preset=preset,
        episode_length=5,
        seed=0,
        **knobs,
    )
    starts = []
    for step in range(steps):
        starts.append([p.detach().clone() for p in model.parameters()])
        aees.step_start(step)
        aees.optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(model(INPUTS), TARGETS)
        loss.backward()
        if step in bad_gradient_steps:
            assert model.weight.grad is not None
            model.weight.grad[0, 0] = float("inf")
        aees.step_end(loss)
    return model, aees, starts


def _all_finite(model: torch.nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


# ---------------------------------------------------------------- non-finite gradients (item 2)


def test_with_skip_nonfinite_a_non_finite_gradient_with_a_finite_loss_is_not_applied() -> None:
    model, aees, starts = _linear_run(None, {0}, 1, skip_nonfinite=True)
    assert all(torch.equal(a, b) for a, b in zip(starts[0], model.parameters(), strict=True))
    assert int(aees.core_state.skipped_steps) == 1
    assert aees.current_candidate is None


def test_by_default_a_non_finite_gradient_is_reported_when_the_episode_ends() -> None:
    # Step 1's infinite update was applied, so the losses after it are not finite either.
    with pytest.raises(ValueError, match=r"step\(s\) \[1, 2, 3, 4\] were not finite"):
        _linear_run(None, {1}, 5)


def test_with_skip_nonfinite_a_non_finite_gradient_does_not_step_the_scheduler() -> None:
    model = tiny_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    aees = AEES(optimizer, lr_scheduler=scheduler, seed=0, skip_nonfinite=True)
    aees.step_start(0)
    loss = loss_at(model, 0)
    loss.backward()
    model[0].bias.grad[0] = float("nan")  # type: ignore[index]
    aees.step_end(loss)
    assert optimizer.param_groups[0]["lr"] == 0.1


def test_robust_a_non_finite_gradient_at_the_first_step_is_skipped_and_training_recovers() -> None:
    model, aees, _ = _linear_run("robust", {0}, 30)
    assert _all_finite(model)
    assert int(aees.core_state.skipped_steps) == 1


def test_robust_a_non_finite_gradient_rolls_back_to_the_snapshot() -> None:
    model, aees, starts = _linear_run("robust", {7}, 8)
    assert int(aees.core_state.guard.total_rollbacks) == 1
    # The snapshot is taken by the step that closes the first episode (step 4).
    assert all(torch.equal(a, b) for a, b in zip(starts[4], model.parameters(), strict=True))


def test_robust_with_skip_nonfinite_a_non_finite_gradient_keeps_the_weights_finite() -> None:
    model, aees, _ = _linear_run("robust", {0}, 30, skip_nonfinite=True)
    assert _all_finite(model)
    assert int(aees.core_state.skipped_steps) == 1


# ---------------------------------------------------------------- add_param_group (item 5)


def _guarded_with_late_group() -> tuple[torch.nn.Module, torch.nn.Parameter, AEES]:
    model = tiny_model()
    extra = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    aees = AEES(optimizer, episode_length=4, preset="robust", guard_warmup_steps=2, seed=0)
    return model, extra, aees


def _loss_with_extra(model: torch.nn.Module, extra: torch.Tensor, step: int) -> torch.Tensor:
    return loss_at(model, step) + (extra - 1.0).pow(2).sum()


def _extra_step(
    aees: AEES, model: torch.nn.Module, extra: torch.Tensor, step: int, scale: float = 1.0
) -> None:
    aees.step_start(step)
    aees.optimizer.zero_grad()
    loss = _loss_with_extra(model, extra, step) * scale
    loss.backward()
    aees.step_end(loss)


def test_a_param_group_added_after_construction_is_rolled_back_too() -> None:
    model, extra, aees = _guarded_with_late_group()
    train(aees, model, range(8))  # the step closing the second episode (7) took a snapshot
    aees.optimizer.add_param_group({"params": [extra], "lr": 0.1})
    joined = extra.detach().clone()
    _extra_step(aees, model, extra, 8)
    assert not torch.equal(extra.detach(), joined)
    _extra_step(aees, model, extra, 9, scale=1e4)
    assert int(aees.core_state.guard.total_rollbacks) == 1
    assert torch.equal(extra.detach(), joined)
    assert extra not in aees.optimizer.state, "its AdamW state did not exist when it joined"


def test_a_robust_checkpoint_taken_after_add_param_group_loads() -> None:
    model, extra, aees = _guarded_with_late_group()
    train(aees, model, range(5))
    aees.optimizer.add_param_group({"params": [extra], "lr": 0.1})
    _extra_step(aees, model, extra, 5)
    saved = copy.deepcopy(aees.state_dict())

    _, other_extra, other = _guarded_with_late_group()
    other.optimizer.add_param_group({"params": [other_extra], "lr": 0.1})
    other.load_state_dict(saved)
    assert len(other.state_dict()["guard_snapshot"]["params"]) == len(
        saved["guard_snapshot"]["params"]
    )


def test_a_checkpoint_taken_right_after_add_param_group_covers_the_new_group() -> None:
    model, extra, aees = _guarded_with_late_group()
    train(aees, model, range(5))
    aees.optimizer.add_param_group({"params": [extra], "lr": 0.1})
    saved = aees.state_dict()["guard_snapshot"]
    assert len(saved["params"]) == len(list(model.parameters())) + 1


# ---------------------------------------------------------------- foreign checkpoints (item 6)


def _state_dicts_equal(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return (
            isinstance(b, torch.Tensor)
            and (a.dtype, a.shape) == (b.dtype, b.shape)
            and a.numpy().tobytes() == b.numpy().tobytes()
        )
    if isinstance(a, dict):
        return (
            isinstance(b, dict)
            and a.keys() == b.keys()
            and all(_state_dicts_equal(a[k], b[k]) for k in a)
        )
    if isinstance(a, list | tuple):
        return (
            type(a) is type(b)
            and len(a) == len(b)
            and all(_state_dicts_equal(x, y) for x, y in zip(a, b, strict=True))
        )
    if isinstance(a, float) and isinstance(b, float) and a != a:
        return b != b
    return bool(a == b)


def _robust(optimizer_factory: Callable[[Any], torch.optim.Optimizer]) -> tuple[Any, AEES]:
    model = tiny_model()
    aees = AEES(optimizer_factory(model.parameters()), episode_length=4, preset="robust", seed=0)
    return model, aees


def test_a_robust_adamw_checkpoint_does_not_load_around_sgd_with_momentum() -> None:
    model, adamw = _robust(lambda params: torch.optim.AdamW(params, lr=1e-2))
    train(adamw, model, range(6))
    sgd_model, sgd = _robust(lambda params: torch.optim.SGD(params, lr=1e-2, momentum=0.9))
    train(sgd, sgd_model, range(6))
    before = copy.deepcopy(sgd.state_dict())
    with pytest.raises(ValueError, match="AdamW"):
        sgd.load_state_dict(adamw.state_dict())
    assert _state_dicts_equal(sgd.state_dict(), before)


def test_a_snapshot_whose_optimizer_state_does_not_fit_is_rejected() -> None:
    model, aees = _robust(lambda params: torch.optim.SGD(params, lr=1e-2, momentum=0.9))
    train(aees, model, range(6))
    saved = copy.deepcopy(aees.state_dict())
    saved["guard_snapshot"]["optimizer_state"][0] = {"exp_avg": torch.zeros(3)}
    with pytest.raises(ValueError, match="optimizer state 0"):
        aees.load_state_dict(saved)


# ---------------------------------------------------------------- float16 update norm (item 8)


def test_the_update_norm_of_float16_parameters_does_not_overflow() -> None:
    weight = torch.nn.Parameter(torch.zeros(10**6, dtype=torch.float16))
    aees = AEES(torch.optim.SGD([weight], lr=1.0), episode_length=1, seed=0)
    aees.step_start(0)
    weight.grad = torch.full_like(weight, 100.0)
    aees.step_end(1.0)
    assert int(aees.core_state.skipped_steps) == 0
    assert aees.get_logs()["mean_update_norms"] == [pytest.approx(1e5, rel=1e-6)]


# ---------------------------------------------------------------- the caller's loss under DDP (item 9)


def test_under_distributed_the_callers_float64_loss_is_never_written_to(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Done:
        def wait(self) -> None:
            pass

    def all_reduce_of_two_equal_ranks(
        tensor: torch.Tensor, *args: object, async_op: bool = False, **kwargs: object
    ) -> Done | None:
        tensor.mul_(2)
        return Done() if async_op else None

    monkeypatch.setattr(aees_module, "_world_size", lambda: 2)
    monkeypatch.setattr(aees_module.dist, "all_reduce", all_reduce_of_two_equal_ranks)
    model = tiny_model()
    aees = AEES(torch.optim.SGD(model.parameters(), lr=0.1), episode_length=1, seed=0)
    aees.step_start(0)
    loss = loss_at(model, 0).double()
    loss.backward()
    value = float(loss.detach())
    aees.step_end(loss)
    assert float(loss.detach()) == value
    assert aees.get_logs()["episode_start_losses"] == [value]


# ---------------------------------------------------------------- malformed state dicts (item 14)


def _untrained() -> tuple[torch.nn.Module, AEES]:
    model = tiny_model()
    return model, AEES(
        torch.optim.AdamW(model.parameters(), lr=1e-2),
        lr_candidates=[0.5, 1.0],
        noise_candidates=[0.0, 0.01],
        episode_length=3,
        seed=1,
    )


def _trained() -> tuple[torch.nn.Module, AEES]:
    model, aees = _untrained()
    train(aees, model, range(7))
    return model, aees


def _without(key: str) -> Callable[[dict[str, Any]], Any]:
    def edit(saved: dict[str, Any]) -> Any:
        del saved[key]
        return saved

    return edit


def _with(key: str, value: Any) -> Callable[[dict[str, Any]], Any]:
    def edit(saved: dict[str, Any]) -> Any:
        saved[key] = value
        return saved

    return edit


def _drop_core_field(saved: dict[str, Any]) -> Any:
    del saved["core_state"]["episode"]
    return saved


def _truncate_a_log(saved: dict[str, Any]) -> Any:
    saved["logs"]["episode_rewards"].pop()
    return saved


@pytest.mark.parametrize(
    ("edit", "named"),
    [
        (lambda saved: None, "NoneType"),
        (lambda saved: [saved], "list"),
        (_without("core_state"), "core_state"),
        (_without("logs"), "logs"),
        (_without("guard_snapshot"), "guard_snapshot"),
        (_drop_core_field, "core_state"),
        (_with("core_state", None), "core_state"),
        (_with("logs", None), "logs"),
        (_truncate_a_log, "logs"),
        (_with("seed", "seven"), "seed"),
        (_with("step_open", 1), "step_open"),
        (_with("config", None), "config"),
        (_with("noise_generators", {"cpu:0:0": torch.zeros(3, dtype=torch.uint8)}), "noise"),
        (_with("noise_generators", {"gpu": torch.zeros(3, dtype=torch.uint8)}), "noise"),
        (_with("version", 7), "version"),
    ],
)
def test_a_malformed_state_dict_raises_value_error_and_changes_nothing(
    edit: Callable[[dict[str, Any]], Any], named: str
) -> None:
    model, aees = _trained()
    saved = edit(copy.deepcopy(aees.state_dict()))
    before = copy.deepcopy(aees.state_dict())
    with pytest.raises(ValueError, match=named):
        aees.load_state_dict(saved)
    assert _state_dicts_equal(aees.state_dict(), before)
    train(aees, model, range(7, 10))


def _as_version_1(saved: dict[str, Any]) -> dict[str, Any]:
    """``saved`` as version 1 wrote it: one ``[C]`` tensor per episode-log column."""
    log = saved["core_state"]["episode_log"]
    columns = {}
    for table, names in (
        ("log_ints", core.LOG_INT_COLUMNS),
        ("log_floats", core.LOG_FLOAT_COLUMNS),
    ):
        for i, name in enumerate(names):
            columns[f"log_{name}"] = log[table][:, i].clone()
    saved["core_state"]["episode_log"] = columns
    saved["version"] = 1
    return saved


def test_a_version_1_state_dict_loads_into_the_same_state() -> None:
    _, aees = _trained()
    saved = aees.state_dict()
    old = _as_version_1(copy.deepcopy(saved))
    assert old["version"] == 1 and "log_reward" in old["core_state"]["episode_log"]
    _, restored = _untrained()
    restored.load_state_dict(old)
    assert _state_dicts_equal(restored.state_dict(), saved)
    assert restored.get_logs() == aees.get_logs()


def test_a_version_1_state_dict_missing_a_log_column_raises_and_changes_nothing() -> None:
    _, aees = _trained()
    old = _as_version_1(copy.deepcopy(aees.state_dict()))
    del old["core_state"]["episode_log"]["log_reward"]
    before = copy.deepcopy(aees.state_dict())
    with pytest.raises(ValueError, match="episode_log"):
        aees.load_state_dict(old)
    assert _state_dicts_equal(aees.state_dict(), before)


# ---------------------------------------------------------------- the reference's inputs (item 15)


@pytest.mark.parametrize(
    "candidates",
    [
        np.array([0.5, 1.0, 2.0]),
        torch.tensor([0.5, 1.0, 2.0]),
        (value for value in (0.5, 1.0, 2.0)),
        [torch.tensor(0.5), np.float32(1.0), 2],
        range(1, 3),
    ],
    ids=["numpy", "tensor", "generator", "mixed_scalars", "range"],
)
def test_lr_candidates_accept_any_real_number_iterable(candidates: Any) -> None:
    aees = AEES(torch.optim.SGD(tiny_model().parameters(), lr=0.1), lr_candidates=candidates)
    expected = (1.0, 2.0) if isinstance(candidates, range) else (0.5, 1.0, 2.0)
    assert aees.config.lr_candidates == expected
    assert all(type(value) is float for value in aees.config.lr_candidates)


def test_noise_candidates_accept_a_numpy_array() -> None:
    optimizer = torch.optim.SGD(tiny_model().parameters(), lr=0.1)
    aees = AEES(optimizer, noise_candidates=np.array([0.0, 0.01]))
    assert aees.config.noise_candidates == (0.0, 0.01)


@pytest.mark.parametrize(
    "global_step", [torch.tensor(3), torch.tensor([3]), np.int64(3), np.array(3)]
)
def test_step_start_accepts_integral_scalars(global_step: Any) -> None:
    model = tiny_model()
    aees = AEES(torch.optim.SGD(model.parameters(), lr=0.1), episode_length=1)
    aees.step_start(global_step)
    loss = loss_at(model, 3)
    loss.backward()
    aees.step_end(loss)
    assert aees.get_logs()["episode_start_steps"] == [3]


@pytest.mark.parametrize(
    "global_step", [torch.tensor(3.0), torch.tensor(True), torch.tensor([1, 2]), np.float64(3)]
)
def test_step_start_rejects_non_integral_scalars(global_step: Any) -> None:
    aees = AEES(torch.optim.SGD(tiny_model().parameters(), lr=0.1))
    with pytest.raises(ValueError, match="global_step"):
        aees.step_start(global_step)
    assert aees.current_candidate is None
