"""The spike guard's snapshot: one copy of the parameters and of the optimizer's state.

Buffers are allocated on the first snapshot and reused by every later one, so
the guard costs one parameter-sized copy (plus one of the optimizer's state)
for the whole run; a rollback copies everything back in place.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from pulseopt_torch._update_norm import combined_norm


class Snapshot:
    """Parameters and optimizer state at the last sound episode boundary."""

    def __init__(self) -> None:
        self._params: list[torch.Tensor] = []
        self._saved_params: list[torch.Tensor] = []
        self._saved_state: list[dict[str, Any]] = []

    @torch.no_grad()
    def take(self, optimizer: torch.optim.Optimizer, *, measure: bool = False) -> float | None:
        """Copy the current parameters and optimizer state into the snapshot.

        Returns:
          With ``measure``, the L2 distance between the current parameters and
          the previous snapshot (``None`` when there was none); else ``None``.
        """
        params = _params_of(optimizer)
        moved = None
        fresh = len(params) != len(self._params) or any(
            new is not old for new, old in zip(params, self._params, strict=True)
        )
        if measure and not fresh and self._saved_params:
            moved = _distance(params, self._saved_params)
        if fresh:
            self._params = params
            self._saved_params = [torch.empty_like(p) for p in params]
            self._saved_state = [{} for _ in params]
        torch._foreach_copy_(self._saved_params, [p.detach() for p in params])
        self._saved_state = [
            _copy_into(saved, optimizer.state.get(param, {}))
            for param, saved in zip(params, self._saved_state, strict=True)
        ]
        return moved

    @torch.no_grad()
    def restore(self, optimizer: torch.optim.Optimizer) -> None:
        """Copy the snapshot back into the parameters and the optimizer state, in place."""
        torch._foreach_copy_([p.detach() for p in self._params], self._saved_params)
        for param, saved in zip(self._params, self._saved_state, strict=True):
            if saved:
                optimizer.state[param] = _copy_into(optimizer.state.get(param, {}), saved)
            else:
                optimizer.state.pop(param, None)

    def state_dict(self) -> dict[str, Any]:
        """The snapshot as tensors and plain values (empty before the first snapshot)."""
        return {"params": list(self._saved_params), "optimizer_state": list(self._saved_state)}

    def load_state_dict(self, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
        """Restore a snapshot saved by `state_dict` for the same optimizer."""
        saved = state["params"]
        params = _params_of(optimizer) if saved else []
        if len(saved) != len(params) or any(
            s.shape != p.shape for s, p in zip(saved, params, strict=True)
        ):
            raise ValueError("state_dict entry 'guard_snapshot' does not match this optimizer.")
        self._params = params
        self._saved_params = [s.to(p.device, p.dtype) for s, p in zip(saved, params, strict=True)]
        self._saved_state = [dict(entry) for entry in state["optimizer_state"]] if saved else []


def _distance(params: list[torch.Tensor], saved: list[torch.Tensor]) -> float:
    """L2 distance between two lists of tensors (one difference at a time, norms in float64)."""
    return combined_norm(
        [
            torch.linalg.vector_norm(p.detach() - s, dtype=torch.float64)
            for p, s in zip(params, saved, strict=True)
        ]
    )


def _params_of(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [p for group in optimizer.param_groups for p in group["params"]]


def _copy_into(target: dict[str, Any], source: dict[str, Any]) -> dict[str, Any]:
    """``source``'s entries, reusing ``target``'s tensors of the same shape and dtype."""
    out: dict[str, Any] = {}
    for name, value in source.items():
        if isinstance(value, torch.Tensor):
            buffer = target.get(name)
            if (
                isinstance(buffer, torch.Tensor)
                and buffer is not value
                and buffer.shape == value.shape
                and buffer.dtype == value.dtype
                and buffer.device == value.device
            ):
                buffer.copy_(value)
            else:
                buffer = value.detach().clone()
            out[name] = buffer
        else:
            out[name] = copy.deepcopy(value)
    return out
