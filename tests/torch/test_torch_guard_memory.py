"""The robust preset's memory: every buffer allocated by the first step, no parameter-sized
temporaries at episode boundaries (the snapshot distance reuses the update-norm buffer)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from pulseopt_torch import AEES

EPISODE = 3
STEPS = 4 * EPISODE + 1
OPTIMIZERS: dict[str, Callable[[Any], torch.optim.Optimizer]] = {
    "sgd_momentum": lambda params: torch.optim.SGD(params, lr=1e-3, momentum=0.9),
    "adamw": lambda params: torch.optim.AdamW(params, lr=1e-3),
}


class _NewStorage(TorchDispatchMode):
    """Counts op outputs on fresh storage of at least ``min_bytes`` (views of inputs excluded)."""

    def __init__(self, min_bytes: int) -> None:
        super().__init__()
        self.min_bytes = min_bytes
        self.count = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        leaves = torch.utils._pytree.tree_leaves((args, kwargs))
        known = {t.untyped_storage().data_ptr() for t in leaves if isinstance(t, torch.Tensor)}
        out = func(*args, **(kwargs or {}))
        for tensor in torch.utils._pytree.tree_leaves(out):
            if isinstance(tensor, torch.Tensor):
                storage = tensor.untyped_storage()
                if storage.data_ptr() not in known and storage.nbytes() >= self.min_bytes:
                    self.count += 1
        return out


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.Tanh(), torch.nn.Linear(64, 1))


def _loss(model: torch.nn.Module, step: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(step)
    inputs = torch.randn(16, 32, generator=generator)
    return model(inputs).pow(2).mean()


def _per_step_allocations(optimizer_name: str, wrapped: bool) -> list[int]:
    """Parameter-sized (or larger) allocations of each step's update, with or without AEES."""
    model = _model()
    optimizer = OPTIMIZERS[optimizer_name](model.parameters())
    aees = AEES(optimizer, episode_length=EPISODE, preset="robust", seed=0) if wrapped else None
    smallest = min(p.numel() * p.element_size() for p in model.parameters() if p.numel() > 1)
    counts = []
    for step in range(STEPS):
        if aees is not None:
            aees.step_start(step)
        optimizer.zero_grad()
        loss = _loss(model, step)
        loss.backward()
        counter = _NewStorage(smallest)
        with counter:
            if aees is not None:
                aees.step_end(loss)
            else:
                optimizer.step()
        counts.append(counter.count)
    if aees is not None:
        assert len(aees.get_logs()["episode_rewards"]) == STEPS // EPISODE
    return counts


@pytest.mark.parametrize("optimizer_name", sorted(OPTIMIZERS))
def test_after_the_first_step_the_robust_preset_allocates_nothing_parameter_sized(
    optimizer_name: str,
) -> None:
    plain = _per_step_allocations(optimizer_name, wrapped=False)
    ours = _per_step_allocations(optimizer_name, wrapped=True)
    # Episode boundaries (snapshots, distances) included: only the optimizer's own.
    assert ours[1:] == plain[1:]
