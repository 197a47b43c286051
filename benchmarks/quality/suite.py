"""The quality benchmark: every arm on every task and inner optimizer, then the report.

Run through ``make bench`` (``benchmarks/run_all.py``), or alone::

    .venv/bin/python benchmarks/run_all.py --only quality --seeds 5

Raw traces are cached under ``benchmarks/out/quality``; ``--reuse`` loads
matching ones instead of retraining, so adding one arm re-runs only that arm::

    .venv/bin/python benchmarks/run_all.py --only quality --reuse
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import platform
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import jax
import numpy as np
import optax
from tqdm import tqdm

from quality.arms import DEFAULT_ARMS, INNER_OPTIMIZERS, Arm, InnerOptimizer, default_arms
from quality.metrics import Scoreboard, score
from quality.report import (
    DESIGN_PAIRS,
    DESIGN_SEEDS,
    plot_final_val,
    plot_multipliers,
    write_report,
)
from quality.runner import RunResult, run_population
from quality.tasks import TASKS, Task

BENCHMARKS = Path(__file__).resolve().parent.parent
# Base LR = nominal LR x these factors: 10^-1.5 ... 10^1, a 316x range with
# three settings below the nominal value and two above it.
MIS_SET_FACTORS = 10.0 ** np.arange(-1.5, 1.01, 0.5)
# Arms whose multiplier traces get a figure, and the figure's file name.
MULTIPLIER_FIGURES = {
    "aees_wide": "quality_multipliers.png",
    "aees_robust": "quality_multipliers_robust.png",
}


@dataclasses.dataclass(frozen=True)
class SuiteOptions:
    tasks: tuple[str, ...]
    optimizers: tuple[str, ...]
    arms: tuple[str, ...]
    seeds: int
    first_seed: int
    steps: int | None
    reuse: bool
    report: Path
    figures: Path
    cache: Path

    @property
    def seed_range(self) -> range:
        """The seeds every population trains with."""
        return range(self.first_seed, self.first_seed + self.seeds)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The suite's command-line options (shared with ``run_all.py``)."""
    arms = list(default_arms())
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument(
        "--optimizers", nargs="+", default=list(INNER_OPTIMIZERS), choices=list(INNER_OPTIMIZERS)
    )
    parser.add_argument("--arms", nargs="+", default=list(DEFAULT_ARMS), choices=arms)
    parser.add_argument("--seeds", type=int, default=5, help="how many seeds")
    parser.add_argument(
        "--first-seed", type=int, default=0, help="seeds are first-seed, first-seed + 1, ..."
    )
    parser.add_argument(
        "--steps", type=int, default=None, help="override every task's own step count"
    )
    parser.add_argument(
        "--reuse", action="store_true", help="load cached traces instead of retraining"
    )
    parser.add_argument("--report", type=Path, default=BENCHMARKS / "results_quality.md")
    parser.add_argument("--figures", type=Path, default=BENCHMARKS / "figures")
    parser.add_argument("--cache", type=Path, default=BENCHMARKS / "out" / "quality")


def options_from(args: argparse.Namespace) -> SuiteOptions:
    return SuiteOptions(
        tasks=tuple(args.tasks),
        optimizers=tuple(args.optimizers),
        arms=tuple(args.arms),
        seeds=args.seeds,
        first_seed=args.first_seed,
        steps=args.steps,
        reuse=args.reuse,
        report=args.report,
        figures=args.figures,
        cache=args.cache,
    )


def _make_task(name: str, options: SuiteOptions) -> Task:
    return TASKS[name]() if options.steps is None else TASKS[name](steps=options.steps)


def _cached(path: Path, base_lrs: np.ndarray, seeds: np.ndarray, steps: int) -> RunResult | None:
    if not path.exists():
        return None
    result = RunResult.load(path)
    matches = (
        np.allclose(result.base_lrs, base_lrs)
        and np.array_equal(result.seeds, seeds)
        and result.train_loss.shape[-1] == steps
    )
    return result if matches else None


def _run_arm(
    task: Task,
    arm: Arm,
    optimizer: InnerOptimizer,
    seeds: np.ndarray,
    options: SuiteOptions,
) -> list[RunResult]:
    base_lrs = optimizer.nominal_lr * MIS_SET_FACTORS
    paths = [options.cache / task.name / optimizer.name / f"{n}.npz" for n in arm.run_names()]
    if options.reuse:
        cached = [_cached(p, base_lrs, seeds, task.steps) for p in paths]
        if all(c is not None for c in cached):
            return [c for c in cached if c is not None]
    results = run_population(task, arm, optimizer, base_lrs, seeds)
    for result, path in zip(results, paths, strict=True):
        result.save(path)
    return results


@dataclasses.dataclass(frozen=True)
class SuiteResults:
    """Scoreboards, the multiplier traces for the figure, and the training time.

    ``training_seconds`` adds up the wall time of every population as measured
    when it was trained (also for traces loaded from the cache).
    """

    boards: list[Scoreboard]
    multipliers: dict[str, dict[tuple[str, str], np.ndarray]]
    training_seconds: float


def run_suite(options: SuiteOptions) -> SuiteResults:
    """Train every (task, optimizer, arm) population and score it."""
    arms = default_arms()
    seeds = np.asarray(options.seed_range)
    boards, training_seconds = [], 0.0
    multipliers: dict[str, dict[tuple[str, str], np.ndarray]] = {}
    tasks = {name: _make_task(name, options) for name in options.tasks}
    plan = {
        name: [o for o in options.optimizers if o in task.optimizers]
        for name, task in tasks.items()
    }
    jobs = sum(len(optimizers) for optimizers in plan.values()) * len(options.arms)
    progress = tqdm(total=jobs, desc="quality", unit="run")
    for task_name, task in tasks.items():
        per_optimizer: dict[str, list[RunResult]] = {name: [] for name in plan[task_name]}
        for arm_name in options.arms:
            arm = arms[arm_name]
            shared: list[RunResult] | None = None
            for opt_name in plan[task_name]:
                progress.set_postfix_str(f"{task_name} {opt_name} {arm_name}")
                optimizer = INNER_OPTIMIZERS[opt_name]
                if shared is None or arm.uses_inner:
                    shared = _run_arm(task, arm, optimizer, seeds, options)
                    training_seconds += sum(r.seconds for r in shared)
                # An arm that ignores the inner optimizer produced the same
                # runs for every optimizer's table; they are relabelled, not rerun.
                per_optimizer[opt_name] += [
                    dataclasses.replace(
                        r, optimizer=opt_name, base_lrs=optimizer.nominal_lr * MIS_SET_FACTORS
                    )
                    for r in shared
                ]
                progress.update()
        for opt_name, results in per_optimizer.items():
            boards.append(score(results, INNER_OPTIMIZERS[opt_name].nominal_lr))
            for result in results:
                if result.arm in MULTIPLIER_FIGURES:
                    traces = multipliers.setdefault(result.arm, {})
                    traces[(task_name, opt_name)] = result.multiplier
    progress.close()
    return SuiteResults(boards, multipliers, training_seconds)


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return (
        f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}; "
        f"Python {platform.python_version()}, jax {jax.__version__} ({jax.default_backend()}), "
        f"optax {optax.__version__}"
    )


def _method(options: SuiteOptions) -> list[str]:
    arms = default_arms()
    lines = ["Tasks:", ""]
    for name in options.tasks:
        task = _make_task(name, options)
        regime = f" ({task.regime})" if task.regime else ""
        lines.append(
            f"- `{name}`: {task.description}; {task.steps} steps{regime}; inner optimizers: "
            + ", ".join(f"`{o}`" for o in task.optimizers if o in options.optimizers)
        )
    lines += ["", "Inner optimizers (the nominal LR is the grid's centre, not tuned per task):", ""]
    lines += [
        f"- `{name}`: {INNER_OPTIMIZERS[name].label}, nominal LR {INNER_OPTIMIZERS[name].nominal_lr:g}"
        for name in options.optimizers
    ]
    lines += ["", "Arms:", ""]
    for name in options.arms:
        lines.append(f"- `{name}`: {arms[name].description}")
    lines += [
        "",
        "Every arm trains on minibatches (64 examples; 32 for `conv_digits`) at base LR = nominal × "
        + ", ".join(f"{f:.3g}" for f in MIS_SET_FACTORS)
        + f" ({MIS_SET_FACTORS[-1] / MIS_SET_FACTORS[0]:.0f}x range), with {options.seeds} seeds.",
        "Each (arm, task, optimizer) is one jitted program: `lax.scan` over steps, `vmap` over "
        "seeds and base LRs (and over the multipliers of the fixed arms). A seed fixes the "
        "initialisation and minibatch order for every arm alike, so differences are paired.",
        "Losses are capped at the member's untrained validation loss (a non-finite or worse "
        "loss counts as that cap; 'div.' counts runs whose final loss was not finite).",
        "`oracle` is the best fixed multiplier per base LR in hindsight (lowest mean final "
        "validation loss over seeds); `fixed_best_global` is the single multiplier that is "
        "best on average over all base LRs. Regret = final validation loss minus the "
        "oracle's on the same seed.",
        "",
        "Protocol for the robust preset's safety rules (no growth once the training loss is "
        "below `growth_fit_fraction` of its start or while it rises, the spike floor, eval "
        f"control): they were designed on these (task, optimizer) pairs with seeds "
        f"{DESIGN_SEEDS[0]}-{DESIGN_SEEDS[-1]}: "
        + ", ".join(f"`{t}` · `{o}`" for t, o in sorted(DESIGN_PAIRS))
        + ". Every other pair is held out (never run while designing), and "
        + _seed_protocol(options),
    ]
    return lines


def _on_design_seeds(options: SuiteOptions) -> bool:
    return bool(set(options.seed_range) & set(DESIGN_SEEDS))


def _seed_protocol(options: SuiteOptions) -> str:
    """Whether this report's seeds are held out from the design, in words."""
    seeds = options.seed_range
    named = f"this report's seeds ({seeds[0]}-{seeds[-1]})"
    if _on_design_seeds(options):
        return (
            f"{named} include the design seeds: it is a probe of the design, not a held-out "
            "measurement."
        )
    return f"{named} were used for no pair during the design."


def main(options: SuiteOptions, command: Sequence[str]) -> Path:
    """Run the suite and write the report and figures; returns the report's path."""
    start = time.perf_counter()
    results = run_suite(options)
    boards, multipliers = results.boards, results.multipliers
    elapsed = time.perf_counter() - start
    labels = {name: opt.label for name, opt in INNER_OPTIMIZERS.items()}
    options.figures.mkdir(parents=True, exist_ok=True)
    figures = [
        (
            "Final validation loss against the mis-set factor of the base LR "
            "(mean over seeds; black: plain training, dashed: oracle).",
            options.figures / "quality_final_val.png",
        )
    ]
    plot_final_val(boards, labels, figures[0][1])
    for arm, traces in multipliers.items():
        figures.append(
            (
                f"The LR multiplier `{arm}` used in the second half of "
                "training (geometric mean; dots: seeds) against the oracle's multiplier.",
                options.figures / MULTIPLIER_FIGURES[arm],
            )
        )
        plot_multipliers(
            [b for b in boards if (b.task, b.optimizer) in traces],
            traces,
            arm,
            labels,
            figures[-1][1],
        )
    title = "Quality benchmark: what AEES is worth against fixed LRs and LR-free peers"
    if _on_design_seeds(options):
        title = "Quality probe on the design seeds: variants of the robust preset against fixed LRs"
    header = [
        f"# {title}",
        "",
        f"Command: `{shlex.join(command)}` (from the repository root)",
        f"Machine: {_machine()}",
        f"Date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC. "
        f"Training all populations took {results.training_seconds / 60:.1f} min "
        f"(compilation included); this command ran {elapsed / 60:.1f} min"
        + (", loading cached traces where they matched" if options.reuse else "")
        + ".",
    ]
    write_report(
        options.report,
        boards,
        labels=labels,
        header=header,
        method=_method(options),
        figures=figures,
    )
    print(f"quality report: {options.report}", file=sys.stderr)
    return options.report
