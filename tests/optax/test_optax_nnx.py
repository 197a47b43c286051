"""Flax NNX: aees inside nnx.Optimizer, updated under nnx.jit."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx

import pulseopt_optax


class _Regressor(nnx.Module):
    def __init__(self, rngs: nnx.Rngs) -> None:
        self.hidden = nnx.Linear(4, 16, rngs=rngs)
        self.out = nnx.Linear(16, 1, rngs=rngs)

    def __call__(self, x):
        return self.out(jax.nn.tanh(self.hidden(x)))


def test_nnx_optimizer_trains_a_model_and_exposes_the_logs():
    model = _Regressor(nnx.Rngs(0))
    tx = pulseopt_optax.aees(
        optax.adamw(1e-2), lr_candidates=(0.5, 1.0, 2.0), episode_length=10, seed=0
    )
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    x = jax.random.normal(jax.random.key(1), (64, 4))
    y = jnp.sin(x.sum(axis=1, keepdims=True))

    @nnx.jit
    def train_step(model, optimizer, x, y):
        def loss_fn(model):
            return jnp.mean((model(x) - y) ** 2)

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads, value=loss)
        return loss

    losses = [float(train_step(model, optimizer, x, y)) for _ in range(60)]
    assert losses[-1] < 0.5 * losses[0]
    logs = pulseopt_optax.get_logs(optimizer)
    assert len(logs["episode_rewards"]) == 6
    assert logs["episode_start_losses"][0] == losses[0]
    assert pulseopt_optax.get_logs(optimizer.opt_state) == logs
