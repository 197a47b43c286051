"""Reading AEES back out of any optax state: logs, the current candidate, best params, finalize.

The AEES state may sit anywhere inside a larger optimizer state (an
``optax.chain``, ``optax.MultiSteps``, ``optax.inject_hyperparams``, a Flax NNX
``nnx.Optimizer``); these functions find it by type. Leaves wrapped in Flax
NNX variables are unwrapped, so ``get_logs(optimizer.opt_state)`` (or
``get_logs(optimizer)``) works without importing Flax here.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import pulseopt_core as core
from pulseopt_optax.transform import (
    AEESTransformState,
    BestParams,
    core_function,
    raise_if_misplaced,
)


def _is_aees_state(node: object) -> bool:
    return isinstance(node, AEESTransformState)


def _unwrap(leaf: object) -> object:
    """A leaf's array, also when it is held by a Flax NNX ``Variable``."""
    get_value = getattr(leaf, "get_value", None)
    return get_value() if callable(get_value) else leaf


def _has_value(node: object) -> bool:
    return callable(getattr(node, "get_value", None))


def find_aees_state(opt_state: Any) -> AEESTransformState:
    """The single `aees` state inside ``opt_state``, with plain array leaves.

    Args:
      opt_state: an optimizer state containing exactly one `aees` state, or an
        object with an ``opt_state`` attribute (such as ``nnx.Optimizer``).

    Raises:
      ValueError: when there is no `aees` state or more than one.
    """
    if not isinstance(opt_state, tuple) and hasattr(opt_state, "opt_state"):
        opt_state = opt_state.opt_state
    found = [
        node for node in jax.tree.leaves(opt_state, is_leaf=_is_aees_state) if _is_aees_state(node)
    ]
    if len(found) != 1:
        raise ValueError(
            f"expected exactly one pulseopt_optax.aees state in the optimizer state, found "
            f"{len(found)}."
        )
    plain: AEESTransformState = jax.tree.map(_unwrap, found[0], is_leaf=_has_value)
    return plain


def _single_member(state: AEESTransformState) -> AEESTransformState:
    if np.ndim(state.aees_core_state.episodes_closed) != 0:
        raise ValueError(
            "this AEES state is batched (for example a vmapped population); select one member "
            "first, e.g. jax.tree.map(lambda x: x[i], opt_state)."
        )
    return state


def get_logs(opt_state: Any) -> dict[str, list[Any]]:
    """The per-episode logs of SPEC section 6 as a dict of Python lists.

    Holds the last ``log_capacity`` closed episodes, oldest first; an open,
    partial episode is not included until it closes (see `finalize`).
    Host-side: call it outside ``jax.jit``.

    Args:
      opt_state: any optimizer state holding one `aees` state (see
        `find_aees_state`).

    Returns:
      ``selected_lr_indices``, ``selected_noise_indices``, ...,
      ``mean_update_norms``, plus the context keys when a context mode is on.
      Unscored episodes (negative losses) show NaN rewards.

    Raises:
      ValueError: when the spike guard found that an update of `aees` did not
        reach the parameters unchanged (see "Where `aees` may sit" in the README).
    """
    state = _single_member(find_aees_state(opt_state))
    raise_if_misplaced(state.aees_snapshot)
    return core.episode_logs(state.aees_structure.config(), state.aees_core_state)


def current_candidate(opt_state: Any) -> core.Candidate:
    """The candidate in force for the next step: LR multiplier, noise std, arm indices.

    Works inside ``jax.jit`` as well (the fields are arrays, batched if the
    state is).
    """
    return core.current_candidate(find_aees_state(opt_state).aees_core_state)


def best_params(
    opt_state: Any, params: optax.Params, eval_value: jax.Array | float | None = None
) -> optax.Params:
    """The parameters at the best ``eval_value`` handed in, or ``params`` if they are better.

    Needs ``aees(..., restore_best=True)``. End a run that handed AEES its
    held-out loss with ``params = pulseopt_optax.best_params(opt_state, params,
    eval_value=final_eval)`` to keep the best parameters seen (early stopping
    inside the optimizer). ``eval_value`` is the held-out loss of ``params``
    themselves, typically measured after the last step; without it ``params``
    are returned only when no eval was ever handed in. Works inside
    ``jax.jit`` and on batched (vmapped) states.

    Raises:
      ValueError: if the `aees` state keeps no best parameters.
    """
    state = find_aees_state(opt_state)
    if not isinstance(state.aees_best, BestParams):
        raise ValueError("best_params needs an aees transformation built with restore_best=True.")
    guard = state.aees_core_state.guard
    use_best = guard.eval_count > 0
    if eval_value is not None:
        now = jnp.asarray(eval_value).astype(guard.eval_best_loss.dtype)
        use_best = use_best & ~(jnp.isfinite(now) & (now < guard.eval_best_loss))

    def pick(best: jax.Array, current: jax.Array) -> jax.Array:
        when = jnp.reshape(use_best, use_best.shape + (1,) * (jnp.ndim(current) - use_best.ndim))
        return jnp.where(when, best, current)

    return jax.tree.map(pick, state.aees_best.best_params, params)


def _close(state: AEESTransformState) -> AEESTransformState:
    """``state`` (plain arrays, possibly batched) with its open episode closed."""
    structure = state.aees_structure
    batch_ndim = np.ndim(state.aees_core_state.episodes_closed)

    def close(knobs: tuple[jax.Array, ...], core_state: core.AEESState) -> core.AEESState:
        config = structure.config(knobs)
        closed: core.AEESState = core_function(core.finalize, config)(config, core_state)
        return closed

    # A batched state (a vmapped population) closes member by member.
    for _ in range(batch_ndim):
        close = jax.vmap(close)
    return state._replace(aees_core_state=close(state.aees_dynamic_knobs, state.aees_core_state))


def finalize(opt_state: Any) -> Any:
    """Close the open episode if it has at least one step, and open the next one.

    Returns ``opt_state`` with the `aees` state replaced, so a run can end with
    ``opt_state = finalize(opt_state)`` and its last partial episode shows in
    `get_logs`, as ``AEES.finalize()`` does in the torch adapter. A batched
    state (e.g. from ``jax.vmap(tx.init)``) closes every member.

    Given an object holding its state in ``opt_state``: a Flax ``nnx.Optimizer``
    is closed in place and returned (``pulseopt_optax.finalize(optimizer)``);
    an immutable holder with ``replace`` (a Flax linen ``TrainState``) is
    returned as a new one.

    Raises:
      ValueError: as `get_logs`, when an update of `aees` went astray.
    """
    if not isinstance(opt_state, tuple) and hasattr(opt_state, "opt_state"):
        holder = opt_state
        if any(_has_value(leaf) for leaf in jax.tree.leaves(holder.opt_state, is_leaf=_has_value)):
            _finalize_variables(holder.opt_state)
            return holder
        if callable(getattr(holder, "replace", None)):  # an immutable holder (linen TrainState)
            return holder.replace(opt_state=finalize(holder.opt_state))
        holder.opt_state = finalize(holder.opt_state)
        return holder
    find_aees_state(opt_state)

    def close(node: object) -> object:
        if not _is_aees_state(node):
            return node
        plain: AEESTransformState = jax.tree.map(_unwrap, node, is_leaf=_has_value)
        raise_if_misplaced(plain.aees_snapshot)
        return _close(plain)

    return jax.tree.map(close, opt_state, is_leaf=_is_aees_state)


def _finalize_variables(opt_state: Any) -> None:
    """Close the `aees` state held in Flax NNX variables, writing the new values into them."""
    find_aees_state(opt_state)
    for node in jax.tree.leaves(opt_state, is_leaf=_is_aees_state):
        if not _is_aees_state(node):
            continue
        variables = jax.tree.leaves(node, is_leaf=_has_value)
        plain: AEESTransformState = jax.tree.map(_unwrap, node, is_leaf=_has_value)
        raise_if_misplaced(plain.aees_snapshot)
        closed = jax.tree.leaves(_close(plain))
        for variable, value in zip(variables, closed, strict=True):
            if _has_value(variable):
                variable.set_value(value)
