"""Save an aees run mid-episode with orbax, or resume it in a fresh process.

``python checkpoint_worker.py save DIR``: trains, checkpoints mid-episode,
keeps training, and writes the uninterrupted result to ``DIR/reference.npz``.
``python checkpoint_worker.py resume DIR``: restores the checkpoint into the
structure built by ``init``, trains the same steps, and prints one JSON line
comparing with the reference.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp

import pulseopt_optax

BEFORE, AFTER = 13, 17


def make_tx():
    return pulseopt_optax.aees(
        optax.adamw(optax.cosine_decay_schedule(5e-2, 100)),
        lr_candidates=(0.5, 1.0, 2.0),
        noise_candidates=(0.0, 0.01),
        episode_length=5,
        seed=0,
    )


def loss_fn(params, step):
    target = jnp.sin(jnp.arange(8.0) + step)
    return jnp.sum((params["w"] - target) ** 2) + jnp.sum(params["b"] ** 2) + 0.5


def train(tx, params, state, first, count):
    @jax.jit
    def step(params, state, t):
        value, grads = jax.value_and_grad(loss_fn)(params, t)
        updates, state = tx.update(grads, state, params, value=value)
        return optax.apply_updates(params, updates), state

    for t in range(first, first + count):
        params, state = step(params, state, jnp.float32(t))
    return params, state


def flat(tree):
    leaves = jax.tree.leaves(tree)
    return [
        np.asarray(jax.random.key_data(x) if jnp.issubdtype(x.dtype, jax.dtypes.prng_key) else x)
        for x in leaves
    ]


def main(mode, directory):
    directory = Path(directory)
    tx = make_tx()
    params = {"w": jnp.zeros(8), "b": jnp.ones(3)}
    checkpointer = ocp.StandardCheckpointer()
    if mode == "save":
        params, state = train(tx, params, tx.init(params), 0, BEFORE)
        checkpointer.save(directory / "ckpt", {"params": params, "opt_state": state})
        checkpointer.wait_until_finished()
        params, state = train(tx, params, state, BEFORE, AFTER)
        np.savez(directory / "reference.npz", *flat((params, state)))
        (directory / "logs.json").write_text(json.dumps(pulseopt_optax.get_logs(state)))
        return
    target = jax.eval_shape(lambda: {"params": params, "opt_state": tx.init(params)})
    restored = checkpointer.restore(directory / "ckpt", target)
    params, state = train(tx, restored["params"], restored["opt_state"], BEFORE, AFTER)
    reference = np.load(directory / "reference.npz")
    mine = flat((params, state))
    expected = [reference[f"arr_{i}"] for i in range(len(reference.files))]
    print(
        json.dumps(
            {
                "key_is_typed": bool(
                    jnp.issubdtype(optax.tree.get(state, "rng_key").dtype, jax.dtypes.prng_key)
                ),
                "leaves": len(mine) == len(expected),
                "bitwise_equal": all(
                    a.dtype == b.dtype and np.array_equal(a, b, equal_nan=True)
                    for a, b in zip(mine, expected, strict=True)
                ),
                "logs_equal": json.dumps(pulseopt_optax.get_logs(state))
                == (directory / "logs.json").read_text(),
                "episodes": len(pulseopt_optax.get_logs(state)["episode_rewards"]),
            }
        )
    )


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
