"""How often a training step waits for the device: never between episode boundaries by default.

Counts, over many steps, the calls that make the host wait for the device:
``aten._local_scalar_dense`` (what ``.item()`` and ``float()`` dispatch to,
seen with a `TorchDispatchMode`) and the wrapper's reads of its device buffer
(`StepRecords.read`, the one place it copies device values to the host; on a
CPU that copy dispatches nothing, so it is counted at its call).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from aees_torch_helpers import ScalarReads, loss_at, tiny_model

from pulseopt_torch import AEES, AEESOptimizer
from pulseopt_torch._step_records import StepRecords

EPISODE_LENGTH = 10
STEPS = 40


def _optimizer(model: torch.nn.Module) -> torch.optim.Optimizer:
    # SGD reads nothing back itself (Adam's per-parameter loop reads its step counts).
    return torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)


def _aees_step(knobs: dict[str, Any]) -> Callable[[int], None]:
    model = tiny_model()
    aees = AEES(_optimizer(model), **knobs)

    def step(number: int) -> None:
        aees.step_start(number)
        aees.optimizer.zero_grad()
        loss = loss_at(model, number)
        loss.backward()
        aees.step_end(loss)

    return step


def _optimizer_step(knobs: dict[str, Any]) -> Callable[[int], None]:
    model = tiny_model()
    optimizer = AEESOptimizer(_optimizer(model), **knobs)

    def step(number: int) -> None:
        def closure() -> torch.Tensor:
            optimizer.zero_grad()
            loss = loss_at(model, number)
            loss.backward()
            return loss

        optimizer.step(closure)

    return step


def _syncs_per_step(
    make: Callable[[dict[str, Any]], Callable[[int], None]],
    knobs: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> list[tuple[int, int]]:
    """(scalar reads, buffer reads) of each step after the first episode."""
    buffer_reads = [0]
    original = StepRecords.read

    def counted(self: StepRecords, *args: Any, **kwargs: Any) -> Any:
        buffer_reads[0] += 1
        return original(self, *args, **kwargs)

    monkeypatch.setattr(StepRecords, "read", counted)
    step = make({"lr_candidates": [0.5, 1.0, 2.0], "episode_length": EPISODE_LENGTH, **knobs})
    for number in range(EPISODE_LENGTH):  # compile and warm up
        step(number)
    counts = []
    for number in range(EPISODE_LENGTH, EPISODE_LENGTH + STEPS):
        before = buffer_reads[0]
        with ScalarReads() as counter:
            step(number)
        counts.append((counter.count, buffer_reads[0] - before))
    return counts


MAKERS = pytest.mark.parametrize("make", [_aees_step, _optimizer_step], ids=["AEES", "optimizer"])


@MAKERS
@pytest.mark.parametrize("track_update_norm", [True, False])
def test_by_default_only_the_step_that_ends_an_episode_reads_the_device(
    make: Callable[[dict[str, Any]], Callable[[int], None]],
    track_update_norm: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    counts = _syncs_per_step(make, {"track_update_norm": track_update_norm, "seed": 0}, monkeypatch)
    assert all(scalar_reads == 0 for scalar_reads, _ in counts)
    ends_episode = [(number + 1) % EPISODE_LENGTH == 0 for number in range(len(counts))]
    assert [reads for _, reads in counts] == [int(end) for end in ends_episode]


@MAKERS
@pytest.mark.parametrize("track_update_norm", [True, False])
def test_with_the_guard_every_step_reads_the_device_exactly_once(
    make: Callable[[dict[str, Any]], Callable[[int], None]],
    track_update_norm: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Once before each optimizer step; the step that ends an episode reads no
    # more (its update's norm travels in the next step's read).
    knobs = {"seed": 0, "preset": "robust", "growth": track_update_norm}
    counts = _syncs_per_step(make, {**knobs, "track_update_norm": track_update_norm}, monkeypatch)
    assert counts == [(0, 1)] * len(counts)


@MAKERS
def test_skip_nonfinite_reads_the_device_once_per_step_and_once_more_per_episode(
    make: Callable[[dict[str, Any]], Callable[[int], None]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    counts = _syncs_per_step(make, {"seed": 0, "skip_nonfinite": True}, monkeypatch)
    assert all(scalar_reads == 0 for scalar_reads, _ in counts)
    # One read before each optimizer step; without the guard the step that
    # ends an episode also reads its own update norm, which that episode logs.
    ends_episode = [(number + 1) % EPISODE_LENGTH == 0 for number in range(len(counts))]
    assert [reads for _, reads in counts] == [1 + int(end) for end in ends_episode]
