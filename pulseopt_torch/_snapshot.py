"""The spike guard's snapshot: one copy of the parameters and of the optimizer's state.

Every buffer is allocated early and reused by every snapshot: the parameter
copies when the snapshot first follows the optimizer's parameters (the first
guarded step), the optimizer-state copies right after the first optimizer step
that creates that state (`reserve_state`). So an out-of-memory error comes at
the start of a run, never at its first episode boundary, and the guard costs
one parameter-sized copy plus one of the optimizer's state for the whole run.
A rollback copies everything back in place.

Parameters added with ``optimizer.add_param_group`` after construction join
the snapshot (`follow_params`) with the values and state they have when the
wrapper first sees them, so a rollback restores them too.

For `DTensor` parameters and optimizer state (FSDP2, tensor parallel) the
snapshot holds plain copies of the local shards (shard-sized, never
full-sized), and every copy runs on ``to_local()`` views, so nothing
communicates and every rank copies its own shards.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch

from pulseopt_torch._sharding import DTensor, is_dtensor, local

# What a DTensor in the optimizer state was, to rebuild it around a saved shard.
_Spec = tuple[Any, Any, torch.Size, tuple[int, ...]]


class Snapshot:
    """Parameters and optimizer state at the last sound episode boundary."""

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self._optimizer = optimizer
        # Number of parameters in each param group when last followed.
        self._layout: tuple[int, ...] | None = None
        self._params: list[torch.Tensor] = []
        self._saved_params: list[torch.Tensor] = []
        # What the snapshot holds for each parameter's optimizer state; its
        # tensors are the ones in `_state_buffers`.
        self._saved_state: list[dict[str, Any]] = []
        self._state_buffers: list[dict[str, torch.Tensor]] = []
        self._state_specs: list[dict[str, _Spec]] = []
        self._reserved_for = -1
        self._holds = False

    @property
    def params(self) -> list[torch.Tensor]:
        """The parameters the snapshot covers, in optimizer order."""
        return self._params

    @property
    def saved_params(self) -> list[torch.Tensor]:
        """The snapshot's copy of `params` (their local shards; meaningful once `holds`)."""
        return self._saved_params

    @property
    def holds(self) -> bool:
        """Whether a snapshot was taken (or loaded)."""
        return self._holds

    @torch.no_grad()
    def follow_params(self) -> None:
        """Cover the optimizer's parameters, allocating copies for any not covered yet.

        Cheap when nothing changed (one length per param group is compared).
        A parameter seen for the first time enters with its present value and
        optimizer state, so a rollback before the next snapshot restores it
        to where it joined.
        """
        layout = tuple(len(group["params"]) for group in self._optimizer.param_groups)
        if layout == self._layout:
            return
        known = {id(param): index for index, param in enumerate(self._params)}
        params = _params_of(self._optimizer)
        saved_params: list[torch.Tensor] = []
        saved_state: list[dict[str, Any]] = []
        state_buffers: list[dict[str, torch.Tensor]] = []
        state_specs: list[dict[str, _Spec]] = []
        for param in params:
            index = known.get(id(param))
            if index is not None:
                saved_params.append(self._saved_params[index])
                saved_state.append(self._saved_state[index])
                state_buffers.append(self._state_buffers[index])
                state_specs.append(self._state_specs[index])
                continue
            buffers: dict[str, torch.Tensor] = {}
            specs: dict[str, _Spec] = {}
            saved_params.append(local(param).detach().clone())
            saved_state.append(_copy_into(buffers, self._optimizer.state.get(param, {}), specs))
            state_buffers.append(buffers)
            state_specs.append(specs)
        self._params = params
        self._saved_params = saved_params
        self._saved_state = saved_state
        self._state_buffers = state_buffers
        self._state_specs = state_specs
        self._layout = layout
        self._reserved_for = -1

    @torch.no_grad()
    def reserve_state(self) -> None:
        """Allocate copies of every optimizer-state tensor that has none yet.

        Call after each optimizer step: optimizers create their state lazily,
        on their first step. Cheap when the optimizer holds state for as many
        parameters as at the last call.
        """
        state = self._optimizer.state
        if len(state) == self._reserved_for:
            return
        for param, buffers in zip(self._params, self._state_buffers, strict=True):
            for name, value in state.get(param, {}).items():
                if isinstance(value, torch.Tensor) and not _fits(buffers.get(name), value):
                    # Zeros, not `empty_like`: writing commits the memory now, so a
                    # host that overcommits cannot fail at the first snapshot instead.
                    buffers[name] = torch.zeros_like(local(value))
        self._reserved_for = len(state)

    @torch.no_grad()
    def take(self) -> None:
        """Copy the current parameters and optimizer state into the snapshot."""
        self.follow_params()
        if self._params:
            torch._foreach_copy_(self._saved_params, [local(p).detach() for p in self._params])
        state = self._optimizer.state
        self._saved_state = [
            _copy_into(buffers, state.get(param, {}), specs)
            for param, buffers, specs in zip(
                self._params, self._state_buffers, self._state_specs, strict=True
            )
        ]
        self._holds = True

    @torch.no_grad()
    def restore(self) -> None:
        """Copy the snapshot back into the parameters and the optimizer state, in place."""
        if self._params:
            torch._foreach_copy_([local(p).detach() for p in self._params], self._saved_params)
        state = self._optimizer.state
        for param, saved, specs in zip(
            self._params, self._saved_state, self._state_specs, strict=True
        ):
            if saved:
                state[param] = _copied_back(state.get(param, {}), saved, specs)
            else:
                state.pop(param, None)

    def state_dict(self) -> dict[str, Any]:
        """The snapshot as tensors and plain values (no parameters before the first snapshot)."""
        self.follow_params()
        held = self._holds
        return {
            "optimizer": _optimizer_name(self._optimizer),
            "params": list(self._saved_params) if held else [],
            "optimizer_state": [dict(saved) for saved in self._saved_state] if held else [],
        }

    @classmethod
    def from_state_dict(cls, optimizer: torch.optim.Optimizer, state: object) -> Snapshot:
        """A snapshot of ``optimizer`` rebuilt from `state_dict`, checked entry by entry.

        Raises:
          ValueError: naming what does not match: the optimizer's class, the
            number or shapes of the parameters, or the structure of a
            parameter's optimizer state (its entries, their shapes and dtypes).
        """
        where = "state_dict entry 'guard_snapshot'"
        if not isinstance(state, Mapping):
            raise ValueError(f"{where} must be a dict, got {type(state).__name__}.")
        missing = sorted({"params", "optimizer_state"} - set(state))
        if missing:
            raise ValueError(f"{where} lacks {', '.join(map(repr, missing))}.")
        saved_name = state.get("optimizer")
        ours = _optimizer_name(optimizer)
        if saved_name is not None and saved_name != ours:
            raise ValueError(
                f"{where} was saved around a {saved_name}, but this AEES wraps a {ours}; "
                "its optimizer state cannot be restored into this optimizer."
            )
        saved_params, saved_state = state["params"], state["optimizer_state"]
        if not isinstance(saved_params, list) or not isinstance(saved_state, list):
            raise ValueError(f"{where} must hold lists under 'params' and 'optimizer_state'.")
        snapshot = cls(optimizer)
        snapshot.follow_params()
        if not saved_params:
            return snapshot
        params = snapshot._params
        if len(saved_params) != len(params) or len(saved_state) != len(params):
            raise ValueError(
                f"{where} holds {len(saved_params)} parameters and {len(saved_state)} "
                f"optimizer states, but the optimizer has {len(params)} parameters."
            )
        for index, (param, saved, entry) in enumerate(
            zip(params, saved_params, saved_state, strict=True)
        ):
            shape = local(param).shape
            if not isinstance(saved, torch.Tensor) or saved.shape != shape:
                found = tuple(saved.shape) if isinstance(saved, torch.Tensor) else type(saved)
                raise ValueError(
                    f"{where} parameter {index} is {found}, but the optimizer's has shape "
                    f"{tuple(shape)} (on this rank)."
                )
            _check_state_entry(where, index, entry, optimizer.state.get(param, {}))
        for index, (param, saved, entry) in enumerate(
            zip(params, saved_params, saved_state, strict=True)
        ):
            snapshot._saved_params[index].copy_(saved.to(local(param).device))
            buffers = snapshot._state_buffers[index]
            snapshot._saved_state[index] = _copy_into(buffers, entry, snapshot._state_specs[index])
        snapshot._holds = True
        return snapshot


def _check_state_entry(where: str, index: int, entry: object, current: Mapping[str, Any]) -> None:
    """Raise unless ``entry`` can stand for a parameter's state shaped like ``current``."""
    if not isinstance(entry, Mapping) or not all(isinstance(name, str) for name in entry):
        raise ValueError(f"{where} optimizer state {index} must be a dict with string keys.")
    if not current or not entry:
        return
    if set(entry) != set(current):
        raise ValueError(
            f"{where} optimizer state {index} has entries {sorted(entry)}, but this "
            f"optimizer's state has {sorted(current)}."
        )
    for name, value in current.items():
        saved = entry[name]
        value = local(value) if isinstance(value, torch.Tensor) else value
        if isinstance(value, torch.Tensor) and (
            not isinstance(saved, torch.Tensor)
            or saved.shape != value.shape
            or saved.dtype != value.dtype
        ):
            raise ValueError(
                f"{where} optimizer state {index} entry {name!r} does not match this "
                "optimizer's (shape or dtype)."
            )


def _optimizer_name(optimizer: torch.optim.Optimizer) -> str:
    kind = type(optimizer)
    return f"{kind.__module__}.{kind.__qualname__}"


def _params_of(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [p for group in optimizer.param_groups for p in group["params"]]


def _fits(buffer: torch.Tensor | None, value: torch.Tensor) -> bool:
    """Whether ``buffer`` can hold a copy of ``value`` (of its local shard, for a DTensor)."""
    value = local(value)
    return (
        buffer is not None
        and buffer is not value
        and buffer.shape == value.shape
        and buffer.dtype == value.dtype
        and buffer.device == value.device
    )


def _copy_into(
    buffers: dict[str, torch.Tensor], source: Mapping[str, Any], specs: dict[str, _Spec]
) -> dict[str, Any]:
    """``source``'s entries, its tensors copied into ``buffers`` (which gains any it lacked).

    A DTensor's local shard is copied, and what it was goes into ``specs``.
    """
    out: dict[str, Any] = {}
    for name, value in source.items():
        if isinstance(value, torch.Tensor):
            if is_dtensor(value):
                specs[name] = (value.device_mesh, value.placements, value.shape, value.stride())
            shard = local(value).detach()
            buffer = buffers.get(name)
            if _fits(buffer, shard):
                assert buffer is not None
                buffer.copy_(shard)
            else:
                buffer = shard.clone()
                buffers[name] = buffer
            out[name] = buffer
        else:
            out[name] = copy.deepcopy(value)
    return out


def _copied_back(
    target: Mapping[str, Any], saved: Mapping[str, Any], specs: Mapping[str, _Spec]
) -> dict[str, Any]:
    """A parameter's optimizer state holding ``saved``: copied into ``target``'s tensors in
    place where they fit, else into fresh copies (rebuilt as DTensors where they were)."""
    out: dict[str, Any] = {}
    for name, value in saved.items():
        if not isinstance(value, torch.Tensor):
            out[name] = copy.deepcopy(value)
            continue
        current = target.get(name)
        if isinstance(current, torch.Tensor) and _fits(value, current):
            local(current).copy_(value)
            out[name] = current
        elif name in specs:
            mesh, placements, shape, stride = specs[name]
            out[name] = DTensor.from_local(
                value.clone(), mesh, placements, run_check=False, shape=shape, stride=stride
            )
        else:
            out[name] = value.clone()
    return out
