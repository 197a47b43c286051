"""Flax: `finalize` on an `nnx.Optimizer`, and the linen `TrainState` pattern the README shows."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import linen, nnx
from flax.training import train_state

import pulseopt_optax


def _data() -> tuple[jax.Array, jax.Array]:
    x = jax.random.normal(jax.random.key(1), (32, 4))
    return x, jnp.sum(x, axis=1, keepdims=True)


def test_finalize_closes_the_open_episode_of_an_nnx_optimizer_in_place() -> None:
    model = nnx.Linear(4, 1, rngs=nnx.Rngs(0))
    tx = pulseopt_optax.aees(optax.adam(1e-2), episode_length=10, preset="robust", seed=0)
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    x, y = _data()

    @nnx.jit
    def train_step(model, optimizer):
        loss, grads = nnx.value_and_grad(lambda m: jnp.mean((m(x) - y) ** 2))(model)
        optimizer.update(model, grads, value=loss)

    for _ in range(13):
        train_step(model, optimizer)
    assert len(pulseopt_optax.get_logs(optimizer)["episode_rewards"]) == 1
    assert pulseopt_optax.finalize(optimizer) is optimizer
    logs = pulseopt_optax.get_logs(optimizer)
    assert logs["episode_start_steps"] == [0, 10]
    assert logs["episode_end_steps"] == [9, 12]
    train_step(model, optimizer)  # and training goes on from the closed state
    assert int(optax.tree.get(pulseopt_optax.find_aees_state(optimizer), "global_step")) == 14


class AEESTrainState(train_state.TrainState):
    """A linen `TrainState` whose `apply_gradients` hands the loss to `aees`."""

    def apply_gradients(self, *, grads: Any, value: jax.Array, **kwargs: Any) -> AEESTrainState:
        updates, opt_state = self.tx.update(grads, self.opt_state, self.params, value=value)
        return self.replace(
            step=self.step + 1,
            params=optax.apply_updates(self.params, updates),
            opt_state=opt_state,
            **kwargs,
        )


def test_a_linen_train_state_passes_the_loss_to_aees() -> None:
    model = linen.Dense(1)
    x, y = _data()
    state = AEESTrainState.create(
        apply_fn=model.apply,
        params=model.init(jax.random.key(0), x),
        tx=pulseopt_optax.aees(
            optax.adam(1e-2), lr_candidates=(0.5, 1.0, 2.0), episode_length=5, seed=0
        ),
    )

    @jax.jit
    def train_step(state: AEESTrainState) -> tuple[AEESTrainState, jax.Array]:
        def loss_fn(params):
            return jnp.mean((state.apply_fn(params, x) - y) ** 2)

        loss, grads = jax.value_and_grad(loss_fn)(state.params)
        return state.apply_gradients(grads=grads, value=loss), loss

    losses = []
    for _ in range(23):
        state, loss = train_step(state)
        losses.append(float(loss))
    assert losses[-1] < losses[0]
    assert int(state.step) == 23
    assert len(pulseopt_optax.get_logs(state)["episode_rewards"]) == 4
    state = pulseopt_optax.finalize(state)
    assert isinstance(state, AEESTrainState)
    assert pulseopt_optax.get_logs(state)["episode_end_steps"][-1] == 22
