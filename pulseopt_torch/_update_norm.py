"""The L2 norm of one optimizer step's parameter update, without per-step allocations.

Parameters are copied into one flat buffer per (device, dtype) before the step
and subtracted from it after, with `torch._foreach_*` kernels; the buffers are
allocated once and reused. The norm comes back to the host with a single sync.
"""

from __future__ import annotations

import torch

_GroupKey = tuple[torch.device, torch.dtype]


def combined_norm(norms: list[torch.Tensor]) -> float:
    """The L2 norm of several tensors from their own norms (any devices), with one sync."""
    if len(norms) == 1:
        return float(norms[0].item())
    home = norms[0].device
    squares = torch.stack([n.to(home, torch.float64).square() for n in norms])
    return float(squares.sum().sqrt().item())


class UpdateNormTracker:
    """Measures ``||params_after - params_before||_2`` across all parameters."""

    def __init__(self) -> None:
        self._params: list[torch.Tensor] = []
        self._flat_buffers: list[torch.Tensor] = []
        self._views: list[torch.Tensor] = []

    @torch.no_grad()
    def snapshot(self, params: list[torch.Tensor]) -> None:
        """Remember the current values of ``params`` (call right before the step)."""
        if not self._tracks(params):
            self._allocate(params)
        torch._foreach_copy_(self._views, self._params)

    @torch.no_grad()
    def norm(self) -> float:
        """The update norm since the last `snapshot` (reads one scalar from the device)."""
        if not self._params:
            return 0.0
        torch._foreach_sub_(self._views, self._params)
        return combined_norm([torch.linalg.vector_norm(flat) for flat in self._flat_buffers])

    def _tracks(self, params: list[torch.Tensor]) -> bool:
        return len(params) == len(self._params) and all(
            new is old for new, old in zip(params, self._params, strict=True)
        )

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
