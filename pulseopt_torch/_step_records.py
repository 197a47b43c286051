"""Per-step values kept on the device until the wrapper reads them, in one transfer.

Each step the wrapper applies leaves a row here: its loss, whether a gradient
was not finite, and the squared norm of its update (and, on a step that takes
the guard's snapshot, of the distance moved since the previous snapshot).
Nothing is read back when a row is written; `StepRecords.read` brings every
row written since the last read to the host in one device-to-host transfer,
the only host sync, which the wrapper makes once per episode (or once per
step where a decision needs a value before the optimizer step).

Under `torch.distributed` the columns summed over ranks (the loss, the
gradient flag, and the DTensor parts of the norms) are all-reduced
asynchronously as soon as a row is written, so a read only waits for
collectives already in flight; every rank writes the same rows in the same
order, so they pair up. A read may also carry values that must be reduced
and read at once (`read`'s ``urgent``), with one blocking all-reduce.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.distributed as dist

from pulseopt_torch._update_norm import NormSquares

# Columns of a row; the first `_SUMMED` are summed over ranks.
_LOSS, _NONFINITE, _UPDATE_SHARDED, _MOVED_SHARDED, _UPDATE_PLAIN, _MOVED_PLAIN = range(6)
_SUMMED = 4
_COLUMNS = 6


class HostRow(NamedTuple):
    """One row on the host (values summed over ranks where they are summed).

    ``loss`` is the sum of the ranks' losses and ``nonfinite_gradients`` the
    number of ranks that flagged a gradient (NaN where the row had none);
    ``update_norm`` and ``moved_norm`` are L2 norms (NaN where the row had none).
    """

    loss: float
    nonfinite_gradients: float
    update_norm: float
    moved_norm: float


class StepRecords:
    """A fixed-capacity buffer of per-step rows on one device."""

    def __init__(self, capacity: int, device: torch.device, world_size: int) -> None:
        self._rows = torch.full((capacity, _COLUMNS), math.nan, dtype=torch.float64, device=device)
        self._count = 0
        self._world_size = world_size
        self._in_flight: list[Any] = []

    @property
    def count(self) -> int:
        """Rows written since the last read."""
        return self._count

    @property
    def full(self) -> bool:
        """Whether a row can be written only after a read."""
        return self._count == self._rows.shape[0]

    @property
    def device(self) -> torch.device:
        """Where the rows live."""
        return self._rows.device

    @torch.no_grad()
    def write(
        self,
        loss: torch.Tensor | float | None,
        nonfinite: torch.Tensor | None,
        update: NormSquares | None,
        moved: NormSquares | None,
    ) -> None:
        """Write a row (``None``: no value), without reading anything back.

        Raises:
          RuntimeError: if the buffer is `full`.
        """
        if self.full:
            raise RuntimeError("StepRecords is full; read it first.")
        row = self._rows[self._count]
        values: list[tuple[int, torch.Tensor | float | None]] = [
            (_LOSS, loss),
            (_NONFINITE, nonfinite),
            (_UPDATE_SHARDED, None if update is None else update.sharded),
            (_MOVED_SHARDED, None if moved is None else moved.sharded),
            (_UPDATE_PLAIN, None if update is None else update.plain),
            (_MOVED_PLAIN, None if moved is None else moved.plain),
        ]
        for column, value in values:
            cell = row[column]
            if isinstance(value, torch.Tensor):
                cell.copy_(value.reshape(()))
            else:
                cell.fill_(math.nan if value is None else value)
        self._count += 1
        if self._world_size > 1:
            self._in_flight.append(dist.all_reduce(row[:_SUMMED], async_op=True))

    @torch.no_grad()
    def read(self, urgent: Sequence[torch.Tensor] = ()) -> tuple[list[float], list[HostRow]]:
        """Every row written since the last read, and the ``urgent`` scalars, in one transfer.

        ``urgent`` values are summed over ranks (one blocking all-reduce of a
        fresh tensor: the caller's tensors are never written to) before the
        transfer; they come back as floats, in order.
        """
        for work in self._in_flight:
            work.wait()
        self._in_flight = []
        parts = []
        if urgent:
            summed = torch.stack(
                [value.reshape(()).to(self.device, torch.float64) for value in urgent]
            )
            if self._world_size > 1:
                dist.all_reduce(summed)
            parts.append(summed)
        count = self._count
        if count:
            parts.append(self._rows[:count].reshape(-1))
        self._count = 0
        if not parts:
            return [], []
        host = (torch.cat(parts) if len(parts) > 1 else parts[0]).cpu().numpy()
        urgent_values = [float(value) for value in host[: len(urgent)]]
        table = host[len(urgent) :].reshape(count, _COLUMNS)
        rows = [
            HostRow(
                loss=float(values[_LOSS]),
                nonfinite_gradients=float(values[_NONFINITE]),
                update_norm=_norm(values[_UPDATE_PLAIN], values[_UPDATE_SHARDED]),
                moved_norm=_norm(values[_MOVED_PLAIN], values[_MOVED_SHARDED]),
            )
            for values in table
        ]
        return urgent_values, rows


def _norm(plain: np.float64, sharded: np.float64) -> float:
    """The L2 norm from its squared parts (NaN when the row had no norm)."""
    return math.sqrt(float(plain) + float(sharded))
