"""pulseopt_optax: AEES as a jit-compiled optax gradient transformation.

`aees(inner, ...)` wraps any optax optimizer; `get_logs`, `current_candidate`
and `finalize` read and close the AEES state wherever it sits inside an optax
or Flax NNX optimizer state. The gradient-noise samplers live in `pulseopt_core.noise`.
"""

from pulseopt_core.noise import NOISE_GENERATORS, add_gradient_noise, counter_normal
from pulseopt_optax.inspect import (
    best_params,
    current_candidate,
    finalize,
    find_aees_state,
    get_logs,
)
from pulseopt_optax.transform import (
    DYNAMIC_KNOBS,
    STRUCTURAL_KNOBS,
    AEESStructure,
    AEESTransformState,
    BestParams,
    GuardSnapshot,
    aees,
    all_finite,
)

__all__ = [
    "DYNAMIC_KNOBS",
    "NOISE_GENERATORS",
    "STRUCTURAL_KNOBS",
    "AEESStructure",
    "AEESTransformState",
    "BestParams",
    "GuardSnapshot",
    "add_gradient_noise",
    "aees",
    "all_finite",
    "best_params",
    "counter_normal",
    "current_candidate",
    "finalize",
    "find_aees_state",
    "get_logs",
]
