"""L2 norms of parameter changes, in buffers allocated once and never overflowing.

`UpdateNormTracker` measures one optimizer step's update: parameters are
copied into one flat buffer per (device, dtype) before the step and subtracted
from it after, with `torch._foreach_*` kernels. The same buffers serve the
spike guard's distance to its snapshot, so that distance needs no temporary
of the parameters' size either.

Norms never overflow the parameters' dtype: a float32/float64 buffer is
reduced in its own dtype (no copy), a half-precision one chunk by chunk in
float64, so no temporary larger than a chunk is ever made and a norm above
the dtype's range (65504 for float16) comes out right. The norms of the buffers are combined
in float64 and come back to the host with a single sync.
"""

from __future__ import annotations

import torch

_GroupKey = tuple[torch.device, torch.dtype]
# Elements converted to float64 at a time when reducing a half-precision buffer.
HALF_CHUNK = 1 << 20


def combined_norm(norms: list[torch.Tensor]) -> float:
    """The L2 norm of several tensors from their own norms (any devices), with one sync."""
    if len(norms) == 1:
        return float(norms[0].item())
    home = norms[0].device
    squares = torch.stack([n.to(home, torch.float64).square() for n in norms])
    return float(squares.sum().sqrt().item())


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
    """Measures ``||params_after - params_before||_2`` across all parameters."""

    def __init__(self) -> None:
        self._params: list[torch.Tensor] = []
        self._flat_buffers: list[torch.Tensor] = []
        self._views: list[torch.Tensor] = []

    @torch.no_grad()
    def snapshot(self, params: list[torch.Tensor]) -> None:
        """Remember the current values of ``params`` (call right before the step)."""
        self._follow(params)
        torch._foreach_copy_(self._views, self._params)

    @torch.no_grad()
    def norm(self) -> float:
        """The update norm since the last `snapshot` (reads one scalar from the device)."""
        if not self._params:
            return 0.0
        torch._foreach_sub_(self._views, self._params)
        return self._buffer_norm()

    @torch.no_grad()
    def distance(self, params: list[torch.Tensor], others: list[torch.Tensor]) -> float:
        """``||params - others||_2``, computed in the tracker's buffers (nothing allocated).

        Overwrites what `snapshot` remembered, so call it outside a step.
        ``others`` must match ``params`` in shape and dtype, one to one.
        """
        self._follow(params)
        if not self._params:
            return 0.0
        torch._foreach_copy_(self._views, self._params)
        torch._foreach_sub_(self._views, others)
        return self._buffer_norm()

    def _buffer_norm(self) -> float:
        return combined_norm([norm for flat in self._flat_buffers for norm in flat_norms(flat)])

    def _follow(self, params: list[torch.Tensor]) -> None:
        """(Re)allocate the buffers when ``params`` are not the ones they were made for."""
        tracked = len(params) == len(self._params) and all(
            new is old for new, old in zip(params, self._params, strict=True)
        )
        if not tracked:
            self._allocate(params)

    def _allocate(self, params: list[torch.Tensor]) -> None:
        sizes: dict[_GroupKey, int] = {}
        for param in params:
            key = (param.device, param.dtype)
            sizes[key] = sizes.get(key, 0) + param.numel()
        flats = {key: torch.empty(size, device=key[0], dtype=key[1]) for key, size in sizes.items()}
        offsets = dict.fromkeys(sizes, 0)
        views = []
        for param in params:
            key = (param.device, param.dtype)
            start = offsets[key]
            views.append(flats[key][start : start + param.numel()].view(param.shape))
            offsets[key] = start + param.numel()
        self._params = list(params)
        self._flat_buffers = list(flats.values())
        self._views = views
