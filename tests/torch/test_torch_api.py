"""The public contract of pulseopt_torch.AEES: the training-loop protocol, errors, logs."""

from __future__ import annotations

import math

import pytest
import torch
from aees_torch_helpers import loss_at, tiny_model, train

import pulseopt_core as core
from pulseopt_torch import AEES, CandidateConfig

# One configuration for most tests, so they share one compilation of the core.
KNOBS = {"lr_candidates": [0.5, 1.0, 2.0], "noise_candidates": [0.0, 0.01], "episode_length": 3}


def _wrapped(lr: float = 1e-2, **knobs: object) -> tuple[torch.nn.Module, AEES]:
    model = tiny_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    return model, AEES(optimizer, **{**KNOBS, "seed": 0, **knobs})


def _backward(model: torch.nn.Module, step: int = 0) -> torch.Tensor:
    loss = loss_at(model, step)
    loss.backward()
    return loss


def test_training_produces_one_log_entry_per_episode_with_every_published_key() -> None:
    model, aees = _wrapped()
    train(aees, model, range(10))
    aees.finalize()
    logs = aees.get_logs()
    assert set(logs) == set(core.LOG_KEYS)
    assert all(len(values) == 4 for values in logs.values())
    assert logs["episode_start_steps"] == [0, 3, 6, 9]
    assert logs["episode_end_steps"] == [2, 5, 8, 9]


def test_step_start_returns_the_current_candidate_config() -> None:
    model, aees = _wrapped()
    candidate = aees.step_start(0)
    assert isinstance(candidate, CandidateConfig)
    assert aees.current_candidate is candidate
    assert candidate.lr_multiplier in KNOBS["lr_candidates"]
    assert candidate.noise_std in KNOBS["noise_candidates"]
    assert candidate.name == core.candidate_name(candidate.lr_multiplier, candidate.noise_std)
    aees.step_end(_backward(model))
    assert aees.current_candidate is None


def test_candidate_is_fixed_within_an_episode() -> None:
    model, aees = _wrapped()
    seen = []
    for step in range(6):
        seen.append(aees.step_start(step))
        aees.optimizer.zero_grad()
        aees.step_end(_backward(model, step))
    assert seen[0] is seen[1] is seen[2]
    assert seen[3] is seen[4] is seen[5]


def test_optimizer_property_is_the_wrapped_optimizer() -> None:
    model = tiny_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    assert AEES(optimizer).optimizer is optimizer


def test_step_end_updates_the_parameters() -> None:
    model, aees = _wrapped()
    before = [p.detach().clone() for p in model.parameters()]
    train(aees, model, range(1))
    assert all(not torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True))


def test_lr_multiplier_scales_the_step_and_leaves_base_lrs_untouched() -> None:
    model = tiny_model()
    reference = tiny_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    aees = AEES(optimizer, lr_candidates=[2.0])
    train(aees, model, range(1))
    torch.optim.SGD(reference.parameters(), lr=0.2).zero_grad()
    loss_at(reference, 0).backward()
    torch.optim.SGD(reference.parameters(), lr=0.2).step()
    assert optimizer.param_groups[0]["lr"] == 0.1
    for ours, expected in zip(model.parameters(), reference.parameters(), strict=True):
        assert torch.equal(ours, expected)


def test_param_groups_with_different_lrs_are_each_multiplied_and_restored() -> None:
    model = tiny_model()
    first, second = model[0], model[2]
    optimizer = torch.optim.SGD(
        [{"params": first.parameters(), "lr": 0.1}, {"params": second.parameters(), "lr": 0.01}]
    )
    seen_lrs = []
    original_step = optimizer.step

    def spying_step(*args: object, **kwargs: object) -> object:
        seen_lrs.append([group["lr"] for group in optimizer.param_groups])
        return original_step(*args, **kwargs)

    optimizer.step = spying_step  # type: ignore[method-assign]
    aees = AEES(optimizer, lr_candidates=[0.5])
    train(aees, model, range(2))
    assert seen_lrs == [[0.05, 0.005], [0.05, 0.005]]
    assert [group["lr"] for group in optimizer.param_groups] == [0.1, 0.01]


def test_base_lrs_are_restored_when_the_optimizer_step_raises() -> None:
    model, aees = _wrapped()

    def failing_step(*args: object, **kwargs: object) -> None:
        raise RuntimeError("optimizer failed")

    aees.optimizer.step = failing_step  # type: ignore[method-assign]
    aees.step_start(0)
    _backward(model)
    with pytest.raises(RuntimeError, match="optimizer failed"):
        aees.step_end(torch.tensor(1.0))
    assert aees.optimizer.param_groups[0]["lr"] == 1e-2
    assert aees.current_candidate is None


def test_parameters_without_gradients_are_left_alone() -> None:
    model = tiny_model()
    frozen = model[0]
    for param in frozen.parameters():
        param.requires_grad_(False)
    before = [p.detach().clone() for p in frozen.parameters()]
    aees = AEES(torch.optim.AdamW(model.parameters(), lr=1e-2), **{**KNOBS, "seed": 0})
    train(aees, model, range(6))
    aees.finalize()
    assert all(torch.equal(b, p) for b, p in zip(before, frozen.parameters(), strict=True))
    assert all(norm is not None and norm > 0 for norm in aees.get_logs()["mean_update_norms"])


def test_scheduler_is_stepped_once_per_applied_step() -> None:
    model = tiny_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    aees = AEES(optimizer, lr_scheduler=scheduler)
    train(aees, model, range(3))
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * 0.5**3)
    assert scheduler.last_epoch == 3


def test_get_logs_returns_fresh_lists() -> None:
    model, aees = _wrapped()
    train(aees, model, range(3))
    aees.get_logs()["episode_rewards"].append(123.0)
    assert 123.0 not in aees.get_logs()["episode_rewards"]


def test_get_logs_keeps_every_episode_beyond_the_core_log_capacity() -> None:
    model, aees = _wrapped(episode_length=1, log_capacity=2)
    train(aees, model, range(5))
    assert aees.get_logs()["episode_start_steps"] == [0, 1, 2, 3, 4]


def test_context_modes_add_the_context_log_keys() -> None:
    model, aees = _wrapped(context_mode="trend_phase", total_training_steps=12)
    train(aees, model, range(12))
    logs = aees.get_logs()
    assert logs["context_phases"] == ["early", "early", "middle", "late"]
    assert set(core.CONTEXT_LOG_KEYS) <= set(logs)


def test_a_global_step_that_jumps_moves_the_episode_start() -> None:
    model, aees = _wrapped()
    train(aees, model, [10, 11, 12, 20, 21, 22])
    logs = aees.get_logs()
    assert logs["episode_start_steps"] == [10, 20]
    assert logs["episode_end_steps"] == [12, 22]


def test_finalize_closes_a_partial_episode_once() -> None:
    model, aees = _wrapped()
    train(aees, model, range(4))
    aees.finalize()
    aees.finalize()
    assert aees.get_logs()["episode_end_steps"] == [2, 3]


def test_step_end_without_step_start_raises() -> None:
    model, aees = _wrapped()
    with pytest.raises(RuntimeError, match=r"step_end\(\) called without"):
        aees.step_end(_backward(model))


def test_step_start_twice_raises_and_keeps_the_open_step() -> None:
    model, aees = _wrapped()
    candidate = aees.step_start(0)
    with pytest.raises(RuntimeError, match=r"step_start\(\) called twice"):
        aees.step_start(1)
    assert aees.current_candidate is candidate
    aees.step_end(_backward(model))


def test_finalize_inside_an_open_step_raises() -> None:
    _, aees = _wrapped()
    aees.step_start(0)
    with pytest.raises(RuntimeError, match=r"finalize\(\) called with an open step"):
        aees.finalize()


@pytest.mark.parametrize("bad", [-1, 1.5, True, 2**31])
def test_step_start_rejects_a_bad_global_step(bad: object) -> None:
    _, aees = _wrapped()
    with pytest.raises(ValueError, match="global_step"):
        aees.step_start(bad)  # type: ignore[arg-type]
    assert aees.current_candidate is None


@pytest.mark.parametrize(
    ("knob", "value"),
    [
        ("lr_candidates", []),
        ("lr_candidates", [0.0, 1.0]),
        ("noise_candidates", [-0.1]),
        ("episode_length", 0),
        ("control_mode", "greedy"),
        ("context_mode", "season"),
        ("structured_control_mode", "joint"),
        ("context_mode", "trend_phase"),
    ],
)
def test_invalid_knobs_raise_value_error_naming_them(knob: str, value: object) -> None:
    optimizer = torch.optim.SGD(tiny_model().parameters(), lr=0.1)
    expected = "total_training_steps" if value == "trend_phase" else knob
    with pytest.raises(ValueError, match=expected):
        AEES(optimizer, **{knob: value})  # type: ignore[arg-type]


def test_total_training_steps_outside_trend_phase_warns_at_the_callers_line() -> None:
    optimizer = torch.optim.SGD(tiny_model().parameters(), lr=0.1)
    with pytest.warns(UserWarning, match="total_training_steps") as record:
        AEES(optimizer, context_mode="trend", total_training_steps=10)
    assert record[0].filename == __file__


@pytest.mark.parametrize("bad_loss", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize(
    ("as_tensor", "knobs"), [(False, {}), (True, {"preset": "robust"})], ids=["number", "guard"]
)
def test_non_finite_loss_raises_applies_nothing_and_closes_the_step(
    bad_loss: float, as_tensor: bool, knobs: dict[str, object]
) -> None:
    # A Python number is checked at once; a tensor wherever every step is read.
    model, aees = _wrapped(**knobs)
    before = [p.detach().clone() for p in model.parameters()]
    aees.step_start(0)
    _backward(model)
    with pytest.raises(ValueError, match="finite"):
        aees.step_end(torch.tensor(bad_loss) if as_tensor else bad_loss)
    assert all(torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True))
    assert aees.optimizer.param_groups[0]["lr"] == 1e-2
    assert aees.current_candidate is None
    train(aees, model, range(1, 4))
    assert aees.get_logs()["episode_start_steps"] == [1]


def test_a_non_finite_tensor_loss_raises_at_the_episode_end_in_the_default_configuration() -> None:
    model, aees = _wrapped(episode_length=3)
    aees.step_start(0)
    _backward(model)
    aees.step_end(torch.tensor(math.nan))  # applied: nothing is read before the episode ends
    train(aees, model, range(1, 2))
    aees.step_start(2)
    _backward(model, 2)
    with pytest.raises(ValueError, match=r"step\(s\) \[0\] were not finite"):
        aees.step_end(loss_at(model, 2))
    assert aees.current_candidate is None
    assert int(aees.core_state.skipped_steps) == 1
    assert aees.get_logs()["episode_rewards"] == []  # two of three steps counted so far
    train(aees, model, range(3, 4))
    assert len(aees.get_logs()["episode_rewards"]) == 1


def test_skip_nonfinite_skips_and_counts_the_step() -> None:
    model = tiny_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    aees = AEES(optimizer, episode_length=2, lr_scheduler=scheduler, skip_nonfinite=True)
    before = [p.detach().clone() for p in model.parameters()]
    aees.step_start(0)
    _backward(model)
    aees.step_end(math.nan)
    assert all(torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True))
    assert scheduler.last_epoch == 0
    assert int(aees.core_state.skipped_steps) == 1
    train(aees, model, range(1, 3))
    logs = aees.get_logs()
    assert logs["episode_start_steps"] == [1]
    assert logs["episode_start_losses"][0] == pytest.approx(
        float(loss_at(tiny_model(), 1).detach())
    )


def test_track_update_norm_false_logs_none() -> None:
    model, aees = _wrapped(track_update_norm=False)
    train(aees, model, range(3))
    assert aees.get_logs()["mean_update_norms"] == [None]


def test_update_norm_is_the_l2_norm_of_the_parameter_change() -> None:
    model, aees = _wrapped(episode_length=1)
    before = torch.cat([p.detach().flatten() for p in model.parameters()])
    train(aees, model, range(1))
    after = torch.cat([p.detach().flatten() for p in model.parameters()])
    expected = float(torch.linalg.vector_norm(after - before))
    assert aees.get_logs()["mean_update_norms"] == [pytest.approx(expected, rel=1e-5)]


def test_same_seed_gives_the_same_decisions_and_parameters() -> None:
    runs = []
    for _ in range(2):
        model, aees = _wrapped(seed=3)
        train(aees, model, range(12))
        runs.append((aees.get_logs(), [p.detach().clone() for p in model.parameters()]))
    assert runs[0][0] == runs[1][0]
    assert all(torch.equal(a, b) for a, b in zip(runs[0][1], runs[1][1], strict=True))


def test_candidate_config_validates_its_fields() -> None:
    with pytest.raises(ValueError, match="name"):
        CandidateConfig("")
    with pytest.raises(ValueError, match="lr_multiplier"):
        CandidateConfig("x", lr_multiplier=0.0)
    with pytest.raises(ValueError, match="noise_std"):
        CandidateConfig("x", noise_std=-1.0)
