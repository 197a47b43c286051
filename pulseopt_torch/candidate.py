"""`CandidateConfig`: the arms in force for one training step, as plain Python values."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class CandidateConfig:
    """One candidate: an LR multiplier and a gradient-noise standard deviation.

    Attributes:
      name: the combined arm name, e.g. ``"lr0p5_n0p005"``.
      lr_multiplier: factor applied to every param group's ``lr`` for the step.
      noise_std: standard deviation of the Gaussian noise added to every gradient.
    """

    name: str
    lr_multiplier: float = 1.0
    noise_std: float = 0.0

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("CandidateConfig name must be a non-empty string.")
        if not self.lr_multiplier > 0.0:
            raise ValueError(f"lr_multiplier must be positive, got {self.lr_multiplier!r}.")
        if not self.noise_std >= 0.0:
            raise ValueError(f"noise_std must be non-negative, got {self.noise_std!r}.")
