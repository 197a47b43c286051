"""The AEES configuration: one frozen, hashable object, validated on construction.

`AEESConfig` is hashable so it can be a static argument of `jax.jit`; every
shape in the AEES state is a function of it.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import warnings
from collections.abc import Collection, Sequence

CONTROL_MODES = ("adaptive", "random")
STRUCTURED_CONTROL_MODES = ("independent", "conditional")
CONTEXT_MODES = ("none", "trend", "trend_phase")
TIE_BREAKS = ("random", "lowest")
MULTIPLIER_MODES = ("absolute", "relative")

# Named bundles of knobs. "robust" turns on the spike guard (with its tuned
# defaults) and growth of the LR scale while updates keep their direction, up to
# 64x; the arms stay as given (by default a single one, so no bandit
# exploration, which did not pay when measured).
PRESETS: dict[str, dict[str, object]] = {
    "reference": {},
    "robust": {"guard": True, "growth": True, "max_lr_scale": 64.0},
}

TRENDS = ("improving", "stable", "worsening")
PHASES = ("early", "middle", "late")


def _candidates(name: str, values: object, *, allow_zero: bool) -> tuple[float, ...]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise ValueError(f"{name} must be a sequence of numbers, got {values!r}.")
    if len(values) == 0:
        raise ValueError(f"{name} must contain at least one value.")
    out = []
    for value in values:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise ValueError(f"{name} must contain only numbers, got {value!r}.")
        value = float(value)
        if not math.isfinite(value) or value < 0.0 or (value == 0.0 and not allow_zero):
            bound = "non-negative" if allow_zero else "positive"
            raise ValueError(f"{name} values must all be finite and {bound}, got {value!r}.")
        out.append(value)
    return tuple(out)


def _integer(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer, got {value!r}.")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}.")
    return int(value)


def _real(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a real number, got {value!r}.")
    value = float(value)
    if math.isnan(value):
        raise ValueError(f"{name} must not be NaN.")
    return value


def _choice(name: str, value: object, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {list(allowed)}, got {value!r}.")
    return str(value)


@dataclasses.dataclass(frozen=True)
class AEESConfig:
    """Every knob of AEES, validated eagerly.

    Attributes:
      lr_candidates: multipliers applied to the inner optimizer's step. A single
        candidate makes the LR axis a constant with no controller.
      noise_candidates: standard deviations of Gaussian noise added to the
        gradients. A single candidate makes the noise axis a constant.
      episode_length: steps per episode; the arms are frozen within an episode.
      control_mode: ``"adaptive"`` (discounted UCB) or ``"random"`` (a uniform arm
        per episode, the baseline a bandit must beat).
      structured_control_mode: ``"independent"`` (one noise controller) or
        ``"conditional"`` (one noise controller per LR arm).
      context_mode: ``"none"``, ``"trend"`` or ``"trend_phase"``: which coarse
        context bucket selects the controller statistics used in an episode.
      total_training_steps: the horizon that defines the phase in
        ``"trend_phase"`` mode (required there, ignored with a warning elsewhere).
      context_trend_window: how many recent episode-end losses define the trend.
      context_trend_epsilon: slope below which the trend counts as stable.
      reward_instability_lambda: weight of the loss-variance penalty.
      reward_epsilon: added inside the logarithms and the variance normaliser.
      reward_clip_min: lower clip of the reward.
      reward_clip_max: upper clip of the reward.
      ema_alpha: smoothing of the episode-local loss EMA, in (0, 1].
      exploration_coef: UCB exploration coefficient.
      discount: UCB discount per update, in (0, 1].
      warmup_rounds: times each arm is tried before UCB scores are used.
      seed: an int makes every decision and all noise reproducible; ``None``
        draws fresh entropy when the state is initialised.
      tie_break: ``"random"`` breaks ties between equally good arms at random;
        ``"lowest"`` picks the lowest index (deterministic comparisons).
      log_capacity: how many recent closed episodes the state keeps.
      multiplier_mode: ``"absolute"``: an LR arm is the multiplier itself;
        ``"relative"``: an LR arm multiplies a running scale at the start of
        each episode (moves such as x0.5 / x1 / x2 that compound), kept within
        ``[min_lr_scale, max_lr_scale]``.
      min_lr_scale: floor of the running LR scale (guard cuts and relative moves).
      max_lr_scale: ceiling of the running LR scale.
      guard: turn on the spike guard: when the fast EMA of the loss exceeds
        ``guard_spike_ratio`` times the slow EMA, or the loss is not finite, the
        adapter restores the snapshot taken at the last episode boundary and the
        running LR scale is multiplied by ``guard_backoff`` (cuts compound).
      guard_spike_ratio: fast/slow ratio that counts as a spike (> 1).
      guard_fast_alpha: smoothing of the fast loss EMA, in (0, 1].
      guard_slow_alpha: smoothing of the slow loss EMA, in (0, guard_fast_alpha).
      guard_backoff: factor applied to the LR scale on every rollback, in (0, 1).
      guard_max_consecutive: rollbacks allowed without a clean episode in
        between; past it the guard stands down until an episode closes cleanly.
      guard_warmup_steps: steps during which a spike is judged against the
        larger of the slow EMA and the starting loss (the slow EMA settles).
      guard_spike_floor: a spike must also exceed the reference by this
        fraction of the starting loss (>= 0), so the jumpy minibatch values of
        a near-zero training loss do not count as spikes.
      growth: let the LR scale grow while steps are too timid (needs ``guard``,
        whose snapshots it measures from, and the update norms). At every
        episode boundary the adapter reports how far the parameters moved since
        the last snapshot; the ratio of that distance to the path length (the
        sum of the update norms) is near 1 when successive updates keep their
        direction, the signature of a learning rate that is too small, and
        falls towards ``1/sqrt(steps)`` once updates are dominated by gradient
        noise or oscillation. After ``growth_patience`` consecutive episodes
        whose ratio exceeds ``growth_threshold`` the scale is multiplied by
        ``growth_factor``, up to ``max_lr_scale`` and never above the scale the
        last rollback cut to.
      growth_threshold: straightness ratio above which an episode counts as
        timid, in (0, 1).
      growth_factor: factor applied to the LR scale on growth (> 1).
      growth_patience: consecutive timid episodes needed before each growth.
      growth_fit_fraction: once the slow loss EMA falls below this fraction of
        the starting loss (a positive one), the run counts as fitted: nothing
        grows and a scale above 1 drops back to 1, in [0, 1).
      eval_patience: with ``guard``, evals in a row that are not a new best
        before the LR scale is cut by ``guard_backoff`` (a held-out loss is
        optional; adapters take it as ``eval_value`` / ``observe_eval``).
      eval_min_delta: relative improvement an eval needs to count as a new
        best, >= 0.
      restore_best: adapters keep a copy of the parameters at the best eval
        loss and restore it at ``finalize`` (one more copy of the parameters).
    """

    lr_candidates: tuple[float, ...] = (1.0,)
    noise_candidates: tuple[float, ...] = (0.0,)
    episode_length: int = 100
    control_mode: str = "adaptive"
    structured_control_mode: str = "independent"
    context_mode: str = "none"
    total_training_steps: int | None = None
    context_trend_window: int = 3
    context_trend_epsilon: float = 1e-3
    reward_instability_lambda: float = 0.1
    reward_epsilon: float = 1e-8
    reward_clip_min: float = -1.0
    reward_clip_max: float = 1.0
    ema_alpha: float = 0.1
    exploration_coef: float = 1.0
    discount: float = 0.95
    warmup_rounds: int = 1
    seed: int | None = None
    tie_break: str = "random"
    log_capacity: int = 1024
    multiplier_mode: str = "absolute"
    min_lr_scale: float = 1.0 / 64.0
    max_lr_scale: float = 1.0
    guard: bool = False
    guard_spike_ratio: float = 2.0
    guard_fast_alpha: float = 0.3
    guard_slow_alpha: float = 0.02
    guard_backoff: float = 0.5
    guard_max_consecutive: int = 3
    guard_warmup_steps: int = 20
    guard_spike_floor: float = 0.05
    growth: bool = False
    growth_threshold: float = 0.5
    growth_factor: float = 2.0
    growth_patience: int = 1
    growth_fit_fraction: float = 0.02
    eval_patience: int = 2
    eval_min_delta: float = 1e-3
    restore_best: bool = False

    def __post_init__(self) -> None:
        fields = {
            "control_mode": _choice("control_mode", self.control_mode, CONTROL_MODES),
            "context_mode": _choice("context_mode", self.context_mode, CONTEXT_MODES),
            "structured_control_mode": _choice(
                "structured_control_mode", self.structured_control_mode, STRUCTURED_CONTROL_MODES
            ),
            "tie_break": _choice("tie_break", self.tie_break, TIE_BREAKS),
            "lr_candidates": _candidates("lr_candidates", self.lr_candidates, allow_zero=False),
            "noise_candidates": _candidates(
                "noise_candidates", self.noise_candidates, allow_zero=True
            ),
            "episode_length": _integer("episode_length", self.episode_length, 1),
            "context_trend_window": _integer("context_trend_window", self.context_trend_window, 1),
            "warmup_rounds": _integer("warmup_rounds", self.warmup_rounds, 0),
            "log_capacity": _integer("log_capacity", self.log_capacity, 1),
            "multiplier_mode": _choice("multiplier_mode", self.multiplier_mode, MULTIPLIER_MODES),
            "guard_max_consecutive": _integer(
                "guard_max_consecutive", self.guard_max_consecutive, 1
            ),
            "guard_warmup_steps": _integer("guard_warmup_steps", self.guard_warmup_steps, 0),
            "growth_patience": _integer("growth_patience", self.growth_patience, 1),
            "eval_patience": _integer("eval_patience", self.eval_patience, 1),
        }
        for flag in ("guard", "growth", "restore_best"):
            if not isinstance(getattr(self, flag), bool):
                raise ValueError(f"{flag} must be a bool, got {getattr(self, flag)!r}.")
        if self.growth and not self.guard:
            raise ValueError("growth=True needs guard=True (growth measures from its snapshots).")
        reals = {
            name: _real(name, getattr(self, name))
            for name in (
                "context_trend_epsilon",
                "reward_instability_lambda",
                "reward_epsilon",
                "reward_clip_min",
                "reward_clip_max",
                "ema_alpha",
                "exploration_coef",
                "discount",
                "min_lr_scale",
                "max_lr_scale",
                "guard_spike_ratio",
                "guard_fast_alpha",
                "guard_slow_alpha",
                "guard_backoff",
                "growth_threshold",
                "growth_factor",
                "guard_spike_floor",
                "growth_fit_fraction",
                "eval_min_delta",
            )
        }
        if reals["context_trend_epsilon"] < 0.0:
            raise ValueError("context_trend_epsilon must be non-negative.")
        if reals["reward_epsilon"] <= 0.0:
            raise ValueError("reward_epsilon must be positive.")
        if reals["reward_instability_lambda"] < 0.0:
            raise ValueError("reward_instability_lambda must be non-negative.")
        if reals["reward_clip_min"] > reals["reward_clip_max"]:
            raise ValueError("reward_clip_min must be <= reward_clip_max.")
        if not 0.0 < reals["ema_alpha"] <= 1.0:
            raise ValueError("ema_alpha must be in the interval (0, 1].")
        if reals["exploration_coef"] < 0.0:
            raise ValueError("exploration_coef must be non-negative.")
        if not 0.0 < reals["discount"] <= 1.0:
            raise ValueError("discount must be in the interval (0, 1].")
        if not 0.0 < reals["min_lr_scale"] <= 1.0:
            raise ValueError("min_lr_scale must be in the interval (0, 1].")
        if not 1.0 <= reals["max_lr_scale"] < math.inf:
            raise ValueError("max_lr_scale must be finite and >= 1.")
        if not reals["guard_spike_ratio"] > 1.0:
            raise ValueError("guard_spike_ratio must be > 1.")
        if not 0.0 < reals["guard_fast_alpha"] <= 1.0:
            raise ValueError("guard_fast_alpha must be in the interval (0, 1].")
        if not 0.0 < reals["guard_slow_alpha"] < reals["guard_fast_alpha"]:
            raise ValueError("guard_slow_alpha must be in the interval (0, guard_fast_alpha).")
        if not 0.0 < reals["guard_backoff"] < 1.0:
            raise ValueError("guard_backoff must be in the interval (0, 1).")
        if not 0.0 < reals["growth_threshold"] < 1.0:
            raise ValueError("growth_threshold must be in the interval (0, 1).")
        if not 1.0 < reals["growth_factor"] < math.inf:
            raise ValueError("growth_factor must be finite and > 1.")
        if not 0.0 <= reals["guard_spike_floor"] < math.inf:
            raise ValueError("guard_spike_floor must be finite and >= 0.")
        if not 0.0 <= reals["growth_fit_fraction"] < 1.0:
            raise ValueError("growth_fit_fraction must be in the interval [0, 1).")
        if not 0.0 <= reals["eval_min_delta"] < 1.0:
            raise ValueError("eval_min_delta must be in the interval [0, 1).")
        fields.update(reals)

        total = self.total_training_steps
        if fields["context_mode"] == "trend_phase":
            if total is None:
                raise ValueError(
                    "total_training_steps is required when context_mode='trend_phase'."
                )
            fields["total_training_steps"] = _integer("total_training_steps", total, 1)
        elif total is not None:
            warnings.warn(
                "total_training_steps is only used when context_mode='trend_phase'; "
                f"it is ignored with context_mode={fields['context_mode']!r}.",
                UserWarning,
                stacklevel=3,
            )
            fields["total_training_steps"] = None

        if self.seed is not None:
            if isinstance(self.seed, bool) or not isinstance(self.seed, numbers.Integral):
                raise ValueError(f"seed must be an integer or None, got {self.seed!r}.")
            fields["seed"] = int(self.seed)

        for name, value in fields.items():
            object.__setattr__(self, name, value)

    # Derived, static facts used by the core to fix shapes.

    @property
    def num_lr_arms(self) -> int:
        return len(self.lr_candidates)

    @property
    def num_noise_arms(self) -> int:
        return len(self.noise_candidates)

    @property
    def num_noise_controllers(self) -> int:
        """One noise controller, or one per LR arm in conditional mode."""
        if self.structured_control_mode == "conditional" and self.num_lr_arms > 1:
            return self.num_lr_arms
        return 1

    @property
    def bucket_names(self) -> tuple[str, ...]:
        """Context buckets in index order; empty without a context mode."""
        if self.context_mode == "trend":
            return TRENDS
        if self.context_mode == "trend_phase":
            return tuple(f"{phase}_{trend}" for phase in PHASES for trend in TRENDS)
        return ()

    @property
    def num_buckets(self) -> int:
        return len(self.bucket_names)

    def replace(self, **changes: object) -> AEESConfig:
        """A validated copy with some knobs changed."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


def require_update_norms(config: AEESConfig, track_update_norm: bool) -> None:
    """Raise if ``config`` needs the update norms an adapter was told not to track.

    Raises:
      ValueError: if ``config.growth`` is on and ``track_update_norm`` is False.
    """
    if config.growth and not track_update_norm:
        raise ValueError(
            "growth=True (also set by preset='robust') measures the path from the update "
            "norms: it needs track_update_norm=True."
        )


def apply_preset(
    config: AEESConfig, preset: str | None, explicit: Collection[str] | None = None
) -> AEESConfig:
    """``config`` with the knobs of a named preset filled in (``None`` changes nothing).

    A preset only sets knobs the caller did not give, so an explicit setting
    wins, also one equal to the default: ``preset="robust", growth=False`` is
    the guard without growth, ``max_lr_scale=16`` caps growth at 16.

    Args:
      config: the configuration built from the caller's knobs.
      preset: ``None`` or a name in `PRESETS`.
      explicit: the names of the knobs the caller gave. ``None`` treats every
        knob still at its default as not given.

    Raises:
      ValueError: if ``preset`` is not a known preset name.
    """
    if preset is None:
        return config
    if preset not in PRESETS:
        raise ValueError(f"preset must be None or one of {sorted(PRESETS)}, got {preset!r}.")
    if explicit is None:
        defaults = AEESConfig()
        explicit = {
            name for name in PRESETS[preset] if getattr(config, name) != getattr(defaults, name)
        }
    changes = {name: value for name, value in PRESETS[preset].items() if name not in explicit}
    return config.replace(**changes)
