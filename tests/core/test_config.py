"""AEESConfig: frozen, hashable, and strict about every knob."""

from __future__ import annotations

import dataclasses
import warnings

import pytest

import pulseopt_core as core


def test_config_is_hashable_and_frozen() -> None:
    config = core.AEESConfig(lr_candidates=[0.5, 1.0])
    assert hash(config) == hash(core.AEESConfig(lr_candidates=(0.5, 1.0)))
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.episode_length = 3  # type: ignore[misc]


def test_candidates_become_tuples_of_floats() -> None:
    config = core.AEESConfig(lr_candidates=[1, 2], noise_candidates=[0])
    assert config.lr_candidates == (1.0, 2.0)
    assert config.noise_candidates == (0.0,)


@pytest.mark.parametrize(
    ("knob", "value"),
    [
        ("lr_candidates", ()),
        ("lr_candidates", (1.0, 0.0)),
        ("lr_candidates", (-1.0,)),
        ("lr_candidates", "1.0"),
        ("noise_candidates", ()),
        ("noise_candidates", (-0.1,)),
        ("episode_length", 0),
        ("episode_length", 2.5),
        ("control_mode", "greedy"),
        ("structured_control_mode", "joint"),
        ("context_mode", "phase"),
        ("context_trend_window", 0),
        ("context_trend_epsilon", -1e-3),
        ("reward_instability_lambda", -0.1),
        ("reward_epsilon", 0.0),
        ("ema_alpha", 0.0),
        ("ema_alpha", 1.5),
        ("exploration_coef", -1.0),
        ("discount", 0.0),
        ("discount", 1.01),
        ("warmup_rounds", -1),
        ("seed", 1.5),
        ("tie_break", "highest"),
        ("log_capacity", 0),
        ("multiplier_mode", "additive"),
        ("min_lr_scale", 0.0),
        ("min_lr_scale", 2.0),
        ("max_lr_scale", 0.5),
        ("guard", 1),
        ("guard_spike_ratio", 1.0),
        ("guard_fast_alpha", 0.0),
        ("guard_slow_alpha", 0.5),
        ("guard_backoff", 1.0),
        ("guard_max_consecutive", 0),
        ("guard_warmup_steps", -1),
    ],
)
def test_invalid_knob_raises_value_error_naming_it(knob: str, value: object) -> None:
    with pytest.raises(ValueError, match=knob):
        core.AEESConfig(**{knob: value})


def test_reward_clip_min_above_max_raises() -> None:
    with pytest.raises(ValueError, match="reward_clip_min"):
        core.AEESConfig(reward_clip_min=0.5, reward_clip_max=0.1)


@pytest.mark.parametrize("total", [None, 0, -5])
def test_trend_phase_requires_positive_total_training_steps(total) -> None:
    with pytest.raises(ValueError, match="total_training_steps"):
        core.AEESConfig(context_mode="trend_phase", total_training_steps=total)


def test_total_training_steps_without_trend_phase_warns_and_is_ignored() -> None:
    with pytest.warns(UserWarning, match="total_training_steps"):
        config = core.AEESConfig(context_mode="trend", total_training_steps=100)
    assert config.total_training_steps is None


def test_trend_phase_with_total_training_steps_does_not_warn() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        core.AEESConfig(context_mode="trend_phase", total_training_steps=100)


def test_noise_controllers_follow_the_structured_mode() -> None:
    lrs = (0.5, 1.0, 2.0)
    assert core.AEESConfig(lr_candidates=lrs).num_noise_controllers == 1
    conditional = core.AEESConfig(lr_candidates=lrs, structured_control_mode="conditional")
    assert conditional.num_noise_controllers == 3


def test_bucket_names_are_ordered_phase_major() -> None:
    config = core.AEESConfig(context_mode="trend_phase", total_training_steps=9)
    assert config.bucket_names[:3] == ("early_improving", "early_stable", "early_worsening")
    assert config.num_buckets == 9


def test_candidate_names_use_the_published_format() -> None:
    assert core.candidate_name(0.5, 0.005) == "lr0p5_n0p005"
    assert core.candidate_name(1.0, 0.0) == "lr1_n0"
    assert core.candidate_name(1e-20, 0.0) == "lr1em20_n0"


def test_the_robust_preset_turns_on_the_guard_and_keeps_the_arms() -> None:
    config = core.apply_preset(core.AEESConfig(lr_candidates=(0.5, 1.0)), "robust")
    assert config.guard
    assert config.lr_candidates == (0.5, 1.0)


def test_preset_knobs_fill_only_what_is_not_given() -> None:
    knobs = core.preset_knobs("robust", {"growth": True, "max_lr_scale": 8.0})
    assert knobs == {"guard": True, "growth": True, "max_lr_scale": 8.0}
    # growth=True alone is invalid; with the preset's guard filled in it is not.
    with pytest.raises(ValueError, match="growth=True needs guard=True"):
        core.AEESConfig(growth=True)
    assert core.AEESConfig(**knobs).growth
    assert core.preset_knobs(None, {"growth": False}) == {"growth": False}
    with pytest.raises(ValueError, match="preset"):
        core.preset_knobs("fast", {})


def test_no_preset_changes_nothing() -> None:
    config = core.AEESConfig(episode_length=7)
    assert core.apply_preset(config, None) is config


def test_an_unknown_preset_raises_naming_it() -> None:
    with pytest.raises(ValueError, match="preset"):
        core.apply_preset(core.AEESConfig(), "fast")
