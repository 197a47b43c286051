"""Whole trajectories equal the reference episode manager fed the same losses."""

from __future__ import annotations

import itertools
import math
import zlib

import numpy as np
import pytest

import pulseopt_core as core
from tests.core.conftest import run_core, trending_losses
from tests.core.reference import ReplayController, lowest_tie_break, reference_manager

EPISODE_LENGTH = 4
EPISODES = 32
TRAILING_STEPS = 2
STEPS = EPISODE_LENGTH * EPISODES + TRAILING_STEPS

CANDIDATES = {
    "one_lr_one_noise": ((1.0,), (0.0,)),
    "several_lr_one_noise": ((0.5, 1.0, 2.0), (0.0,)),
    "one_lr_several_noise": ((1.0,), (0.0, 0.005, 0.01)),
    "several_lr_several_noise": ((0.5, 1.0, 2.0), (0.0, 0.01)),
}

CASES = [
    pytest.param(
        control, structured, context, shape, id=f"{control}-{structured}-{context}-{shape}"
    )
    for control, structured, context, shape in itertools.product(
        core.config.CONTROL_MODES,
        core.config.STRUCTURED_CONTROL_MODES,
        core.config.CONTEXT_MODES,
        CANDIDATES,
    )
]


def _config(control: str, structured: str, context: str, shape: str) -> core.AEESConfig:
    lrs, noises = CANDIDATES[shape]
    return core.AEESConfig(
        lr_candidates=lrs,
        noise_candidates=noises,
        episode_length=EPISODE_LENGTH,
        control_mode=control,
        structured_control_mode=structured,
        context_mode=context,
        total_training_steps=STEPS if context == "trend_phase" else None,
        context_trend_epsilon=1e-2,
        seed=7,
        tie_break="lowest",
    )


def _replay_random_choices(manager, config: core.AEESConfig, logs: dict) -> None:
    """Random mode cannot share an RNG with the reference: feed it our arms instead."""
    lr_arms, noise_arms = logs["selected_lr_indices"], logs["selected_noise_indices"]
    if config.num_lr_arms > 1:
        manager._lr_controller = ReplayController(lr_arms)
    if config.num_noise_arms > 1:
        if config.num_noise_controllers == 1:
            manager._noise_controller = ReplayController(noise_arms)
        else:
            manager._noise_controller = [
                ReplayController(
                    [n for lr, n in zip(lr_arms, noise_arms, strict=True) if lr == owner]
                )
                for owner in range(config.num_lr_arms)
            ]


def _reference_logs(config: core.AEESConfig, losses: np.ndarray, norms: np.ndarray, ours: dict):
    manager = reference_manager(config)
    if config.control_mode == "random":
        _replay_random_choices(manager, config, ours)
    for step, (loss, norm) in enumerate(zip(losses, norms, strict=True)):
        manager.on_step_start(step)
        manager.on_step_end(float(loss), update_norm=float(norm))
    manager.finalize()
    return manager.get_logs()


def _assert_logs_match(ours: dict, theirs: dict, rel: float) -> None:
    assert ours.keys() == theirs.keys()
    for key, expected in theirs.items():
        actual = ours[key]
        assert len(actual) == len(expected), key
        for a, e in zip(actual, expected, strict=True):
            if isinstance(e, float):
                assert math.isclose(a, e, rel_tol=rel, abs_tol=rel), (key, a, e)
            else:
                assert a == e, (key, actual, expected)


@pytest.mark.parametrize(("control", "structured", "context", "shape"), CASES)
def test_trajectory_matches_reference(x64, control, structured, context, shape) -> None:
    config = _config(control, structured, context, shape)
    rng = np.random.default_rng(zlib.crc32(f"{control}{structured}{context}{shape}".encode()))
    losses = trending_losses(rng, STEPS, segment=3 * EPISODE_LENGTH)
    norms = rng.uniform(0.01, 1.0, size=STEPS)

    ours = core.episode_logs(config, run_core(config, losses, norms))
    with lowest_tie_break():
        theirs = _reference_logs(config, losses, norms, ours)

    assert len(ours["episode_rewards"]) == EPISODES + 1
    _assert_logs_match(ours, theirs, rel=1e-12)


@pytest.mark.parametrize("shape", ["several_lr_one_noise", "several_lr_several_noise"])
def test_float32_trajectory_matches_reference_decisions(shape) -> None:
    config = _config("adaptive", "conditional", "trend_phase", shape)
    rng = np.random.default_rng(3)
    losses = trending_losses(rng, STEPS, segment=3 * EPISODE_LENGTH).astype(np.float32)
    norms = rng.uniform(0.01, 1.0, size=STEPS).astype(np.float32)

    ours = core.episode_logs(config, run_core(config, losses, norms))
    with lowest_tie_break():
        theirs = _reference_logs(config, losses, norms, ours)

    _assert_logs_match(ours, theirs, rel=1e-5)
