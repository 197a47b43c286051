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
    make: Callable[[jax.Array], optax.GradientTransformation]
    nominal_lr: float


INNER_OPTIMIZERS = {
    "adamw": InnerOptimizer(
        "adamw", "AdamW", lambda lr: optax.adamw(lr, weight_decay=1e-4), nominal_lr=1e-3
    ),
    "sgd_momentum": InnerOptimizer(
        "sgd_momentum", "SGD+momentum 0.9", lambda lr: optax.sgd(lr, momentum=0.9), nominal_lr=1e-2
    ),
}


class Setting(NamedTuple):
    """Where an arm runs: the inner optimizer and the (traced) base learning rate.

    ``mis_set`` is ``base_lr / optimizer.nominal_lr``; learning-rate-free peers
    apply it to their own learning-rate knob, whose recommended value is 1.
    ``variant`` is the value of the arm's own swept knob (see `Arm.variants`);
    ``key`` is the population member's own key for a randomised arm.
    """

    optimizer: InnerOptimizer
    base_lr: jax.Array
    mis_set: jax.Array
    variant: jax.Array
    key: jax.Array


def _no_multiplier(state: OptState, setting: Setting) -> jax.Array:
    del state, setting
    return jnp.array(jnp.nan, jnp.float32)


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
    """

    name: str
    description: str
    build: Callable[[Setting], optax.GradientTransformationExtraArgs]
    uses_inner: bool = True
    multiplier: Callable[[OptState, Setting], jax.Array] = _no_multiplier
    variants: tuple[float, ...] = ()
    variant_name: str = ""

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
            optax.chain(s.optimizer.make(s.base_lr), optax.scale(s.variant))
        ),
        multiplier=lambda state, setting: setting.variant,
        variants=multipliers,
        variant_name=FIXED_PREFIX + "{variant:g}",
    )


def aees_arm(name: str, **knobs: Any) -> Arm:
    """AEES wrapped around the inner optimizer, with the given knobs."""
    return Arm(
        name=name,
        description="`pulseopt_optax.aees(inner, "
        + ", ".join(f"{k}={v!r}" for k, v in knobs.items())
        + ")`",
        build=lambda s: pulseopt_optax.aees(s.optimizer.make(s.base_lr), seed=s.key, **knobs),
        multiplier=lambda state, setting: pulseopt_optax.current_candidate(state).lr_multiplier,
    )


def reduce_on_plateau_arm() -> Arm:
    """Halve the step after 5 windows of 50 steps without a 1e-4 relative improvement."""
    return Arm(
        name="reduce_on_plateau",
        description="`optax.contrib.reduce_on_plateau(factor=0.5, patience=5, "
        "accumulation_size=50)` after the inner optimizer (minibatch loss)",
        build=lambda s: optax.chain(
            s.optimizer.make(s.base_lr),
            contrib.reduce_on_plateau(factor=0.5, patience=5, accumulation_size=50),
        ),
        multiplier=lambda state, setting: optax.tree.get(state, "scale"),
    )


def mechanize_arm() -> Arm:
    """Mechanic's learned scale on top of the inner optimizer at the mis-set LR."""
    return Arm(
        name="mechanize",
        description="`optax.contrib.mechanize(inner)` with the inner optimizer at the base LR",
        build=lambda s: optax.with_extra_args_support(
            contrib.mechanize(s.optimizer.make(s.base_lr))
        ),
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
    """Every arm of the published benchmark, in report order."""
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
        reduce_on_plateau_arm(),
        mechanize_arm(),
        prodigy_arm(),
        dog_arm(),
    ]
    return {arm.name: arm for arm in arms}
