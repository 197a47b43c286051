"""Reading AEES back out of any optax state: logs, the current candidate, finalize.

The AEES state may sit anywhere inside a larger optimizer state (an
``optax.chain``, ``optax.MultiSteps``, ``optax.inject_hyperparams``, a Flax NNX
``nnx.Optimizer``); these functions find it by type. Leaves wrapped in Flax
NNX variables are unwrapped, so ``get_logs(optimizer.opt_state)`` (or
``get_logs(optimizer)``) works without importing Flax here.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

import pulseopt_core as core
from pulseopt_optax.transform import AEESTransformState, core_function


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
    """
    state = _single_member(find_aees_state(opt_state))
    return core.episode_logs(state.aees_structure.config(), state.aees_core_state)


def current_candidate(opt_state: Any) -> core.Candidate:
    """The candidate in force for the next step: LR multiplier, noise std, arm indices.

    Works inside ``jax.jit`` as well (the fields are arrays, batched if the
    state is).
    """
    return core.current_candidate(find_aees_state(opt_state).aees_core_state)


def finalize(opt_state: Any) -> Any:
    """Close the open episode if it has at least one step, and open the next one.

    Returns ``opt_state`` with the `aees` state replaced, so a run can end with
    ``opt_state = finalize(opt_state)`` and its last partial episode shows in
    `get_logs`, as ``AEES.finalize()`` does in the torch adapter.
    """

    def close(node: object) -> object:
        if not _is_aees_state(node):
            return node
        state: AEESTransformState = node  # type: ignore[assignment]
        plain = jax.tree.map(_unwrap, state, is_leaf=_has_value)
        config = plain.aees_structure.config(plain.aees_dynamic_knobs)
        core_state = plain.aees_core_state
        closed = core_function(core.finalize, config)(config, core_state)
        return plain._replace(aees_core_state=closed)

    if not isinstance(opt_state, tuple) and hasattr(opt_state, "opt_state"):
        raise ValueError("pass the optimizer state (e.g. optimizer.opt_state), not the optimizer.")
    find_aees_state(opt_state)
    return jax.tree.map(close, opt_state, is_leaf=_is_aees_state)
