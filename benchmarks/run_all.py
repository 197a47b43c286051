"""Every benchmark behind ``make bench``: the quality suite, then the overhead scripts.

The overhead benchmarks (``optax_bench.py``, ``torch_bench.py``) run as
separate processes, each writing its own section (``results_optax.md``,
``results_torch.md``); the quality suite writes ``results_quality.md`` and its
figures. ``benchmarks/RESULTS.md`` is then assembled from the sections in
`SECTIONS` that exist, among them ``results_growth_rate.md``, a probe of the
robust preset's growth rate that is run by hand (its command heads it).

Examples:
    .venv/bin/python benchmarks/run_all.py
    .venv/bin/python benchmarks/run_all.py --only quality --tasks digits_mlp --seeds 3
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from quality import suite

BENCHMARKS = Path(__file__).resolve().parent
OVERHEAD_SCRIPTS = (
    "optax_bench.py",
    "torch_bench.py",
    "shapes_bench.py",
    "compile_profile.py",
    "compile_cache_bench.py",
    "memory_bench.py",
)
SECTIONS = (
    "results_optax.md",
    "results_torch.md",
    "results_shapes.md",
    "results_compile_profile.md",
    "results_compile_cache.md",
    "results_memory.md",
    "results_quality.md",
    "results_growth_rate.md",
)
RESULTS = BENCHMARKS / "RESULTS.md"


def run_overhead(script: Path) -> int:
    """Run one overhead benchmark in its own interpreter; returns its exit code."""
    print(f"== {script.name}", file=sys.stderr, flush=True)
    command = [sys.executable, str(script), "--write"]
    return subprocess.run(command, cwd=BENCHMARKS.parent).returncode


def assemble_results() -> Path:
    """Write ``RESULTS.md`` from the sections the benchmarks left behind."""
    parts = [
        "# Benchmark results",
        "",
        "Produced by `make bench` (`benchmarks/run_all.py`); each section names the exact "
        "command that produced it. Timings come from shared 2-core machines: compare the "
        "ratios measured side by side in one run, not the absolute times.",
    ]
    for name in SECTIONS:
        section = BENCHMARKS / name
        if section.exists():
            parts += ["", section.read_text().strip()]
    RESULTS.write_text("\n".join(parts) + "\n")
    return RESULTS


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--only",
        choices=["quality", "overhead"],
        help="run just the quality suite or just the overhead scripts",
    )
    suite.add_arguments(parser)
    args = parser.parse_args(argv)
    failures = 0
    if args.only != "quality":
        for name in OVERHEAD_SCRIPTS:
            script = BENCHMARKS / name
            if script.exists() and run_overhead(script) != 0:
                print(f"{name} failed", file=sys.stderr)
                failures += 1
    if args.only != "overhead":
        command = (
            [".venv/bin/python", "benchmarks/run_all.py", *argv] if argv else ["make", "bench"]
        )
        suite.main(suite.options_from(args), command)
    print(f"results: {assemble_results()}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
