"""control_mode="random": valid, uniform, reproducible arms."""

from __future__ import annotations

import numpy as np
from scipy import stats

import pulseopt_core as core
from tests.core.conftest import run_core

EPISODES = 600


def _arms(seed: int) -> tuple[list[int], list[int]]:
    config = core.AEESConfig(
        lr_candidates=(0.25, 0.5, 1.0, 2.0, 4.0),
        noise_candidates=(0.0, 0.01, 0.02),
        episode_length=1,
        control_mode="random",
        seed=seed,
    )
    losses = np.linspace(2.0, 1.0, EPISODES)
    logs = core.episode_logs(config, run_core(config, losses, finalize=False))
    return logs["selected_lr_indices"], logs["selected_noise_indices"]


def test_random_mode_picks_only_valid_arms() -> None:
    lr_arms, noise_arms = _arms(seed=1)
    assert set(lr_arms) <= set(range(5))
    assert set(noise_arms) <= set(range(3))


def test_random_mode_is_close_to_uniform() -> None:
    lr_arms, noise_arms = _arms(seed=2)
    for arms, count in ((lr_arms, 5), (noise_arms, 3)):
        observed = np.bincount(arms, minlength=count)
        assert stats.chisquare(observed).pvalue > 1e-3


def test_random_mode_is_reproducible_by_seed() -> None:
    assert _arms(seed=3) == _arms(seed=3)
    assert _arms(seed=3) != _arms(seed=4)
