"""`AEESOptimizer`: AEES behind the `torch.optim.Optimizer` protocol, for loops that own ``step()``.

Lightning's automatic optimization, accelerate and most trainers call
``optimizer.step()`` (often with a closure returning the loss) and cannot call
`AEES.step_start`/`AEES.step_end`. `AEESOptimizer` is that optimizer: every
``step()`` is one AEES step of an internal `AEES` (the same implementation,
so the same decisions for the same losses), numbered by the count of
``step()`` calls.

``param_groups``, ``state`` and ``defaults`` are the wrapped optimizer's own
objects, so LR schedulers attached to the `AEESOptimizer` move the wrapped
optimizer's LRs and ``zero_grad`` clears the same gradients.

A `torch.amp.GradScaler` hands its overflow check to ``step()`` (this class
sets ``_step_supports_amp_scaling``) instead of skipping the call, so a step
whose scaled gradients overflowed is recorded as skipped (counted in the
core's ``skipped_steps``, never scored, and never a spike for the guard); the
other steps are unscaled here, exactly as the scaler would, before AEES applies them.
"""

from __future__ import annotations

import numbers
from collections import defaultdict
from collections.abc import Callable, Mapping
from typing import Any, Unpack

import torch

import pulseopt_core as core
from pulseopt_torch._gradients import grouped_gradients
from pulseopt_torch.aees import AEES, AEESOptions, checked_entries

_STATE_DICT_KEYS = ("optimizer", "aees", "next_step")


class AEESOptimizer(torch.optim.Optimizer):
    """A `torch.optim.Optimizer` whose ``step()`` is an AEES step around ``optimizer``.

    Args:
      optimizer: the `torch.optim.Optimizer` that applies the updates.
      **options: the keyword arguments of `AEES` below, each optional and
        keyword-only (not ``lr_scheduler``: attach schedulers to the
        `AEESOptimizer` itself).
      {options}

    Each ``step()`` needs the step's loss, computed before the update: the
    return value of ``closure`` when one is given (run with gradients
    enabled), else the value passed to `observe` since the last ``step()``.

    Example:
      >>> model = torch.nn.Linear(4, 1)
      >>> optimizer = AEESOptimizer(
      ...     torch.optim.AdamW(model.parameters(), lr=1e-2),
      ...     lr_candidates=[0.5, 1.0, 2.0],
      ...     episode_length=10,
      ...     seed=0,
      ... )
      >>> inputs = torch.randn(8, 4)
      >>> def closure():
      ...     optimizer.zero_grad()
      ...     loss = model(inputs).pow(2).mean()
      ...     loss.backward()
      ...     return loss
      >>> for _ in range(30):
      ...     _ = optimizer.step(closure)
      >>> optimizer.finalize()
      >>> len(optimizer.get_logs()["episode_rewards"])
      3
    """

    # A GradScaler passes its overflow check to step() instead of skipping it.
    _step_supports_amp_scaling = True

    def __init__(self, optimizer: torch.optim.Optimizer, **options: Unpack[AEESOptions]) -> None:
        if "lr_scheduler" in options:
            raise TypeError(
                "AEESOptimizer takes no lr_scheduler: create the scheduler on the "
                "AEESOptimizer itself and step it as usual."
            )
        aees = AEES(optimizer, **options)
        self._aees = aees
        self._observed: float | torch.Tensor | None = None
        self._next_step = 0
        # The Optimizer bookkeeping (hooks, step profiling) without copying the
        # param groups: they stay the wrapped optimizer's (see the properties).
        super().__setstate__({})

    # ------------------------------------------------------------------ the wrapped optimizer's objects

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        """The wrapped optimizer's param groups (the same list)."""
        groups: list[dict[str, Any]] = self._aees.optimizer.param_groups
        return groups

    @param_groups.setter
    def param_groups(self, groups: list[dict[str, Any]]) -> None:
        self._aees.optimizer.param_groups = groups

    @property
    def state(self) -> defaultdict[torch.Tensor, Any]:
        """The wrapped optimizer's per-parameter state (the same dict)."""
        return self._aees.optimizer.state

    @state.setter
    def state(self, state: defaultdict[torch.Tensor, Any]) -> None:
        self._aees.optimizer.state = state

    @property
    def defaults(self) -> dict[str, Any]:
        """The wrapped optimizer's defaults (the same dict)."""
        return self._aees.optimizer.defaults

    @defaults.setter
    def defaults(self, defaults: dict[str, Any]) -> None:
        self._aees.optimizer.defaults = defaults

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        """The wrapped optimizer."""
        return self._aees.optimizer

    # ------------------------------------------------------------------ the optimizer protocol

    def observe(self, loss: float | torch.Tensor) -> None:
        """Hand over the loss of the coming ``step()``, for loops without a closure.

        Raises:
          TypeError: if ``loss`` is neither a tensor nor a real number.
        """
        if isinstance(loss, bool) or not isinstance(loss, torch.Tensor | numbers.Real):
            raise TypeError(f"loss must be a tensor or a real number, got {loss!r}.")
        self._observed = loss

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One AEES step: noise, the wrapped ``step()`` at the multiplied LR, record.

        Args:
          closure: optional; reevaluates the model and returns the loss.

        Returns:
          What ``closure`` returned (``None`` without a closure).

        Raises:
          RuntimeError: if no loss is available (no closure, or one returning
            ``None``, and no `observe` since the last step); nothing changes.
          ValueError: as `AEES.step_end`, for a non-finite loss: at once for a
            Python number, or with the guard or ``skip_nonfinite`` for a tensor;
            in the default configuration a non-finite tensor loss or gradient
            is found when the buffered steps are read, by the ``step()`` that
            ends the episode (after those steps were applied), or the next
            ``step()`` or `finalize` if something else read them first. Only a
            GradScaler's overflow check is read every step.
        """
        returned = None
        if closure is not None:
            with torch.enable_grad():
                returned = closure()
        loss = returned if returned is not None else self._observed
        if loss is None:
            raise RuntimeError(
                "AEESOptimizer.step() needs the step's loss: pass a closure that returns it, "
                "or call observe(loss) before step()."
            )
        self._observed = None
        # Set by a GradScaler for the duration of this call (see the module docstring).
        found_inf: torch.Tensor | None = getattr(self, "found_inf", None)
        grad_scale: torch.Tensor | None = getattr(self, "grad_scale", None)
        self._aees.step_start(self._next_step)
        self._next_step += 1
        if found_inf is None:
            self._aees._end_step(loss, "check")
        elif float(found_inf.item()) != 0.0:
            self._aees._end_step(loss, "overflow")
        else:
            if grad_scale is not None:
                _unscale_gradients(self.param_groups, grad_scale)
            self._aees._end_step(loss, "finite")
        return returned

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear the wrapped optimizer's gradients."""
        self._aees.optimizer.zero_grad(set_to_none=set_to_none)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a param group to the wrapped optimizer (the guard's snapshot follows it)."""
        self._aees.optimizer.add_param_group(param_group)

    def state_dict(self) -> dict[str, Any]:
        """The wrapped optimizer's state dict, AEES's and the step count, as plain values.

        Loads with ``torch.load(path, weights_only=True)``.
        """
        return {
            "optimizer": self._aees.optimizer.state_dict(),
            "aees": self._aees.state_dict(),
            "next_step": self._next_step,
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore a `state_dict` of an `AEESOptimizer` with the same configuration.

        The AEES part is checked before anything changes, and the wrapped
        optimizer checks its own part before changing, so after an error both
        are as they were.

        Raises:
          ValueError: naming what is wrong (see `AEES.load_state_dict`).
        """
        state_dict = checked_entries(state_dict, _STATE_DICT_KEYS, "AEESOptimizer")
        next_step = state_dict["next_step"]
        if isinstance(next_step, bool) or not isinstance(next_step, int) or next_step < 0:
            raise ValueError(
                f"state_dict entry 'next_step' must be a non-negative int, got {next_step!r}."
            )
        loaded = self._aees._checked_state_dict(state_dict["aees"])
        self._aees.optimizer.load_state_dict(state_dict["optimizer"])
        self._aees._install(loaded)
        self._next_step = next_step
        self._observed = None

    # ------------------------------------------------------------------ AEES

    def observe_eval(self, eval_loss: float | torch.Tensor) -> None:
        """Hand AEES a held-out loss at the current parameters (see `AEES.observe_eval`)."""
        self._aees.observe_eval(eval_loss)

    def finalize(self) -> None:
        """Close the trailing partial episode (see `AEES.finalize`)."""
        self._aees.finalize()

    def get_logs(self) -> dict[str, list[Any]]:
        """Per-episode logs of every closed episode (see `AEES.get_logs`)."""
        return self._aees.get_logs()

    @property
    def config(self) -> core.AEESConfig:
        """The validated core configuration."""
        return self._aees.config

    @property
    def core_state(self) -> core.AEESState:
        """The core's state, e.g. for ``skipped_steps``."""
        return self._aees.core_state

    def __repr__(self) -> str:
        return f"AEESOptimizer({self._aees.optimizer!r})"


core.document(AEESOptimizer, AEESOptions, keep=("self", "optimizer"))


@torch.no_grad()
def _unscale_gradients(param_groups: list[dict[str, Any]], grad_scale: torch.Tensor) -> None:
    """Divide every gradient by ``grad_scale`` the way `torch.amp.GradScaler.unscale_` does."""
    inverse = grad_scale.double().reciprocal().float()
    for (device, _), grads in grouped_gradients(param_groups).items():
        ignored = torch.zeros((), dtype=torch.float32, device=device)
        torch._amp_foreach_non_finite_check_and_unscale_(grads, ignored, inverse.to(device))
