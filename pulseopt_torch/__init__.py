"""pulseopt_torch: AEES for any `torch.optim` optimizer, driven by the shared JAX core.

`AEES` wraps an optimizer; `CandidateConfig` is what each step runs with.
The core runs on JAX's CPU device in float64 and never touches an
accelerator (see `pulseopt_torch._runtime` for exactly how).
"""

from pulseopt_torch.aees import AEES
from pulseopt_torch.candidate import CandidateConfig

__all__ = ["AEES", "CandidateConfig"]
