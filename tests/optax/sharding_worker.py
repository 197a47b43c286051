"""Run in a subprocess with 8 host devices: a sharded aees step versus a single-device one.

Prints one JSON line with what the test checks.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import pulseopt_optax

STEPS = 24
TARGET = {"w": jnp.linspace(-1.0, 1.0, 64 * 16).reshape(64, 16), "b": jnp.linspace(0.0, 1.0, 64)}


def loss_fn(params):
    return sum(jnp.mean((params[k] - TARGET[k]) ** 2) for k in params) + 0.1


def make_tx():
    return pulseopt_optax.aees(
        optax.adam(1e-2),
        lr_candidates=(0.5, 1.0, 2.0),
        noise_candidates=(0.01, 0.02),
        episode_length=4,
        seed=0,
    )


def train(params, tx, state):
    @jax.jit
    def step(params, state):
        value, grads = jax.value_and_grad(loss_fn)(params)
        updates, state = tx.update(grads, state, params, value=value)
        return optax.apply_updates(params, updates), state

    hlo = step.lower(params, state).compile().as_text()
    for _ in range(STEPS):
        params, state = step(params, state)
    return params, state, hlo


def main():
    mesh = Mesh(np.array(jax.devices()).reshape(8), ("x",))
    param_specs = {"w": P("x", None), "b": P("x")}
    zeros = {k: jnp.zeros_like(v) for k, v in TARGET.items()}
    sharded = {k: jax.device_put(v, NamedSharding(mesh, param_specs[k])) for k, v in zeros.items()}
    tx = make_tx()
    replicated = NamedSharding(mesh, P())
    state = optax.tree.map_params(
        tx,
        lambda p: p,
        tx.init(sharded),
        transform_non_params=lambda leaf: jax.device_put(leaf, replicated),
    )
    before = [leaf.sharding for leaf in jax.tree.leaves((sharded, state))]
    params, state, hlo = train(sharded, tx, state)
    after = [leaf.sharding for leaf in jax.tree.leaves((params, state))]
    kept = all(
        a.is_equivalent_to(b, leaf.ndim)
        for a, b, leaf in zip(before, after, jax.tree.leaves((params, state)), strict=True)
    )
    single_tx = make_tx()
    single_params, single_state, _ = train(zeros, single_tx, single_tx.init(zeros))
    logs, single_logs = pulseopt_optax.get_logs(state), pulseopt_optax.get_logs(single_state)
    print(
        json.dumps(
            {
                "devices": len(jax.devices()),
                "param_shards": len(params["w"].sharding.device_set),
                "shardings_kept": kept,
                "all_gathers": hlo.count("all-gather"),
                "all_reduces": hlo.count("all-reduce"),
                "same_decisions": logs["selected_combined_names"]
                == single_logs["selected_combined_names"],
                "episodes": len(logs["selected_combined_names"]),
                "max_param_difference": max(
                    float(np.max(np.abs(np.asarray(params[k]) - np.asarray(single_params[k]))))
                    for k in params
                ),
                "params_moved": float(np.max(np.abs(np.asarray(params["w"])))),
            }
        )
    )


if __name__ == "__main__":
    main()
