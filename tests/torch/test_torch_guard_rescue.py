"""The guard protects from the first step: an LR that diverges at once is rolled back and cut."""

from __future__ import annotations

import math

import pytest
import torch

from pulseopt_torch import AEES

# With this seed plain training of the MLP below diverges to NaN.
DIVERGING_SEED = 8


def _diverging_mlp() -> tuple[torch.nn.Module, torch.optim.Optimizer, torch.Tensor, torch.Tensor]:
    torch.manual_seed(DIVERGING_SEED)
    model = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.03, momentum=0.9)
    x = torch.randn(64, 16) * 2
    return model, optimizer, x, x.sum(1, keepdim=True)


def _train(aees: AEES, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int):
    """Full-batch MSE steps through ``aees``; returns every step's loss."""
    losses = []
    for step in range(steps):
        aees.step_start(step)
        aees.optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        aees.step_end(loss)
        losses.append(loss.item())
    return losses


def _diverging_mlp_run(steps: int, **knobs: object) -> tuple[list[float], AEES]:
    model, optimizer, x, y = _diverging_mlp()
    aees = AEES(optimizer, episode_length=20, seed=0, **knobs)
    return _train(aees, model, x, y, steps), aees


def test_plain_training_of_the_repro_diverges() -> None:
    model, optimizer, x, y = _diverging_mlp()
    for _ in range(300):
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        optimizer.step()
    assert not math.isfinite(loss.item())


@pytest.mark.parametrize("knobs", [{"guard": True}, {"preset": "robust"}])
def test_early_divergence_is_rescued(knobs: dict) -> None:
    losses, aees = _diverging_mlp_run(300, **knobs)
    assert all(math.isfinite(loss) for loss in losses)
    assert losses[-1] < losses[0]
    assert aees.core_state.guard.total_rollbacks >= 1


def test_a_single_layer_diverging_from_step_0_is_cut_before_growth() -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(16, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.2)
    x = torch.randn(256, 16) * 3
    y = x.sum(1, keepdim=True)
    aees = AEES(optimizer, episode_length=10, seed=0, preset="robust")
    losses = _train(aees, model, x, y, 100)
    guard = aees.core_state.guard
    assert int(guard.total_rollbacks) >= 1
    # Never far above the starting loss: the spike is caught within a few steps.
    assert max(losses) < 100 * losses[0]
    assert losses[-1] < losses[0]
    assert float(guard.lr_scale) <= 0.5
