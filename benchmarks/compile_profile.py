"""Where the compile time of the optax train step goes, per XLA stage, on the shapes of ``shapes_bench.py``.

``shapes_bench.py`` reports how long each variant takes to compile; this
script says why. It compiles the donated train step of each (shape, variant)
under ``jax.profiler`` and sums the durations of the compiler's own trace
events:

  backend compile   ``PjRtCpuClient::Compile``: all of XLA's work on the HLO module.
  HLO passes        the optimisation pipelines before and after layout assignment.
  copy insertion    the pass that decides which buffers must be copied (part of the above).
  kernels           ``FusionCompiler::Compile``: one event per kernel that XLA's fusion
                    emitter generates (the optimised module holds more fusions than
                    that; ``shapes_bench.py`` counts them).
  LLVM              ``JitCompiler::Compile``: machine code for the whole module.
  thunks            ``ThunkEmitter::EmitEntryComputation``: the runtime's program of
                    kernel calls, copies and loops.

Each figure is the median over ``--rounds`` compilations in one process, after
a throwaway compilation that warms XLA up. Event names are those of the
installed jaxlib; one it does not emit is reported as "-".

Usage::

    .venv/bin/python benchmarks/compile_profile.py [--rounds 3] [--write]

``--write`` writes the table to ``benchmarks/results_compile_profile.md``.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import jax
import jax.numpy as jnp
import optax
import shapes_bench
from _sections import publish
from jax.profiler import ProfileData

RESULTS = Path(__file__).resolve().parent / "results_compile_profile.md"
SHAPES = ("mlp", "deep_mlp", "transformer")
VARIANTS = ("adamw", "aees_trusting_no_norm", "aees", "aees_robust")
# (column, event name, whether the name is a prefix)
STAGES = (
    ("backend compile", "PjRtCpuClient::Compile", False),
    ("HLO passes", "HLO passes ", True),
    ("copy insertion", "copy-insertion", False),
    ("kernels", "FusionCompiler::Compile", False),
    ("LLVM", "JitCompiler::Compile", False),
    ("thunks", "ThunkEmitter::EmitEntryComputation", False),
)


def profile_compile(lowered: jax.stages.Lowered) -> tuple[dict[str, float], int]:
    """Seconds per stage of ``lowered.compile()``, and the number of kernels generated."""
    seconds: dict[str, float] = defaultdict(float)
    kernels = 0
    with tempfile.TemporaryDirectory() as folder:
        jax.profiler.start_trace(folder)
        lowered.compile()
        jax.profiler.stop_trace()
        (trace,) = Path(folder).rglob("*.xplane.pb")
        data = ProfileData.from_file(str(trace))
    for plane in data.planes:
        for line in plane.lines:
            for event in line.events:
                for column, name, prefix in STAGES:
                    if event.name.startswith(name) if prefix else event.name == name:
                        seconds[column] += event.duration_ns / 1e9
                        kernels += column == "kernels"
    return dict(seconds), kernels


def measure(rounds: int) -> list[dict[str, object]]:
    shapes_bench.warm_up_xla()
    rows = []
    for shape_name in SHAPES:
        shape = shapes_bench.make_shape(shape_name)
        variants = shapes_bench.variants()
        for variant in VARIANTS:
            tx = shapes_bench._with_value(variants[variant])
            step = shapes_bench.make_step(shape, tx)
            params = jax.tree.map(jnp.copy, shape.params)
            opt_state = jax.tree.map(jnp.copy, tx.init(params))
            samples: dict[str, list[float]] = defaultdict(list)
            kernel_counts = []
            for _ in range(rounds):
                # A new function object each round: nothing is reused from the last.
                jitted = jax.jit(lambda *a, f=step: f(*a), donate_argnums=(0, 1))
                begin = time.perf_counter()
                lowered = jitted.lower(params, opt_state, shape.batch)
                samples["trace + lower"].append(time.perf_counter() - begin)
                seconds, kernels = profile_compile(lowered)
                for column, value in seconds.items():
                    samples[column].append(value)
                kernel_counts.append(kernels)
            row: dict[str, object] = {"shape": shape_name, "variant": variant}
            row.update({column: statistics.median(v) for column, v in samples.items()})
            row["kernel count"] = int(statistics.median(kernel_counts))
            rows.append(row)
            print(f"{shape_name} {variant} done", file=sys.stderr, flush=True)
    return rows


def report(rows: list[dict[str, object]], rounds: int) -> str:
    columns = ["trace + lower"] + [column for column, _, _ in STAGES]

    def cell(row: dict[str, object], column: str) -> str:
        value = row.get(column)
        return "-" if value is None else f"{value:.2f}"

    lines = [
        "## optax adapter: where the compile time goes",
        "",
        f"`python benchmarks/compile_profile.py --rounds {rounds}` on {platform.machine()}, "
        f"jax {jax.__version__}, optax {optax.__version__}, {jax.default_backend()} backend. "
        "The donated train step of `shapes_bench.py`'s shapes and variants, compiled under "
        "`jax.profiler`; seconds summed over XLA's own trace events, medians of "
        f'{rounds} compilations. "kernels" is the time XLA\'s fusion emitter spent '
        'generating kernels and "n" how many it generated (fewer than the module\'s '
        "fusions, which the shapes section counts); copy insertion is part of the HLO "
        "passes.",
        "",
        "| shape | variant | " + " | ".join(f"{c} (s)" for c in columns) + " | n | ms / kernel |",
        "|---|---|" + "---:|" * (len(columns) + 2),
    ]
    for row in rows:
        n = int(row["kernel count"])  # type: ignore[call-overload]
        kernel_seconds = row.get("kernels")
        per_kernel = (
            f"{1e3 * kernel_seconds / n:.1f}" if n and isinstance(kernel_seconds, float) else "-"
        )
        cells = " | ".join(cell(row, column) for column in columns)
        lines.append(f"| {row['shape']} | {row['variant']} | {cells} | {n} | {per_kernel} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--write", action="store_true", help=f"write {RESULTS.name}")
    args = parser.parse_args(argv)
    return publish(report(measure(args.rounds), args.rounds), RESULTS, args.write)


if __name__ == "__main__":
    sys.exit(main())
