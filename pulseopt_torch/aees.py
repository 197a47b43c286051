"""`AEES`: episodic LR-multiplier and gradient-noise control around any `torch.optim` optimizer.

The wrapper only moves values between PyTorch and the shared JAX core: every
decision (which arms an episode uses, rewards, controller statistics, logs)
comes from `pulseopt_core`, the same functions the optax adapter runs. The
core runs on JAX's CPU device in float64 (see `pulseopt_torch._runtime`).

A host-side mirror of the episode counters tells the wrapper when an episode
closes, because that happens exactly when the number of recorded steps reaches
``episode_length``. So the core's state is read back to the host once per
episode (the new arms and the closed episode's log entry).

Host syncs. Each step's loss, a device flag saying whether a gradient was
not finite, and the squared update norm stay on the device in a
preallocated buffer (`_step_records.StepRecords`; under `torch.distributed`
each step's row is all-reduced asynchronously), and are read back in one
transfer when the wrapper needs them:

* default configuration (no guard, ``skip_nonfinite=False``): at the step
  that ends an episode, so no host sync between episode boundaries; the
  steps read are then handed to the core in one call
  (`_runtime.record_steps`, the same `core.record_step` applied in order);
* with the guard: once every step, before the optimizer step, because
  applying, skipping or rolling back needs the loss and the gradient flag
  then. The step is recorded in the core right after its optimizer step,
  without its update norm, so an episode it ends closes there and the next
  `step_start` needs no read; the norm travels in the next step's read
  (`core.record_update_norm`; with the guard a closing step's update belongs
  to the next episode, so nothing decided at the boundary needs it). At a
  step that may close its episode, growth's distance from the snapshot is
  measured before the read and travels in it.
* with ``skip_nonfinite=True`` and no guard: every step, before the optimizer
  step, as above, plus once at the step that ends an episode for that step's
  update norm, which without the guard belongs to the episode it ends.

Anything that reads the core's state (`AEES.core_state`, `AEES.state_dict`,
`AEES.get_logs`, `AEES.observe_eval`, `AEES.finalize`) reads the buffer first.
"""

from __future__ import annotations

import dataclasses
import math
import operator
import secrets
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Annotated, Any, Literal, Unpack

import jax
import numpy as np
import torch
import torch.distributed as dist

import pulseopt_core as core
from pulseopt_core.logs import empty_logs, log_entries
from pulseopt_torch import _runtime
from pulseopt_torch._best import BestParams
from pulseopt_torch._gradients import NonFiniteCheck
from pulseopt_torch._noise import GradientNoise
from pulseopt_torch._sharding import local
from pulseopt_torch._snapshot import Snapshot
from pulseopt_torch._step_records import HostRead, StepRecords
from pulseopt_torch._update_norm import NormSquares, UpdateNormTracker
from pulseopt_torch.candidate import CandidateConfig

# The core counts steps in int32.
_MAX_GLOBAL_STEP = 2**31 - 1
# Version 1 kept the episode log as one tensor per column; it still loads.
_STATE_DICT_VERSION = 2
# Steps buffered on the host before the core must take them (see the module docstring).
_PENDING_CAPACITY = 128
# Most steps kept on the device before a read (longer episodes read more often).
_DEVICE_CAPACITY = 4096
_STATE_DICT_KEYS = (
    "version",
    "config",
    "seed",
    "core_state",
    "logs",
    "noise_generators",
    "step_open",
    "guard_snapshot",
)
# How `step_end` learns whether the gradients are finite: by checking them, or
# from a caller that already knows (a GradScaler's overflow check).
GradientStatus = Literal["check", "finite", "overflow"]


class AEESOptions(core.AdapterOptions, total=False):
    """The keyword arguments of `AEES` and `AEESOptimizer`: every knob, plus these options."""

    seed: Annotated[
        int | None,
        core.Knob(
            None,
            "an int makes every decision and all noise reproducible; None draws a seed once "
            "(under torch.distributed, shared from rank 0).",
        ),
    ]
    skip_nonfinite: Annotated[
        bool,
        core.Knob(
            False,
            "on a NaN/Inf loss, skip the step (no optimizer or scheduler step, nothing "
            "recorded, counted in skipped_steps) instead of raising ValueError; a step whose "
            "gradients are not finite (with a finite loss) is skipped this way too. Costs one "
            "host sync per step (the check is read before the optimizer step); without it "
            "and the guard, non-finite values are found at the episode's end (see step_end).",
        ),
    ]


class AEES:
    """Adaptive episodic control of an optimizer's LR multiplier and gradient noise.

    Training is cut into episodes of ``episode_length`` steps. Before each
    episode a discounted-UCB bandit picks an LR multiplier and a noise standard
    deviation from the candidates; during the episode every ``optimizer.step()``
    runs with each param group's ``lr`` multiplied for that call only, after
    Gaussian noise was added to every gradient; at the end the episode is scored
    by how much the loss improved and the bandit learns from it.

    Args:
      optimizer: any `torch.optim.Optimizer`; AEES calls its ``step()``.
      lr_scheduler: stepped by AEES after every applied optimizer step.
      **options: the knobs and options below, each optional and keyword-only.
        A knob given explicitly wins over the preset, also one equal to its
        default; the preset's knobs default to None (not given).
      {options}

    What the options cost here: ``track_update_norm`` keeps one
    parameter-sized buffer (allocated once; with ``False`` nothing
    parameter-sized is allocated and ``mean_update_norms`` logs ``None``).
    The guard (``preset="robust"``) restores the parameters and the optimizer
    state in place from its snapshot: it holds one copy of the parameters and
    one of the optimizer state (plus the update-norm buffer, which growth
    needs: a step's update is the difference from the parameters before that
    step, which no snapshot holds), all allocated by the end of the first
    step; it costs one host read per step (plus one at each episode's last
    step), and at each episode boundary one
    distance computed in the update-norm buffer (no temporary of the
    parameters' size). The snapshot covers param groups added after
    construction from the next step on (or the next `state_dict`). With
    ``restore_best`` the wrapper keeps one copy of the parameters, taken at
    the best loss handed to `observe_eval`, and `finalize` copies it back.
    ``log_capacity`` bounds only the core's in-state log: `get_logs` keeps
    every episode. With ``seed=None`` a seed is drawn once (and, under
    ``torch.distributed``, shared from rank 0). ``skip_nonfinite`` and a
    GradScaler: use `AEESOptimizer` with `torch.amp.GradScaler`.

    Example:
      >>> model = torch.nn.Linear(4, 1)
      >>> optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
      >>> aees = AEES(optimizer, lr_candidates=[0.5, 1.0, 2.0], episode_length=10, seed=0)
      >>> for step in range(30):
      ...     aees.step_start(step)
      ...     optimizer.zero_grad()
      ...     loss = model(torch.randn(8, 4)).pow(2).mean()
      ...     loss.backward()
      ...     aees.step_end(loss)
      >>> aees.finalize()
      >>> len(aees.get_logs()["episode_rewards"])
      3

    Under `torch.distributed` (more than one rank) the loss is averaged over
    ranks before it is recorded and all ranks seed their noise identically, so
    every rank takes the same decisions and adds the same noise.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        lr_scheduler: Any | None = None,
        **options: Unpack[AEESOptions],
    ) -> None:
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {optimizer!r}.")
        knobs, adapter = core.split_options("AEES", AEESOptions, options)
        track_update_norm = adapter["track_update_norm"]
        skip_nonfinite = adapter["skip_nonfinite"]
        if "lr_candidates" in knobs:
            knobs["lr_candidates"] = _as_candidates(knobs["lr_candidates"])
        if "noise_candidates" in knobs:
            knobs["noise_candidates"] = _as_candidates(knobs["noise_candidates"])
        # The config warns about ignored knobs; re-issue at the caller's line.
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            config = core.AEESConfig(
                seed=adapter["seed"], **core.preset_knobs(adapter["preset"], knobs)
            )
        for warning in caught:
            warnings.warn(warning.message, warning.category, stacklevel=2)

        core.require_update_norms(config, track_update_norm)
        self._config = config
        # The seed travels as the key, not as part of the static config, so that
        # runs differing only in their seed share one compilation of the core.
        self._core_config = config.replace(seed=None)
        self._optimizer = optimizer
        self._lr_scheduler = lr_scheduler
        self._skip_nonfinite = bool(skip_nonfinite)
        self._seed = config.seed if config.seed is not None else self._shared_fresh_seed()
        self._noise = GradientNoise(self._seed)
        self._norm_tracker = UpdateNormTracker() if track_update_norm else None
        self._snapshot = Snapshot(optimizer) if config.guard else None
        self._best = BestParams(optimizer) if config.restore_best else None

        self._pending: list[tuple[float, float, bool]] = []
        # Checking every step (see the module docstring) or once per episode.
        self._checks_each_step = bool(config.guard) or self._skip_nonfinite
        self._nonfinite_check = NonFiniteCheck()
        # Allocated at the first step, on the parameters' device.
        self._records: StepRecords | None = None
        # The steps whose rows in `_records` are not read yet, in order.
        self._unread: list[_UnreadStep] = []
        # How many of `_unread` may count in the episode (all but known skips).
        self._unread_counted = 0
        self._deferred_error: str | None = None
        # With the guard: the update norm of the last recorded step, read but
        # not yet handed to the core (see `_guard_step`).
        self._late_norm: float | None = None
        self._step_number = 0
        self._applied_state: core.AEESState
        with _runtime.on_cpu_in_float64():
            self._state = core.init(self._core_config, self._seed)
        # Host mirror of the core's counters; see the module docstring.
        self._episode_steps = 0
        self._core_step = 0
        self._episodes_closed = 0
        self._episode_candidate: CandidateConfig | None = None
        self._logs = empty_logs(config)
        self._logged_episodes = 0
        self._current_candidate: CandidateConfig | None = None

    # ------------------------------------------------------------------ training loop

    def step_start(self, global_step: int | torch.Tensor) -> CandidateConfig:
        """Open a training step and return the candidate it runs with.

        Call once per step, before ``optimizer.zero_grad()``. ``global_step``
        numbers the step (any integral scalar: a Python or NumPy integer, a
        one-element integer tensor); the first step of an episode fixes the
        episode's start step (and its phase in ``"trend_phase"`` mode).

        Raises:
          RuntimeError: if the previous step is still open.
          ValueError: if ``global_step`` is not a non-negative integer below ``2**31``.
        """
        if self._current_candidate is not None:
            raise RuntimeError(
                "step_start() called twice without step_end() in between; "
                "close the open step with step_end(loss) first."
            )
        global_step = _step_number(global_step)
        self._step_number = global_step
        if self._episode_steps == 0 and not self._unread and global_step != self._core_step:
            with _runtime.on_cpu_in_float64():
                self._state = _runtime.restart_episode_at(
                    self._core_config, self._state, global_step
                )
            self._core_step = global_step
            self._episode_candidate = None
        if self._episode_candidate is None:
            self._episode_candidate = self._read_episode_candidate()
        self._current_candidate = self._episode_candidate
        return self._episode_candidate

    def step_end(self, loss: float | torch.Tensor) -> None:
        """Apply the step: noise, ``optimizer.step()`` at the multiplied LR, scheduler, record.

        Call once per step after ``loss.backward()`` (and any gradient clipping).
        Each param group's ``lr`` is multiplied for the ``optimizer.step()`` call
        only and restored afterwards, even if the optimizer raises.

        When non-finite values are found. A loss given as a Python number is
        checked at once. A tensor loss and the gradients are checked on the
        device, and the check is read:

        * with the guard or ``skip_nonfinite=True``, in this call, before the
          optimizer step (one host sync per step). A step whose gradients
          hold a NaN or an infinity (with a finite loss) is then never
          applied: neither the optimizer nor the scheduler steps, nothing is
          recorded and the core counts it in ``skipped_steps``; with the guard
          it counts as a spike, so it rolls back when a snapshot is held.
        * in the default configuration, only by the `step_end` that ends the
          episode (or by `finalize`, or earlier when `core_state`,
          `state_dict`, `get_logs` or `observe_eval` reads the buffered
          steps), so no step syncs with the device. Steps with a non-finite
          tensor loss or non-finite gradients have then been applied (their
          update is in the parameters); they are recorded as skipped, and
          the `step_end` that read them (else the next `step_end` or
          `finalize`) raises ``ValueError`` naming them, after completing its
          own step.

        Args:
          loss: this step's loss (a tensor or a number), computed before the update.

        Raises:
          RuntimeError: if no step is open.
          ValueError: if the loss is a tensor of more than one element, or is
            NaN or infinite (and ``skip_nonfinite`` is off): a Python number
            or, with the guard, a tensor, at once, with nothing applied and
            the step closed, so the next `step_start` works; otherwise when
            read, as above.
        """
        self._end_step(loss, "check")

    def _end_step(self, loss: float | torch.Tensor, gradients: GradientStatus) -> None:
        """`step_end`, told how to learn whether the gradients are finite.

        With ``"overflow"`` (a GradScaler found an infinity in the scaled
        gradients) the step is skipped like one with non-finite gradients,
        except that the guard judges only the loss: an overflow is no spike.
        """
        candidate = self._current_candidate
        if candidate is None:
            raise RuntimeError(
                "step_end() called without a preceding step_start(); open the step first."
            )
        if not self._checks_each_step:
            self._end_step_unread(candidate, loss, gradients)
            self._raise_deferred_error()
            return
        try:
            loss_value, gradients_finite, displacement = self._checked_loss(
                loss, check=gradients == "check", moved=self._closing_displacement()
            )
        except ValueError:
            self._current_candidate = None
            raise
        gradients_finite = gradients_finite and gradients != "overflow"
        # A non-finite gradient is judged like a non-finite loss.
        judged_loss = loss_value if gradients_finite or gradients == "overflow" else math.inf
        if self._snapshot is not None and self._guard_step(
            judged_loss, applies=gradients_finite and math.isfinite(loss_value)
        ):
            return
        if not math.isfinite(loss_value):
            self._current_candidate = None
            if not self._skip_nonfinite:
                raise ValueError(
                    f"loss passed to step_end() must be finite, got {loss_value!r}; "
                    "nothing was applied (pass skip_nonfinite=True to skip such steps)."
                )
            self._record(loss_value, None, skip=True)
            return
        if not gradients_finite:
            self._current_candidate = None
            self._record(judged_loss, None, skip=True)
            return

        update = self._step_and_schedule(candidate)
        if self._config.guard:
            # Recorded at once, so an episode this step ends closes now and the
            # next step_start needs no read; the update's norm follows with the
            # next read (`core.record_update_norm`).
            self._record(loss_value, None, skip=False, displacement=displacement)
            if update is not None:
                recorded = _UnreadStep(self._step_number, loss_value, skip=False, recorded=True)
                self._write_row(recorded, None, None, update)
            return
        if update is None:
            self._record(loss_value, None, skip=False)
            return
        self._write_row(_UnreadStep(self._step_number, loss_value, skip=False), None, None, update)

    def _end_step_unread(
        self, candidate: CandidateConfig, loss: float | torch.Tensor, gradients: GradientStatus
    ) -> None:
        """`_end_step` without reading the device: the loss and the checks join the buffer."""
        try:
            loss = _scalar_loss(loss)
            if not isinstance(loss, torch.Tensor) and not math.isfinite(loss):
                raise ValueError(
                    f"loss passed to step_end() must be finite, got {loss!r}; "
                    "nothing was applied (pass skip_nonfinite=True to skip such steps)."
                )
        except ValueError:
            self._current_candidate = None
            raise
        records = self._step_records()
        if gradients == "overflow":
            self._current_candidate = None
            self._write_row(_UnreadStep(self._step_number, None, skip=True), loss, None, None)
            return
        flag = None
        if gradients == "check":
            flag = self._nonfinite_check.flag(self._optimizer.param_groups, records.device)
        update = self._step_and_schedule(candidate)
        self._write_row(_UnreadStep(self._step_number, None, skip=None), loss, flag, update)

    def _step_and_schedule(self, candidate: CandidateConfig) -> NormSquares | None:
        """The optimizer step at the candidate's LR, then the scheduler; closes the step."""
        try:
            update = self._apply_optimizer_step(candidate)
            if self._lr_scheduler is not None:
                self._lr_scheduler.step()
        finally:
            self._current_candidate = None
        return update

    def _write_row(
        self,
        step: _UnreadStep,
        loss: float | torch.Tensor | None,
        flag: torch.Tensor | None,
        update: NormSquares | None,
    ) -> None:
        """Buffer a step on the device; read the buffer when the episode may have ended."""
        records = self._step_records()
        if records.full:
            self._read_records()
        records.write(loss, flag, update)
        self._unread.append(step)
        self._unread_counted += not (step.skip or step.recorded)
        ends_episode = self._episode_steps + self._unread_counted >= self._config.episode_length
        if records.full or ends_episode:
            self._read_records()

    def _step_records(self) -> StepRecords:
        if self._records is None:
            # Checking every step, a row waits at most for the next step's read.
            capacity = 2 if self._checks_each_step else self._config.episode_length
            self._records = StepRecords(
                min(capacity, _DEVICE_CAPACITY),
                self._first_param_device(),
                _world_size(),
            )
        return self._records

    def _read_records(
        self, urgent: Sequence[torch.Tensor] = (), norms: Sequence[NormSquares] = ()
    ) -> HostRead:
        """Read the buffered steps (and ``urgent`` and ``norms``, reduced over ranks); record them."""
        records = self._step_records()
        read = records.read(urgent, norms)
        unread, self._unread = self._unread, []
        self._unread_counted = 0
        world_size = _world_size()
        bad_steps = []
        for step, row in zip(unread, read.rows, strict=True):
            if step.recorded:
                # Handed to the core with the next step's record (or by `_flush`).
                self._fold_late_norm()
                self._late_norm = row.update_norm
                continue
            loss = step.loss if step.loss is not None else row.loss / world_size
            skip = step.skip
            if skip is None:
                skip = not math.isfinite(loss) or row.nonfinite_gradients > 0
                if skip:
                    bad_steps.append(step.number)
            elif step.loss is None and not math.isfinite(loss):
                bad_steps.append(step.number)
            norm = None if skip or self._norm_tracker is None else row.update_norm
            self._record(loss, None if skip else norm, skip=skip)
        if bad_steps:
            self._deferred_error = (
                f"the loss or the gradients of step(s) {bad_steps} were not finite; found when "
                "the buffered steps were read, after those steps were applied (they are recorded "
                "as skipped). Pass skip_nonfinite=True, or use preset='robust', to check every "
                "step before it is applied."
            )
        return read

    def _raise_deferred_error(self) -> None:
        """Raise the error a read of the buffered steps found, once."""
        message, self._deferred_error = self._deferred_error, None
        if message is not None:
            raise ValueError(message)

    def observe_eval(self, eval_loss: float | torch.Tensor) -> None:
        """Hand AEES a held-out (validation) loss measured at the current parameters.

        Optional, at any cadence, between steps. With the spike guard (the
        robust preset) it steers the LR scale: growth needs the latest eval to
        be a new best, and ``eval_patience`` evals in a row without one cut the
        scale by ``guard_backoff`` from the next episode on. With
        ``restore_best`` a new best is copied and `finalize` restores it (hand
        in the last eval before `finalize` so the final parameters compete).
        A NaN changes nothing. Under `torch.distributed` the value is averaged
        over ranks; it costs one host read.

        Raises:
          ValueError: if ``eval_loss`` is a tensor with more than one element.
        """
        value, _, _ = self._checked_loss(eval_loss, check=False)
        with _runtime.on_cpu_in_float64():
            self._state = _runtime.record_eval(self._core_config, self._state, value)
            improved = bool(jax.device_get(self._state.guard.eval_improved))
        if self._best is not None and improved and math.isfinite(value):
            self._best.take()

    def finalize(self) -> None:
        """Close the trailing partial episode (if it has steps) so it is scored and logged.

        With ``restore_best`` the parameters at the best `observe_eval` loss
        are copied back into the model.

        Raises:
          RuntimeError: if a step is open.
        """
        if self._current_candidate is not None:
            raise RuntimeError(
                "finalize() called with an open step; call step_end(loss) before finalize()."
            )
        if self._best is not None:
            self._best.restore()
        if self._unread:
            self._read_records()
        if self._episode_steps > 0:
            with _runtime.on_cpu_in_float64():
                self._state = _runtime.finalize(self._core_config, self._state)
            self._close_mirrored_episode()
        self._raise_deferred_error()

    # ------------------------------------------------------------------ introspection

    def get_logs(self) -> dict[str, list[Any]]:
        """Per-episode logs of every closed episode, one fresh list per key."""
        self._sync_logs()
        return {key: list(values) for key, values in self._logs.items()}

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        """The wrapped optimizer (for ``zero_grad()``, its ``state_dict()``, ...)."""
        return self._optimizer

    @property
    def current_candidate(self) -> CandidateConfig | None:
        """The candidate of the open step; ``None`` outside a step."""
        return self._current_candidate

    @property
    def config(self) -> core.AEESConfig:
        """The validated core configuration."""
        return self._config

    @property
    def core_state(self) -> core.AEESState:
        """The core's state (JAX arrays on the CPU device), e.g. for ``skipped_steps``."""
        return self._state

    # ------------------------------------------------------------------ checkpointing

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume exactly, as tensors and plain Python values.

        Holds the core state (controllers, open episode, key, counters), every
        closed episode's log, every noise generator's state and whether a step
        is open. It loads with ``torch.load(path, weights_only=True)``. The
        optimizer and scheduler are saved through their own ``state_dict()``.
        """
        self._sync_logs()
        return {
            "version": _STATE_DICT_VERSION,
            "config": _config_values(self._config),
            "seed": self._seed,
            "core_state": _runtime.state_to_tensors(self._state),
            "logs": {key: list(values) for key, values in self._logs.items()},
            "noise_generators": self._noise.state_dict(),
            "step_open": self._current_candidate is not None,
            "guard_snapshot": (self._snapshot.state_dict() if self._snapshot is not None else None),
            "best_params": self._best.state_dict() if self._best is not None else None,
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore a `state_dict` taken from an AEES with the same configuration.

        Every entry is checked before anything changes, so after an error the
        wrapper is exactly as it was.

        Raises:
          ValueError: naming what is wrong: not a dict, a missing or mistyped
            entry, an unsupported version, a different configuration (naming
            the knobs), or a guard snapshot that does not fit this optimizer
            (another optimizer class, other parameter shapes or state).
        """
        self._install(self._checked_state_dict(state_dict))

    def _install(self, loaded: _LoadedState) -> None:
        """Take over a checked state dict (cannot fail)."""
        self._state = loaded.state
        self._seed = loaded.seed
        self._noise = loaded.noise
        self._logs = loaded.logs
        if loaded.snapshot is not None:
            self._snapshot = loaded.snapshot
        if self._best is not None:
            self._best.load(loaded.best)
        self._logged_episodes = len(loaded.logs["episode_rewards"])
        if self._unread:
            self._step_records().read()
        self._unread = []
        self._unread_counted = 0
        self._deferred_error = None
        self._episode_steps, self._core_step, self._episodes_closed = loaded.counters
        self._episode_candidate = None
        self._current_candidate = None
        if loaded.step_open:
            self._episode_candidate = self._read_episode_candidate()
            self._current_candidate = self._episode_candidate

    def _checked_state_dict(self, state_dict: object) -> _LoadedState:
        """Everything `load_state_dict` needs, built and checked without touching ``self``."""
        state_dict = checked_entries(state_dict, _STATE_DICT_KEYS, "AEES")
        version = state_dict["version"]
        if version == 1:
            core_state = _runtime.upgrade_core_tensors_v1(state_dict["core_state"])
            state_dict = {**state_dict, "core_state": core_state}
        elif version != _STATE_DICT_VERSION:
            raise ValueError(
                f"state_dict version {version!r} is not supported (expected {_STATE_DICT_VERSION} "
                "or 1)."
            )
        saved_config = state_dict["config"]
        if not isinstance(saved_config, Mapping):
            raise ValueError("state_dict entry 'config' must be a dict of knobs.")
        ours = _config_values(self._config)
        differing = sorted(
            name
            for name in ours.keys() | saved_config.keys()
            if ours.get(name) != saved_config.get(name)
        )
        if differing:
            raise ValueError(
                f"state_dict was saved with a different configuration; differing knobs: "
                f"{', '.join(differing)}."
            )
        seed = state_dict["seed"]
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"state_dict entry 'seed' must be an int, got {seed!r}.")
        step_open = state_dict["step_open"]
        if not isinstance(step_open, bool):
            raise ValueError(f"state_dict entry 'step_open' must be a bool, got {step_open!r}.")
        state = _runtime.state_from_tensors(self._applied_state, state_dict["core_state"])
        noise = GradientNoise.from_state_dict(seed, state_dict["noise_generators"])
        logs = _checked_logs(state_dict["logs"], self._logs.keys())
        with _runtime.on_cpu_in_float64():
            counters = jax.device_get(
                (state.episode.episode_steps, state.global_step, state.episodes_closed)
            )
        episode_steps, core_step, episodes_closed = (int(c) for c in counters)
        if len(logs["episode_rewards"]) != episodes_closed:
            raise ValueError(
                f"state_dict entry 'logs' holds {len(logs['episode_rewards'])} episodes, but "
                f"'core_state' has closed {episodes_closed}."
            )
        snapshot = None
        if self._snapshot is not None:
            snapshot = Snapshot.from_state_dict(self._optimizer, state_dict["guard_snapshot"])
        # Optional: checkpoints written before restore_best existed have none.
        best = None
        if self._best is not None:
            best = self._best.checked(state_dict.get("best_params"))
        return _LoadedState(
            state=state,
            seed=seed,
            noise=noise,
            logs=logs,
            snapshot=snapshot,
            best=best,
            counters=(episode_steps, core_step, episodes_closed),
            step_open=step_open,
        )

    # ------------------------------------------------------------------ internals

    def _shared_fresh_seed(self) -> int:
        """A fresh seed, the same on every rank when running distributed."""
        seed = secrets.randbits(31)
        if _world_size() > 1:
            shared = torch.tensor([seed], dtype=torch.int64, device=self._first_param_device())
            dist.broadcast(shared, src=0)
            seed = int(shared.item())
        return seed

    def _first_param_device(self) -> torch.device:
        device: torch.device = local(self._optimizer.param_groups[0]["params"][0]).device
        return device

    def _checked_loss(
        self, loss: float | torch.Tensor, *, check: bool, moved: NormSquares | None = None
    ) -> tuple[float, bool, float]:
        """The loss as a float (averaged over ranks), whether every gradient is finite, ``moved``.

        One device read, which also reads (and records) the buffered steps.
        Under `torch.distributed` the loss, the gradient flag and the sharded
        part of ``moved`` are summed over ranks in one all-reduce of a fresh
        tensor (never the caller's), so every rank takes the same branch.
        ``moved`` comes back as an L2 norm (0.0 when ``None``).

        Raises:
          ValueError: if ``loss`` is a tensor with more than one element.
        """
        loss = _scalar_loss(loss)
        records = self._step_records()
        world_size = _world_size()
        urgent = []
        # A Python number is read already, unless the ranks must average it.
        loss_on_device = isinstance(loss, torch.Tensor) or world_size > 1
        if loss_on_device:
            urgent.append(torch.as_tensor(loss, dtype=torch.float64, device=records.device))
        if check:
            flag = self._nonfinite_check.flag(self._optimizer.param_groups, records.device)
            urgent.append(flag)
        norms = [] if moved is None else [moved]
        if not urgent and not norms and not self._unread:
            return float(loss), True, 0.0
        read = self._read_records(urgent, norms)
        values = read.urgent
        loss_value = values.pop(0) / world_size if loss_on_device else float(loss)
        return loss_value, not check or values[0] == 0.0, read.norms[0] if norms else 0.0

    def _closing_displacement(self) -> NormSquares | None:
        """With growth, at a step that would close its episode: the distance from the snapshot.

        The guard snapshots the parameters a closing step starts from (unless
        the step spikes), and growth scores the segment that snapshot ends by
        this distance, so it is measured before the step's one read, in case.
        """
        snapshot = self._snapshot
        if snapshot is None or not self._config.growth or self._norm_tracker is None:
            return None
        if self._episode_steps + 1 < self._config.episode_length:
            return None
        snapshot.follow_params()
        if not snapshot.holds:
            return None
        return self._norm_tracker.distance_squares(snapshot.params, snapshot.saved_params)

    def _apply_optimizer_step(self, candidate: CandidateConfig) -> NormSquares | None:
        """Noise, then ``optimizer.step()`` with multiplied LRs; returns the squared update norm."""
        groups = self._optimizer.param_groups
        if candidate.noise_std > 0.0:
            self._noise.add_to_gradients(groups, candidate.noise_std)
        if self._norm_tracker is not None:
            self._norm_tracker.snapshot([p for group in groups for p in group["params"]])
        base_lrs = [group["lr"] for group in groups]
        try:
            for group, base_lr in zip(groups, base_lrs, strict=True):
                group["lr"] = base_lr * candidate.lr_multiplier
            self._optimizer.step()
        finally:
            for group, base_lr in zip(groups, base_lrs, strict=True):
                group["lr"] = base_lr
        if self._snapshot is not None:
            self._snapshot.reserve_state()
        return None if self._norm_tracker is None else self._norm_tracker.squares()

    def _guard_step(self, loss: float, *, applies: bool) -> bool:
        """Let the spike guard snapshot or roll back; returns whether it rolled back.

        Args:
          loss: the loss the guard judges (infinite for non-finite gradients).
          applies: whether the step will be applied if not rolled back; a step
            that will be skipped takes no snapshot, as the core records none.
        """
        snapshot = self._snapshot
        assert snapshot is not None
        snapshot.follow_params()
        # The check reads no update norm, so one still waiting (`_late_norm`)
        # can go with the step's record, in the same call of the core.
        with _runtime.on_cpu_in_float64():
            decision = _runtime.guard_check(self._core_config, self._recorded_state(), loss)
            rollback, take_snapshot = (bool(flag) for flag in jax.device_get(decision))
        if not rollback:
            if take_snapshot and applies:
                snapshot.take()
            return False
        self._current_candidate = None
        snapshot.restore()
        self._record_guarded(loss, skip=False, displacement=0.0)
        # The core closed the open episode (if it had steps) and opened a new one.
        if self._episode_steps > 0:
            self._episodes_closed += 1
        self._episode_steps = 0
        self._core_step += 1
        self._episode_candidate = None
        return True

    @property
    def _state(self) -> core.AEESState:
        """The core's state with every buffered step recorded (reading the device's first)."""
        if self._unread:
            self._read_records()
        self._flush()
        return self._applied_state

    @_state.setter
    def _state(self, state: core.AEESState) -> None:
        self._applied_state = state
        self._pending = []

    @property
    def _decided_state(self) -> core.AEESState:
        """The state the arms and the closed episodes' logs come from.

        Reads the device only for buffered steps not recorded yet; the rows of
        recorded steps (with the guard) hold only update norms, which belong
        to the open episode, so they can wait for the next read.
        """
        if any(not step.recorded for step in self._unread):
            self._read_records()
        return self._recorded_state()

    def _recorded_state(self) -> core.AEESState:
        """The core's state as recorded so far: no device read, no waiting update norm folded in.

        With the guard nothing else waits (every step is recorded when read),
        and the guard's check and the arms do not depend on update norms.
        """
        if self._pending:
            self._flush()
        return self._applied_state

    def _fold_late_norm(self) -> None:
        """Hand the core the update norm of a recorded step, if one waits (with the guard)."""
        if self._late_norm is None:
            return
        with _runtime.on_cpu_in_float64():
            self._applied_state = _runtime.record_update_norm(
                self._core_config, self._applied_state, self._late_norm
            )
        self._late_norm = None

    def _flush(self) -> None:
        """Hand the buffered steps (and a waiting update norm) to the core."""
        self._fold_late_norm()
        if not self._pending:
            return
        losses, norms, skips = zip(*self._pending, strict=True)
        padding = _PENDING_CAPACITY - len(self._pending)
        with _runtime.on_cpu_in_float64():
            self._applied_state = _runtime.record_steps(
                self._core_config,
                self._applied_state,
                np.array(losses + (0.0,) * padding, np.float64),
                np.array(norms + (0.0,) * padding, np.float64),
                np.array(skips + (True,) * padding, bool),
                np.int32(len(self._pending)),
                with_norms=self._norm_tracker is not None,
            )
        self._pending = []

    def _record(
        self, loss: float, update_norm: float | None, *, skip: bool, displacement: float = 0.0
    ) -> None:
        """Record a step whose values are on the host: in the core with the guard, else buffered."""
        if self._config.guard:
            self._record_guarded(loss, skip=skip, displacement=displacement)
        else:
            # A skipped step's norm is ignored by the core, whatever its value.
            norm = 0.0 if update_norm is None else update_norm
            self._pending.append((loss, norm, skip))
            if len(self._pending) == _PENDING_CAPACITY:
                self._flush()
        # Mirror the core's rule: a skipped step or a non-finite value is not counted.
        if skip or not math.isfinite(loss):
            return
        if update_norm is not None and not math.isfinite(update_norm):
            return
        self._episode_steps += 1
        self._core_step += 1
        if self._episode_steps == self._config.episode_length:
            self._close_mirrored_episode()

    def _record_guarded(self, loss: float, *, skip: bool, displacement: float) -> None:
        """Record a step with the guard, after the update norm of the step before it, if waiting."""
        late_norm, self._late_norm = self._late_norm, None
        with _runtime.on_cpu_in_float64():
            self._state = _runtime.record_step_after_norm(
                self._core_config,
                self._recorded_state(),
                math.nan if late_norm is None else late_norm,
                loss,
                skip=skip,
                displacement_norm=displacement if self._config.growth else None,
            )

    def _close_mirrored_episode(self) -> None:
        self._episode_steps = 0
        self._episodes_closed += 1
        self._episode_candidate = None

    def _read_episode_candidate(self) -> CandidateConfig:
        """Read the open episode's arms, and log the episode closed before it, from the core.

        Called once per episode, this is the only time the wrapper waits for the
        core; logging here keeps every episode even after the core's ring buffer wraps.
        """
        self._sync_logs()
        episode = self._decided_state.episode
        with _runtime.on_cpu_in_float64():
            lr_index, noise_index, multiplier = jax.device_get(
                (episode.lr_index, episode.noise_index, episode.lr_multiplier)
            )
        # The core computes in float64 here, so the multiplier is exactly the
        # Python product of the arm and its scale, as the published wrapper uses.
        lr = self._config.lr_candidates[int(lr_index)]
        noise = self._config.noise_candidates[int(noise_index)]
        return CandidateConfig(core.candidate_name(lr, noise), float(multiplier), noise)

    def _sync_logs(self) -> None:
        """Append the log entries of episodes closed since the last sync."""
        if self._logged_episodes == self._episodes_closed:
            return
        slots = np.arange(self._logged_episodes, self._episodes_closed) % self._config.log_capacity
        with _runtime.on_cpu_in_float64():
            entries = log_entries(self._core_config, self._decided_state.episode_log, slots)
        for key, values in entries.items():
            self._logs[key].extend(values)
        self._logged_episodes = self._episodes_closed


core.document(AEES, AEESOptions, keep=("self", "optimizer", "lr_scheduler"))


@dataclasses.dataclass(frozen=True)
class _UnreadStep:
    """A step buffered on the device: what the host already knows of it.

    ``loss`` is ``None`` when it is in the step's row; ``skip`` is ``None``
    when the row decides it (a non-finite loss or gradient flag). A
    ``recorded`` step (with the guard) is in the core already: its row only
    brings its update's norm.
    """

    number: int
    loss: float | None
    skip: bool | None
    recorded: bool = False


def _scalar_loss(loss: float | torch.Tensor) -> float | torch.Tensor:
    """The loss detached (a tensor) or as a float.

    Raises:
      ValueError: if ``loss`` is a tensor with more than one element.
    """
    if isinstance(loss, torch.Tensor):
        if loss.numel() != 1:
            raise ValueError(
                f"loss passed to step_end() must be a scalar, got a tensor of shape "
                f"{tuple(loss.shape)}."
            )
        return loss.detach()
    return float(loss)


def _as_candidates(values: object) -> Any:
    """Candidates as a tuple of Python numbers when they form a real-number iterable.

    Accepts what the published wrapper accepts: lists, tuples, NumPy arrays,
    tensors, generators (elements may be one-element tensors). Anything else
    (a string, a scalar, a nested sequence) reaches the config's check as it
    is, so its error names the knob.
    """
    if isinstance(values, (torch.Tensor, np.ndarray)):
        return tuple(values.tolist()) if values.ndim == 1 else values
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        return values
    return tuple(
        value.item() if isinstance(value, torch.Tensor) and value.numel() == 1 else value
        for value in values
    )


def _step_number(global_step: object) -> int:
    """``global_step`` as an int: any integral scalar (int, NumPy integer, integer tensor)."""
    number: int | None = None
    if isinstance(global_step, torch.Tensor):
        integral = not (global_step.is_floating_point() or global_step.is_complex())
        if global_step.numel() == 1 and integral and global_step.dtype != torch.bool:
            number = int(global_step.item())
    elif not isinstance(global_step, (bool, np.bool_)):
        try:
            number = operator.index(global_step)  # type: ignore[arg-type]
        except TypeError:
            number = None
    if number is None:
        raise ValueError(f"global_step must be an integer, got {global_step!r}.")
    if not 0 <= number <= _MAX_GLOBAL_STEP:
        raise ValueError(f"global_step must be in [0, 2**31 - 1], got {global_step!r}.")
    return number


@dataclasses.dataclass(frozen=True)
class _LoadedState:
    """A checked `AEES.state_dict`, ready to be installed."""

    state: core.AEESState
    seed: int
    noise: GradientNoise
    logs: dict[str, list[Any]]
    snapshot: Snapshot | None
    best: list[torch.Tensor] | None
    counters: tuple[int, int, int]
    step_open: bool


def checked_entries(state_dict: object, keys: Iterable[str], owner: str) -> Mapping[str, Any]:
    """``state_dict`` if it is a mapping holding every entry in ``keys``.

    Raises:
      ValueError: naming the type, or the missing entries, in ``owner``'s terms.
    """
    if not isinstance(state_dict, Mapping):
        raise ValueError(
            f"state_dict must be a dict as returned by {owner}.state_dict(), got "
            f"{type(state_dict).__name__}."
        )
    missing = [key for key in keys if key not in state_dict]
    if missing:
        raise ValueError(f"state_dict lacks the entries {', '.join(map(repr, missing))}.")
    return state_dict


def _checked_logs(logs: object, keys: Iterable[str]) -> dict[str, list[Any]]:
    """Copies of the saved per-episode logs, which must have exactly ``keys``, in equal lengths."""
    expected = set(keys)
    if not isinstance(logs, Mapping) or set(logs) != expected:
        found = sorted(logs) if isinstance(logs, Mapping) else type(logs).__name__
        raise ValueError(
            f"state_dict entry 'logs' must have the keys {sorted(expected)}, got {found}."
        )
    copied = {}
    for key, values in logs.items():
        if not isinstance(values, list):
            raise ValueError(f"state_dict entry 'logs.{key}' must be a list.")
        copied[key] = list(values)
    if len({len(values) for values in copied.values()}) > 1:
        raise ValueError("state_dict entry 'logs' has lists of different lengths.")
    return copied


def _world_size() -> int:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def _config_values(config: core.AEESConfig) -> dict[str, Any]:
    """The knobs as plain Python values (candidate tuples as lists)."""
    values: dict[str, Any] = {}
    for name, value in config.as_dict().items():
        values[name] = list(value) if isinstance(value, tuple) else value
    return values
