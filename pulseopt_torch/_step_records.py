"""Per-step values kept on the device until the wrapper reads them, in one transfer.

Each step the wrapper applies leaves a row here: its loss, whether a gradient
was not finite, and the squared norm of its update. Nothing is read back when
a row is written; `StepRecords.read` brings every row written since the last
read to the host in one device-to-host transfer, the only host sync, which the
wrapper makes once per episode (or once per step where a decision needs a
value before the optimizer step).

Under `torch.distributed` the columns summed over ranks (the loss, the
gradient flag, and the DTensor part of the norm) are all-reduced
asynchronously as soon as a row is written, so a read only waits for
collectives already in flight; every rank writes the same rows in the same
order, so they pair up. A read may also carry values that must be reduced
and read at once (`read`'s ``urgent`` scalars and ``norms``), with one
blocking all-reduce.
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
_LOSS, _NONFINITE, _UPDATE_SHARDED, _UPDATE_PLAIN = range(4)
_SUMMED = 3
_COLUMNS = 4


class HostRow(NamedTuple):
    """One row on the host (values summed over ranks where they are summed).

    ``loss`` is the sum of the ranks' losses and ``nonfinite_gradients`` the
    number of ranks that flagged a gradient (NaN where the row had none);
    ``update_norm`` is an L2 norm (NaN where the row had none).
    """

    loss: float
    nonfinite_gradients: float
    update_norm: float


class HostRead(NamedTuple):
    """What one `StepRecords.read` brought to the host."""

    urgent: list[float]
    norms: list[float]
    rows: list[HostRow]


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
            (_UPDATE_PLAIN, None if update is None else update.plain),
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
    def read(
        self, urgent: Sequence[torch.Tensor] = (), norms: Sequence[NormSquares] = ()
    ) -> HostRead:
        """Every row written since the last read, ``urgent`` and ``norms``, in one transfer.

        ``urgent`` scalars and the sharded parts of ``norms`` are summed over
        ranks (one blocking all-reduce of a fresh tensor: the caller's tensors
        are never written to) before the transfer; they come back as floats,
        in order, the norms as L2 norms.
        """
        for work in self._in_flight:
            work.wait()
        self._in_flight = []
        parts = []
        reduced = [*urgent, *(norm.sharded for norm in norms)]
        if reduced:
            summed = torch.stack(
                [value.reshape(()).to(self.device, torch.float64) for value in reduced]
            )
            if self._world_size > 1:
                dist.all_reduce(summed)
            parts.append(summed)
        parts.extend(norm.plain.reshape(1).to(self.device, torch.float64) for norm in norms)
        count = self._count
        if count:
            parts.append(self._rows[:count].reshape(-1))
        self._count = 0
        if not parts:
            return HostRead([], [], [])
        host = (torch.cat(parts) if len(parts) > 1 else parts[0]).cpu().numpy()
        head = len(urgent)
        sharded = host[head : head + len(norms)]
        plain = host[head + len(norms) : head + 2 * len(norms)]
        table = host[len(reduced) + len(norms) :].reshape(count, _COLUMNS)
        rows = [
            HostRow(
                loss=float(values[_LOSS]),
                nonfinite_gradients=float(values[_NONFINITE]),
                update_norm=_norm(values[_UPDATE_PLAIN], values[_UPDATE_SHARDED]),
            )
            for values in table
        ]
        return HostRead(
            [float(value) for value in host[:head]],
            [_norm(p, q) for p, q in zip(plain, sharded, strict=True)],
            rows,
        )


def _norm(plain: np.float64, sharded: np.float64) -> float:
    """The L2 norm from its squared parts (NaN when the row had no norm)."""
    return math.sqrt(float(plain) + float(sharded))
