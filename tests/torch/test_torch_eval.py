"""`AEES.observe_eval`: eval-aware scale control and restoring the best parameters."""

from __future__ import annotations

import math

import pytest
import torch

from pulseopt_torch import AEES, AEESOptimizer

EPISODE = 5


def _run(evals: dict[int, float], steps: int, **knobs: object):
    """A linear model on a fixed batch; ``evals`` maps a step to the eval loss handed in before it."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    aees = AEES(optimizer, episode_length=EPISODE, seed=0, **knobs)
    x, y = torch.randn(32, 4), torch.randn(32, 1)
    history = []
    for step in range(steps):
        if step in evals:
            aees.observe_eval(torch.tensor(evals[step]))
        history.append([p.detach().clone() for p in model.parameters()])
        aees.step_start(step)
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        aees.step_end(loss)
    return model, aees, history


def test_observe_eval_reaches_the_core() -> None:
    _, aees, _ = _run({3: 2.0, 8: 1.5, 9: math.nan}, 12, preset="robust")
    guard = aees.core_state.guard
    assert int(guard.eval_count) == 2
    assert float(guard.eval_best_loss) == 1.5


def test_a_rising_eval_loss_cuts_the_multiplier() -> None:
    evals = {EPISODE * k + 1: 1.0 + 0.1 * k for k in range(6)}
    _, aees, _ = _run(evals, 6 * EPISODE, preset="robust")
    assert int(aees.core_state.guard.eval_cuts) >= 2
    assert float(aees.core_state.guard.lr_scale) < 1.0


def test_finalize_restores_the_parameters_of_the_best_eval_exactly() -> None:
    model, aees, history = _run({2: 3.0, 6: 1.0, 9: 2.0, 13: 1.5}, 16, restore_best=True)
    assert not all(torch.equal(p, q) for p, q in zip(model.parameters(), history[6], strict=True))
    aees.finalize()
    for param, best in zip(model.parameters(), history[6], strict=True):
        assert torch.equal(param, best)


def test_without_restore_best_finalize_keeps_the_parameters() -> None:
    model, aees, _ = _run({2: 3.0, 6: 1.0}, 10)
    before = [p.detach().clone() for p in model.parameters()]
    aees.finalize()
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before, strict=True))


def test_the_best_parameters_survive_a_checkpoint() -> None:
    _, aees, history = _run({2: 3.0, 6: 1.0}, 10, restore_best=True)
    saved = aees.state_dict()
    other_model, other, _ = _run({}, 3, restore_best=True)
    other.load_state_dict(saved)
    other.finalize()
    for param, best in zip(other_model.parameters(), history[6], strict=True):
        assert torch.equal(param, best)


def test_a_best_params_entry_of_the_wrong_shape_is_rejected() -> None:
    _, aees, _ = _run({2: 3.0}, 4, restore_best=True)
    saved = aees.state_dict()
    saved["best_params"] = [torch.zeros(3)]
    with pytest.raises(ValueError, match="best_params"):
        aees.load_state_dict(saved)


def test_the_optimizer_face_takes_eval_losses_too() -> None:
    model = torch.nn.Linear(2, 1)
    optimizer = AEESOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), seed=0)
    optimizer.observe_eval(0.5)
    assert int(optimizer.core_state.guard.eval_count) == 1


@pytest.mark.parametrize(
    ("knobs", "expected"),
    [
        ({}, (True, True, 64.0)),
        ({"growth": False}, (True, False, 64.0)),
        # Valid only with the preset's guard: the whole is checked, not the given part.
        ({"growth": True}, (True, True, 64.0)),
        ({"max_lr_scale": 1.0}, (True, True, 1.0)),
    ],
)
def test_explicit_knobs_win_over_the_preset_even_at_their_defaults(
    knobs: dict, expected: tuple
) -> None:
    model = torch.nn.Linear(2, 1)
    aees = AEES(torch.optim.SGD(model.parameters(), lr=0.1), preset="robust", **knobs)
    assert (aees.config.guard, aees.config.growth, aees.config.max_lr_scale) == expected
