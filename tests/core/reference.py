"""Helpers that drive the reference package the same way as the core (tests only)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import pulseopt
import pulseopt.controller
import torch

from pulseopt_core import AEESConfig


@contextlib.contextmanager
def lowest_tie_break() -> Iterator[None]:
    """Make every reference UCB controller break ties towards the lowest arm."""
    original = pulseopt.controller.DiscountedUCBController._break_tie
    pulseopt.controller.DiscountedUCBController._break_tie = lambda self, candidates: min(
        candidates
    )
    try:
        yield
    finally:
        pulseopt.controller.DiscountedUCBController._break_tie = original


class ReplayController:
    """A reference-compatible controller that replays a fixed sequence of arms."""

    def __init__(self, arms: Sequence[int]) -> None:
        self._arms = list(arms)

    def select_mode(self) -> int:
        return self._arms.pop(0)

    def update(self, mode_id: int, reward: float) -> None:
        del mode_id, reward

    def get_state(self) -> dict[str, object]:
        return {}


def reference_manager(config: AEESConfig) -> Any:
    """The reference's episode manager, built exactly as its AEES wrapper builds it."""
    param = torch.zeros(1, requires_grad=True)
    wrapper = pulseopt.AEES(
        torch.optim.SGD([param], lr=0.1),
        lr_candidates=list(config.lr_candidates),
        noise_candidates=list(config.noise_candidates),
        episode_length=config.episode_length,
        control_mode=config.control_mode,
        structured_control_mode=config.structured_control_mode,
        context_mode=config.context_mode,
        context_trend_window=config.context_trend_window,
        context_trend_epsilon=config.context_trend_epsilon,
        total_training_steps=config.total_training_steps,
        reward_instability_lambda=config.reward_instability_lambda,
        reward_epsilon=config.reward_epsilon,
        reward_clip_min=config.reward_clip_min,
        reward_clip_max=config.reward_clip_max,
        ema_alpha=config.ema_alpha,
        seed=config.seed,
    )
    return wrapper.episode_manager
