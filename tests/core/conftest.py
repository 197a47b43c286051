"""Shared fixtures and helpers for the core tests."""

from __future__ import annotations

import functools
from collections.abc import Iterator

import jax
import numpy as np
import pytest

import pulseopt_core as core


@pytest.fixture
def x64() -> Iterator[None]:
    """Run a test with JAX's 64-bit mode on (the core then computes in float64)."""
    with jax.enable_x64(True):
        yield


@functools.cache
def _runner(config: core.AEESConfig, finalize: bool, x64: bool):
    """One compiled scan per configuration (x64 is part of the cache key)."""

    @jax.jit
    def run(state: core.AEESState, losses: jax.Array, norms: jax.Array | None) -> core.AEESState:
        def body(state, inputs):
            loss, norm = inputs
            return core.record_step(config, state, loss, norm), None

        state, _ = jax.lax.scan(body, state, (losses, norms))
        return core.finalize(config, state) if finalize else state

    return run


def run_core(
    config: core.AEESConfig,
    losses: np.ndarray,
    update_norms: np.ndarray | None = None,
    *,
    key: int | jax.Array | None = None,
    finalize: bool = True,
) -> core.AEESState:
    """Feed a loss sequence through the core inside one `lax.scan`, then finalize."""
    dtype = core.float_dtype()
    losses = np.asarray(losses, dtype)
    norms = None if update_norms is None else np.asarray(update_norms, dtype)
    run = _runner(config, finalize, dtype == np.float64)
    return run(core.init(config, key), losses, norms)


def trending_losses(rng: np.random.Generator, steps: int, segment: int) -> np.ndarray:
    """Positive losses whose trend switches between falling, flat and rising every segment."""
    drifts = rng.choice([-0.03, 0.0, 0.03], size=steps // segment + 1)
    drift = np.repeat(drifts, segment)[:steps]
    jitter = rng.normal(0.0, 0.02, size=steps) * (drift != 0.0)
    return np.exp(np.cumsum(drift + jitter)) * rng.uniform(0.5, 2.0)
