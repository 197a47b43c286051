"""Every AEES knob, declared once: name, type, default, one doc entry, and its role.

`AEESKnobs` is the single declaration. Its annotations give each knob's type;
the `Knob` in each annotation gives its default, its documentation and whether
it may arrive as a traced scalar (``dynamic``). From it come `AEESConfig`'s
fields and docstring, both adapters' keyword arguments (``**options:
Unpack[...]``, so mypy and IDEs check and complete them by name), their
generated signatures and docstrings (what ``help()`` shows), and the lists
`STRUCTURAL_KNOBS` and `DYNAMIC_KNOBS`.

Adapters add their own options in a `TypedDict` that extends `AdapterOptions`
(which adds the options both adapters share); `split_options` sorts the
keyword arguments of a call into knobs and options, with defaults, and
`signature_of` / `options_doc` give the signature and the docs.
"""

from __future__ import annotations

import functools
import inspect
import textwrap
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Annotated, Any, NamedTuple, TypedDict


class Knob(NamedTuple):
    """What the declaration says of one knob besides its name and type.

    Attributes:
      default: the value used when the knob is not given.
      doc: what the knob does (one entry; shown by ``help()``).
      dynamic: whether an adapter may receive it as a traced scalar (an
        injected hyperparameter); every other knob fixes the shape or meaning
        of the state and is *structural*.
      preset: whether a preset may set it; an adapter then takes ``None`` as
        "not given" (the preset's value, else the default).
    """

    default: object
    doc: str
    dynamic: bool = False
    preset: bool = False


class AEESKnobs(TypedDict, total=False):
    """The knobs of AEES, as keyword arguments (every one optional)."""

    lr_candidates: Annotated[
        Sequence[float],
        Knob(
            (1.0,),
            "multipliers applied to the inner optimizer's step; a single candidate makes "
            "the LR axis a constant with no controller.",
        ),
    ]
    noise_candidates: Annotated[
        Sequence[float],
        Knob(
            (0.0,),
            "standard deviations of the Gaussian noise added to the gradients; a single "
            "candidate makes the noise axis a constant (no random numbers are drawn for 0).",
        ),
    ]
    episode_length: Annotated[
        int, Knob(100, "steps per episode; the arms are frozen within an episode.", dynamic=True)
    ]
    control_mode: Annotated[
        str,
        Knob(
            "adaptive",
            '"adaptive" (discounted UCB) or "random" (a uniform arm per episode, the '
            "baseline a bandit must beat).",
        ),
    ]
    structured_control_mode: Annotated[
        str,
        Knob(
            "independent",
            '"independent" (one noise controller) or "conditional" (one noise controller '
            "per LR arm).",
        ),
    ]
    context_mode: Annotated[
        str,
        Knob(
            "none",
            '"none", "trend" or "trend_phase": which coarse context bucket selects the '
            "controller statistics used in an episode.",
        ),
    ]
    total_training_steps: Annotated[
        int | None,
        Knob(
            None,
            'the horizon that defines the phase in "trend_phase" mode (required there, '
            "ignored with a warning elsewhere).",
        ),
    ]
    context_trend_window: Annotated[
        int, Knob(3, "how many recent episode-end losses define the trend.")
    ]
    context_trend_epsilon: Annotated[
        float, Knob(1e-3, "slope below which the trend counts as stable.", dynamic=True)
    ]
    reward_instability_lambda: Annotated[
        float, Knob(0.1, "weight of the loss-variance penalty in the reward.", dynamic=True)
    ]
    reward_epsilon: Annotated[
        float,
        Knob(1e-8, "added inside the logarithms and the variance normaliser.", dynamic=True),
    ]
    reward_clip_min: Annotated[float, Knob(-1.0, "lower clip of the reward.", dynamic=True)]
    reward_clip_max: Annotated[float, Knob(1.0, "upper clip of the reward.", dynamic=True)]
    ema_alpha: Annotated[
        float, Knob(0.1, "smoothing of the episode-local loss EMA, in (0, 1].", dynamic=True)
    ]
    exploration_coef: Annotated[float, Knob(1.0, "UCB exploration coefficient.", dynamic=True)]
    discount: Annotated[float, Knob(0.95, "UCB discount per update, in (0, 1].", dynamic=True)]
    warmup_rounds: Annotated[
        int, Knob(1, "times each arm is tried before UCB scores are used.", dynamic=True)
    ]
    tie_break: Annotated[
        str,
        Knob(
            "random",
            '"random" breaks ties between equally good arms at random; "lowest" picks the '
            "lowest index (deterministic comparisons).",
        ),
    ]
    log_capacity: Annotated[
        int, Knob(1024, "how many recent closed episodes the state keeps for the logs.")
    ]
    multiplier_mode: Annotated[
        str,
        Knob(
            "absolute",
            '"absolute": an LR arm is the multiplier itself; "relative": an LR arm '
            "multiplies a running scale at the start of each episode (moves such as x0.5 / "
            "x1 / x2 that compound), kept within [min_lr_scale, max_lr_scale].",
        ),
    ]
    min_lr_scale: Annotated[
        float, Knob(1.0 / 64.0, "floor of the running LR scale (guard cuts, relative moves).")
    ]
    max_lr_scale: Annotated[
        float | None,
        Knob(1.0, "ceiling of the running LR scale (finite, >= 1).", preset=True),
    ]
    guard: Annotated[
        bool | None,
        Knob(
            False,
            "the spike guard: when the fast EMA of the loss exceeds guard_spike_ratio times "
            "its reference, or the loss is not finite, the adapter restores the snapshot "
            "taken at the last sound episode boundary and multiplies the running LR scale "
            "by guard_backoff (cuts compound down to min_lr_scale). Costs one copy of the "
            "parameters and of the optimizer state.",
            preset=True,
        ),
    ]
    guard_spike_ratio: Annotated[float, Knob(2.0, "fast/slow loss ratio that is a spike (> 1).")]
    guard_fast_alpha: Annotated[float, Knob(0.3, "smoothing of the fast loss EMA, in (0, 1].")]
    guard_slow_alpha: Annotated[
        float, Knob(0.02, "smoothing of the slow loss EMA, in (0, guard_fast_alpha).")
    ]
    guard_backoff: Annotated[
        float, Knob(0.5, "factor applied to the LR scale on every rollback, in (0, 1).")
    ]
    guard_max_consecutive: Annotated[
        int,
        Knob(
            3,
            "rollbacks allowed without a clean episode in between; past it the guard stands "
            "down until an episode closes cleanly.",
        ),
    ]
    guard_warmup_steps: Annotated[
        int,
        Knob(
            20,
            "steps during which a spike is judged against the larger of the slow EMA and "
            "the starting loss (the slow EMA settles).",
        ),
    ]
    guard_spike_floor: Annotated[
        float,
        Knob(
            0.05,
            "a spike must also exceed its reference by this fraction of the starting loss "
            "(>= 0), so the jumpy minibatch values of a near-zero loss are not spikes.",
        ),
    ]
    growth: Annotated[
        bool | None,
        Knob(
            False,
            "let the LR scale grow while steps are too timid (needs guard and the update "
            "norms). At every episode boundary the distance the parameters moved since the "
            "last snapshot is divided by the path length (the sum of the update norms): near "
            "1 when successive updates keep their direction (a learning rate that is too "
            "small), towards 1/sqrt(steps) once gradient noise or oscillation dominate. After "
            "growth_patience episodes in a row above growth_threshold, whose loss did not "
            "rise and that are not fitted (growth_fit_fraction), the scale is multiplied by "
            "growth_factor, up to max_lr_scale and never above the scale the last rollback "
            "cut to.",
            preset=True,
        ),
    ]
    growth_threshold: Annotated[
        float, Knob(0.5, "straightness above which an episode counts as timid, in (0, 1).")
    ]
    growth_factor: Annotated[float, Knob(2.0, "factor applied to the LR scale on growth (> 1).")]
    growth_patience: Annotated[int, Knob(1, "timid episodes in a row needed for each growth.")]
    growth_fit_fraction: Annotated[
        float,
        Knob(
            0.02,
            "once the lower of the fast and slow loss EMAs falls below this fraction of the "
            "(positive) starting loss, the run counts as fitted: nothing grows and a scale "
            "above 1 drops back to 1; in [0, 1).",
        ),
    ]
    eval_patience: Annotated[
        int,
        Knob(
            2,
            "with the guard, evals in a row that are not a new best before the LR scale is "
            "cut by guard_backoff (the held-out loss is optional; adapters take it as "
            "eval_value / observe_eval).",
        ),
    ]
    eval_min_delta: Annotated[
        float, Knob(1e-3, "relative improvement an eval needs to count as a new best, >= 0.")
    ]
    restore_best: Annotated[
        bool,
        Knob(
            False,
            "keep a copy of the parameters at the best eval loss and restore it at "
            "finalize (one more copy of the parameters).",
        ),
    ]


class AdapterOptions(AEESKnobs, total=False):
    """The knobs, plus the options both adapters take."""

    preset: Annotated[
        str | None,
        Knob(
            None,
            'None (the knobs as given) or "robust" (guard=True, growth=True, '
            "max_lr_scale=64): the recommended setting when the base learning rate may be "
            "mis-set in either direction. A knob given explicitly wins over the preset, also "
            "one equal to its default.",
        ),
    ]
    track_update_norm: Annotated[
        bool,
        Knob(
            True,
            "record the L2 norm of every update (one reduction per step); False logs None "
            "for mean_update_norms (and rules out growth).",
        ),
    ]


class Declared(NamedTuple):
    """One declared keyword argument: its name, its type and its `Knob`."""

    name: str
    annotation: Any
    knob: Knob


@functools.cache
def declared(declaration: type) -> dict[str, Declared]:
    """The keyword arguments a `TypedDict` declares, in declaration order (bases first).

    Cached: adapters read it on every call (``optax.inject_hyperparams`` calls
    `pulseopt_optax.aees` on every update); do not mutate the result.
    """
    hints = typing.get_type_hints(declaration, include_extras=True)
    out: dict[str, Declared] = {}
    for name, hint in hints.items():
        base, *extras = typing.get_args(hint)
        knob = next(extra for extra in extras if isinstance(extra, Knob))
        out[name] = Declared(name, base, knob)
    return out


KNOBS: dict[str, Declared] = declared(AEESKnobs)
# Knobs that may arrive as traced scalars (injected hyperparameters). None of
# them affects the first episode's choice, which is made before any statistics
# exist (every arm ties), so an adapter's ``init`` does not need their values.
DYNAMIC_KNOBS: tuple[str, ...] = tuple(name for name, d in KNOBS.items() if d.knob.dynamic)
# Knobs that fix the state's shapes or its meaning: Python values only.
# Wrapping ``aees`` in ``optax.inject_hyperparams`` needs them in ``static_args``.
STRUCTURAL_KNOBS: tuple[str, ...] = tuple(name for name, d in KNOBS.items() if not d.knob.dynamic)
PRESET_KNOBS: tuple[str, ...] = tuple(name for name, d in KNOBS.items() if d.knob.preset)


def split_options(
    owner: str, declaration: type, given: Mapping[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Sort the keyword arguments of a call into knobs and the adapter's own options.

    Args:
      owner: the callable's name, for the error message.
      declaration: the adapter's `TypedDict` (extending `AdapterOptions`).
      given: the keyword arguments received.

    Returns:
      ``(knobs, options)``: the knobs given (a preset knob given as ``None`` is
      left out: not given), and every other declared option, with its default
      where it was not given.

    Raises:
      TypeError: naming the keyword arguments that ``declaration`` does not declare.
    """
    options = declared(declaration)
    unknown = sorted(set(given) - set(options))
    if unknown:
        names = ", ".join(repr(name) for name in unknown)
        raise TypeError(f"{owner}() got unexpected keyword argument(s) {names}.")
    knobs = {
        name: value
        for name, value in given.items()
        if name in KNOBS and not (value is None and KNOBS[name].knob.preset)
    }
    rest = {
        name: given.get(name, d.knob.default) for name, d in options.items() if name not in KNOBS
    }
    return knobs, rest


def _annotation_text(annotation: Any) -> str:
    text = inspect.formatannotation(annotation)
    for long, short in (("collections.abc.", ""), ("typing.", ""), ("jaxlib._jax.", "")):
        text = text.replace(long, short)
    return text


def signature_of(
    function: Callable[..., Any], declaration: type, *, keep: Sequence[str] = ()
) -> inspect.Signature:
    """``function``'s signature with ``**knobs`` spelled out as keyword-only parameters.

    Args:
      function: a function ending in ``**knobs`` typed by ``declaration``.
      declaration: the `TypedDict` of its keyword arguments.
      keep: names of ``function``'s own parameters to keep in front (the rest of
        its parameters, ``**knobs`` included, are replaced).
    """
    own = inspect.signature(function)
    front = [p for name, p in own.parameters.items() if name in keep]
    spelled = [
        inspect.Parameter(
            d.name,
            inspect.Parameter.KEYWORD_ONLY,
            default=None if d.knob.preset else d.knob.default,
            annotation=_annotation_text(d.annotation),
        )
        for d in declared(declaration).values()
    ]
    return own.replace(parameters=[*front, *spelled])


def options_doc(declaration: type, indent: int = 6) -> str:
    """Docstring entries (``name (type, default ...): doc``) for every declared option."""
    lines: list[str] = []
    width = 88 - indent
    for d in declared(declaration).values():
        default = "None (not given)" if d.knob.preset else repr(d.knob.default)
        head = f"{d.name} ({_annotation_text(d.annotation)}, default {default}): {d.knob.doc}"
        wrapped = textwrap.wrap(head, width=width, subsequent_indent="  ")
        lines.extend(" " * indent + line for line in wrapped)
    return "\n".join(lines)


def document(target: Callable[..., Any], declaration: type, *, keep: Sequence[str]) -> None:
    """Spell out ``target``'s ``**options`` in its signature and docstring.

    Args:
      target: a function, or a class whose ``__init__`` ends in ``**options``.
      declaration: the `TypedDict` of those options.
      keep: the parameters of the function (or ``__init__``) kept in front,
        ``self`` included for a class.

    The docstring's ``{options}`` placeholder (of the class, for a class) is
    replaced by `options_doc`.
    """
    function: Any = target.__init__ if isinstance(target, type) else target  # type: ignore[misc]
    function.__signature__ = signature_of(function, declaration, keep=keep)
    doc = inspect.cleandoc(target.__doc__ or "")
    target.__doc__ = doc.replace("{options}", options_doc(declaration, indent=2).lstrip())
