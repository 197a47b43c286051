"""`aees`: AEES as one optax gradient transformation around an inner optimizer.

This module owns the transformation and its state. The AEES math lives in
`pulseopt_core`; reading logs back from an optimizer state lives in
`pulseopt_optax.inspect`.
"""

from __future__ import annotations

import copy
import dataclasses
import secrets
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

import pulseopt_core as core
from pulseopt_core.noise import NOISE_GENERATORS, add_gradient_noise

# Knobs that fix the state's shapes or its meaning; they must be Python values.
# Wrapping `aees` in `optax.inject_hyperparams` needs them in ``static_args``.
STRUCTURAL_KNOBS = (
    "lr_candidates",
    "noise_candidates",
    "control_mode",
    "structured_control_mode",
    "context_mode",
    "total_training_steps",
    "context_trend_window",
    "tie_break",
    "log_capacity",
    "multiplier_mode",
    "min_lr_scale",
    "max_lr_scale",
    "guard",
    "guard_spike_ratio",
    "guard_fast_alpha",
    "guard_slow_alpha",
    "guard_backoff",
    "guard_max_consecutive",
    "guard_warmup_steps",
    "growth",
    "growth_threshold",
    "growth_factor",
    "growth_patience",
)
# Knobs that may arrive as traced scalars (injected hyperparameters). None of
# them affects the first episode's choice, which is made before any statistics
# exist (every arm ties), so `init` does not need their values.
DYNAMIC_KNOBS = (
    "episode_length",
    "context_trend_epsilon",
    "reward_instability_lambda",
    "reward_epsilon",
    "reward_clip_min",
    "reward_clip_max",
    "ema_alpha",
    "exploration_coef",
    "discount",
    "warmup_rounds",
)


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True)
class AEESStructure:
    """The structural knobs of an `aees` transformation (see `STRUCTURAL_KNOBS`).

    Rides in the state's tree structure as a node without leaves, so it
    survives jit, vmap, scan, checkpoints and Flax NNX at no cost, and lets
    `get_logs` and `finalize` work from the state alone.
    """

    lr_candidates: tuple[float, ...]
    noise_candidates: tuple[float, ...]
    control_mode: str
    structured_control_mode: str
    context_mode: str
    total_training_steps: int | None
    context_trend_window: int
    tie_break: str
    log_capacity: int
    multiplier_mode: str
    min_lr_scale: float
    max_lr_scale: float
    guard: bool
    guard_spike_ratio: float
    guard_fast_alpha: float
    guard_slow_alpha: float
    guard_backoff: float
    guard_max_consecutive: int
    guard_warmup_steps: int
    growth: bool
    growth_threshold: float
    growth_factor: float
    growth_patience: int

    @classmethod
    def of(cls, config: core.AEESConfig) -> AEESStructure:
        return cls(**{name: getattr(config, name) for name in STRUCTURAL_KNOBS})

    def config(self, dynamic_knobs: dict[str, jax.Array] | None = None) -> core.AEESConfig:
        """The full config: these knobs, plus ``dynamic_knobs`` (default values if None)."""
        static = core.AEESConfig(**dataclasses.asdict(self))
        return _with_dynamic_knobs(static, dynamic_knobs or {})


class GuardSnapshot(NamedTuple):
    """The spike guard's snapshot (kept only with ``guard=True``, e.g. ``preset="robust"``).

    Attributes:
      snapshot_params: the parameters at the last sound episode boundary.
      snapshot_inner_state: the inner optimizer's state at the same moment.
    """

    snapshot_params: optax.Params
    snapshot_inner_state: optax.OptState


class AEESTransformState(NamedTuple):
    """State of `aees`: the inner optimizer's state and the AEES core state.

    Attributes:
      aees_inner_state: the inner transformation's state, untouched by skipped
        steps.
      aees_core_state: a `pulseopt_core.AEESState`: controller statistics, the
        open episode (``lr_multiplier``, ``noise_std``, ...), counters such as
        ``skipped_steps`` and the episode log. Its field names are unique, so
        ``optax.tree.get(opt_state, "lr_multiplier")`` finds the multiplier.
      aees_dynamic_knobs: the values of `DYNAMIC_KNOBS` used by the latest
        step, ``{name: i32[] or f[]}`` (they can be injected hyperparameters).
      aees_structure: the structural knobs (static, no leaves).
      aees_snapshot: a `GuardSnapshot` with the spike guard on (one copy of the
        parameters and of the inner state), else an empty ``optax.EmptyState``.
    """

    aees_inner_state: optax.OptState
    aees_core_state: core.AEESState
    aees_dynamic_knobs: dict[str, jax.Array]
    aees_structure: AEESStructure
    aees_snapshot: GuardSnapshot | optax.EmptyState = optax.EmptyState()


def _is_traced(value: object) -> bool:
    return isinstance(value, jax.core.Tracer)


def _python_scalar(name: str, value: object) -> object:
    """A concrete array knob (e.g. from `inject_hyperparams`) as a Python number."""
    if isinstance(value, (jax.Array, np.ndarray, np.generic)):
        if np.ndim(value) != 0:
            raise ValueError(f"{name} must be a scalar, got shape {np.shape(value)}.")
        return np.asarray(value).item()
    return value


def _is_key(value: object) -> bool:
    return isinstance(value, jax.Array) and jnp.issubdtype(value.dtype, jax.dtypes.prng_key)


def _key_from_seed(seed: object) -> jax.Array:
    """A typed key from an int, an integer array (traced or not) or a typed key."""
    if _is_key(seed):
        return seed  # type: ignore[return-value]
    if isinstance(seed, (jax.Array, np.ndarray, np.generic)):
        if not jnp.issubdtype(jnp.asarray(seed).dtype, jnp.integer):
            raise ValueError(f"seed must be an int or a typed JAX key, got {seed!r}.")
        return jax.random.key(jnp.asarray(seed))
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an int, a typed JAX key or None, got {seed!r}.")
    return jax.random.key(seed)


def _dynamic_dtype(config: core.AEESConfig, name: str) -> jnp.dtype:
    return jnp.dtype(jnp.int32) if isinstance(getattr(config, name), int) else core.float_dtype()


def _with_dynamic_knobs(config: core.AEESConfig, values: dict[str, Any]) -> core.AEESConfig:
    """A copy of ``config`` whose dynamic knobs are the scalar arrays in ``values``.

    The core only does arithmetic with these knobs, so arrays (traced or not)
    work. The copy bypasses validation, which cannot run on traced values, and
    is never hashed: it is not a jit static argument.
    """
    if not values:
        return config
    dynamic = copy.copy(config)
    for name, value in values.items():
        object.__setattr__(dynamic, name, jnp.asarray(value).astype(_dynamic_dtype(config, name)))
    return dynamic


def core_function(function: Callable[..., Any], config: core.AEESConfig) -> Callable[..., Any]:
    """``function`` itself, or its un-jitted body when ``config`` holds array knobs.

    Core functions may be jitted with the config as a static argument; a config
    with array knobs is not hashable, and inside the caller's trace the inner
    jit would be inlined anyway.
    """
    if any(isinstance(getattr(config, name), jax.Array) for name in DYNAMIC_KNOBS):
        return getattr(function, "__wrapped__", function)
    return function


def _knob_arrays(config: core.AEESConfig, traced: dict[str, Any]) -> dict[str, jax.Array]:
    return {
        name: jnp.asarray(traced.get(name, getattr(config, name))).astype(
            _dynamic_dtype(config, name)
        )
        for name in DYNAMIC_KNOBS
    }


# Leaves at least this large, with at least this many columns, are checked by
# a matrix-vector product (see `_nonfinite_sum`).
_MATVEC_MIN_SIZE = 1 << 14
_MATVEC_MIN_COLUMNS = 16


def _nonfinite_sum(leaf: jax.Array) -> jax.Array:
    """A scalar that is 0 when every element of ``leaf`` is finite and NaN otherwise."""
    zeroed = leaf * jnp.zeros((), leaf.dtype)  # 0 where finite, NaN where not
    columns = leaf.shape[-1] if leaf.ndim >= 2 else 0
    if (
        jnp.issubdtype(leaf.dtype, jnp.floating)
        and leaf.size >= _MATVEC_MIN_SIZE
        and columns >= _MATVEC_MIN_COLUMNS
    ):
        # Row sums as a matrix-vector product: XLA runs dots on its threaded
        # matmul kernels, while a reduction over a large leaf runs on one thread
        # and, measured in a jitted train step, holds up the work behind it.
        rows = zeroed.reshape(-1, columns) @ jnp.ones((columns,), leaf.dtype)
        return jnp.sum(rows)
    return jnp.sum(zeroed)


def all_finite(tree: object) -> jax.Array:
    """``bool[]``: whether every element of every leaf is finite.

    ``x * 0`` is 0 for finite ``x`` and NaN otherwise, so a float sum per leaf
    answers without a boolean mask, and never overflows the way a sum of the
    values themselves could in low precision.
    """
    sums = [_nonfinite_sum(leaf) for leaf in jax.tree.leaves(tree)]
    return jnp.isfinite(sum(sums, jnp.zeros((), jnp.float32)))


def _global_norm(tree: object, dtype: jnp.dtype) -> jax.Array:
    squares = [jnp.sum(jnp.square(leaf.astype(dtype))) for leaf in jax.tree.leaves(tree)]
    return jnp.sqrt(sum(squares, jnp.zeros((), dtype)))


def _scale(tree: object, multiplier: jax.Array) -> object:
    def scale(leaf: jax.Array) -> jax.Array:
        return (leaf * multiplier.astype(jnp.promote_types(leaf.dtype, multiplier.dtype))).astype(
            leaf.dtype
        )

    return jax.tree.map(scale, tree)


def _refresh_snapshot(
    take: jax.Array,
    snapshot: GuardSnapshot,
    params: optax.Params,
    inner_state: optax.OptState,
    measure: bool,
) -> tuple[GuardSnapshot, jax.Array | None]:
    """The snapshot, replaced by ``(params, inner_state)`` when ``take``.

    Also returns, with ``measure``, the distance from the old snapshot's
    parameters to ``params`` when ``take`` (else 0). Written as a loop of zero
    or one trip rather than a conditional: XLA updates a loop's carry in its
    own (donated) buffers, whereas a conditional that returns its operand
    unchanged makes it copy the whole snapshot on every step.
    """
    dtype = core.float_dtype()

    def refresh(carry: tuple[jax.Array, GuardSnapshot, jax.Array]) -> Any:
        _, old, _ = carry
        moved = jnp.zeros((), dtype)
        if measure:
            moved = _global_norm(jax.tree.map(jnp.subtract, params, old.snapshot_params), dtype)
        return jnp.zeros((), bool), GuardSnapshot(params, inner_state), moved

    start = (jnp.asarray(take, bool), snapshot, jnp.zeros((), dtype))
    _, snapshot, moved = jax.lax.while_loop(lambda carry: carry[0], refresh, start)
    return snapshot, (moved if measure else None)


def _empty_snapshot(params: optax.Params, inner: optax.GradientTransformation) -> GuardSnapshot:
    """Room for the guard's snapshot; filled at the first sound step, never read before."""
    return GuardSnapshot(
        snapshot_params=jax.tree.map(jnp.zeros_like, params),
        snapshot_inner_state=inner.init(params),
    )


def aees(
    inner: optax.GradientTransformation,
    *,
    lr_candidates: tuple[float, ...] = (1.0,),
    noise_candidates: tuple[float, ...] = (0.0,),
    episode_length: int = 100,
    control_mode: str = "adaptive",
    structured_control_mode: str = "independent",
    context_mode: str = "none",
    total_training_steps: int | None = None,
    context_trend_window: int = 3,
    context_trend_epsilon: float = 1e-3,
    reward_instability_lambda: float = 0.1,
    reward_epsilon: float = 1e-8,
    reward_clip_min: float = -1.0,
    reward_clip_max: float = 1.0,
    ema_alpha: float = 0.1,
    exploration_coef: float = 1.0,
    discount: float = 0.95,
    warmup_rounds: int = 1,
    seed: int | jax.Array | None = None,
    tie_break: str = "random",
    log_capacity: int = 1024,
    multiplier_mode: str = "absolute",
    min_lr_scale: float = 0.015625,
    max_lr_scale: float = 1.0,
    guard: bool = False,
    guard_spike_ratio: float = 2.0,
    guard_fast_alpha: float = 0.3,
    guard_slow_alpha: float = 0.02,
    guard_backoff: float = 0.5,
    guard_max_consecutive: int = 3,
    guard_warmup_steps: int = 20,
    growth: bool = False,
    growth_threshold: float = 0.5,
    growth_factor: float = 2.0,
    growth_patience: int = 1,
    preset: str | None = None,
    track_update_norm: bool = True,
    noise_generator: str = "counter",
) -> optax.GradientTransformationExtraArgs:
    r"""Adaptive episodic exploration scheduling (AEES) around an optax optimizer.

    Training is cut into episodes of ``episode_length`` steps. Each episode runs
    one candidate ``(lr_multiplier, noise_std)`` chosen by a discounted-UCB
    bandit (or at random), and is scored when it closes by

    .. math::

      r = \mathrm{clip}\big(\log(e_1 + \epsilon) - \log(e_n + \epsilon)
          - \lambda\, \mathrm{Var}(l) / (\bar l^2 + \epsilon)\big),

    where :math:`e` is an EMA of the episode's losses :math:`l_1..l_n`. One
    ``update`` is one training step:

    1. add ``noise_std * N(0, 1)`` to every gradient element (no random numbers
       are drawn when the arm's std is 0);
    2. run ``inner.update`` (extra keyword arguments, ``value`` included, are
       forwarded);
    3. multiply the inner updates by ``lr_multiplier``, for this step only, so
       the inner optimizer's own schedule keeps its own count;
    4. record ``value`` (and the update's L2 norm) in the AEES core, which
       closes the episode and picks the next candidate when it is full.

    A step whose ``value`` or gradients are not finite is skipped inside jit:
    the updates are zero, the inner state and the AEES core are unchanged
    except the ``skipped_steps`` counter. (Should the inner optimizer turn
    finite gradients into non-finite updates, those pass through as in plain
    optax, and the core, which never records a non-finite norm, counts the
    step as skipped.)

    The reward needs ``e_1 + eps > 0`` and ``e_n + eps > 0``. An episode of
    negative losses (a log-likelihood, a shifted objective) cannot be scored:
    it is logged with NaN rewards, counted in ``unscored_episodes``, and no
    controller learns from it; training goes on. Shift such a loss to be
    positive if AEES should learn from it.

    Args:
      inner: the optimizer whose step AEES scales and whose gradients it noises.
      lr_candidates: multipliers tried on the inner optimizer's update.
      noise_candidates: gradient-noise standard deviations tried.
      episode_length: steps per episode.
      control_mode: ``"adaptive"`` (discounted UCB) or ``"random"``.
      structured_control_mode: ``"independent"`` or ``"conditional"`` (one noise
        controller per LR arm).
      context_mode: ``"none"``, ``"trend"`` or ``"trend_phase"``.
      total_training_steps: horizon of the phase context (``"trend_phase"`` only).
      context_trend_window: episode-end losses that define the trend.
      context_trend_epsilon: slope below which the trend is stable.
      reward_instability_lambda: weight of the loss-variance penalty.
      reward_epsilon: added inside the logarithms and the variance normaliser.
      reward_clip_min: lower clip of the reward.
      reward_clip_max: upper clip of the reward.
      ema_alpha: smoothing of the episode-local loss EMA.
      exploration_coef: UCB exploration coefficient.
      discount: UCB discount per update.
      warmup_rounds: times each arm is tried before UCB scores count.
      seed: an int or a typed JAX key (``jax.random.key``); ``None`` draws fresh
        entropy once, when `aees` is called. A traced key is fine, so a
        vmapped ``init`` can give every population member its own key.
      tie_break: ``"random"`` or ``"lowest"`` (deterministic comparisons).
      log_capacity: how many recent closed episodes the state keeps for logs.
      multiplier_mode: ``"absolute"`` (an LR arm is the multiplier) or
        ``"relative"`` (an arm multiplies a running scale each episode).
      min_lr_scale: floor of the running LR scale.
      max_lr_scale: ceiling of the running LR scale.
      guard: the spike guard. When the loss spikes (its fast EMA passes
        ``guard_spike_ratio`` times its slow EMA) or turns non-finite, the step
        returns updates that carry the parameters back onto the snapshot taken
        at the last sound episode boundary (exact up to the rounding of
        ``params + updates``), restores the inner state from it, and halves the
        LR scale (cuts compound down to ``min_lr_scale``). Needs ``params`` in
        ``update``; costs one copy of the parameters and of the inner state.
      guard_spike_ratio, guard_fast_alpha, guard_slow_alpha, guard_backoff,
        guard_max_consecutive, guard_warmup_steps: the guard's knobs, validated
        as in `pulseopt_core.AEESConfig`.
      growth: grow the LR scale while updates keep their direction (needs
        ``guard`` and ``track_update_norm``): at each snapshot the distance the
        parameters moved since the previous one is compared with the sum of the
        update norms, one extra reduction per episode. See
        `pulseopt_core.AEESConfig` for the rule.
      growth_threshold, growth_factor, growth_patience: the growth rule's knobs.
      preset: ``None`` (the knobs as given) or ``"robust"`` (``guard=True``,
        ``growth=True``, ``max_lr_scale=64``): the recommended setting when the
        base learning rate may be mis-set in either direction.
      track_update_norm: record the L2 norm of every update (one reduction per
        step); ``False`` logs ``None`` for ``mean_update_norms``.
      noise_generator: ``"counter"`` (fused counter-based sampler, the default)
        or ``"threefry"`` (``jax.random.normal``); see `pulseopt_core.noise`.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose ``update`` takes the
      loss as the keyword-only ``value``: ``update(updates, state, params=None,
      *, value, **extra_args)``, where ``value`` is the loss at ``params`` before
      this update.

    Example:
      >>> import jax, jax.numpy as jnp, optax
      >>> import pulseopt_optax
      >>> tx = pulseopt_optax.aees(
      ...     optax.adam(1e-2), lr_candidates=(0.5, 1.0, 2.0), episode_length=10, seed=0)
      >>> params = jnp.array([1.0, -2.0])
      >>> state = tx.init(params)
      >>> loss_fn = lambda p: jnp.sum(p ** 2)
      >>> for _ in range(30):
      ...   loss, grads = jax.value_and_grad(loss_fn)(params)
      ...   updates, state = tx.update(grads, state, params, value=loss)
      ...   params = optax.apply_updates(params, updates)
      >>> len(pulseopt_optax.get_logs(state)["episode_rewards"])
      3

    References:
      The reference PyTorch implementation: ``pulseopt`` 0.1.0 (``AEES``).
    """
    knobs: dict[str, Any] = {
        "lr_candidates": lr_candidates,
        "noise_candidates": noise_candidates,
        "episode_length": episode_length,
        "control_mode": control_mode,
        "structured_control_mode": structured_control_mode,
        "context_mode": context_mode,
        "total_training_steps": total_training_steps,
        "context_trend_window": context_trend_window,
        "context_trend_epsilon": context_trend_epsilon,
        "reward_instability_lambda": reward_instability_lambda,
        "reward_epsilon": reward_epsilon,
        "reward_clip_min": reward_clip_min,
        "reward_clip_max": reward_clip_max,
        "ema_alpha": ema_alpha,
        "exploration_coef": exploration_coef,
        "discount": discount,
        "warmup_rounds": warmup_rounds,
        "tie_break": tie_break,
        "log_capacity": log_capacity,
        "multiplier_mode": multiplier_mode,
        "min_lr_scale": min_lr_scale,
        "max_lr_scale": max_lr_scale,
        "guard": guard,
        "guard_spike_ratio": guard_spike_ratio,
        "guard_fast_alpha": guard_fast_alpha,
        "guard_slow_alpha": guard_slow_alpha,
        "guard_backoff": guard_backoff,
        "guard_max_consecutive": guard_max_consecutive,
        "guard_warmup_steps": guard_warmup_steps,
        "growth": growth,
        "growth_threshold": growth_threshold,
        "growth_factor": growth_factor,
        "growth_patience": growth_patience,
    }
    if noise_generator not in NOISE_GENERATORS:
        raise ValueError(
            f"noise_generator must be one of {list(NOISE_GENERATORS)}, got {noise_generator!r}."
        )
    if not isinstance(track_update_norm, bool):
        raise ValueError(f"track_update_norm must be a bool, got {track_update_norm!r}.")
    traced = {name: value for name, value in knobs.items() if _is_traced(value)}
    for name in traced:
        if name not in DYNAMIC_KNOBS:
            raise ValueError(
                f"{name} fixes the shape or meaning of the AEES state and must be a Python "
                f"value; when wrapping aees in optax.inject_hyperparams, pass "
                f"static_args=pulseopt_optax.STRUCTURAL_KNOBS."
            )
    static: dict[str, Any] = {
        name: _python_scalar(name, value) for name, value in knobs.items() if name not in traced
    }
    # Validated eagerly; traced knobs take their defaults here (see DYNAMIC_KNOBS).
    config = core.apply_preset(core.AEESConfig(**static), preset)
    core.require_update_norms(config, track_update_norm)
    step_config = _with_dynamic_knobs(config, traced)
    structure = AEESStructure.of(config)
    record_step = core_function(core.record_step, step_config)
    guard_check = core_function(core.guard_check, step_config)
    key_source: Any = seed
    if key_source is None:
        key_source = secrets.randbits(32)
    elif not _is_traced(key_source) and not _is_key(key_source):
        key_source = _python_scalar("seed", key_source)
        _key_from_seed(key_source)
    inner = optax.with_extra_args_support(inner)
    has_noise = any(std > 0.0 for std in config.noise_candidates)

    def init_fn(params: optax.Params) -> AEESTransformState:
        return AEESTransformState(
            aees_inner_state=inner.init(params),
            aees_core_state=core.init(config, _key_from_seed(key_source)),
            aees_dynamic_knobs=_knob_arrays(config, traced),
            aees_structure=structure,
            aees_snapshot=_empty_snapshot(params, inner) if config.guard else optax.EmptyState(),
        )

    def noised(grads: optax.Updates, core_state: core.AEESState, std: jax.Array) -> Any:
        if not has_noise:
            return grads
        key = core.noise_key(core_state)

        def add(g: optax.Updates) -> optax.Updates:
            return add_gradient_noise(g, key, std, noise_generator)

        # Also when every arm has noise: measured on CPU, generating the noise
        # behind the conditional (a fusion boundary) is several times cheaper
        # than letting XLA fuse it into the inner optimizer's arithmetic.
        return jax.lax.cond(std > 0.0, add, lambda g: g, grads)

    def update_fn(
        updates: optax.Updates,
        state: AEESTransformState,
        params: optax.Params | None = None,
        *,
        value: jax.Array | float,
        **extra_args: Any,
    ) -> tuple[optax.Updates, AEESTransformState]:
        if state.aees_structure != structure:
            raise ValueError(
                "this optimizer state was created by an aees transformation with other "
                f"structural knobs ({state.aees_structure}) than this one ({structure})."
            )
        core_state = state.aees_core_state
        candidate = core.current_candidate(core_state)
        value = jnp.asarray(value)
        finite = jnp.isfinite(value) & all_finite(updates)

        def step(_: None) -> tuple[optax.Updates, optax.OptState]:
            grads = noised(updates, core_state, candidate.noise_std)
            inner_updates, inner_state = inner.update(
                grads, state.aees_inner_state, params, value=value, **extra_args
            )
            return _scale(inner_updates, candidate.lr_multiplier), inner_state

        def skip(_: None) -> tuple[optax.Updates, optax.OptState]:
            shapes = jax.eval_shape(step, None)[0]
            zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
            return zeros, state.aees_inner_state

        def step_or_skip(_: None) -> tuple[optax.Updates, optax.OptState]:
            # A conditional rather than selects after the fact: with selects, XLA
            # recomputes the inner update next to the selected state and copies
            # the donated moments to do so.
            return jax.lax.cond(finite, step, skip, None)

        snapshot = state.aees_snapshot
        if config.guard:
            if params is None:
                raise ValueError(
                    "the spike guard (guard=True or preset='robust') needs params: "
                    "call update(updates, state, params, value=loss)."
                )
            decision = guard_check(step_config, core_state, value)
            snapshot, displacement = _refresh_snapshot(
                decision.take_snapshot, snapshot, params, state.aees_inner_state, config.growth
            )

            def roll_back(_: None) -> tuple[optax.Updates, optax.OptState]:
                # Updates that carry the parameters back onto the snapshot.
                restore = jax.tree.map(
                    lambda saved, now: (saved - now).astype(now.dtype),
                    snapshot.snapshot_params,
                    params,
                )
                return restore, snapshot.snapshot_inner_state

            new_updates, inner_state = jax.lax.cond(
                decision.rollback, roll_back, step_or_skip, None
            )
        else:
            new_updates, inner_state = step_or_skip(None)
            displacement = None
        norm = _global_norm(new_updates, core.float_dtype()) if track_update_norm else None
        new_core = record_step(
            step_config, core_state, value, norm, skip=~finite, displacement_norm=displacement
        )
        return new_updates, AEESTransformState(
            aees_inner_state=inner_state,
            aees_core_state=new_core,
            aees_dynamic_knobs=_knob_arrays(config, traced),
            aees_structure=structure,
            aees_snapshot=snapshot,
        )

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
