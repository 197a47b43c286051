"""Writing the quality report: markdown tables, generated findings and figures.

Every sentence with a number in it is computed from the scoreboards here, so
the report always says what the latest run measured, whichever way it went.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from quality.arms import FIXED_PREFIX
from quality.metrics import GLOBAL_FIXED, ORACLE, PLAIN, Scoreboard, relative_to_plain

# A difference of mean final validation loss smaller than this (relative) is
# reported as a tie: with 5 seeds, smaller gaps are within the seed spread.
TIE_TOLERANCE = 0.02


def _cell(values: np.ndarray) -> str:
    return f"{values.mean():.3f} ± {values.std():.3f}"


def _factor(mis_set: float) -> str:
    return f"×{mis_set:.3g}"


def _metric_table(board: Scoreboard, metric: np.ndarray, arms: Sequence[str]) -> list[str]:
    header = "| arm | " + " | ".join(_factor(f) for f in board.mis_set) + " |"
    lines = [header, "|---|" + "---:|" * len(board.mis_set)]
    for arm in arms:
        row = metric[board.row(arm)]
        cells = []
        for lr in range(len(board.base_lrs)):
            text = _cell(row[lr])
            diverged = int(board.diverged[board.row(arm), lr].sum())
            cells.append(f"{text} ({diverged} div.)" if diverged else text)
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    return lines


def _board_section(board: Scoreboard, optimizer_label: str) -> list[str]:
    lrs = ", ".join(f"{lr:.3g}" for lr in board.base_lrs)
    oracle = ", ".join(name.removeprefix("fixed_") for name in board.oracle_choice)
    arms = board.arms
    lines = [
        f"### {board.task} · {optimizer_label}",
        "",
        f"Base LRs {lrs} (columns: factor against the nominal LR). "
        f"Oracle multiplier per base LR: {oracle}; best single multiplier for all base LRs: "
        f"{board.global_choice.removeprefix('fixed_')}.",
        "",
        "Final validation loss (mean ± std over seeds):",
        "",
        *_metric_table(board, board.final_val, arms),
        "",
        "Regret against the oracle (final validation loss minus the oracle's, paired by seed):",
        "",
        *_metric_table(board, board.regret, [a for a in arms if a != ORACLE]),
        "",
        "Best validation loss over training:",
        "",
        *_metric_table(board, board.best_val, arms),
        "",
        "Training-loss AUC (mean minibatch loss over all steps):",
        "",
        *_metric_table(board, board.train_auc, arms),
        "",
    ]
    return lines


def _summary_table(boards: Sequence[Scoreboard], labels: dict[str, str]) -> list[str]:
    columns = [f"{b.task} · {labels[b.optimizer]}" for b in boards]
    lines = [
        "| arm | " + " | ".join(columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    for arm in boards[0].arms:
        if arm == ORACLE:
            continue
        cells = []
        for board in boards:
            regret, plain = board.mean_regret(arm), board.mean_regret(PLAIN)
            ratio = f" ({regret / plain:.2f}x)" if plain > 0 else ""
            cells.append(f"{regret:.4f}{ratio}")
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    return lines


def _verdicts(boards: Sequence[Scoreboard], arm: str) -> dict[str, list[float]]:
    """Ratios to plain training per base-LR side ("low", "nominal", "high")."""
    sides: dict[str, list[float]] = {"low": [], "nominal": [], "high": []}
    for board in boards:
        for factor, ratio in zip(board.mis_set, relative_to_plain(board, arm), strict=True):
            side = "low" if factor < 0.99 else "high" if factor > 1.01 else "nominal"
            sides[side].append(float(ratio))
    return sides


def _count_line(ratios: Sequence[float]) -> str:
    ratios_array = np.asarray(ratios)
    better = int((ratios_array < 1 - TIE_TOLERANCE).sum())
    worse = int((ratios_array > 1 + TIE_TOLERANCE).sum())
    tied = len(ratios_array) - better - worse
    geo = float(np.exp(np.log(ratios_array).mean()))
    return (
        f"better in {better}, tied in {tied}, worse in {worse} of {len(ratios_array)} "
        f"(geometric-mean ratio {geo:.2f}, range {ratios_array.min():.2f}-{ratios_array.max():.2f})"
    )


def findings(boards: Sequence[Scoreboard], labels: dict[str, str]) -> list[str]:
    """The closing summary: where each controller helps and where it does not, in numbers."""
    lines = [
        "Ratios are mean final validation loss of the arm over that of plain training "
        f"(multiplier 1 at the same base LR); within ±{TIE_TOLERANCE:.0%} counts as a tie. "
        "Cells are (task, optimizer, base LR) combinations.",
        "",
    ]
    arms = [a for a in boards[0].arms if not a.startswith(FIXED_PREFIX) and a != PLAIN]
    for arm in arms:
        sides = _verdicts(boards, arm)
        parts = [f"LR too low: {_count_line(sides['low'])}"]
        parts.append(f"LR nominal: {_count_line(sides['nominal'])}")
        parts.append(f"LR too high: {_count_line(sides['high'])}")
        regret_ratios = [
            board.mean_regret(arm) / board.mean_regret(PLAIN)
            for board in boards
            if board.mean_regret(PLAIN) > 0
        ]
        parts.append(
            "mean regret against the oracle relative to plain training, per task and optimizer: "
            + ", ".join(f"{r:.2f}x" for r in regret_ratios)
        )
        lines.append(f"- **{arm}** vs plain: " + "; ".join(parts) + ".")
    for adaptive, random in (
        ("aees_reference", "aees_reference_random"),
        ("aees_wide", "aees_wide_random"),
    ):
        if adaptive in boards[0].arms and random in boards[0].arms:
            lines.append(_bandit_vs_chance(boards, adaptive, random, labels))
    return lines


def _bandit_vs_chance(
    boards: Sequence[Scoreboard], adaptive: str, random: str, labels: dict[str, str]
) -> str:
    ratios = []
    for board in boards:
        final = board.final_val.mean(axis=-1)
        ratios.extend(final[board.row(adaptive)] / final[board.row(random)])
    per_board = ", ".join(
        f"{b.task}/{labels[b.optimizer]} {b.mean_regret(adaptive):.4f} vs {b.mean_regret(random):.4f}"
        for b in boards
    )
    return (
        f"- **Bandit vs chance** ({adaptive} against {random}, same candidates): "
        f"{_count_line(ratios)}. Mean regret, adaptive vs random: {per_board}."
    )


def plot_final_val(boards: Sequence[Scoreboard], labels: dict[str, str], path: Path) -> None:
    """Final validation loss against the mis-set factor, one panel per task and optimizer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted({b.task for b in boards}, key=[b.task for b in boards].index)
    optimizers = sorted({b.optimizer for b in boards}, key=[b.optimizer for b in boards].index)
    fig, axes = plt.subplots(
        len(tasks),
        len(optimizers),
        figsize=(5.5 * len(optimizers), 3.6 * len(tasks)),
        squeeze=False,
        constrained_layout=True,
    )
    shown = [a for a in boards[0].arms if not a.startswith(FIXED_PREFIX) or a == PLAIN]
    shown = [a for a in shown if a != GLOBAL_FIXED]
    for board in boards:
        ax = axes[tasks.index(board.task), optimizers.index(board.optimizer)]
        final = board.final_val.mean(axis=-1)
        for arm in shown:
            style = {"linewidth": 2.5, "color": "black"} if arm in (PLAIN, ORACLE) else {}
            if arm == ORACLE:
                style["linestyle"] = "--"
            ax.plot(board.mis_set, final[board.row(arm)], marker="o", label=arm, **style)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(f"{board.task} · {labels[board.optimizer]}")
        ax.set_xlabel("base LR / nominal LR")
        ax.set_ylabel("final val loss (mean over seeds)")
    axes[0, -1].legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_multipliers(
    boards: Sequence[Scoreboard],
    multipliers: dict[tuple[str, str], np.ndarray],
    arm: str,
    labels: dict[str, str],
    path: Path,
) -> None:
    """The LR multiplier ``arm`` used over training (mean over seeds), one line per base LR."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        1, len(boards), figsize=(3.2 * len(boards), 3.2), squeeze=False, constrained_layout=True
    )
    for ax, board in zip(axes[0], boards, strict=True):
        trace = multipliers[(board.task, board.optimizer)]
        colors = plt.get_cmap("viridis")(np.linspace(0, 1, len(board.mis_set)))
        for lr, color in enumerate(colors):
            ax.plot(
                np.exp(np.log(trace[lr]).mean(axis=0)),
                color=color,
                label=_factor(board.mis_set[lr]),
            )
        ax.set_yscale("log", base=2)
        ax.set_title(f"{board.task}\n{labels[board.optimizer]}", fontsize="small")
        ax.set_xlabel("step")
    axes[0, 0].set_ylabel(f"{arm} multiplier (geo. mean)")
    axes[0, -1].legend(fontsize="x-small", title="base LR", loc="upper left", bbox_to_anchor=(1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_report(
    path: Path,
    boards: Sequence[Scoreboard],
    *,
    labels: dict[str, str],
    header: Sequence[str],
    method: Sequence[str],
    figures: Sequence[tuple[str, Path]],
) -> None:
    """Write the markdown report: header, findings, summary, per-board tables, figures."""
    lines = [*header, "", "## Findings", "", *findings(boards, labels), ""]
    lines += ["## Method", "", *method, ""]
    lines += [
        "## Mean regret against the oracle, averaged over base LRs and seeds",
        "",
        "In parentheses: the ratio to plain training's regret (multiplier 1 at the given base LR).",
        "",
        *_summary_table(boards, labels),
        "",
        "## Figures",
        "",
    ]
    for caption, figure in figures:
        lines += [f"![{caption}]({figure.relative_to(path.parent).as_posix()})", "", caption, ""]
    lines += ["## Per task and optimizer", ""]
    for board in boards:
        lines += _board_section(board, labels[board.optimizer])
    path.write_text("\n".join(lines).rstrip() + "\n")
