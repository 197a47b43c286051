"""The standard AEES figure, drawn from any logs dict (optax or torch adapter).

Matplotlib is an optional dependency (the ``notebooks`` extra), so it is
imported only when a figure is actually drawn: importing this module never
requires it.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure

Curve = tuple[Sequence[float], Sequence[float]]


def _episode_steps(logs: Mapping[str, Sequence[Any]]) -> list[float]:
    """Where each episode starts, so every panel shares the step axis."""
    return [float(s) for s in logs["episode_start_steps"]]


def _step_edges(logs: Mapping[str, Sequence[Any]]) -> list[float]:
    """Start of every episode plus the end of the last, for step plots."""
    starts = _episode_steps(logs)
    return [*starts, float(logs["episode_end_steps"][-1]) + 1.0] if starts else []


def plot_logs(
    logs: Mapping[str, Sequence[Any]],
    *,
    curves: Mapping[str, Curve] | None = None,
    title: str | None = None,
    path: str | Path | None = None,
) -> Figure:
    """Draw the arm chosen, the reward and the loss of every episode.

    Args:
      logs: the dict returned by ``get_logs`` of either adapter (the published
        log keys, one list entry per closed episode).
      curves: extra loss curves for the loss panel, ``{label: (steps,
        values)}``; for example the training and validation loss of AEES and
        of baselines.
      title: the figure's title.
      path: if given, the figure is also written there (PNG by extension).

    Returns:
      The matplotlib figure, with three panels sharing the step axis: the LR
      multiplier (and noise std, when more than one was available) in force,
      the clipped reward of each episode, and the losses.

    Example:
      >>> fig = plot_logs(get_logs(opt_state), path="aees.png")  # doctest: +SKIP
    """
    import matplotlib.pyplot as plt

    fig, (arm_ax, reward_ax, loss_ax) = plt.subplots(
        3, 1, figsize=(8.0, 8.0), sharex=True, constrained_layout=True
    )
    edges = _step_edges(logs)
    if edges:
        multipliers = [float(v) for v in logs["selected_lr_values"]]
        arm_ax.stairs(multipliers, edges, color="tab:blue", label="LR multiplier")
        arm_ax.set_yscale("log", base=2)
        noise = [float(v) for v in logs["selected_noise_values"]]
        if len(set(noise)) > 1:
            noise_ax = arm_ax.twinx()
            noise_ax.stairs(noise, edges, color="tab:orange", alpha=0.7, label="noise std")
            noise_ax.set_ylabel("noise std", color="tab:orange")
        rewards = [float(r) for r in logs["episode_rewards"]]
        reward_ax.bar(
            _episode_steps(logs),
            rewards,
            width=[b - a for a, b in itertools.pairwise(edges)],
            align="edge",
            color=["tab:green" if r >= 0 else "tab:red" for r in rewards],
        )
        ends = [float(s) for s in logs["episode_end_steps"]]
        loss_ax.plot(ends, logs["episode_ema_loss_ends"], "k.-", label="AEES episode EMA loss")
    arm_ax.set_ylabel("LR multiplier")
    arm_ax.set_title("arm chosen per episode")
    reward_ax.axhline(0.0, color="grey", linewidth=0.8)
    reward_ax.set_ylabel("reward (clipped)")
    reward_ax.set_title("reward per episode")
    for label, (steps, values) in (curves or {}).items():
        loss_ax.plot(steps, values, label=label)
    loss_ax.set_yscale("log")
    loss_ax.set_xlabel("step")
    loss_ax.set_ylabel("loss")
    loss_ax.set_title("loss")
    loss_ax.legend(fontsize="small")
    if title:
        fig.suptitle(title)
    if path is not None:
        fig.savefig(path, dpi=110)
    return fig
