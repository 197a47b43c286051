"""How the adapter runs the AEES core: on JAX's CPU device, in float64.

The core's decisions are tiny scalar computations, so they run on the host
CPU and never touch an accelerator: a PyTorch user who also has a CUDA build
of JAX installed keeps the whole GPU for PyTorch. Two measures ensure it:

* If nobody has chosen JAX's platforms yet (neither the ``JAX_PLATFORMS``
  environment variable nor ``jax.config.jax_platforms`` is set) and JAX has
  not started its backends, the first use restricts JAX to ``"cpu"``, so no
  accelerator client (and none of its memory pool) is ever created in this
  process. Set ``JAX_PLATFORMS`` yourself to keep other JAX backends available.
* Every core array is created on ``jax.devices("cpu")[0]`` and every core
  computation runs under ``jax.default_device`` of that device, so even with
  an accelerator backend active nothing of ours is placed on it.

The core runs with JAX's x64 mode switched on locally (``jax.enable_x64`` is a
thread-local context), so its statistics are float64 like the published
PyTorch wrapper's, without changing the user's global JAX configuration.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator
from typing import Any

import jax
import numpy as np
import torch
from jax._src import xla_bridge

import pulseopt_core as core

# The state is replaced by every call, so its old buffers can be reused in place.
finalize = jax.jit(core.finalize, static_argnums=0, donate_argnums=1)
restart_episode_at = jax.jit(core.restart_episode_at, static_argnums=0, donate_argnums=1)
guard_check = jax.jit(core.guard_check, static_argnums=0)
record_eval = jax.jit(core.record_eval, static_argnums=0, donate_argnums=1)
record_update_norm = jax.jit(core.record_update_norm, static_argnums=0, donate_argnums=1)


@functools.partial(jax.jit, static_argnums=0, donate_argnums=1)
def record_step_after_norm(
    config: core.AEESConfig,
    state: core.AEESState,
    late_norm: jax.Array,
    loss: jax.Array,
    *,
    skip: jax.Array,
    displacement_norm: jax.Array | None,
) -> core.AEESState:
    """With the guard: `core.record_update_norm` (a NaN ``late_norm``: none), then the step.

    The step is recorded without its own update norm, which comes later. One
    call of the core per recorded step, beside the guard's check.
    """
    state = core.record_update_norm(config, state, late_norm)
    recorded: core.AEESState = core.record_step(
        config, state, loss, None, skip=skip, displacement_norm=displacement_norm
    )
    return recorded


@functools.partial(jax.jit, static_argnums=0, static_argnames="with_norms", donate_argnums=1)
def record_steps(
    config: core.AEESConfig,
    state: core.AEESState,
    losses: jax.Array,
    norms: jax.Array,
    skips: jax.Array,
    count: jax.Array,
    *,
    with_norms: bool,
) -> core.AEESState:
    """`core.record_step` over the first ``count`` entries of buffered steps, in order.

    One call replaces ``count`` calls (each a dispatch of the whole state), so
    a wrapper that needs nothing from the core between episode boundaries can
    buffer its steps on the host. The buffers have a fixed length, so one
    compilation serves every ``count``; ``norms`` is ignored without ``with_norms``.
    """

    def one(index: jax.Array, current: core.AEESState) -> core.AEESState:
        norm = norms[index] if with_norms else None
        recorded: core.AEESState = core.record_step(
            config, current, losses[index], norm, skip=skips[index]
        )
        return recorded

    updated: core.AEESState = jax.lax.fori_loop(0, count, one, state)
    return updated


@functools.cache
def cpu_device() -> jax.Device:
    """JAX's first CPU device, after keeping JAX off accelerators if nobody chose."""
    user_chose = bool(os.environ.get("JAX_PLATFORMS")) or bool(jax.config.values["jax_platforms"])
    if not user_chose and not xla_bridge.backends_are_initialized():
        jax.config.update("jax_platforms", "cpu")
    return jax.devices("cpu")[0]


@contextlib.contextmanager
def on_cpu_in_float64() -> Iterator[None]:
    """Run the enclosed core calls on the CPU device with float64 statistics."""
    with jax.enable_x64(True), jax.default_device(cpu_device()):
        yield


def state_to_tensors(state: core.AEESState) -> dict[str, Any]:
    """The state as nested dicts of CPU tensors (the PRNG key as its raw ``uint32`` data)."""
    with on_cpu_in_float64():
        plain = state._replace(rng_key=jax.random.key_data(state.rng_key))
        host = jax.device_get(plain)
    tensors: dict[str, Any] = _as_dicts(host)
    return tensors


def state_from_tensors(template: core.AEESState, tensors: dict[str, Any]) -> core.AEESState:
    """Rebuild a state saved by `state_to_tensors`; ``template`` fixes structure and dtypes.

    Raises:
      ValueError: if a field is missing or has the wrong shape.
    """
    with on_cpu_in_float64():
        plain_template = template._replace(rng_key=jax.random.key_data(template.rng_key))
        restored: core.AEESState = _from_dicts(plain_template, tensors, "core_state")
        return restored._replace(rng_key=jax.random.wrap_key_data(restored.rng_key))


def upgrade_core_tensors_v1(tensors: Any) -> Any:
    """A core state saved by version 1 of the state_dict, in today's layout.

    Version 1 kept the episode log as one ``[C]`` tensor per column
    (``log_reward``, ...); it is now one ``[C, k]`` table of integer and one
    of float columns (`pulseopt_core.EpisodeLog`). Anything else is returned
    unchanged, for `state_from_tensors` to reject with the entry it lacks.
    """
    if not isinstance(tensors, dict) or not isinstance(tensors.get("episode_log"), dict):
        return tensors
    columns = tensors["episode_log"]
    tables = {"log_ints": core.LOG_INT_COLUMNS, "log_floats": core.LOG_FLOAT_COLUMNS}
    names = [f"log_{name}" for table in tables.values() for name in table]
    if set(columns) != set(names) or not all(
        isinstance(columns[name], torch.Tensor) and columns[name].ndim == 1 for name in names
    ):
        return tensors
    log = {
        table: torch.stack([columns[f"log_{name}"] for name in table_columns], dim=1)
        for table, table_columns in tables.items()
    }
    return {**tensors, "episode_log": log}


def _as_dicts(tree: Any) -> Any:
    if isinstance(tree, tuple) and hasattr(tree, "_fields"):
        return {name: _as_dicts(value) for name, value in zip(tree._fields, tree, strict=True)}
    return torch.from_numpy(np.array(tree))


def _from_dicts(template: Any, saved: Any, where: str) -> Any:
    if isinstance(template, tuple) and hasattr(template, "_fields"):
        if not isinstance(saved, dict) or set(saved) != set(template._fields):
            raise ValueError(f"state_dict entry {where!r} does not match this AEES state.")
        return type(template)(
            *(
                _from_dicts(value, saved[name], f"{where}.{name}")
                for name, value in zip(template._fields, template, strict=True)
            )
        )
    if not isinstance(saved, torch.Tensor) or tuple(saved.shape) != template.shape:
        raise ValueError(f"state_dict entry {where!r} has the wrong shape or type.")
    return jax.device_put(saved.numpy().astype(template.dtype), cpu_device())
