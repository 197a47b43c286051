"""Benchmark arms: an inner optimizer plus the learning-rate policy under test.

An arm turns a `Setting` (which inner optimizer, at which possibly mis-set
base learning rate) into an optax transformation. Every arm is called the same
way, ``tx.update(grads, state, params, value=loss)``, so the runner needs no
special cases. A new controller plugs in as one more entry of
`default_arms`, for example::

    aees_arm("aees_robust", preset="robust"),
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from optax import contrib

import pulseopt_optax

OptState = Any


@dataclasses.dataclass(frozen=True)
class InnerOptimizer:
    """A plain optax optimizer family with its conventional learning rate.

    ``nominal_lr`` is the centre of the mis-set grid, the value a practitioner
    would type without tuning; it is not tuned per task.
    """

    name: str
    label: str
    make: Callable[[jax.Array, int], optax.GradientTransformation]
    nominal_lr: float


def _warmup_cosine(lr: jax.Array, steps: int) -> optax.Schedule:
    """Linear warmup over 5% of the run to ``lr``, then cosine decay to zero at the end."""
    warmup = max(1, steps // 20)
    # Shaped with a unit peak and scaled after: the peak may be traced.
    unit = optax.warmup_cosine_decay_schedule(0.0, 1.0, warmup, steps, end_value=0.0)
    return lambda count: lr * unit(count)


INNER_OPTIMIZERS = {
    "adamw": InnerOptimizer(
        "adamw", "AdamW", lambda lr, steps: optax.adamw(lr, weight_decay=1e-4), nominal_lr=1e-3
    ),
    "sgd_momentum": InnerOptimizer(
        "sgd_momentum",
        "SGD+momentum 0.9",
        lambda lr, steps: optax.sgd(lr, momentum=0.9),
        nominal_lr=1e-2,
    ),
    "adamw_cosine": InnerOptimizer(
        "adamw_cosine",
        "AdamW, warmup + cosine to 0",
        lambda lr, steps: optax.adamw(_warmup_cosine(lr, steps), weight_decay=1e-4),
        nominal_lr=1e-3,
    ),
    "sgd_momentum_cosine": InnerOptimizer(
        "sgd_momentum_cosine",
        "SGD+momentum 0.9, warmup + cosine to 0",
        lambda lr, steps: optax.sgd(_warmup_cosine(lr, steps), momentum=0.9),
        nominal_lr=1e-2,
    ),
}


class Setting(NamedTuple):
    """Where an arm runs: the inner optimizer and the (traced) base learning rate.

    ``mis_set`` is ``base_lr / optimizer.nominal_lr``; learning-rate-free peers
    apply it to their own learning-rate knob, whose recommended value is 1.
    ``variant`` is the value of the arm's own swept knob (see `Arm.variants`);
    ``key`` is the population member's own key for a randomised arm;
    ``steps`` is the length of the run (schedules decay over it).
    """

    optimizer: InnerOptimizer
    base_lr: jax.Array
    mis_set: jax.Array
    variant: jax.Array
    key: jax.Array
    steps: int

    def inner(self) -> optax.GradientTransformation:
        """The inner optimizer at this setting's base learning rate."""
        return self.optimizer.make(self.base_lr, self.steps)


def _no_multiplier(state: OptState, setting: Setting) -> jax.Array:
    del state, setting
    return jnp.array(jnp.nan, jnp.float32)


def _same_params(state: OptState, params: optax.Params, final: jax.Array | None) -> optax.Params:
    del state, final
    return params


@dataclasses.dataclass(frozen=True)
class Arm:
    """One optimizer configuration of the benchmark.

    Attributes:
      name: identifier used on the command line, and in tables and raw
        results unless the arm has `variants`.
      description: one line for the report.
      build: the transformation for a `Setting`.
      uses_inner: False when the arm ignores the inner optimizer (its runs are
        then shared by every optimizer's table).
      multiplier: reads the learning-rate multiplier in force from the state,
        for the figures; NaN for arms that have none.
      variants: values of one knob swept inside the same compiled population
        (``Setting.variant``); each value is reported as its own arm.
      variant_name: names each variant's runs, a format string with a
        ``{variant}`` field.
      eval_aware: the arm is handed the validation loss as ``eval_value`` on
        the first step after each evaluation (NaN on every other step).
      eval_params: the parameters to evaluate, from the state and the trained
        parameters; ``final`` is ``None`` during the run, and for the evaluation
        that ends it, the validation loss of the trained parameters themselves.
    """

    name: str
    description: str
    build: Callable[[Setting], optax.GradientTransformationExtraArgs]
    uses_inner: bool = True
    multiplier: Callable[[OptState, Setting], jax.Array] = _no_multiplier
    variants: tuple[float, ...] = ()
    variant_name: str = ""
    eval_aware: bool = False
    eval_params: Callable[[OptState, optax.Params, jax.Array | None], optax.Params] = _same_params

    def run_names(self) -> list[str]:
        """The reported arm names, one per variant."""
        if not self.variants:
            return [self.name]
        return [self.variant_name.format(variant=v) for v in self.variants]


# Runs whose name starts with this are the fixed-multiplier baselines, from
# which the report picks the oracle.
FIXED_PREFIX = "fixed_x"
WIDE_MULTIPLIERS = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)

# The candidate set and episode length of the reference package's quick start.
REFERENCE_KNOBS: dict[str, Any] = {
    "lr_candidates": (0.5, 1.0, 2.0),
    "noise_candidates": (0.0, 0.005),
    "episode_length": 50,
}


def fixed_arms(multipliers: tuple[float, ...] = WIDE_MULTIPLIERS) -> Arm:
    """The inner optimizer with its updates scaled by each constant multiplier."""
    return Arm(
        name="fixed",
        description="the inner optimizer's updates times a constant multiplier (`optax.scale`); "
        "`fixed_x1` is plain training at the given base LR",
        build=lambda s: optax.with_extra_args_support(
            optax.chain(s.inner(), optax.scale(s.variant))
        ),
        multiplier=lambda state, setting: setting.variant,
        variants=multipliers,
        variant_name=FIXED_PREFIX + "{variant:g}",
    )


def aees_arm(name: str, *, eval_aware: bool = False, **knobs: Any) -> Arm:
    """AEES wrapped around the inner optimizer, with the given knobs.

    With ``eval_aware`` the arm is fed the validation loss, and with
    ``restore_best=True`` it ends on the parameters of its best one.
    """
    fed = " fed the validation loss as `eval_value`" if eval_aware else ""
    restore = bool(knobs.get("restore_best"))

    def eval_params(state: OptState, params: optax.Params, final: jax.Array | None) -> optax.Params:
        if final is None or not restore:
            return params
        return pulseopt_optax.best_params(state, params, eval_value=final)

    return Arm(
        name=name,
        description="`pulseopt_optax.aees(inner, "
        + ", ".join(f"{k}={v!r}" for k, v in knobs.items())
        + ")`"
        + fed,
        build=lambda s: pulseopt_optax.aees(s.inner(), seed=s.key, **knobs),
        multiplier=lambda state, setting: pulseopt_optax.current_candidate(state).lr_multiplier,
        eval_aware=eval_aware,
        eval_params=eval_params,
    )


def reduce_on_plateau_arm() -> Arm:
    """Halve the step after 5 windows of 50 steps without a 1e-4 relative improvement."""
    return Arm(
        name="reduce_on_plateau",
        description="`optax.contrib.reduce_on_plateau(factor=0.5, patience=5, "
        "accumulation_size=50)` after the inner optimizer (minibatch loss)",
        build=lambda s: optax.chain(
            s.inner(),
            contrib.reduce_on_plateau(factor=0.5, patience=5, accumulation_size=50),
        ),
        multiplier=lambda state, setting: optax.tree.get(state, "scale"),
    )


class _EvalPlateauState(NamedTuple):
    plateau: Any


def _eval_plateau(factor: float, patience: int) -> optax.GradientTransformationExtraArgs:
    """``reduce_on_plateau`` driven by ``eval_value`` alone: it moves only on steps with an eval."""
    plateau = contrib.reduce_on_plateau(factor=factor, patience=patience, accumulation_size=1)

    def init(params: optax.Params) -> _EvalPlateauState:
        return _EvalPlateauState(plateau.init(params))

    def update(updates, state, params=None, *, eval_value=jnp.nan, **extra_args):
        del params, extra_args
        eval_value = jnp.asarray(eval_value, jnp.float32)
        moved = jax.lax.cond(
            jnp.isfinite(eval_value),
            lambda s: plateau.update(updates, s, value=eval_value)[1],
            lambda s: s,
            state.plateau,
        )
        scaled = jax.tree.map(lambda u: (u * moved.scale).astype(u.dtype), updates)
        return scaled, _EvalPlateauState(moved)

    return optax.GradientTransformationExtraArgs(init, update)


def reduce_on_plateau_eval_arm() -> Arm:
    """Halve the step after 2 evaluations (every 50 steps) without improvement of the validation loss."""
    return Arm(
        name="reduce_on_plateau_eval",
        description="`optax.contrib.reduce_on_plateau(factor=0.5, patience=2, "
        "accumulation_size=1)` after the inner optimizer, updated only by the validation loss",
        build=lambda s: optax.chain(s.inner(), _eval_plateau(factor=0.5, patience=2)),
        multiplier=lambda state, setting: optax.tree.get(state, "scale"),
        eval_aware=True,
    )


def schedule_free_arm() -> Arm:
    """Schedule-free AdamW at its default LR times the mis-set factor, evaluated at its eval params."""
    return Arm(
        name="schedule_free_adamw",
        description="`optax.contrib.schedule_free_adamw(learning_rate=2.5e-3 x factor, "
        "warmup_steps=50)` (its default LR times the mis-set factor), evaluated at "
        "`schedule_free_eval_params`; ignores the inner optimizer",
        build=lambda s: optax.with_extra_args_support(
            contrib.schedule_free_adamw(learning_rate=2.5e-3 * s.mis_set, warmup_steps=50)
        ),
        uses_inner=False,
        eval_params=lambda state, params, final: contrib.schedule_free_eval_params(state, params),
    )


def mechanize_arm() -> Arm:
    """Mechanic's learned scale on top of the inner optimizer at the mis-set LR."""
    return Arm(
        name="mechanize",
        description="`optax.contrib.mechanize(inner)` with the inner optimizer at the base LR",
        build=lambda s: optax.with_extra_args_support(contrib.mechanize(s.inner())),
    )


def prodigy_arm() -> Arm:
    """Prodigy (Adam-based, learning-rate free) with its LR knob mis-set by the same factor."""
    return Arm(
        name="prodigy",
        description="`optax.contrib.prodigy(learning_rate=factor)` (recommended: 1.0); "
        "ignores the inner optimizer",
        build=lambda s: optax.with_extra_args_support(contrib.prodigy(learning_rate=s.mis_set)),
        uses_inner=False,
    )


def dog_arm() -> Arm:
    """DoG (SGD-based, learning-rate free) with its LR knob mis-set by the same factor."""
    return Arm(
        name="dog",
        description="`optax.contrib.dog(learning_rate=factor)` (recommended: 1.0); "
        "ignores the inner optimizer",
        build=lambda s: optax.with_extra_args_support(contrib.dog(learning_rate=s.mis_set)),
        uses_inner=False,
    )


def default_arms() -> dict[str, Arm]:
    """Every arm the benchmark knows, in report order (see `DEFAULT_ARMS` for the run)."""
    arms = [
        fixed_arms(),
        aees_arm("aees_reference", **REFERENCE_KNOBS),
        aees_arm("aees_reference_random", **REFERENCE_KNOBS, control_mode="random"),
        aees_arm("aees_wide", **REFERENCE_KNOBS | {"lr_candidates": WIDE_MULTIPLIERS}),
        aees_arm(
            "aees_wide_random",
            **REFERENCE_KNOBS | {"lr_candidates": WIDE_MULTIPLIERS},
            control_mode="random",
        ),
        aees_arm("aees_robust", preset="robust"),
        aees_arm("aees_robust_eval", preset="robust", restore_best=True, eval_aware=True),
        # Slower or capped growth: probes of whether the growth rate alone can
        # trade the noisy small-data task's losses against the gains elsewhere.
        aees_arm("aees_robust_patience2", preset="robust", growth_patience=2),
        aees_arm("aees_robust_factor1.41", preset="robust", growth_factor=2**0.5),
        aees_arm("aees_robust_max16", preset="robust", max_lr_scale=16.0),
        reduce_on_plateau_arm(),
        reduce_on_plateau_eval_arm(),
        mechanize_arm(),
        prodigy_arm(),
        schedule_free_arm(),
        dog_arm(),
    ]
    return {arm.name: arm for arm in arms}


# The arms `make bench` runs. The random-arm AEES baselines, the wide-set AEES
# arms, DoG and the minibatch-fed reduce_on_plateau ran in earlier reports (the
# bandit was no better than random arms, DoG and a minibatch-fed plateau rule
# never competitive); they stay available with ``--arms``, as do the growth-rate
# probes (results_growth_rate.md).
DEFAULT_ARMS = (
    "fixed",
    "aees_reference",
    "aees_robust",
    "aees_robust_eval",
    "reduce_on_plateau_eval",
    "mechanize",
    "prodigy",
    "schedule_free_adamw",
)
