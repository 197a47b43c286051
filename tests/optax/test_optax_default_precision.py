"""The optax adapter in JAX's default float32 takes the torch adapter's decisions.

`pulseopt_torch.AEES` runs the core in float64 (x64 on, locally); `aees` here
runs it in float32 (x64 off). Every random draw of the core gives the same
values in both precisions, so one loss sequence gives the same arms and
context buckets in every control, structure and context mode; rewards agree
to float32 rounding.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import pulseopt_optax

torch = pytest.importorskip("torch")
from pulseopt_torch import AEES  # noqa: E402

EPISODE = 5
EPISODES = 40
KNOBS = {
    "lr_candidates": (0.5, 1.0, 2.0),
    "noise_candidates": (0.0, 0.01),
    "episode_length": EPISODE,
    "seed": 3,
}


def _losses() -> list[float]:
    """A noisy, mostly falling loss curve, exactly representable in float32."""
    rng = np.random.default_rng(0)
    steps = np.arange(EPISODE * EPISODES)
    curve = 2.0 * np.exp(-steps / 80.0) + 0.3 + 0.15 * rng.standard_normal(steps.size) ** 2
    return [float(x) for x in curve.astype(np.float32)]


def _optax_logs(losses: list[float], modes: dict[str, object]) -> dict:
    assert not jax.config.jax_enable_x64
    tx = pulseopt_optax.aees(optax.sgd(0.1), **KNOBS, **modes)  # type: ignore[arg-type]
    params = jnp.zeros(3)
    state = tx.init(params)
    update = jax.jit(lambda state, loss: tx.update(jnp.ones(3), state, params, value=loss)[1])
    for loss in losses:
        state = update(state, jnp.float32(loss))
    assert optax.tree.get(state, "loss_ema").dtype == jnp.float32
    return pulseopt_optax.get_logs(state)


def _torch_logs(losses: list[float], modes: dict[str, object]) -> dict:
    model = torch.nn.Linear(3, 1)
    aees = AEES(torch.optim.SGD(model.parameters(), lr=0.1), **KNOBS, **modes)  # type: ignore[arg-type]
    for step, loss in enumerate(losses):
        aees.step_start(step)
        aees.step_end(torch.tensor(loss, dtype=torch.float64))
    return aees.get_logs()


MODES = [
    {"control_mode": control, "structured_control_mode": structure, "context_mode": context}
    | ({"total_training_steps": EPISODE * EPISODES} if context == "trend_phase" else {})
    for control, structure, context in itertools.product(
        ("adaptive", "random"), ("independent", "conditional"), ("none", "trend", "trend_phase")
    )
]


@pytest.mark.parametrize("modes", MODES, ids=lambda m: "-".join(map(str, list(m.values())[:3])))
def test_float32_optax_and_float64_torch_take_the_same_decisions(modes: dict[str, object]) -> None:
    losses = _losses()
    expected = _torch_logs(losses, modes)
    logs = _optax_logs(losses, modes)
    assert len(logs["selected_lr_indices"]) == EPISODES
    for key in ("selected_lr_indices", "selected_noise_indices", "context_bucket_ids"):
        assert logs.get(key) == expected.get(key), key
    np.testing.assert_allclose(logs["episode_rewards"], expected["episode_rewards"], atol=2e-6)
    assert len(set(logs["selected_combined_names"])) > 1
