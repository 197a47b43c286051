"""Counter-based random bits: a few integer operations instead of a threefry call.

The core draws little randomness per decision (a tie-break among a handful
of arms, a uniform arm in random control), so it hashes counters with the
MurmurHash3 finaliser rather than running threefry, whose unrolled rounds are
several hundred operations in every compiled step. All arithmetic is
``uint32``: the same bits with and without JAX's x64 mode.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

FMIX_MULTIPLIERS = (0x85EBCA6B, 0xC2B2AE35)
_COMBINE = 0x9E3779B1  # 2**32 / golden ratio, odd


def fmix32(x: jax.Array) -> jax.Array:
    """MurmurHash3's 32-bit finaliser: every input bit flips each output bit with p ~ 1/2."""
    first, second = (jnp.uint32(m) for m in FMIX_MULTIPLIERS)
    x = x ^ (x >> 16)
    x = x * first
    x = x ^ (x >> 13)
    x = x * second
    return x ^ (x >> 16)


def mix(*values: jax.Array | int, salt: int = 0) -> jax.Array:
    """One ``uint32`` hash of ``values`` (integers, or arrays of them, broadcast together).

    ``salt`` (a Python int) starts the hash, for independent streams at no cost.
    """
    h = jnp.uint32((_COMBINE * (salt + 1)) % 2**32)
    for value in values:
        word = jnp.asarray(value)
        word = word.astype(jnp.uint32) if word.dtype != jnp.uint32 else word
        h = fmix32((h ^ word) * jnp.uint32(_COMBINE) + jnp.uint32(FMIX_MULTIPLIERS[1]))
    return h


def uniform(bits: jax.Array) -> jax.Array:
    """``float32`` in [0, 1) from the top 24 bits of ``uint32`` ``bits`` (exact in float32)."""
    top = lax.shift_right_logical(bits, jnp.uint32(8)).astype(jnp.int32)
    return top.astype(jnp.float32) * jnp.float32(2.0**-24)
