"""Turning the in-state episode log into the published dict of Python lists.

This is host-side code (it reads arrays back); call it outside `jax.jit`.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import numpy as np

from pulseopt_core.config import PHASES, TRENDS, AEESConfig
from pulseopt_core.state import LOG_FLOAT_COLUMNS, LOG_INT_COLUMNS, AEESState, EpisodeLog

LOG_KEYS = (
    "selected_lr_indices",
    "selected_noise_indices",
    "selected_lr_values",
    "selected_noise_values",
    "selected_combined_names",
    "episode_rewards",
    "episode_start_steps",
    "episode_end_steps",
    "episode_start_losses",
    "episode_end_losses",
    "episode_ema_loss_starts",
    "episode_ema_loss_ends",
    "reward_base",
    "reward_instability",
    "reward_penalty",
    "reward_final_unclipped",
    "reward_final_clipped",
    "mean_update_norms",
)
CONTEXT_LOG_KEYS = (
    "context_bucket_ids",
    "context_bucket_names",
    "context_trends",
    "context_phases",
)

# Published key -> the log column it lists.
_FLOAT_FIELDS = {
    "episode_rewards": "reward",
    "episode_start_losses": "start_loss",
    "episode_end_losses": "end_loss",
    "episode_ema_loss_starts": "ema_loss_start",
    "episode_ema_loss_ends": "ema_loss_end",
    "reward_base": "reward_base",
    "reward_instability": "reward_instability",
    "reward_penalty": "reward_penalty",
    "reward_final_unclipped": "reward_unclipped",
    "reward_final_clipped": "reward",
}


def _format_number(value: float) -> str:
    return f"{value:.12g}".replace("-", "m").replace(".", "p")


def candidate_name(lr_multiplier: float, noise_std: float) -> str:
    """The combined arm name, e.g. ``candidate_name(0.5, 0.005) == "lr0p5_n0p005"``."""
    return f"lr{_format_number(lr_multiplier)}_n{_format_number(noise_std)}"


def empty_logs(config: AEESConfig) -> dict[str, list[Any]]:
    """The logs dict with every key and no episodes."""
    keys = LOG_KEYS + (CONTEXT_LOG_KEYS if config.context_mode != "none" else ())
    return {key: [] for key in keys}


def log_entries(config: AEESConfig, log: EpisodeLog, slots: np.ndarray) -> dict[str, list[Any]]:
    """Logs for the given ring-buffer slots of ``log``, in the order of ``slots``."""
    host = EpisodeLog(*(np.asarray(table)[slots] for table in jax.device_get(log)))
    rows = {name: host.column(name) for name in LOG_INT_COLUMNS + LOG_FLOAT_COLUMNS}
    out = empty_logs(config)
    lr_indices = [int(i) for i in rows["lr_index"]]
    noise_indices = [int(i) for i in rows["noise_index"]]
    out["selected_lr_indices"] = lr_indices
    out["selected_noise_indices"] = noise_indices
    out["selected_lr_values"] = [config.lr_candidates[i] for i in lr_indices]
    out["selected_noise_values"] = [config.noise_candidates[i] for i in noise_indices]
    out["selected_combined_names"] = [
        candidate_name(config.lr_candidates[i], config.noise_candidates[j])
        for i, j in zip(lr_indices, noise_indices, strict=True)
    ]
    out["episode_start_steps"] = [int(s) for s in rows["start_step"]]
    out["episode_end_steps"] = [int(s) for s in rows["end_step"]]
    for key, field in _FLOAT_FIELDS.items():
        out[key] = [float(v) for v in rows[field]]
    out["mean_update_norms"] = [
        None if math.isnan(float(v)) else float(v) for v in rows["mean_update_norm"]
    ]
    if config.context_mode != "none":
        names = config.bucket_names
        out["context_bucket_ids"] = [names[int(b)] for b in rows["context_bucket"]]
        out["context_bucket_names"] = list(out["context_bucket_ids"])
        out["context_trends"] = [TRENDS[int(t)] for t in rows["context_trend"]]
        out["context_phases"] = [
            PHASES[int(p)] if int(p) >= 0 else None for p in rows["context_phase"]
        ]
    return out


def episode_logs(config: AEESConfig, state: AEESState) -> dict[str, list[Any]]:
    """The last ``min(episodes_closed, log_capacity)`` closed episodes, oldest first.

    Returns a dict of Python lists with the published keys (the context keys
    only with a context mode). Unscored episodes show NaN rewards; episodes
    without update norms show ``None`` in ``mean_update_norms``.
    """
    closed = int(jax.device_get(state.episodes_closed))
    capacity = config.log_capacity
    first = max(0, closed - capacity)
    slots = np.arange(first, closed) % capacity
    return log_entries(config, state.episode_log, slots)
