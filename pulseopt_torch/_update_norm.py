"""L2 norms of parameter changes, in buffers allocated once and never overflowing.

`UpdateNormTracker` measures one optimizer step's update: parameters (their
local shards, for `DTensor` parameters) are copied into one flat buffer per
(device, dtype, sharded or not) before the step and subtracted from it after,
with `torch._foreach_*` kernels. The same buffers serve the spike guard's
distance to its snapshot, so that distance needs no temporary of the
parameters' size either.

Nothing is read back to the host here: a norm comes out as its squares on the
device (`NormSquares`), the part of plain parameters apart from this rank's
part of DTensor parameters, which must be summed over ranks before the square
root (`pulseopt_torch._step_records` does it, batched with the losses).

Norms never overflow the parameters' dtype: a float32/float64 buffer is
reduced in its own dtype (no copy), a half-precision one chunk by chunk in
float64, so no temporary larger than a chunk is ever made and a norm above
the dtype's range (65504 for float16) comes out right. The squares are
combined in float64.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from pulseopt_torch._sharding import counts_in_sums, is_dtensor, local

# (device, dtype, whether the buffer holds DTensor shards)
_GroupKey = tuple[torch.device, torch.dtype, bool]
# Elements converted to float64 at a time when reducing a half-precision buffer.
HALF_CHUNK = 1 << 20


class NormSquares(NamedTuple):
    """A squared L2 norm on the device, as float64 0-d tensors on one device.

    ``plain``: the part of ordinary tensors (the same on every rank under DDP).
    ``sharded``: this rank's part of DTensor shards; the squared norm is
    ``plain + sum over ranks of sharded``.
    """

    plain: torch.Tensor
    sharded: torch.Tensor


def flat_norms(flat: torch.Tensor) -> list[torch.Tensor]:
    """Norms whose combination is the L2 norm of the 1-D tensor ``flat``, in float32 or wider.

    Reduces float32, float64 and complex tensors in their own dtype, without a
    copy; half-precision ones in float64 chunks of `HALF_CHUNK` elements, so
    nothing of ``flat``'s size is copied.
    """
    if flat.dtype.is_floating_point and flat.dtype.itemsize < 4:
        return list(torch._foreach_norm(list(flat.split(HALF_CHUNK)), 2, dtype=torch.float64))
    return [torch.linalg.vector_norm(flat)]


class UpdateNormTracker:
    """Measures ``||params_after - params_before||_2`` across all parameters, on the device."""

    def __init__(self) -> None:
        self._params: list[torch.Tensor] = []
        # The parameters whose shards count in a sum over ranks (see `_sharding`).
        self._counted: list[torch.Tensor] = []
        self._has_dtensors = False
        self._flat_buffers: dict[_GroupKey, torch.Tensor] = {}
        self._views: list[torch.Tensor] = []
        self._home: torch.device | None = None

    @torch.no_grad()
    def snapshot(self, params: list[torch.Tensor]) -> None:
        """Remember the current values of ``params`` (call right before the step)."""
        self._follow(params)
        if self._views:
            torch._foreach_copy_(self._views, self._shards())

    @torch.no_grad()
    def squares(self) -> NormSquares | None:
        """The squared update norm since the last `snapshot` (``None`` without parameters)."""
        if not self._params:
            return None
        if self._views:
            torch._foreach_sub_(self._views, self._shards())
        return self._buffer_squares()

    @torch.no_grad()
    def distance_squares(
        self, params: list[torch.Tensor], others: list[torch.Tensor]
    ) -> NormSquares | None:
        """``||params - others||_2`` squared, computed in the tracker's buffers (nothing allocated).

        Overwrites what `snapshot` remembered, so call it outside a step.
        ``others`` must match the local shards of ``params`` in shape and
        dtype, one to one.
        """
        self._follow(params)
        if not self._params:
            return None
        counted = [
            other for param, other in zip(params, others, strict=True) if counts_in_sums(param)
        ]
        if self._views:
            torch._foreach_copy_(self._views, self._shards())
            torch._foreach_sub_(self._views, counted)
        return self._buffer_squares()

    def _shards(self) -> list[torch.Tensor]:
        """The local shards of the counted parameters (asked afresh: a DTensor may swap them)."""
        if not self._has_dtensors:
            return self._counted
        return [local(param) for param in self._counted]

    def _buffer_squares(self) -> NormSquares:
        assert self._home is not None
        parts: dict[bool, list[torch.Tensor]] = {False: [], True: []}
        for (_, _, of_shards), flat in self._flat_buffers.items():
            parts[of_shards].extend(
                norm.to(self._home, torch.float64).square() for norm in flat_norms(flat)
            )
        zero = torch.zeros((), dtype=torch.float64, device=self._home)
        plain, sharded = (
            torch.stack(parts[kind]).sum() if parts[kind] else zero for kind in (False, True)
        )
        return NormSquares(plain, sharded)

    def _follow(self, params: list[torch.Tensor]) -> None:
        """(Re)allocate the buffers when ``params`` are not the ones they were made for."""
        tracked = len(params) == len(self._params) and all(
            new is old for new, old in zip(params, self._params, strict=True)
        )
        if not tracked:
            self._allocate(params)

    def _allocate(self, params: list[torch.Tensor]) -> None:
        counted = [param for param in params if counts_in_sums(param)]
        shards = [local(param) for param in counted]
        sizes: dict[_GroupKey, int] = {}
        keys = [
            (shard.device, shard.dtype, is_dtensor(param))
            for param, shard in zip(counted, shards, strict=True)
        ]
        for key, shard in zip(keys, shards, strict=True):
            sizes[key] = sizes.get(key, 0) + shard.numel()
        flats = {key: torch.empty(size, device=key[0], dtype=key[1]) for key, size in sizes.items()}
        offsets = dict.fromkeys(sizes, 0)
        views = []
        for key, shard in zip(keys, shards, strict=True):
            start = offsets[key]
            views.append(flats[key][start : start + shard.numel()].view(shard.shape))
            offsets[key] = start + shard.numel()
        self._params = list(params)
        self._counted = counted
        self._has_dtensors = any(is_dtensor(param) for param in counted)
        self._flat_buffers = flats
        self._views = views
        self._home = params[0].device if params else None
