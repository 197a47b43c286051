"""Gradient noise drawn from one seeded `torch.Generator` per parameter.

Each parameter owns a generator seeded with ``seed + 1009 * group_index +
param_index`` (created the first time the parameter receives noise), so the
noise a parameter gets does not depend on which other parameters had
gradients, and it matches the published PyTorch wrapper draw for draw.

A `DTensor` gradient (FSDP2, tensor parallel) gets its noise on its local
shard, drawn on the rank that holds it, with no communication. Each shard has
its own stream (the seed also depends on the shard's index, so shards differ
while replicas of one shard agree), so the noise is independent N(0, std^2)
per element and reproducible for a given sharding, but it is not what one
device would draw for the same element: matching that would make every rank
draw, and throw away, the draws of every element before its shard (the CPU
generator cannot skip ahead), a cost of the whole parameter on each rank.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch

from pulseopt_torch._sharding import local, shard_index

# Spreads the generator seeds of different param groups, and of different shards, apart.
_GROUP_SEED_STRIDE = 1009
_SHARD_SEED_STRIDE = 1_000_003


# From this many elements on, the CPU sampler fills a float32/float64 tensor 16
# values at a time and `normal_(0, std)` rounds each value exactly like `randn`
# followed by `mul_(std)` (tests/torch check it); other tensors take the second
# pass, so the draws never depend on which path ran.
_FUSED_MIN_ELEMENTS = 16
_FUSED_DTYPES = (torch.float32, torch.float64)


def scaled_normal(like: torch.Tensor, std: float, generator: torch.Generator) -> torch.Tensor:
    """``randn_like(like) * std`` from ``generator``, rounded as those two steps round.

    On the CPU, for float32 and float64 tensors of at least
    `_FUSED_MIN_ELEMENTS` elements, the draw and the scaling are one pass
    (`Tensor.normal_`), which gives the same bits and saves a pass over the
    tensor.
    """
    if (
        like.device.type == "cpu"
        and like.dtype in _FUSED_DTYPES
        and like.numel() >= _FUSED_MIN_ELEMENTS
    ):
        empty = torch.empty(like.shape, device=like.device, dtype=like.dtype)
        return empty.normal_(0.0, std, generator=generator)
    draws = torch.randn(like.shape, generator=generator, device=like.device, dtype=like.dtype)
    return draws.mul_(std)


class GradientNoise:
    """Adds ``std * N(0, 1)`` to every existing gradient, reproducibly."""

    def __init__(self, seed: int) -> None:
        self._seed = seed
        self._generators: dict[str, torch.Generator] = {}

    @torch.no_grad()
    def add_to_gradients(self, param_groups: Iterable[Mapping[str, Any]], std: float) -> None:
        """Add noise with standard deviation ``std`` to the ``.grad`` of every parameter."""
        for group_index, group in enumerate(param_groups):
            for param_index, param in enumerate(group["params"]):
                if param.grad is None:
                    continue
                grad = local(param.grad)
                generator = self._generator(
                    group_index, param_index, grad.device, shard_index(param.grad)
                )
                grad.add_(scaled_normal(grad, std, generator))

    def _generator(
        self, group_index: int, param_index: int, device: torch.device, shard: int
    ) -> torch.Generator:
        # One shard per parameter lives on a rank, so the name needs no shard index.
        name = f"{device}:{group_index}:{param_index}"
        generator = self._generators.get(name)
        if generator is None:
            generator = torch.Generator(device=device)
            generator.manual_seed(
                self._seed
                + _GROUP_SEED_STRIDE * group_index
                + param_index
                + _SHARD_SEED_STRIDE * shard
            )
            self._generators[name] = generator
        return generator

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Every generator's state, keyed ``"<device>:<group>:<param>"``."""
        return {name: generator.get_state() for name, generator in self._generators.items()}

    @classmethod
    def from_state_dict(cls, seed: int, states: object) -> GradientNoise:
        """A `GradientNoise` with the generators saved by `state_dict`.

        Raises:
          ValueError: if ``states`` is not a dict of ``"<device>:<group>:<param>"``
            names to generator states that fit this build of PyTorch.
        """
        where = "state_dict entry 'noise_generators'"
        if not isinstance(states, Mapping):
            raise ValueError(f"{where} must be a dict, got {type(states).__name__}.")
        noise = cls(seed)
        for name, state in states.items():
            parts = name.rsplit(":", 2) if isinstance(name, str) else []
            if len(parts) != 3 or not all(part.isdigit() for part in parts[1:]):
                raise ValueError(f"{where} has a malformed name {name!r}.")
            if not isinstance(state, torch.Tensor):
                raise ValueError(f"{where} {name!r} must be a tensor.")
            try:
                generator = torch.Generator(device=parts[0])
                generator.set_state(state)
            except (RuntimeError, TypeError, ValueError) as error:
                raise ValueError(f"{where} {name!r} cannot be restored: {error}") from None
            noise._generators[name] = generator
        return noise
