"""Run in a subprocess with 8 host devices: a sharded aees step versus a single-device one.

``python sharding_worker.py CASE`` trains the parameters of `CASES[CASE]` on its
mesh and on one device, and prints one JSON line with what the test checks.
"""

from __future__ import annotations

import json
import re
import sys
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import pulseopt_optax

STEPS = 24
NAN_AT = 13  # the robust cases roll back here

# name: (mesh shape, mesh axes, {param: (shape, spec)}, preset)
CASES: dict[str, tuple[tuple[int, ...], tuple[str, ...], dict[str, Any], str | None]] = {
    "1d": ((8,), ("x",), {"w": ((64, 16), P("x", None)), "b": ((64,), P("x"))}, None),
    "1d-middle": ((8,), ("tp",), {"w": ((64, 8, 32), P(None, "tp", None))}, None),
    "2d": (
        (2, 4),
        ("fsdp", "tp"),
        {
            "w": ((64, 8, 32), P("fsdp", "tp", None)),
            "v": ((32, 64), P(None, "tp")),
            "b": ((32,), P("fsdp")),
        },
        None,
    ),
    "2d-robust": (
        (2, 4),
        ("fsdp", "tp"),
        {"w": ((64, 8, 32), P(None, "tp", None)), "v": ((16, 64), P("fsdp", "tp"))},
        "robust",
    ),
    "3d-robust": (
        (2, 2, 2),
        ("data", "fsdp", "tp"),
        {
            "w": ((16, 8, 4, 32), P(None, "fsdp", "tp", None)),
            "v": ((64, 8, 32), P("data", ("fsdp", "tp"), None)),
            "b": ((32,), P("tp")),
        },
        "robust",
    ),
}


def make_tx(preset: str | None) -> optax.GradientTransformationExtraArgs:
    return pulseopt_optax.aees(
        optax.adam(1e-2),
        lr_candidates=(0.5, 1.0, 2.0),
        noise_candidates=(0.01, 0.02),
        episode_length=4,
        seed=0,
        preset=preset,
    )


def train(params, target, tx, state):
    def loss_fn(params):
        return sum(jnp.mean((params[k] - target[k]) ** 2) for k in params) + 0.1

    @jax.jit
    def step(params, state, scale):
        value, grads = jax.value_and_grad(loss_fn)(params)
        updates, state = tx.update(grads, state, params, value=value * scale)
        return optax.apply_updates(params, updates), state

    hlo = step.lower(params, state, jnp.float32(1.0)).compile().as_text()
    for index in range(STEPS):
        params, state = step(params, state, jnp.float32(jnp.nan if index == NAN_AT else 1.0))
    return params, state, hlo


def collective_shapes(hlo: str, name: str) -> list[str]:
    """The result shapes of every ``name`` instruction (tuple results split)."""
    shapes = []
    for match in re.finditer(rf"= (\([^)]*\)|\S+) {name}(?:-start)?\(", hlo):
        shapes.extend(part.strip() for part in match.group(1).strip("()").split(","))
    return shapes


def distinct_shards(array: jax.Array) -> int:
    """How many different pieces ``array`` is cut into (replicas not counted)."""
    indices = array.sharding.devices_indices_map(array.shape).values()
    return len({tuple((s.start, s.stop) for s in index) for index in indices})


def main(case: str) -> None:
    mesh_shape, axes, layout, preset = CASES[case]
    mesh = Mesh(np.array(jax.devices()).reshape(mesh_shape), axes)
    target = {
        k: jnp.linspace(-1.0, 1.0, int(np.prod(shape))).reshape(shape)
        for k, (shape, _) in layout.items()
    }
    zeros = {k: jnp.zeros_like(v) for k, v in target.items()}
    sharded = {k: jax.device_put(v, NamedSharding(mesh, layout[k][1])) for k, v in zeros.items()}
    tx = make_tx(preset)
    replicated = NamedSharding(mesh, P())
    state = optax.tree.map_params(
        tx,
        lambda p: p,
        tx.init(sharded),
        transform_non_params=lambda leaf: jax.device_put(leaf, replicated),
    )
    before = [leaf.sharding for leaf in jax.tree.leaves((sharded, state))]
    params, state, hlo = train(sharded, target, tx, state)
    after = [leaf.sharding for leaf in jax.tree.leaves((params, state))]
    kept = all(
        a.is_equivalent_to(b, leaf.ndim)
        for a, b, leaf in zip(before, after, jax.tree.leaves((params, state)), strict=True)
    )
    single_tx = make_tx(preset)
    single_params, single_state, _ = train(zeros, target, single_tx, single_tx.init(zeros))
    logs, single_logs = pulseopt_optax.get_logs(state), pulseopt_optax.get_logs(single_state)
    all_reduces = collective_shapes(hlo, "all-reduce")
    print(
        json.dumps(
            {
                "devices": len(jax.devices()),
                "param_shards": max(distinct_shards(p) for p in params.values()),
                "shardings_kept": kept,
                "all_gathers": len(collective_shapes(hlo, "all-gather")),
                "all_to_alls": len(collective_shapes(hlo, "all-to-all")),
                "all_reduces": len(all_reduces),
                "non_scalar_all_reduces": [s for s in all_reduces if not s.endswith("[]")],
                "rollbacks": int(optax.tree.get(state, "total_rollbacks")),
                "same_decisions": logs["selected_combined_names"]
                == single_logs["selected_combined_names"],
                "episodes": len(logs["selected_combined_names"]),
                "max_param_difference": max(
                    float(np.max(np.abs(np.asarray(params[k]) - np.asarray(single_params[k]))))
                    for k in params
                ),
                "params_moved": float(max(np.max(np.abs(np.asarray(p))) for p in params.values())),
            }
        )
    )


if __name__ == "__main__":
    main(sys.argv[1])
