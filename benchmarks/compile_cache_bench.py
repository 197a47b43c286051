"""Compile time with JAX's persistent compilation cache, cold and warm, on the benchmark shapes.

A notebook restart or a new training process compiles the train step again.
JAX can keep compiled programs on disk (``jax_compilation_cache_dir``); a
process that finds its program there loads it instead of compiling it. This
script measures what that saves for ``optax.adamw``, ``aees`` (defaults) and
``aees`` with ``preset="robust"``, on the shapes of ``shapes_bench.py``: each
measurement is a fresh process (nothing cached in memory) that traces, lowers
and compiles the donated train step, first with an empty cache directory
(cold), then again with the directory the first process filled (warm).

Examples:
    .venv/bin/python benchmarks/compile_cache_bench.py --write
    .venv/bin/python benchmarks/compile_cache_bench.py --shapes mlp --rounds 1
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _sections import publish

RESULTS = Path(__file__).with_name("results_compile_cache.md")
SHAPES = ("mlp", "deep_mlp", "transformer")
VARIANTS = ("adamw", "aees", "aees_robust")


def _worker(shape_name: str, variant: str, cache_dir: str) -> dict[str, float]:
    """Trace, lower and compile one donated train step with ``cache_dir`` as the cache."""
    import jax

    jax.config.update("jax_compilation_cache_dir", cache_dir)
    # Cache every program, also the ones that compile in under a second.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    import jax.numpy as jnp

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import shapes_bench

    shape = shapes_bench.make_shape(shape_name)
    tx = shapes_bench._with_value(shapes_bench.variants()[variant])
    step = shapes_bench.make_step(shape, tx)
    params = jax.tree.map(jnp.copy, shape.params)
    opt_state = jax.tree.map(jnp.copy, tx.init(params))
    jitted = jax.jit(step, donate_argnums=(0, 1))
    begin = time.process_time()
    jitted.lower(params, opt_state, shape.batch).compile()
    return {"cpu": time.process_time() - begin}


def _run_worker(shape_name: str, variant: str, cache_dir: str) -> dict[str, float]:
    command = [sys.executable, __file__, "--worker", shape_name, variant, cache_dir]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def measure(shape_names: list[str], rounds: int) -> dict[tuple[str, str, str], list[float]]:
    """CPU seconds per (shape, variant, "cold" or "warm"), one sample per round."""
    samples: dict[tuple[str, str, str], list[float]] = {}
    for round_index in range(rounds):
        for shape_name in shape_names:
            for variant in VARIANTS:
                with tempfile.TemporaryDirectory(prefix="jax-cache-") as cache_dir:
                    for kind in ("cold", "warm"):
                        result = _run_worker(shape_name, variant, cache_dir)
                        samples.setdefault((shape_name, variant, kind), []).append(result["cpu"])
                print(
                    f"round {round_index + 1}/{rounds} {shape_name} {variant} done",
                    file=sys.stderr,
                    flush=True,
                )
    return samples


def report(samples: dict[tuple[str, str, str], list[float]], shapes: list[str], rounds: int) -> str:
    import jax

    def median(shape: str, variant: str, kind: str) -> float:
        return statistics.median(samples[(shape, variant, kind)])

    lines = [
        "## optax adapter: compile time with a persistent compilation cache",
        "",
        f"`python benchmarks/compile_cache_bench.py --rounds {rounds} --shapes {' '.join(shapes)}` "
        f"on {platform.machine()}, jax {jax.__version__}, cpu backend. Each figure is the CPU "
        "time of one fresh process tracing, lowering and compiling the donated train step of "
        "`shapes_bench.py` (same shapes and variants), median over rounds: `cold` with an "
        "empty `jax_compilation_cache_dir`, `warm` in the next process, which finds the "
        "program the first one stored (`jax_persistent_cache_min_compile_time_secs=0`, so "
        "short compilations are stored too). Ratios against adamw under the same cache "
        "state.",
        "",
        "| shape | variant | cold (s) | warm (s) | warm / cold | cold vs adamw | warm vs adamw |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for shape in shapes:
        for variant in VARIANTS:
            cold, warm = median(shape, variant, "cold"), median(shape, variant, "warm")
            cold_ratio = cold / median(shape, "adamw", "cold")
            warm_ratio = warm / median(shape, "adamw", "warm")
            lines.append(
                f"| {shape} | {variant} | {cold:.2f} | {warm:.2f} | {warm / cold:.2f} | "
                f"{cold_ratio:.2f}x | {warm_ratio:.2f}x |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--shapes", nargs="+", choices=SHAPES, default=list(SHAPES))
    parser.add_argument("--write", action="store_true", help=f"write benchmarks/{RESULTS.name}")
    parser.add_argument("--worker", nargs=3, metavar=("SHAPE", "VARIANT", "CACHE_DIR"))
    args = parser.parse_args(argv)
    if args.worker:
        result: dict[str, Any] = _worker(*args.worker)
        print(json.dumps(result))
        return 0
    section = report(measure(args.shapes, args.rounds), args.shapes, args.rounds)
    return publish(section, RESULTS, args.write)


if __name__ == "__main__":
    sys.exit(main())
