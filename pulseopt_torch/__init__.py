"""pulseopt_torch: AEES for any `torch.optim` optimizer, driven by the shared JAX core.

`AEES` wraps an optimizer for loops that call ``step_start``/``step_end``;
`AEESOptimizer` is the same behind the `torch.optim.Optimizer` protocol, for
loops that own ``optimizer.step()`` (closures, LR schedulers, GradScaler,
Lightning); `CandidateConfig` is what each step runs with. The core runs on
JAX's CPU device in float64 and never touches an accelerator (see
`pulseopt_torch._runtime` for exactly how).
"""

from pulseopt_torch.aees import AEES
from pulseopt_torch.candidate import CandidateConfig
from pulseopt_torch.optimizer import AEESOptimizer

__all__ = ["AEES", "AEESOptimizer", "CandidateConfig"]
