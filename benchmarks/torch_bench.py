"""Per-step cost of pulseopt_torch.AEES against a plain loop and the published wrapper.

MLP 64-1024-1024-10, AdamW, batch 64, CPU, one torch thread.

Step times: each round is one fresh process that builds every variant (its own
model, optimizer and wrapper, same initialisation and batch) and warms each up.
It then runs cycles: in each cycle every variant runs a block of ``--block``
steps, in a new shuffled order, and the cycle records each variant's median step
time. Step times on a shared machine drift over seconds, so every ratio is
taken within one cycle (paired: same process, same moment) and the table
reports the median over all cycles of all rounds.

One-time costs come from one short process per variant per round, since an
import or a compilation is only cold once: the import, and the slowest of the
first ``STARTUP_STEPS`` steps, the one that compiles the core (the first step
with the spike guard; without it, the end of the first episode, when the
buffered steps first reach the core).

    .venv/bin/python benchmarks/torch_bench.py [--rounds 7] [--blocks 30] [--block 10] [--write]

Host reads per step (``--sync-worker``, one process): how many times each
variant's training steps make the host wait for the device.

``--write`` writes the tables to ``benchmarks/results_torch.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).with_name("results_torch.md")

LR_ONLY = {"lr_candidates": [0.5, 1.0, 2.0], "noise_candidates": [0.0]}
README_DEFAULT = {
    "lr_candidates": [0.5, 1.0, 2.0],
    "noise_candidates": [0.0, 0.005],
    "episode_length": 100,
    "seed": 42,
}
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "plain": ("plain", {}),
    "ours_norm": ("ours", {**LR_ONLY, "track_update_norm": True}),
    "ours_no_norm": ("ours", {**LR_ONLY, "track_update_norm": False}),
    "ours_robust": ("ours", {**LR_ONLY, "track_update_norm": True, "preset": "robust"}),
    "ours_robust_eval": (
        "ours_eval",
        {**LR_ONLY, "track_update_norm": True, "preset": "robust", "restore_best": True},
    ),
    "ours_optimizer_norm": ("ours_optimizer", {**LR_ONLY, "track_update_norm": True}),
    "ours_optimizer_no_norm": ("ours_optimizer", {**LR_ONLY, "track_update_norm": False}),
    "reference_lr_only": ("reference", LR_ONLY),
    "ours_default_noise": ("ours", README_DEFAULT),
    "reference_default_noise": ("reference", README_DEFAULT),
}


# The eval-fed variant hands a held-out loss to `observe_eval` this often.
EVAL_EVERY = 50


def _wrapper_class(kind: str) -> type | None:
    if kind in ("ours", "ours_eval"):
        from pulseopt_torch import AEES

        return AEES
    if kind == "ours_optimizer":
        from pulseopt_torch import AEESOptimizer

        return AEESOptimizer
    if kind == "reference":
        from pulseopt import AEES as Reference

        return Reference
    return None


def _make_step(name: str) -> Callable[[], float]:
    """One variant's training loop, as a closure that runs one step and returns its seconds."""
    import torch

    kind, knobs = VARIANTS[name]
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(64, 1024),
        torch.nn.ReLU(),
        torch.nn.Linear(1024, 1024),
        torch.nn.ReLU(),
        torch.nn.Linear(1024, 10),
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    wrapper = _wrapper_class(kind)
    aees = wrapper(optimizer, **knobs) if wrapper is not None else None
    inputs, targets = torch.randn(64, 64), torch.randint(0, 10, (64,))
    counter = [0]

    held_out = torch.randn(64, 64), torch.randint(0, 10, (64,))

    def step() -> float:
        begin = time.perf_counter()
        if kind == "ours_eval" and counter[0] % EVAL_EVERY == 0:
            with torch.no_grad():
                aees.observe_eval(
                    torch.nn.functional.cross_entropy(model(held_out[0]), held_out[1])
                )
        if kind == "ours_optimizer":
            aees.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(inputs), targets)
            loss.backward()
            aees.observe(loss)
            aees.step()
            counter[0] += 1
            return time.perf_counter() - begin
        if aees is not None:
            aees.step_start(counter[0])
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(inputs), targets)
        loss.backward()
        if aees is not None:
            aees.step_end(loss)
        else:
            optimizer.step()
        counter[0] += 1
        return time.perf_counter() - begin

    return step


def _timing_worker(blocks: int, block: int, warmup: int, seed: int) -> None:
    import torch

    torch.set_num_threads(1)
    steps = {name: _make_step(name) for name in VARIANTS}
    for step in steps.values():
        for _ in range(warmup):
            step()
    cycles = []
    order = list(VARIANTS)
    shuffler = random.Random(seed)
    for _ in range(blocks):
        shuffler.shuffle(order)
        cycle = {}
        for name in order:
            cycle[name] = 1e3 * statistics.median(steps[name]() for _ in range(block))
        cycles.append(cycle)
    print(json.dumps(cycles))


STARTUP_STEPS = 120  # past the end of the first episode at the default length of 100


def _startup_worker(name: str) -> None:
    started = time.perf_counter()
    import torch

    torch.set_num_threads(1)
    _wrapper_class(VARIANTS[name][0])
    import_seconds = time.perf_counter() - started
    step = _make_step(name)
    slowest_step_seconds = max(step() for _ in range(STARTUP_STEPS))
    print(json.dumps({"import_s": import_seconds, "slowest_step_s": slowest_step_seconds}))


# Host-read counts: the variants whose training steps read nothing else
# (the eval-fed one's `observe_eval` is a read the user asks for), measured
# past the first episode, over this many steps (several episodes of 100).
# The plain loop's own reads (CPU AdamW reads its step counts) are subtracted.
SYNC_VARIANTS = (
    "plain",
    "ours_norm",
    "ours_no_norm",
    "ours_robust",
    "ours_optimizer_norm",
    "ours_optimizer_no_norm",
    "ours_default_noise",
)
SYNC_WARMUP, SYNC_STEPS, EPISODE_LENGTH = 100, 300, 100


def _sync_worker() -> None:
    """Per step, the host reads of each variant: ``.item()``-like reads and buffer reads.

    ``aten._local_scalar_dense`` (what ``.item()`` and ``float()`` dispatch to)
    is counted with a `TorchDispatchMode`; the wrapper's reads of its device
    buffer (`StepRecords.read`, one transfer each, which on a CPU dispatch
    nothing) are counted at their call.
    """
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    from pulseopt_torch._step_records import StepRecords

    torch.set_num_threads(1)
    buffer_reads = [0]
    original = StepRecords.read

    def counted(self: StepRecords, *args: Any, **kwargs: Any) -> Any:
        buffer_reads[0] += 1
        return original(self, *args, **kwargs)

    StepRecords.read = counted  # type: ignore[method-assign]

    class ScalarReads(TorchDispatchMode):
        count = 0

        def __torch_dispatch__(
            self, func: Any, types: Any, args: Any = (), kwargs: Any = None
        ) -> Any:
            if func is torch.ops.aten._local_scalar_dense.default:
                ScalarReads.count += 1
            return func(*args, **(kwargs or {}))

    report = {}
    for name in SYNC_VARIANTS:
        step = _make_step(name)
        for _ in range(SYNC_WARMUP):
            step()
        inside, last = [], []
        for number in range(SYNC_WARMUP, SYNC_WARMUP + SYNC_STEPS):
            before_buffer, before_scalar = buffer_reads[0], ScalarReads.count
            with ScalarReads():
                step()
            reads = buffer_reads[0] - before_buffer + ScalarReads.count - before_scalar
            (last if (number + 1) % EPISODE_LENGTH == 0 else inside).append(reads)
        report[name] = {"inside": inside, "last": last}
    print(json.dumps(report))


def _run_worker(*arguments: str) -> Any:
    command = [sys.executable, __file__, *arguments]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--blocks", type=int, default=30)
    parser.add_argument("--block", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--timing-worker", type=int, metavar="SEED")
    parser.add_argument("--startup-worker", choices=sorted(VARIANTS))
    parser.add_argument("--sync-worker", action="store_true")
    parser.add_argument("--write", action="store_true", help="write benchmarks/results_torch.md")
    args = parser.parse_args()
    if args.timing_worker is not None:
        _timing_worker(args.blocks, args.block, args.warmup, args.timing_worker)
        return
    if args.startup_worker:
        _startup_worker(args.startup_worker)
        return
    if args.sync_worker:
        _sync_worker()
        return

    cycles: list[dict[str, float]] = []
    startup: dict[str, list[dict[str, float]]] = {name: [] for name in VARIANTS}
    for round_index in range(args.rounds):
        cycles.extend(
            _run_worker(
                "--timing-worker",
                str(round_index),
                "--blocks",
                str(args.blocks),
                "--block",
                str(args.block),
                "--warmup",
                str(args.warmup),
            )
        )
        for name in VARIANTS:
            startup[name].append(_run_worker("--startup-worker", name))

    def step_ms(name: str) -> float:
        return statistics.median(cycle[name] for cycle in cycles)

    def ratio(numerator: str, denominator: str) -> float:
        return statistics.median(cycle[numerator] / cycle[denominator] for cycle in cycles)

    def one_time(name: str, field: str) -> float:
        return statistics.median(run[field] for run in startup[name])

    lines = [
        "## torch adapter: per-step overhead",
        "",
        f"`python benchmarks/torch_bench.py --rounds {args.rounds} --blocks {args.blocks} "
        f"--block {args.block}` on {os.cpu_count()} CPU cores ({platform.machine()}): MLP "
        "64-1024-1024-10, AdamW, batch 64, `torch.set_num_threads(1)`. Each round is one "
        "process that cycles through every variant, a block of steps each in shuffled "
        "order; ratios are taken within a cycle (paired) and the table shows medians over "
        "all cycles of all rounds. The import and slowest-step "
        "columns (one fresh process per variant and round) show the one-time cost of loading "
        "and compiling the JAX core.",
        "",
        f"| variant | median step (ms) | vs plain | import (s) | slowest of first {STARTUP_STEPS} "
        "steps (s) |",
        "|---|---:|---:|---:|---:|",
    ]
    for name in VARIANTS:
        lines.append(
            f"| {name} | {step_ms(name):.2f} | {ratio(name, 'plain'):.3f}x | "
            f"{one_time(name, 'import_s'):.2f} | {one_time(name, 'slowest_step_s'):.2f} |"
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
        "ours_robust_eval / ours_norm (eval-fed preset, restore_best, eval every 50 steps)": (
            "ours_robust_eval",
            "ours_norm",
            1.15,
        ),
        "ours_optimizer_norm / plain (AEESOptimizer)": ("ours_optimizer_norm", "plain", 1.15),
        "ours_optimizer_no_norm / plain (AEESOptimizer)": (
            "ours_optimizer_no_norm",
            "plain",
            1.06,
        ),
    }
    lines += ["", "| check | measured | limit | ok |", "|---|---:|---:|---|"]
    for check, (numerator, denominator, limit) in checks.items():
        measured = ratio(numerator, denominator)
        lines.append(
            f"| {check} | {measured:.3f} | {limit:.2f} | {'yes' if measured <= limit else 'NO'} |"
        )
    syncs = _run_worker("--sync-worker")
    lines += [
        "",
        f"Host reads per training step (`python benchmarks/torch_bench.py --sync-worker`, "
        f"one process): after a first episode, {SYNC_STEPS} steps with episodes of "
        f"{EPISODE_LENGTH} steps, counting `aten._local_scalar_dense` calls (what `.item()` "
        "and `float()` dispatch to, seen by a `TorchDispatchMode`) plus the wrapper's reads "
        "of its device buffer (one transfer each), less the plain loop's own reads at the "
        f"same step ({max(syncs['plain']['inside'])} per step: CPU AdamW reads its step "
        "counts). Bars: none inside an episode by default, at most one per step with the "
        "guard.",
        "",
        "| variant | inside an episode: max (mean) | episode's last step: max | ok |",
        "|---|---:|---:|---|",
    ]
    own = syncs.pop("plain")
    for name, counts in syncs.items():
        inside = [a - b for a, b in zip(counts["inside"], own["inside"], strict=True)]
        last = [a - b for a, b in zip(counts["last"], own["last"], strict=True)]
        guarded = VARIANTS[name][1].get("preset") == "robust"
        ok = max(inside + last) <= 1 if guarded else max(inside) == 0 and max(last) <= 1
        lines.append(
            f"| {name} | {max(inside)} ({statistics.mean(inside):.2f}) | {max(last)} | "
            f"{'yes' if ok else 'NO'} |"
        )
    section = "\n".join(lines) + "\n"
    print(section)
    if args.write:
        RESULTS.write_text(section)


if __name__ == "__main__":
    main()
