"""What a step allocates and syncs, and where the JAX core runs."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections import Counter
from typing import Any

import jax
import torch
from aees_torch_helpers import loss_at, tiny_model
from torch.utils._python_dispatch import TorchDispatchMode

from pulseopt_torch import AEES


class _AllocationCounter(TorchDispatchMode):
    """Counts ops producing new tensors of given sizes, and device-to-host scalar reads."""

    def __init__(self, sizes: set[int]) -> None:
        super().__init__()
        self.sizes = sizes
        self.allocations: Counter[str] = Counter()
        self.host_reads = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        if func is torch.ops.aten._local_scalar_dense.default:
            self.host_reads += 1
        inputs = {id(a) for a in torch.utils._pytree.tree_leaves((args, kwargs))}
        for tensor in torch.utils._pytree.tree_leaves(out):
            fresh = isinstance(tensor, torch.Tensor) and id(tensor) not in inputs
            if fresh and tensor.numel() in self.sizes:
                self.allocations[str(func)] += 1
        return out


def _counted(action: Any, model: torch.nn.Module) -> _AllocationCounter:
    # Scalars are left out: the loss and the norm are one-element tensors too.
    counter = _AllocationCounter({p.numel() for p in model.parameters() if p.numel() > 1})
    with counter:
        action()
    return counter


def _plain_and_aees_step(track_update_norm: bool) -> tuple[_AllocationCounter, _AllocationCounter]:
    """Counters of one plain ``optimizer.step()`` and of one ``aees.step_end`` on the same model."""
    model = tiny_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    aees = AEES(optimizer, lr_candidates=[2.0], track_update_norm=track_update_norm)
    counts = []
    for step in range(4):
        aees.step_start(step)
        optimizer.zero_grad()
        loss = loss_at(model, step)
        loss.backward()
        if step == 2:
            # The same optimizer step without AEES, for comparison.
            counts.append(_counted(optimizer.step, model))
            loss = loss_at(model, step)
        if step == 3:
            counts.append(_counted(lambda loss=loss: aees.step_end(loss), model))
        else:
            aees.step_end(loss)
    plain, ours = counts
    return plain, ours


def test_without_update_norm_a_step_allocates_nothing_parameter_sized_beyond_the_optimizer() -> (
    None
):
    plain, ours = _plain_and_aees_step(track_update_norm=False)
    assert ours.allocations == plain.allocations


def test_update_norm_reuses_its_buffer_and_reads_nothing_back_in_a_mid_episode_step() -> None:
    plain, ours = _plain_and_aees_step(track_update_norm=True)
    assert ours.allocations == plain.allocations
    assert ours.host_reads == plain.host_reads  # the loss and the norm stay on the device


def test_core_state_lives_on_the_jax_cpu_device() -> None:
    aees = AEES(torch.optim.SGD(tiny_model().parameters(), lr=0.1))
    cpu = jax.devices("cpu")[0]
    leaves = jax.tree.leaves(aees.core_state)
    assert all(leaf.devices() == {cpu} for leaf in leaves)


def _run_python(code: str, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    )
    return result.stdout.strip()


STEP_THEN_REPORT = """
    import torch, jax
    from jax._src import xla_bridge
    {before}
    from pulseopt_torch import AEES
    model = torch.nn.Linear(2, 1)
    aees = AEES(torch.optim.SGD(model.parameters(), lr=0.1))
    aees.step_start(0)
    loss = model(torch.ones(1, 2)).sum()
    loss.backward()
    aees.step_end(loss)
    print(jax.config.values["jax_platforms"], sorted(xla_bridge.backends()))
"""


def test_jax_is_restricted_to_the_cpu_when_nobody_chose_its_platforms() -> None:
    env = {k: v for k, v in __import__("os").environ.items() if k != "JAX_PLATFORMS"}
    assert _run_python(STEP_THEN_REPORT.format(before=""), env) == "cpu ['cpu']"


def test_jax_platforms_are_left_alone_once_the_user_started_jax() -> None:
    env = {k: v for k, v in __import__("os").environ.items() if k != "JAX_PLATFORMS"}
    before = "jax.numpy.zeros(())"
    assert _run_python(STEP_THEN_REPORT.format(before=before), env) == "None ['cpu']"
