"""Gradient noise drawn from one seeded `torch.Generator` per parameter.

Each parameter owns a generator seeded with ``seed + 1009 * group_index +
param_index`` (created the first time the parameter receives noise), so the
noise a parameter gets does not depend on which other parameters had
gradients, and it matches the published PyTorch wrapper draw for draw.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch

# Spreads the generator seeds of different param groups apart.
_GROUP_SEED_STRIDE = 1009


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
                grad = param.grad
                if grad is None:
                    continue
                generator = self._generator(group_index, param_index, grad.device)
                noise = torch.randn(
                    grad.shape, generator=generator, device=grad.device, dtype=grad.dtype
                )
                # Scaling first and adding second rounds exactly like `grad + noise * std`.
                grad.add_(noise.mul_(std))

    def _generator(
        self, group_index: int, param_index: int, device: torch.device
    ) -> torch.Generator:
        name = f"{device}:{group_index}:{param_index}"
        generator = self._generators.get(name)
        if generator is None:
            generator = torch.Generator(device=device)
            generator.manual_seed(self._seed + _GROUP_SEED_STRIDE * group_index + param_index)
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
