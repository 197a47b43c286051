"""A state made under one jax_enable_x64 setting and updated under the other is refused clearly."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
import pytest

from pulseopt_optax import aees


@pytest.mark.parametrize("made_with_x64", [False, True])
def test_updating_after_toggling_x64_names_the_setting(made_with_x64: bool) -> None:
    tx = aees(optax.sgd(0.1), lr_candidates=(0.5, 1.0), seed=0)
    with jax.enable_x64(made_with_x64):
        params = jnp.ones(3)
        state = tx.init(params)
    with jax.enable_x64(not made_with_x64):
        with pytest.raises(ValueError, match="jax_enable_x64"):
            tx.update(jnp.ones(3), state, params, value=1.0)
        with pytest.raises(ValueError, match="jax_enable_x64"):
            jax.jit(lambda s: tx.update(jnp.ones(3), s, params, value=1.0))(state)
        # A state made under the current setting works.
        fresh = tx.init(params)
        updates, _ = tx.update(jnp.ones(3), fresh, params, value=1.0)
        assert updates.shape == (3,)
