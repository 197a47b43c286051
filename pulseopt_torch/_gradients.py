"""Whether every gradient is finite, as a flag on the device (no host sync).

A step whose gradients hold a NaN or an infinity must not go unnoticed (its
update poisons the parameters and the optimizer's state). `NonFiniteCheck`
sets a device flag with the kernel `torch.amp.GradScaler` uses for its
overflow check (scaling by one, which leaves every value as it was), one
launch per (device, dtype), reading each gradient once; the wrapper reads the
flag when it next reads the device (see `pulseopt_torch.aees`). DTensor
gradients are checked on their local shards, so each rank's flag covers its
own shards and the wrapper sums the flags over ranks.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch

from pulseopt_torch._sharding import local


def grouped_gradients(
    param_groups: Iterable[Mapping[str, Any]],
) -> dict[tuple[torch.device, torch.dtype], list[torch.Tensor]]:
    """The gradients' values by (device, dtype), as the AMP kernels take them.

    DTensor gradients give their local shards, sparse ones their values,
    complex ones their real view; empty ones are left out. Every tensor
    returned shares its gradient's storage, so in-place kernels act on it.
    """
    grouped: dict[tuple[torch.device, torch.dtype], list[torch.Tensor]] = {}
    for group in param_groups:
        for param in group["params"]:
            grad = param.grad
            if grad is None:
                continue
            grad = local(grad)
            if grad.is_sparse:
                grad = grad._values()
            if grad.is_complex():
                grad = torch.view_as_real(grad)
            if grad.numel() > 0:
                grouped.setdefault((grad.device, grad.dtype), []).append(grad)
    return grouped


class NonFiniteCheck:
    """Sets a device flag when some gradient element is NaN or infinite."""

    def __init__(self) -> None:
        self._ones: dict[torch.device, torch.Tensor] = {}

    @torch.no_grad()
    def flag(self, param_groups: Iterable[Mapping[str, Any]], device: torch.device) -> torch.Tensor:
        """A float32 scalar on ``device``: nonzero if some gradient is not finite.

        Gradients on other devices are checked on their own device and their
        flags added to it.
        """
        found = torch.zeros((), dtype=torch.float32, device=device)
        for (device, _), grads in grouped_gradients(param_groups).items():
            target = found if device == found.device else torch.zeros_like(found, device=device)
            torch._amp_foreach_non_finite_check_and_unscale_(grads, target, self._one(device))
            if target is not found:
                found.add_(target.to(found.device))
        return found

    def _one(self, device: torch.device) -> torch.Tensor:
        one = self._ones.get(device)
        if one is None:
            one = torch.ones((), dtype=torch.float32, device=device)
            self._ones[device] = one
        return one
