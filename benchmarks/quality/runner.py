"""Training a population: every (base LR, seed) pair of one arm in one jitted call.

A run is a `jax.lax.scan` over steps, `jax.vmap`-ed over seeds and then over
base learning rates, so one compilation serves the whole population. The seed
fixes the initialisation and the minibatch order, and does so identically for
every arm and base LR (common random numbers), so arms are compared on the
same draws and their per-seed differences are paired.
"""

from __future__ import annotations

import dataclasses
import time
from functools import partial
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from quality.arms import Arm, InnerOptimizer, Setting
from quality.tasks import Task


class Trace(NamedTuple):
    """What one training run records.

    Attributes:
      train_loss: minibatch loss before each step, ``[steps]``.
      val_loss: validation loss at initialisation and after every
        ``eval_every`` steps, ``[steps // eval_every + 1]``.
      multiplier: learning-rate multiplier in force at each step (NaN when the
        arm has none), ``[steps]``.
    """

    train_loss: jax.Array
    val_loss: jax.Array
    multiplier: jax.Array


def train_one(
    task: Task,
    arm: Arm,
    optimizer: InnerOptimizer,
    variant: jax.Array,
    base_lr: jax.Array,
    seed: jax.Array,
) -> Trace:
    """Train ``task`` once with ``arm`` at ``base_lr``; pure, so it jits and vmaps.

    The validation loss is measured every ``eval_every`` steps at the arm's
    evaluation parameters; an eval-aware arm receives it as ``eval_value`` on
    the next step. The last entry is measured at the parameters the arm ends
    the run with (for example its best ones, with ``restore_best``, which it
    chooses knowing the validation loss of the trained parameters).
    """
    init_key, data_key, arm_key = jax.random.split(jax.random.key(seed), 3)
    params = task.init_params(init_key)
    setting = Setting(
        optimizer, base_lr, base_lr / optimizer.nominal_lr, variant, arm_key, task.steps
    )
    tx = arm.build(setting)
    opt_state = tx.init(params)
    nan = jnp.full((), jnp.nan, jnp.float32)

    def validate(params, opt_state, final=None):
        return task.loss(arm.eval_params(opt_state, params, final), task.val)

    def step(carry, t):
        params, opt_state, eval_value = carry
        batch = task.sample_batch(jax.random.fold_in(data_key, t))
        loss, grads = jax.value_and_grad(task.loss)(params, batch)
        multiplier = arm.multiplier(opt_state, setting)
        extra = {"eval_value": eval_value} if arm.eval_aware else {}
        updates, opt_state = tx.update(grads, opt_state, params, value=loss, **extra)
        return (optax.apply_updates(params, updates), opt_state, nan), (loss, multiplier)

    def block(carry, first_step):
        params, opt_state, eval_value = carry
        (params, opt_state, _), (losses, multipliers) = jax.lax.scan(
            step, (params, opt_state, eval_value), first_step + jnp.arange(task.eval_every)
        )
        val = validate(params, opt_state).astype(jnp.float32)
        return (params, opt_state, val), (losses, multipliers, val)

    blocks = task.steps // task.eval_every
    first_steps = jnp.arange(blocks) * task.eval_every
    start_val = task.loss(params, task.val).astype(jnp.float32)
    (params_end, state_end, _), (losses, multipliers, val) = jax.lax.scan(
        block, (params, opt_state, start_val), first_steps
    )
    # The run ends on the arm's choice, given the trained parameters' own loss.
    final = validate(params_end, state_end, validate(params_end, state_end))
    val_loss = jnp.concatenate([start_val[None], val[:-1], final[None]])
    return Trace(losses.reshape(-1), val_loss, multipliers.reshape(-1).astype(jnp.float32))


@dataclasses.dataclass(frozen=True)
class RunResult:
    """Traces of one arm on one task and optimizer, shaped ``[base LR, seed, ...]``."""

    task: str
    optimizer: str
    arm: str
    base_lrs: np.ndarray
    seeds: np.ndarray
    train_loss: np.ndarray
    val_loss: np.ndarray
    multiplier: np.ndarray
    seconds: float

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fields = dataclasses.asdict(self)
        np.savez(path, **{k: np.asarray(v) for k, v in fields.items()})

    @classmethod
    def load(cls, path: Path) -> RunResult:
        with np.load(path) as data:
            fields = {name: data[name] for name in data.files}
        for name in ("task", "optimizer", "arm"):
            fields[name] = str(fields[name])
        fields["seconds"] = float(fields["seconds"])
        return cls(**fields)


def run_population(
    task: Task, arm: Arm, optimizer: InnerOptimizer, base_lrs: np.ndarray, seeds: np.ndarray
) -> list[RunResult]:
    """Every (variant, base LR, seed) of ``arm`` as one vmapped, jitted computation.

    Returns one `RunResult` per reported arm name (per variant). Its
    ``seconds`` is its share of the population's wall time, compilation
    included, so the seconds of all results add up to the time spent.
    """
    member = partial(train_one, task, arm, optimizer)
    over_seeds = jax.vmap(member, in_axes=(None, None, 0))
    over_base_lrs = jax.vmap(over_seeds, in_axes=(None, 0, None))
    population = jax.jit(jax.vmap(over_base_lrs, in_axes=(0, None, None)))
    variants = arm.variants or (1.0,)
    start = time.perf_counter()
    trace = jax.device_get(
        population(
            jnp.asarray(variants, jnp.float32),
            jnp.asarray(base_lrs, jnp.float32),
            jnp.asarray(seeds, jnp.uint32),
        )
    )
    seconds = (time.perf_counter() - start) / len(variants)
    return [
        RunResult(
            task=task.name,
            optimizer=optimizer.name,
            arm=name,
            base_lrs=np.asarray(base_lrs),
            seeds=np.asarray(seeds),
            train_loss=np.asarray(trace.train_loss[i]),
            val_loss=np.asarray(trace.val_loss[i]),
            multiplier=np.asarray(trace.multiplier[i]),
            seconds=seconds,
        )
        for i, name in enumerate(arm.run_names())
    ]
