"""One process of a multi-process JAX run of `aees`, or the single-process reference.

``python multiprocess_worker.py PROCESS_ID NUM_PROCESSES PORT OUT_DIR`` joins a
``jax.distributed`` run over localhost (2 CPU devices per process, gloo
collectives); ``python multiprocess_worker.py single OUT_DIR`` runs on one
process with as many devices. Both train the same sharded parameters on the
same global batch with LR and noise arms and ``preset="robust"``, through one
rollback, checkpoint mid-episode with orbax, continue, then restore the
checkpoint and continue again. Each process writes ``OUT_DIR/<name>.json``.
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

import jax

DEVICES_PER_PROCESS = 2
STEPS, CHECKPOINT_AT, NAN_AT = 24, 10, 7


def start() -> tuple[str, Path]:
    jax.config.update("jax_platforms", "cpu")
    if sys.argv[1] == "single":
        return "single", Path(sys.argv[2])
    process_id, num_processes, port = (int(arg) for arg in sys.argv[1:4])
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=f"localhost:{port}",
        num_processes=num_processes,
        process_id=process_id,
        local_device_ids=list(range(DEVICES_PER_PROCESS)),
    )
    return f"process{process_id}", Path(sys.argv[4])


NAME, OUT = start()

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
import orbax.checkpoint as ocp  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402
from jax.sharding import Mesh, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import pulseopt_optax  # noqa: E402

MESH = Mesh(np.asarray(jax.devices()).reshape(2, 2), ("data", "model"))
PARAM_SPECS = {"w": P(None, "model"), "b": P("model")}


def global_array(values: np.ndarray, spec: P) -> jax.Array:
    """``values`` as one array over the whole mesh; each process supplies its own shards."""
    sharding = NamedSharding(MESH, spec)
    return jax.make_array_from_callback(values.shape, sharding, lambda index: values[index])


def to_numpy(tree):
    """Every leaf as a NumPy array of its global value (keys as their data)."""

    def fetch(leaf):
        if jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            leaf = jax.random.key_data(leaf)
        return np.asarray(multihost_utils.process_allgather(leaf, tiled=True))

    return jax.tree.map(fetch, tree)


def make_tx() -> optax.GradientTransformationExtraArgs:
    return pulseopt_optax.aees(
        optax.adam(3e-2),
        lr_candidates=(0.5, 1.0, 2.0),
        noise_candidates=(0.0, 0.01),
        episode_length=4,
        preset="robust",
        seed=0,
    )


def batch() -> tuple[jax.Array, jax.Array]:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((32, 8)).astype(np.float32)
    y = np.sin(x @ rng.standard_normal((8, 4)).astype(np.float32))
    return global_array(x, P("data", None)), global_array(y, P("data", None))


def train(tx, params, state, x, y, first: int, last: int):
    for index in range(first, last):
        scale = jnp.float32(jnp.nan if index == NAN_AT else 1.0)
        params, state = _step(tx, params, state, x, y, scale)
    return params, state


@functools.partial(jax.jit, static_argnums=0)
def _step(tx, params, state, x, y, scale):
    def loss_fn(params):
        return jnp.mean((x @ params["w"] + params["b"] - y) ** 2) + 0.1

    value, grads = jax.value_and_grad(loss_fn)(params)
    updates, state = tx.update(grads, state, params, value=value * scale)
    return optax.apply_updates(params, updates), state


def main() -> None:
    tx = make_tx()
    params = {
        "w": global_array(np.zeros((8, 4), np.float32), PARAM_SPECS["w"]),
        "b": global_array(np.zeros((4,), np.float32), PARAM_SPECS["b"]),
    }
    x, y = batch()
    state = jax.jit(tx.init)(params)
    params, state = train(tx, params, state, x, y, 0, CHECKPOINT_AT)
    checkpointer = ocp.StandardCheckpointer()
    directory = (OUT / "checkpoint").absolute()
    checkpointer.save(directory, {"params": params, "opt_state": state})
    checkpointer.wait_until_finished()
    target = jax.tree.map(
        lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=leaf.sharding),
        {"params": params, "opt_state": state},
    )
    params, state = train(tx, params, state, x, y, CHECKPOINT_AT, STEPS)
    restored = checkpointer.restore(directory, target)
    resumed_params, resumed_state = train(
        tx, restored["params"], restored["opt_state"], x, y, CHECKPOINT_AT, STEPS
    )
    finished = jax.tree.leaves(to_numpy((params, state)))
    resumed = jax.tree.leaves(to_numpy((resumed_params, resumed_state)))
    logs = pulseopt_optax.get_logs(state)
    try:
        pulseopt_optax.aees(optax.sgd(0.1)).init(params)
        seed_none_refused = False
    except ValueError as error:
        seed_none_refused = "same seed" in str(error)
    result = {
        "seed_none_refused": seed_none_refused,
        "processes": jax.process_count(),
        "devices": jax.device_count(),
        "param_shards_here": len(params["w"].addressable_shards),
        "names": logs["selected_combined_names"],
        "rewards": logs["episode_rewards"],
        "rollbacks": int(np.asarray(to_numpy(optax.tree.get(state, "total_rollbacks")))),
        "params": {k: v.tolist() for k, v in to_numpy(params).items()},
        "resumed_bitwise": len(finished) == len(resumed)
        and all(
            np.array_equal(a, b, equal_nan=True) for a, b in zip(finished, resumed, strict=True)
        ),
    }
    (OUT / f"{NAME}.json").write_text(json.dumps(result))
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("done")


if __name__ == "__main__":
    main()
