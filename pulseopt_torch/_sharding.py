"""DTensor parameters (FSDP2, tensor parallel): the local shards the wrapper works on.

The wrapper never runs an operator on a `DTensor` itself: every copy, norm and
noise draw runs on ``tensor.to_local()``, a plain tensor holding this rank's
shard, so nothing needs a sharding strategy and no operator communicates. What
must be global (a norm) is summed over ranks by the wrapper, batched with the
other values it reduces (see `pulseopt_torch._step_records`).

A DTensor replicated over some mesh dimensions holds the same shard on every
rank along them; only the rank at coordinate 0 of those dimensions counts it
in a global sum (`counts_in_sums`), so summing over all ranks counts every
element once.
"""

from __future__ import annotations

from typing import TypeGuard

import torch
from torch.distributed.tensor import DTensor, Replicate, Shard


def is_dtensor(tensor: torch.Tensor) -> TypeGuard[DTensor]:
    """Whether ``tensor`` is a `DTensor`."""
    return isinstance(tensor, DTensor)


def local(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's shard of ``tensor`` (``tensor`` itself unless it is a `DTensor`)."""
    if is_dtensor(tensor):
        return tensor.to_local()
    return tensor


def counts_in_sums(tensor: torch.Tensor) -> bool:
    """Whether this rank adds its shard of ``tensor`` to a sum over ranks.

    True for a plain tensor, and for a DTensor unless this rank is a replica
    (a coordinate other than 0 along a `Replicate` mesh dimension) or is not
    in the tensor's mesh.
    """
    if not is_dtensor(tensor):
        return True
    coordinate = tensor.device_mesh.get_coordinate()
    if coordinate is None:
        return False
    return all(
        index == 0 or not isinstance(placement, Replicate)
        for index, placement in zip(coordinate, tensor.placements, strict=True)
    )


def shard_index(tensor: torch.Tensor) -> int:
    """Which shard of ``tensor`` this rank holds: 0 for a plain tensor, else its position
    among the distinct shards (replicas along `Replicate` dimensions share one)."""
    if not is_dtensor(tensor):
        return 0
    mesh = tensor.device_mesh
    coordinate = mesh.get_coordinate()
    if coordinate is None:
        return 0
    index = 0
    for dim, placement in enumerate(tensor.placements):
        if isinstance(placement, Shard):
            index = index * mesh.size(dim) + coordinate[dim]
    return index
