"""Per-step cost of `pulseopt_optax.aees` against plain optax, on CPU.

Model: a Flax MLP 64-1024-1024-10 (about 1.1M parameters), batch 64, one
jitted train step (forward, backward, optimizer, apply) per call, with the
parameters and optimizer state donated. Every
variant is compiled first, then the variants are timed in interleaved rounds
(each round times ``--steps`` consecutive steps of every variant, in a
shuffled order) and the per-step median over rounds is reported. All ratios
come from the same run.

Variants:
  adamw            plain ``optax.adamw``.
  forced_minimum   adamw plus only the work the AEES contract forces on every
                   step: the non-finite guard (gradients and loss) with its
                   skip conditional, the update-norm reduction and the LR
                   multiplier. The floor any implementation pays.
  forced_minimum_no_norm   the same without the update-norm reduction: the
                   floor of ``track_update_norm=False``.
  aees             ``aees(adamw)`` with the defaults (noise off).
  aees_no_norm     the same with ``track_update_norm=False``.
  adamw_add_noise  ``optax.chain(optax.add_noise(...), adamw)``: JAX's
                   threefry normals added to the gradients.
  aees_noise       ``aees(adamw, noise_candidates=(1e-3,))``: noise always on,
                   counter-based generator (the default).
  aees_noise_arms  ``noise_candidates=(1e-3, 0.0)`` with the 1e-3 arm active.
  aees_noise_threefry   ``aees(adamw, noise_candidates=(1e-3,), noise_generator="threefry")``.

Usage::

    python benchmarks/optax_bench.py [--rounds 31] [--steps 10] [--write]

``--write`` writes the table to ``benchmarks/results_optax.md``.
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import optax
from _sections import publish
from flax import nnx

import pulseopt_optax

LEARNING_RATE = 1e-3
NOISE_STD = 1e-3
BATCH = 64
RESULTS = Path(__file__).with_name("results_optax.md")


class MLP(nnx.Module):
    def __init__(self, rngs: nnx.Rngs) -> None:
        self.hidden1 = nnx.Linear(64, 1024, rngs=rngs)
        self.hidden2 = nnx.Linear(1024, 1024, rngs=rngs)
        self.out = nnx.Linear(1024, 10, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = jax.nn.relu(self.hidden1(x))
        x = jax.nn.relu(self.hidden2(x))
        return self.out(x)


def forced_minimum(
    inner: optax.GradientTransformation, *, norm: bool = True
) -> optax.GradientTransformationExtraArgs:
    """Adamw plus exactly the per-step work the AEES contract requires, nothing else."""

    def init_fn(params: Any) -> tuple[Any, jax.Array, jax.Array]:
        return inner.init(params), jnp.ones((), jnp.float32), jnp.zeros((), jnp.float32)

    def update_fn(updates, state, params=None, *, value, **extra_args):
        inner_state, multiplier, _ = state
        finite = jnp.isfinite(value) & pulseopt_optax.all_finite(updates)

        def step(_):
            new_updates, new_inner = inner.update(updates, inner_state, params)
            return jax.tree.map(lambda u: u * multiplier, new_updates), new_inner

        def skip(_):
            return jax.tree.map(jnp.zeros_like, updates), inner_state

        new_updates, new_inner = jax.lax.cond(finite, step, skip, None)
        if not norm:
            return new_updates, (new_inner, multiplier, state[2])
        size = jnp.sqrt(sum(jnp.sum(jnp.square(u)) for u in jax.tree.leaves(new_updates)))
        return new_updates, (new_inner, multiplier, size)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def variants() -> dict[str, optax.GradientTransformation]:
    adamw = optax.adamw(LEARNING_RATE)
    return {
        "adamw": adamw,
        "forced_minimum": forced_minimum(adamw),
        "forced_minimum_no_norm": forced_minimum(adamw, norm=False),
        "aees": pulseopt_optax.aees(adamw, seed=0),
        "aees_no_norm": pulseopt_optax.aees(adamw, seed=0, track_update_norm=False),
        "aees_robust": pulseopt_optax.aees(adamw, seed=0, preset="robust"),
        "aees_robust_eval": pulseopt_optax.aees(adamw, seed=0, preset="robust", restore_best=True),
        "adamw_add_noise": optax.chain(optax.add_noise(NOISE_STD**2, 0.0, 0), adamw),
        "aees_noise": pulseopt_optax.aees(adamw, noise_candidates=(NOISE_STD,), seed=0),
        "aees_noise_arms": pulseopt_optax.aees(
            adamw, noise_candidates=(NOISE_STD, 0.0), tie_break="lowest", seed=0
        ),
        "aees_noise_threefry": pulseopt_optax.aees(
            adamw, noise_candidates=(NOISE_STD,), noise_generator="threefry", seed=0
        ),
    }


# Variants handed an ``eval_value`` every step: NaN, as on the steps between
# evaluations, which are nearly all of them.
EVAL_FED = frozenset({"aees_robust_eval"})


def make_runner(
    tx: optax.GradientTransformation, steps: int, *, eval_fed: bool = False
) -> Callable[[], float]:
    """A closure that runs ``steps`` jitted train steps and returns seconds per step."""
    graphdef, params = nnx.split(MLP(nnx.Rngs(0)))
    x = jax.random.normal(jax.random.key(1), (BATCH, 64))
    y = jax.random.randint(jax.random.key(2), (BATCH,), 0, 10)

    def loss_fn(p: Any) -> jax.Array:
        logits = nnx.merge(graphdef, p)(x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    # Donated, as a training loop would: unchanged state buffers are not copied.
    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def train_step(p: Any, opt_state: Any) -> tuple[Any, Any, jax.Array]:
        loss, grads = jax.value_and_grad(loss_fn)(p)
        extra = {"eval_value": jnp.float32(jnp.nan)} if eval_fed else {}
        updates, opt_state = tx.update(grads, opt_state, p, value=loss, **extra)
        return optax.apply_updates(p, updates), opt_state, loss

    state = {"params": params, "opt_state": tx.init(params)}

    def run() -> float:
        p, opt_state = state["params"], state["opt_state"]
        start = time.perf_counter()
        for _ in range(steps):
            p, opt_state, loss = train_step(p, opt_state)
        loss.block_until_ready()
        elapsed = time.perf_counter() - start
        state["params"], state["opt_state"] = p, opt_state
        return elapsed / steps

    run()  # compile and warm up
    return run


def measure(rounds: int, steps: int, seed: int = 0) -> dict[str, float]:
    runners = {
        name: make_runner(tx, steps, eval_fed=name in EVAL_FED) for name, tx in variants().items()
    }
    samples: dict[str, list[float]] = {name: [] for name in runners}
    order = list(runners)
    shuffler = random.Random(seed)
    for _ in range(rounds):
        shuffler.shuffle(order)
        for name in order:
            samples[name].append(runners[name]())
    return {name: statistics.median(times) for name, times in samples.items()}


def ratios(median: dict[str, float]) -> dict[str, tuple[float, float]]:
    """``{check: (measured, limit)}`` for every target of the issue."""
    noise_extra = median["aees_noise"] - median["aees"]
    add_noise_extra = median["adamw_add_noise"] - median["adamw"]
    return {
        "aees / adamw": (median["aees"] / median["adamw"], 1.30),
        "aees / forced_minimum": (median["aees"] / median["forced_minimum"], 1.05),
        "aees_no_norm / adamw": (median["aees_no_norm"] / median["adamw"], 1.15),
        "aees_no_norm / forced_minimum_no_norm": (
            median["aees_no_norm"] / median["forced_minimum_no_norm"],
            1.05,
        ),
        "aees_robust / aees": (median["aees_robust"] / median["aees"], 1.15),
        "aees_robust_eval (restore_best, eval_value fed) / aees": (
            median["aees_robust_eval"] / median["aees"],
            1.15,
        ),
        "noise extra / add_noise extra": (noise_extra / add_noise_extra, 0.30),
        "noise arms (cond) extra / add_noise extra": (
            (median["aees_noise_arms"] - median["aees"]) / add_noise_extra,
            0.30,
        ),
    }


def report(median: dict[str, float], rounds: int, steps: int) -> str:
    cpu = platform.processor() or platform.machine()
    lines = [
        "## optax adapter: per-step overhead",
        "",
        f"`python benchmarks/optax_bench.py --rounds {rounds} --steps {steps}` on "
        f"{os.cpu_count()} CPU cores ({cpu}), jax {jax.__version__}, optax "
        f"{optax.__version__}; Flax MLP 64-1024-1024-10, batch {BATCH}, jitted train step, "
        f"median of {rounds} interleaved rounds of {steps} steps.",
        "",
        "| variant | ms / step | vs adamw |",
        "|---|---:|---:|",
    ]
    for name, seconds in median.items():
        lines.append(f"| {name} | {seconds * 1e3:.3f} | {seconds / median['adamw']:.3f}x |")
    lines += ["", "| check | measured | limit | ok |", "|---|---:|---:|---|"]
    for check, (value, limit) in ratios(median).items():
        lines.append(
            f"| {check} | {value:.3f} | {limit:.2f} | {'yes' if value <= limit else 'NO'} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=31)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--write", action="store_true", help="write benchmarks/results_optax.md")
    args = parser.parse_args(argv)
    median = measure(args.rounds, args.steps)
    section = report(median, args.rounds, args.steps)
    return publish(section, RESULTS, args.write)


if __name__ == "__main__":
    sys.exit(main())
