"""Per-step cost of pulseopt_torch.AEES against a plain loop and the published wrapper.

MLP 64-1024-1024-10, AdamW, batch 64, CPU, one torch thread. Every variant runs
in its own process; the processes are interleaved round by round, and the
table reports the median over rounds of each process's median step time.

    .venv/bin/python benchmarks/torch_bench.py [--rounds 9] [--steps 200] [--write]

``--write`` writes the tables to ``benchmarks/results_torch.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).with_name("results_torch.md")

LR_ONLY = {"lr_candidates": [0.5, 1.0, 2.0], "noise_candidates": [0.0]}
README_DEFAULT = {
    "lr_candidates": [0.5, 1.0, 2.0],
    "noise_candidates": [0.0, 0.005],
    "episode_length": 100,
    "seed": 42,
}
VARIANTS = {
    "plain": ("plain", {}),
    "ours_norm": ("ours", {**LR_ONLY, "track_update_norm": True}),
    "ours_no_norm": ("ours", {**LR_ONLY, "track_update_norm": False}),
    "ours_robust": ("ours", {**LR_ONLY, "track_update_norm": True, "preset": "robust"}),
    "reference_lr_only": ("reference", LR_ONLY),
    "ours_default_noise": ("ours", README_DEFAULT),
    "reference_default_noise": ("reference", README_DEFAULT),
}


def _worker(name: str, steps: int, warmup: int) -> None:
    started = time.perf_counter()
    import torch

    torch.set_num_threads(1)
    kind, knobs = VARIANTS[name]
    if kind == "ours":
        from pulseopt_torch import AEES as Wrapper
    elif kind == "reference":
        from pulseopt import AEES as Wrapper
    import_seconds = time.perf_counter() - started

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(64, 1024),
        torch.nn.ReLU(),
        torch.nn.Linear(1024, 1024),
        torch.nn.ReLU(),
        torch.nn.Linear(1024, 10),
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    aees = Wrapper(optimizer, **knobs) if kind != "plain" else None
    inputs, targets = torch.randn(64, 64), torch.randint(0, 10, (64,))

    times = []
    first_step_seconds = 0.0
    for step in range(warmup + steps):
        begin = time.perf_counter()
        if aees is not None:
            aees.step_start(step)
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(inputs), targets)
        loss.backward()
        if aees is not None:
            aees.step_end(loss)
        else:
            optimizer.step()
        elapsed = time.perf_counter() - begin
        if step == 0:
            first_step_seconds = elapsed
        if step >= warmup:
            times.append(elapsed)
    print(
        json.dumps(
            {
                "median_step_ms": 1e3 * statistics.median(times),
                "import_s": import_seconds,
                "first_step_s": first_step_seconds,
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--worker", choices=sorted(VARIANTS))
    parser.add_argument("--write", action="store_true", help="write benchmarks/results_torch.md")
    args = parser.parse_args()
    if args.worker:
        _worker(args.worker, args.steps, args.warmup)
        return

    results: dict[str, list[dict[str, float]]] = {name: [] for name in VARIANTS}
    for _ in range(args.rounds):
        for name in VARIANTS:
            command = [
                sys.executable,
                __file__,
                "--worker",
                name,
                "--steps",
                str(args.steps),
                "--warmup",
                str(args.warmup),
            ]
            output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            results[name].append(json.loads(output.strip().splitlines()[-1]))

    def median(name: str, field: str) -> float:
        return statistics.median(run[field] for run in results[name])

    plain = median("plain", "median_step_ms")
    lines = [
        "## torch adapter: per-step overhead",
        "",
        f"`python benchmarks/torch_bench.py --rounds {args.rounds} --steps {args.steps}` on "
        f"{os.cpu_count()} CPU cores ({platform.machine()}): MLP 64-1024-1024-10, AdamW, "
        "batch 64, `torch.set_num_threads(1)`, one process per variant, interleaved round by "
        "round, median over rounds of each process's median step time. Import and first-step "
        "columns show the one-time cost of loading and compiling the JAX core.",
        "",
        "| variant | median step (ms) | vs plain | import (s) | first step (s) |",
        "|---|---:|---:|---:|---:|",
    ]
    for name in VARIANTS:
        step_ms = median(name, "median_step_ms")
        lines.append(
            f"| {name} | {step_ms:.2f} | {step_ms / plain:.3f}x | "
            f"{median(name, 'import_s'):.2f} | {median(name, 'first_step_s'):.2f} |"
        )
    checks = {
        "ours_norm / plain": ("ours_norm", "plain", 1.15),
        "ours_no_norm / plain": ("ours_no_norm", "plain", 1.06),
        "ours_default_noise / reference_default_noise": (
            "ours_default_noise",
            "reference_default_noise",
            1.00,
        ),
        "ours_robust / ours_norm (preset overhead)": ("ours_robust", "ours_norm", 1.15),
    }
    lines += ["", "| check | measured | limit | ok |", "|---|---:|---:|---|"]
    for check, (numerator, denominator, limit) in checks.items():
        ratio = median(numerator, "median_step_ms") / median(denominator, "median_step_ms")
        lines.append(
            f"| {check} | {ratio:.3f} | {limit:.2f} | {'yes' if ratio <= limit else 'NO'} |"
        )
    section = "\n".join(lines) + "\n"
    print(section)
    if args.write:
        RESULTS.write_text(section)


if __name__ == "__main__":
    main()
