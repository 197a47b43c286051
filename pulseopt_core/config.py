"""The AEES configuration: one frozen, hashable object, validated on construction.

`AEESConfig` is hashable so it can be a static argument of `jax.jit`; every
shape in the AEES state is a function of it.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import warnings
from collections.abc import Collection, Mapping, Sequence
from typing import Any, Unpack

from pulseopt_core.knobs import KNOBS, AEESKnobs, options_doc

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


class AEESConfig:
    """Every knob of AEES, validated eagerly; frozen and hashable.

    Built as ``AEESConfig(seed=..., **knobs)`` with the knobs of `AEESKnobs`
    (each optional; read back as attributes, e.g. ``config.episode_length``).
    ``seed``: an int makes every decision and all noise reproducible; ``None``
    draws fresh entropy when the state is initialised. A preset's knob given
    as ``None`` takes its default.

    Knobs:
      {options}

    Raises:
      TypeError: for a keyword that is not a knob.
      ValueError: naming the first knob whose value is invalid.
    """

    __slots__ = ("_values",)
    _values: dict[str, Any]

    def __init__(self, *, seed: int | None = None, **knobs: Unpack[AEESKnobs]) -> None:
        unknown = sorted(set(knobs) - set(KNOBS))
        if unknown:
            names = ", ".join(repr(name) for name in unknown)
            raise TypeError(f"AEESConfig() got unexpected keyword argument(s) {names}.")
        values: dict[str, Any] = {}
        for name, declared in KNOBS.items():
            value = knobs.get(name, declared.knob.default)
            values[name] = (
                declared.knob.default if value is None and declared.knob.preset else value
            )
        values["seed"] = seed
        object.__setattr__(self, "_values", _validated(values))

    @classmethod
    def _unchecked(cls, values: dict[str, Any]) -> AEESConfig:
        """A config holding ``values`` as they are (e.g. traced scalars): never hashed."""
        config = cls.__new__(cls)
        object.__setattr__(config, "_values", dict(values))
        return config

    def __getattr__(self, name: str) -> Any:
        try:
            return object.__getattribute__(self, "_values")[name]
        except KeyError:
            raise AttributeError(f"AEESConfig has no knob {name!r}.") from None

    def __setattr__(self, name: str, value: object) -> None:
        raise dataclasses.FrozenInstanceError(f"cannot assign to field {name!r}")

    def __delattr__(self, name: str) -> None:
        raise dataclasses.FrozenInstanceError(f"cannot delete field {name!r}")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, AEESConfig):
            return NotImplemented
        return self._values == other._values

    def __hash__(self) -> int:
        return hash(tuple(self._values.items()))

    def __repr__(self) -> str:
        inner = ", ".join(f"{name}={value!r}" for name, value in self._values.items())
        return f"AEESConfig({inner})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (_restore, (self._values,))

    def as_dict(self) -> dict[str, Any]:
        """Every knob's value, and the seed, by name."""
        return dict(self._values)

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

    def replace(self, **changes: Any) -> AEESConfig:
        """A validated copy with some knobs (or the seed) changed."""
        return AEESConfig(**{**self._values, **changes})


AEESConfig.__doc__ = (AEESConfig.__doc__ or "").replace(
    "{options}", options_doc(AEESKnobs, indent=6).lstrip()
)


def _typed(*annotations: object) -> tuple[str, ...]:
    """The knobs declared with one of ``annotations``, in declaration order."""
    return tuple(name for name, declared in KNOBS.items() if declared.annotation in annotations)


# Checked alike: every real-valued knob is a non-NaN number, every flag a bool.
_REAL_KNOBS = _typed(float, float | None)
_FLAG_KNOBS = _typed(bool, bool | None)


def _validated(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` checked knob by knob, numbers normalised (tuples of floats, ints)."""
    fields = {
        "control_mode": _choice("control_mode", values["control_mode"], CONTROL_MODES),
        "context_mode": _choice("context_mode", values["context_mode"], CONTEXT_MODES),
        "structured_control_mode": _choice(
            "structured_control_mode", values["structured_control_mode"], STRUCTURED_CONTROL_MODES
        ),
        "tie_break": _choice("tie_break", values["tie_break"], TIE_BREAKS),
        "lr_candidates": _candidates("lr_candidates", values["lr_candidates"], allow_zero=False),
        "noise_candidates": _candidates(
            "noise_candidates", values["noise_candidates"], allow_zero=True
        ),
        "episode_length": _integer("episode_length", values["episode_length"], 1),
        "context_trend_window": _integer("context_trend_window", values["context_trend_window"], 1),
        "warmup_rounds": _integer("warmup_rounds", values["warmup_rounds"], 0),
        "log_capacity": _integer("log_capacity", values["log_capacity"], 1),
        "multiplier_mode": _choice("multiplier_mode", values["multiplier_mode"], MULTIPLIER_MODES),
        "guard_max_consecutive": _integer(
            "guard_max_consecutive", values["guard_max_consecutive"], 1
        ),
        "guard_warmup_steps": _integer("guard_warmup_steps", values["guard_warmup_steps"], 0),
        "growth_patience": _integer("growth_patience", values["growth_patience"], 1),
        "eval_patience": _integer("eval_patience", values["eval_patience"], 1),
    }
    for flag in _FLAG_KNOBS:
        if not isinstance(values[flag], bool):
            raise ValueError(f"{flag} must be a bool, got {values[flag]!r}.")
    if values["growth"] and not values["guard"]:
        raise ValueError("growth=True needs guard=True (growth measures from its snapshots).")
    reals = {name: _real(name, values[name]) for name in _REAL_KNOBS}
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

    total = values["total_training_steps"]
    if fields["context_mode"] == "trend_phase":
        if total is None:
            raise ValueError("total_training_steps is required when context_mode='trend_phase'.")
        fields["total_training_steps"] = _integer("total_training_steps", total, 1)
    elif total is not None:
        warnings.warn(
            "total_training_steps is only used when context_mode='trend_phase'; "
            f"it is ignored with context_mode={fields['context_mode']!r}.",
            UserWarning,
            stacklevel=3,
        )
        fields["total_training_steps"] = None

    if values["seed"] is not None:
        if isinstance(values["seed"], bool) or not isinstance(values["seed"], numbers.Integral):
            raise ValueError(f"seed must be an integer or None, got {values['seed']!r}.")
        fields["seed"] = int(values["seed"])
    return {**values, **fields}


def _restore(values: dict[str, Any]) -> AEESConfig:
    return AEESConfig._unchecked(values)


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
    if explicit is None:
        defaults = AEESConfig()
        explicit = {
            name for name in _preset(preset) if getattr(config, name) != getattr(defaults, name)
        }
    changes = {name: value for name, value in _preset(preset).items() if name not in explicit}
    return config.replace(**changes)


def preset_knobs(preset: str | None, knobs: Mapping[str, Any]) -> dict[str, Any]:
    """``knobs`` with a preset's knobs added where the caller did not give them.

    Build the configuration from the result (``AEESConfig(**preset_knobs(...))``)
    so it is checked once, as a whole: ``preset="robust", growth=True`` is
    valid although ``growth=True`` alone (without the preset's guard) is not.

    Raises:
      ValueError: if ``preset`` is not ``None`` or a name in `PRESETS`.
    """
    if preset is None:
        return dict(knobs)
    return {**_preset(preset), **knobs}


def _preset(name: str) -> dict[str, object]:
    if name not in PRESETS:
        raise ValueError(f"preset must be None or one of {sorted(PRESETS)}, got {name!r}.")
    return PRESETS[name]
