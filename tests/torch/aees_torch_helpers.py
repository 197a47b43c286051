"""Shared fixtures-by-function for the pulseopt_torch tests: a tiny model, its batches, a loop."""

from __future__ import annotations

import pathlib
import socket
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

IN_FEATURES = 4


def tiny_model(seed: int = 0) -> torch.nn.Module:
    """A two-layer MLP whose initial weights depend only on ``seed``."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(IN_FEATURES, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1)
    )


def batch(step: int, rank: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch of ``step`` (and ``rank``): the same on every call, in every process."""
    generator = torch.Generator().manual_seed(10_000 * rank + step)
    inputs = torch.randn(16, IN_FEATURES, generator=generator)
    targets = inputs.sum(dim=1, keepdim=True).sin()
    return inputs, targets


def loss_at(model: torch.nn.Module, step: int, rank: int = 0) -> torch.Tensor:
    inputs, targets = batch(step, rank)
    return torch.nn.functional.mse_loss(model(inputs), targets)


def train(
    aees: Any,
    model: torch.nn.Module,
    steps: range,
    loss_fn: Callable[[torch.nn.Module, int], torch.Tensor] = loss_at,
) -> list[float]:
    """Run the AEES training loop over ``steps``; returns the losses it recorded."""
    losses = []
    for step in steps:
        aees.step_start(step)
        aees.optimizer.zero_grad()
        loss = loss_fn(model, step)
        loss.backward()
        aees.step_end(loss)
        losses.append(float(loss.detach()))
    return losses


def checkpointed_training(model: torch.nn.Module) -> tuple[Any, Any]:
    """AdamW + cosine schedule + AEES with noise arms: the setup the resume tests use."""
    from pulseopt_torch import AEES

    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-2)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=40)
    aees = AEES(
        optimizer,
        lr_candidates=[0.5, 1.0, 2.0],
        noise_candidates=[0.0, 0.01],
        episode_length=4,
        lr_scheduler=scheduler,
        seed=5,
    )
    return aees, scheduler


def run_ranks(worker: pathlib.Path, folder: pathlib.Path, world_size: int) -> list[dict[str, Any]]:
    """Run ``worker`` as ``world_size`` gloo ranks on localhost; returns what each rank saved.

    The worker is called as ``worker RANK WORLD_SIZE PORT OUTPUT`` and saves its
    results with ``torch.save`` to ``OUTPUT``.
    """
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    outputs = [folder / f"rank{rank}.pt" for rank in range(world_size)]
    workers = [
        subprocess.Popen(
            [sys.executable, str(worker), str(rank), str(world_size), str(port), str(output)],
            cwd=worker.parent,
        )
        for rank, output in enumerate(outputs)
    ]
    assert [process.wait(timeout=240) for process in workers] == [0] * world_size
    return [torch.load(path, weights_only=True) for path in outputs]


def count_calls(monkeypatch: Any, module: Any, names: list[str]) -> dict[str, int]:
    """Count the calls of ``module``'s functions ``names`` (patched for the test's duration).

    Returns the live counts, one entry per name, starting at 0.
    """
    calls = dict.fromkeys(names, 0)

    def counting(name: str) -> Callable[..., Any]:
        original = getattr(module, name)

        def counted(*args: Any, **kwargs: Any) -> Any:
            calls[name] += 1
            return original(*args, **kwargs)

        return counted

    for name in names:
        monkeypatch.setattr(module, name, counting(name))
    return calls


class ScalarReads(TorchDispatchMode):
    """Counts ``aten._local_scalar_dense`` calls (what ``.item()`` and ``float()`` dispatch to)."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if func is torch.ops.aten._local_scalar_dense.default:
            self.count += 1
        return func(*args, **(kwargs or {}))
