"""pulseopt_core: the pure-functional AEES core shared by every adapter.

It owns all AEES math (configuration, state, reward, bandits, context buckets,
episode bookkeeping, logs) as pure functions over immutable state pytrees. It
imports no framework but JAX.
"""

from pulseopt_core.bandit import (
    controller_select,
    controller_update,
    float_dtype,
    ucb_scores,
    ucb_select,
    ucb_update,
)
from pulseopt_core.config import (
    PHASES,
    PRESETS,
    TRENDS,
    AEESConfig,
    apply_preset,
    require_update_norms,
)
from pulseopt_core.context import context_bucket, loss_trend, training_phase
from pulseopt_core.episode import (
    current_candidate,
    finalize,
    guard_check,
    init,
    make_key,
    noise_key,
    record_eval,
    record_step,
    restart_episode_at,
)
from pulseopt_core.knobs import (
    DYNAMIC_KNOBS,
    KNOBS,
    PRESET_KNOBS,
    STRUCTURAL_KNOBS,
    AdapterOptions,
    AEESKnobs,
    Knob,
    document,
    split_options,
)
from pulseopt_core.logs import CONTEXT_LOG_KEYS, LOG_KEYS, candidate_name, episode_logs
from pulseopt_core.reward import accumulate_loss, episode_reward, reward_from_statistics
from pulseopt_core.state import (
    AEESState,
    Candidate,
    ControllerState,
    EpisodeLog,
    GuardDecision,
    GuardState,
    OpenEpisode,
    RewardBreakdown,
    UCBStats,
)

__all__ = [
    "CONTEXT_LOG_KEYS",
    "DYNAMIC_KNOBS",
    "KNOBS",
    "LOG_KEYS",
    "PHASES",
    "PRESETS",
    "PRESET_KNOBS",
    "STRUCTURAL_KNOBS",
    "TRENDS",
    "AEESConfig",
    "AEESKnobs",
    "AEESState",
    "AdapterOptions",
    "Candidate",
    "ControllerState",
    "EpisodeLog",
    "GuardDecision",
    "GuardState",
    "Knob",
    "OpenEpisode",
    "RewardBreakdown",
    "UCBStats",
    "accumulate_loss",
    "apply_preset",
    "candidate_name",
    "context_bucket",
    "controller_select",
    "controller_update",
    "current_candidate",
    "document",
    "episode_logs",
    "episode_reward",
    "finalize",
    "float_dtype",
    "guard_check",
    "init",
    "loss_trend",
    "make_key",
    "noise_key",
    "record_eval",
    "record_step",
    "require_update_norms",
    "restart_episode_at",
    "reward_from_statistics",
    "split_options",
    "training_phase",
    "ucb_scores",
    "ucb_select",
    "ucb_update",
]
