"""Per-step cost, compile time and graph size of `pulseopt_optax.aees` on real model shapes, on CPU.

``optax_bench.py`` measures one shape with a handful of large leaves. This
script measures the shapes users train, where the number of leaves is what
matters (issue 15):

  mlp          the Flax MLP 64-1024-1024-10 of ``optax_bench.py`` (6 leaves), batch 64.
  deep_mlp     a chain of 64 ``tanh(h @ W_i)`` layers, ``W_i`` 256x256 (64 leaves,
               4.2M parameters), batch 8.
  transformer  a Flax NNX decoder of 12 pre-LayerNorm blocks (``nnx.MultiHeadAttention``,
               4 heads, d_model 128, MLP 4x, GELU), token and position embeddings, a
               head over 256 tokens; sequence 32, batch 8 (198 leaves, 2.4M parameters).
  wide_mlp     a chain of 12 ``tanh(h @ W_i)`` layers, ``W_i`` 1024x1024 (12 leaves,
               12.6M parameters), batch 8: few large matrices and a small batch, a
               memory-bound step. Added after the skip and the update norm were laid
               out, as a shape they were not designed on.

Every shape has one jitted train step (forward, backward, optimizer, apply)
compiled twice: with the parameters and optimizer state donated
(``donate_argnums=(0, 1)``, as a training loop would) and without donation.
The batch is an argument, never donated. Variants (the inner optimizer is
always ``optax.adamw(1e-3)``):

  adamw            plain ``optax.adamw``.
  apply_if_finite  ``optax.apply_if_finite(adamw, 3)``: optax's own non-finite skip.
  aees             ``aees(adamw, lr_candidates=(0.5, 1, 2), seed=0)``, defaults otherwise.
  aees_no_norm     the same with ``track_update_norm=False``.
  aees_robust      the same with ``preset="robust"``.
  aees_trusting    ``aees`` with ``skip_nonfinite_grads=False`` (the opt-out of the
                   in-jit gradient check and skip).
  aees_trusting_no_norm   the same with ``track_update_norm=False`` as well: the
                   cheapest setting, nothing but the core's bookkeeping.

Compile time is ``jax.jit(step).lower(...)`` (trace and lower) plus
``.compile()`` (XLA), each time from cleared caches, after one throwaway
compilation that warms XLA up; the first compiled executable is the one
timed. ``--compiles`` compilations per variant (the first in order, the
others in rounds over all variants in shuffled order); the tables give
medians, and compile ratios are medians of per-round ratios. Graph size is
counted twice: operations in the lowered StableHLO module (what the program
asks for, the core's functions included) and instructions in the optimized
HLO module (``compiled.as_text()``, every computation), with its copies,
fusions and conditionals.

Step times: all variants of all shapes live in one process. Each round visits
every (shape, donation) group in a new shuffled order and runs ``--steps``
consecutive steps of each of the group's variants back to back, in a new
shuffled order; every ratio is taken within a round against the same group
(paired: same process, within about a second) and the table reports the median
over rounds. Wall time is what the checks use; the process's CPU time per step
is reported beside it, since it is less disturbed by other work on a shared
machine (it counts XLA's worker threads, so it is the step's CPU cost, not its
latency). Only the ratios are meaningful, not the absolute times.

Usage::

    .venv/bin/python benchmarks/shapes_bench.py [--rounds 11] [--steps 3] [--compiles 3]
        [--shapes mlp deep_mlp transformer wide_mlp] [--write]

``--write`` writes the tables to ``benchmarks/results_shapes.md``.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import re
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import optax
from _sections import publish
from flax import nnx
from optax_bench import MLP  # the model of optax_bench.py

import pulseopt_optax

RESULTS = Path(__file__).with_name("results_shapes.md")
LEARNING_RATE = 1e-3
LR_CANDIDATES = (0.5, 1.0, 2.0)

# Issue 15's bars.
BAR_DEFAULTS = 1.30  # aees / adamw, and below apply_if_finite
BAR_ROBUST = 1.15  # aees_robust / aees
BAR_TRUSTING = 1.10  # aees_trusting / adamw
BAR_COMPILE_DEFAULTS = 1.5  # compile(aees) / compile(adamw)
BAR_COMPILE_ROBUST = 2.0  # compile(aees_robust) / compile(adamw)


def variants() -> dict[str, optax.GradientTransformation]:
    adamw = optax.adamw(LEARNING_RATE)
    return {
        "adamw": adamw,
        "apply_if_finite": optax.apply_if_finite(adamw, 3),
        "aees": pulseopt_optax.aees(adamw, lr_candidates=LR_CANDIDATES, seed=0),
        "aees_no_norm": pulseopt_optax.aees(
            adamw, lr_candidates=LR_CANDIDATES, seed=0, track_update_norm=False
        ),
        "aees_robust": pulseopt_optax.aees(
            adamw, lr_candidates=LR_CANDIDATES, seed=0, preset="robust"
        ),
        "aees_trusting": pulseopt_optax.aees(
            adamw, lr_candidates=LR_CANDIDATES, seed=0, skip_nonfinite_grads=False
        ),
        "aees_trusting_no_norm": pulseopt_optax.aees(
            adamw,
            lr_candidates=LR_CANDIDATES,
            seed=0,
            skip_nonfinite_grads=False,
            track_update_norm=False,
        ),
    }


# ----------------------------------------------------------------------------- shapes


DEEP_LAYERS, DEEP_WIDTH, DEEP_BATCH = 64, 256, 8
WIDE_LAYERS, WIDE_WIDTH = 12, 1024
D_MODEL, HEADS, SEQ, T_BATCH, VOCAB, BLOCKS = 128, 4, 32, 4, 256, 12


class Block(nnx.Module):
    def __init__(self, rngs: nnx.Rngs) -> None:
        self.ln1 = nnx.LayerNorm(D_MODEL, rngs=rngs)
        self.attn = nnx.MultiHeadAttention(
            num_heads=HEADS, in_features=D_MODEL, decode=False, rngs=rngs
        )
        self.ln2 = nnx.LayerNorm(D_MODEL, rngs=rngs)
        self.up = nnx.Linear(D_MODEL, 4 * D_MODEL, rngs=rngs)
        self.down = nnx.Linear(4 * D_MODEL, D_MODEL, rngs=rngs)

    def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
        x = x + self.attn(self.ln1(x), mask=mask)
        return x + self.down(jax.nn.gelu(self.up(self.ln2(x))))


class Transformer(nnx.Module):
    def __init__(self, rngs: nnx.Rngs) -> None:
        self.embed = nnx.Embed(VOCAB, D_MODEL, rngs=rngs)
        self.pos = nnx.Param(0.02 * jax.random.normal(rngs.params(), (SEQ, D_MODEL)))
        self.blocks = nnx.List([Block(rngs) for _ in range(BLOCKS)])
        self.ln = nnx.LayerNorm(D_MODEL, rngs=rngs)
        self.head = nnx.Linear(D_MODEL, VOCAB, rngs=rngs)

    def __call__(self, tokens: jax.Array) -> jax.Array:
        x = self.embed(tokens) + self.pos[...]
        mask = nnx.make_causal_mask(tokens)
        for block in self.blocks:
            x = block(x, mask)
        return self.head(self.ln(x))


@dataclass
class Shape:
    """A model as ``(params, batch, loss_fn(params, batch))``."""

    description: str
    params: Any
    batch: Any
    loss_fn: Callable[[Any, Any], jax.Array]


def _nnx_shape(description: str, model: nnx.Module, batch: Any, loss: Callable) -> Shape:
    graphdef, params, *rest = nnx.split(model, nnx.Param, ...)

    def loss_fn(p: Any, b: Any) -> jax.Array:
        return loss(nnx.merge(graphdef, p, *rest), b)

    return Shape(description, params, batch, loss_fn)


def deep_mlp(layers: int, width: int, batch: int) -> Shape:
    """``layers`` chained ``tanh(h @ W_i)``, each ``W_i`` ``width`` x ``width`` (one leaf each)."""
    keys = jax.random.split(jax.random.key(0), layers)
    params = {
        f"w{i:03d}": jax.random.normal(k, (width, width)) / width**0.5 for i, k in enumerate(keys)
    }
    x = jax.random.normal(jax.random.key(1), (batch, width))
    y = jax.random.normal(jax.random.key(2), (batch, width))

    def loss_fn(p: Any, b: Any) -> jax.Array:
        h = b[0]
        for key in sorted(p):
            h = jnp.tanh(h @ p[key])
        return jnp.mean((h - b[1]) ** 2)

    description = f"{layers} layers tanh(h @ W_i), W_i {width}x{width}, batch {batch}"
    return Shape(description, params, (x, y), loss_fn)


def make_shape(name: str) -> Shape:
    if name == "mlp":
        x = jax.random.normal(jax.random.key(1), (64, 64))
        y = jax.random.randint(jax.random.key(2), (64,), 0, 10)

        def mlp_loss(model: MLP, b: Any) -> jax.Array:
            return optax.softmax_cross_entropy_with_integer_labels(model(b[0]), b[1]).mean()

        return _nnx_shape("Flax MLP 64-1024-1024-10, batch 64", MLP(nnx.Rngs(0)), (x, y), mlp_loss)
    if name == "deep_mlp":
        return deep_mlp(DEEP_LAYERS, DEEP_WIDTH, DEEP_BATCH)
    if name == "wide_mlp":
        return deep_mlp(WIDE_LAYERS, WIDE_WIDTH, DEEP_BATCH)
    if name == "transformer":
        tokens = jax.random.randint(jax.random.key(1), (T_BATCH, SEQ + 1), 0, VOCAB)

        def lm_loss(model: Transformer, b: jax.Array) -> jax.Array:
            logits = model(b[:, :-1])
            return optax.softmax_cross_entropy_with_integer_labels(logits, b[:, 1:]).mean()

        return _nnx_shape(
            f"Flax NNX decoder, {BLOCKS} blocks, d_model {D_MODEL}, {HEADS} heads, MLP 4x, "
            f"vocab {VOCAB}, sequence {SEQ}, batch {T_BATCH}",
            Transformer(nnx.Rngs(0)),
            tokens,
            lm_loss,
        )
    raise ValueError(f"unknown shape {name!r}")


SHAPES = ("mlp", "deep_mlp", "transformer", "wide_mlp")


# ----------------------------------------------------------------------------- graph size

_STABLEHLO_OP = re.compile(r"^\s*(?:%[\w#:, %]+=\s*)?\"?(?:stablehlo|chlo|mhlo|func|sdy)\.\w+")
_HLO_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*.*?\s([a-z][\w\-]*)\(")


def stablehlo_ops(text: str) -> int:
    """Operations in a lowered StableHLO module (every function, returns excluded)."""
    return sum(
        1
        for line in text.splitlines()
        if _STABLEHLO_OP.match(line) and "func.return" not in line and "func.func" not in line
    )


def hlo_stats(text: str) -> dict[str, int]:
    """Instruction counts of an optimized HLO module: all, copies, fusions, conditionals."""
    opcodes = [m.group(1) for line in text.splitlines() if (m := _HLO_INSTRUCTION.match(line))]
    return {
        "instructions": len(opcodes),
        "copies": opcodes.count("copy") + opcodes.count("copy-start"),
        "fusions": opcodes.count("fusion"),
        "conditionals": opcodes.count("conditional"),
    }


# ----------------------------------------------------------------------------- runners


@dataclass
class Runner:
    shape: str
    donated: bool
    variant: str
    stablehlo_ops: int
    hlo: dict[str, int]
    run: Callable[[], tuple[float, float]]
    recompile: Callable[[], tuple[float, float, float]]
    compiles: list[tuple[float, float, float]] = field(default_factory=list)
    samples: list[float] = field(default_factory=list)
    cpu_samples: list[float] = field(default_factory=list)

    @property
    def lower_s(self) -> float:
        """Median wall time of trace and lower."""
        return statistics.median(c[0] for c in self.compiles)

    @property
    def compile_s(self) -> float:
        """Median wall time of XLA's compilation."""
        return statistics.median(c[1] for c in self.compiles)

    @property
    def compile_cpu_s(self) -> float:
        """Median CPU time of trace, lower and compile."""
        return statistics.median(c[2] for c in self.compiles)


def make_step(shape: Shape, tx: optax.GradientTransformation) -> Callable:
    def train_step(p: Any, opt_state: Any, batch: Any) -> tuple[Any, Any, jax.Array]:
        loss, grads = jax.value_and_grad(shape.loss_fn)(p, batch)
        updates, opt_state = tx.update(grads, opt_state, p, value=loss)
        return optax.apply_updates(p, updates), opt_state, loss

    return train_step


def _with_value(tx: optax.GradientTransformation) -> optax.GradientTransformationExtraArgs:
    # adamw and apply_if_finite ignore the loss handed to every variant's update.
    return optax.with_extra_args_support(tx)


def make_runner(
    shape_name: str, shape: Shape, variant: str, tx: Any, donated: bool, steps: int
) -> Runner:
    tx = _with_value(tx)
    train_step = make_step(shape, tx)
    params = jax.tree.map(jnp.copy, shape.params)
    # Distinct buffers for every leaf: an initial state may share one array
    # between two leaves, which cannot be donated twice.
    opt_state = jax.tree.map(jnp.copy, tx.init(params))
    # Compilations see shapes only: the arrays themselves are donated to the first steps.
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
        (params, opt_state, shape.batch),
    )

    def compile_once() -> tuple[
        jax.stages.Lowered, jax.stages.Compiled, tuple[float, float, float]
    ]:
        """Trace, lower and compile afresh: (lowered, compiled, (lower s, compile s, CPU s))."""
        jax.clear_caches()  # nothing reused from an earlier compilation of the same program
        jitted = jax.jit(train_step, donate_argnums=(0, 1) if donated else ())
        begin, begin_cpu = time.perf_counter(), time.process_time()
        lowered = jitted.lower(*abstract)
        lowered_at = time.perf_counter()
        compiled = lowered.compile()
        compiled_at, compiled_cpu = time.perf_counter(), time.process_time()
        return (
            lowered,
            compiled,
            (lowered_at - begin, compiled_at - lowered_at, compiled_cpu - begin_cpu),
        )

    lowered, compiled, first = compile_once()
    state = {"params": params, "opt_state": opt_state}

    def run() -> tuple[float, float]:
        """Seconds per step: wall time and the process's CPU time."""
        p, s = state["params"], state["opt_state"]
        start, start_cpu = time.perf_counter(), time.process_time()
        for _ in range(steps):
            p, s, loss = compiled(p, s, shape.batch)
        loss.block_until_ready()
        elapsed, elapsed_cpu = time.perf_counter() - start, time.process_time() - start_cpu
        state["params"], state["opt_state"] = p, s
        return elapsed / steps, elapsed_cpu / steps

    run()  # warm up
    return Runner(
        shape=shape_name,
        donated=donated,
        variant=variant,
        stablehlo_ops=stablehlo_ops(lowered.as_text()),
        hlo=hlo_stats(compiled.as_text() or ""),
        run=run,
        recompile=lambda: compile_once()[2],
        compiles=[first],
    )


def warm_up_xla() -> None:
    """One throwaway compilation, so that the first measured one does not pay XLA's start-up."""
    shape = make_shape("mlp")
    tx = _with_value(optax.adamw(LEARNING_RATE))
    step = make_step(shape, tx)
    jax.jit(step).lower(shape.params, tx.init(shape.params), shape.batch).compile()


def measure(
    shape_names: list[str], rounds: int, steps: int, compiles: int = 3, seed: int = 0
) -> list[Runner]:
    warm_up_xla()
    runners: list[Runner] = []
    for shape_name in shape_names:
        shape = make_shape(shape_name)
        for donated in (True, False):
            for variant, tx in variants().items():
                runner = make_runner(shape_name, shape, variant, tx, donated, steps)
                print(
                    f"compiled {shape_name} {'donated' if donated else 'undonated'} {variant}: "
                    f"{runner.lower_s + runner.compile_s:.2f} s",
                    file=sys.stderr,
                    flush=True,
                )
                runners.append(runner)
    shuffler = random.Random(seed)
    for index in range(1, compiles):
        order = list(runners)
        shuffler.shuffle(order)
        for runner in order:
            runner.compiles.append(runner.recompile())
        print(f"compilation round {index + 1}/{compiles}", file=sys.stderr, flush=True)
    groups: dict[tuple[str, bool], list[Runner]] = {}
    for runner in runners:
        groups.setdefault((runner.shape, runner.donated), []).append(runner)
    group_order = list(groups)
    for index in range(rounds):
        shuffler.shuffle(group_order)
        for key in group_order:
            members = groups[key]
            shuffler.shuffle(members)
            for runner in members:
                wall, cpu = runner.run()
                runner.samples.append(wall)
                runner.cpu_samples.append(cpu)
        print(f"round {index + 1}/{rounds}", file=sys.stderr, flush=True)
    return runners


# ----------------------------------------------------------------------------- report


def _paired(numerator: Runner, denominator: Runner, cpu: bool = False) -> float:
    top = numerator.cpu_samples if cpu else numerator.samples
    bottom = denominator.cpu_samples if cpu else denominator.samples
    return statistics.median(a / b for a, b in zip(top, bottom, strict=True))


def _paired_compile(numerator: Runner, denominator: Runner) -> float:
    """Median over compilation rounds of the ratio of CPU times (lower plus compile)."""
    pairs = zip(numerator.compiles, denominator.compiles, strict=True)
    return statistics.median(a[2] / b[2] for a, b in pairs)


def _ok(value: float, limit: float, strict: bool = False) -> str:
    return "yes" if value < limit or (value == limit and not strict) else "NO"


def report(
    runners: list[Runner], shape_names: list[str], rounds: int, steps: int, compiles: int
) -> str:
    cpu = platform.processor() or platform.machine()
    by_key = {(r.shape, r.donated, r.variant): r for r in runners}
    names = list(variants())
    lines = [
        "## optax adapter on real model shapes: step time, compile time, graph size",
        "",
        f"`python benchmarks/shapes_bench.py --rounds {rounds} --steps {steps} "
        f"--compiles {compiles} --shapes "
        f"{' '.join(shape_names)}` on {os.cpu_count()} CPU cores ({cpu}), "
        f"{jax.default_backend()} backend, jax {jax.__version__}, optax {optax.__version__}. "
        "Inner optimizer `optax.adamw(1e-3)`; aees variants use `lr_candidates=(0.5, 1, 2), "
        "seed=0`. Step ratios: medians over rounds of per-round ratios against the same shape "
        "and donation mode, whose variants run back to back in shuffled order (wall time; "
        "the process's CPU time per step beside it); compile: `jax.jit(step).lower(...)` "
        f"plus `.compile()` from a cleared cache, {compiles} times per variant in shuffled "
        "rounds over all variants: medians of the wall times and of the process's CPU time "
        "(trace, lower and compile); the ratios are medians over rounds of the per-round "
        "ratios of CPU time, which other work on a shared machine disturbs far less. Graph size: "
        "StableHLO operations of the lowered step, and instructions in "
        "the optimized HLO (copies, fusions and conditionals among them).",
        "",
    ]
    for shape_name in shape_names:
        shape = make_shape(shape_name)
        leaves = jax.tree.leaves(shape.params)
        count = sum(leaf.size for leaf in leaves)
        lines += [f"- `{shape_name}`: {shape.description}; {len(leaves)} leaves, {count:,} params."]
    lines += [
        "",
        "| shape | donated | variant | ms / step | vs adamw | vs apply_if_finite | CPU time vs "
        "adamw | CPU time vs apply_if_finite | lower (s) | "
        "compile (s) | lower + compile, CPU (s) | CPU vs adamw | StableHLO ops | HLO instr. | "
        "copies | fusions | conditionals |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for shape_name in shape_names:
        for donated in (True, False):
            adamw = by_key[(shape_name, donated, "adamw")]
            skip = by_key[(shape_name, donated, "apply_if_finite")]
            for name in names:
                r = by_key[(shape_name, donated, name)]
                lines.append(
                    f"| {shape_name} | {'yes' if donated else 'no'} | {name} | "
                    f"{statistics.median(r.samples) * 1e3:.2f} | {_paired(r, adamw):.3f}x | "
                    f"{_paired(r, skip):.3f}x | {_paired(r, adamw, cpu=True):.3f}x | "
                    f"{_paired(r, skip, cpu=True):.3f}x | {r.lower_s:.2f} | {r.compile_s:.2f} | "
                    f"{r.compile_cpu_s:.2f} | {_paired_compile(r, adamw):.2f}x | "
                    f"{r.stablehlo_ops} | {r.hlo['instructions']} | "
                    f"{r.hlo['copies']} | {r.hlo['fusions']} | {r.hlo['conditionals']} |"
                )
    lines += [
        "",
        "Issue 15's bars:",
        "",
        "| shape | donated | check | measured | limit | ok |",
        "|---|---|---|---:|---:|---|",
    ]
    for shape_name in shape_names:
        for donated in (True, False):
            group = {name: by_key[(shape_name, donated, name)] for name in names}
            checks = [
                ("aees / adamw (step)", _paired(group["aees"], group["adamw"]), BAR_DEFAULTS),
                (
                    "aees / apply_if_finite (step), must be below",
                    _paired(group["aees"], group["apply_if_finite"]),
                    1.0,
                ),
                (
                    "aees_trusting (skip_nonfinite_grads=False) / adamw (step)",
                    _paired(group["aees_trusting"], group["adamw"]),
                    BAR_TRUSTING,
                ),
                (
                    "aees_trusting_no_norm (and track_update_norm=False) / adamw (step)",
                    _paired(group["aees_trusting_no_norm"], group["adamw"]),
                    BAR_TRUSTING,
                ),
                (
                    "aees_robust / aees (step)",
                    _paired(group["aees_robust"], group["aees"]),
                    BAR_ROBUST,
                ),
                (
                    "aees / adamw (compile, CPU time)",
                    _paired_compile(group["aees"], group["adamw"]),
                    BAR_COMPILE_DEFAULTS,
                ),
                (
                    "aees_robust / adamw (compile, CPU time)",
                    _paired_compile(group["aees_robust"], group["adamw"]),
                    BAR_COMPILE_ROBUST,
                ),
            ]
            for check, value, limit in checks:
                lines.append(
                    f"| {shape_name} | {'yes' if donated else 'no'} | {check} | {value:.3f} | "
                    f"{limit:.2f} | {_ok(value, limit, strict='below' in check)} |"
                )
    lines += [
        "",
        "No GPU measurement here: this table comes from the CPU backend only.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--steps", type=int, default=3, help="consecutive steps per sample")
    parser.add_argument(
        "--compiles", type=int, default=3, help="compilations per variant (medians)"
    )
    parser.add_argument("--shapes", nargs="+", choices=SHAPES, default=list(SHAPES))
    parser.add_argument("--write", action="store_true", help="write benchmarks/results_shapes.md")
    args = parser.parse_args(argv)
    if args.compiles < 1:
        parser.error("--compiles must be at least 1")
    runners = measure(args.shapes, args.rounds, args.steps, args.compiles)
    section = report(runners, args.shapes, args.rounds, args.steps, args.compiles)
    return publish(section, RESULTS, args.write)


if __name__ == "__main__":
    sys.exit(main())
