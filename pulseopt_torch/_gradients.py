"""Whether every gradient is finite, as one scalar on the device (no host sync).

A step whose gradients hold a NaN or an infinity must not reach the optimizer
(its update would poison the parameters and the optimizer's state), so the
wrapper reads this flag together with the loss, in the same device read.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import torch


@torch.no_grad()
def largest_magnitude(param_groups: Iterable[Mapping[str, Any]]) -> torch.Tensor | None:
    """The largest ``|g|`` over every gradient element, as a 0-d tensor (``None`` without gradients).

    It is infinite when some element is infinite and NaN when some element is
    NaN, and finite otherwise (the maximum of finite values cannot overflow).
    Reads every gradient once with `torch._foreach_norm`; allocates only scalars.
    """
    by_device: dict[torch.device, list[torch.Tensor]] = {}
    for group in param_groups:
        for param in group["params"]:
            grad = param.grad
            if grad is None:
                continue
            if grad.is_sparse:
                grad = grad._values()
            if grad.numel() > 0:
                by_device.setdefault(grad.device, []).append(grad)
    if not by_device:
        return None
    maxima = [
        torch.stack(torch._foreach_norm(grads, math.inf)).amax() for grads in by_device.values()
    ]
    if len(maxima) == 1:
        return maxima[0]
    home = maxima[0].device
    return torch.stack([m.to(home, torch.float32) for m in maxima]).amax()
