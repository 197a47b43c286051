"""A preset fills only the knobs left out: a knob given explicitly wins, even at its default."""

from __future__ import annotations

import jax.numpy as jnp
import optax
import pytest

import pulseopt_optax


def _structure(**knobs: object) -> pulseopt_optax.AEESStructure:
    tx = pulseopt_optax.aees(optax.sgd(0.1), seed=0, **knobs)
    return pulseopt_optax.find_aees_state(tx.init(jnp.zeros(2))).aees_structure


def test_the_robust_preset_turns_on_guard_and_growth_up_to_64() -> None:
    structure = _structure(preset="robust")
    assert (structure.guard, structure.growth, structure.max_lr_scale) == (True, True, 64.0)


@pytest.mark.parametrize(
    ("knobs", "expected"),
    [
        ({"growth": False}, (True, False, 64.0)),
        # Valid only with the preset's guard: the whole is checked, not the given part.
        ({"growth": True}, (True, True, 64.0)),
        ({"max_lr_scale": 1.0}, (True, True, 1.0)),
        ({"max_lr_scale": 8.0}, (True, True, 8.0)),
    ],
)
def test_explicit_knobs_win_over_the_preset_even_at_their_defaults(
    knobs: dict, expected: tuple
) -> None:
    structure = _structure(preset="robust", **knobs)
    assert (structure.guard, structure.growth, structure.max_lr_scale) == expected


def test_without_a_preset_the_defaults_stay() -> None:
    structure = _structure()
    assert (structure.guard, structure.growth, structure.max_lr_scale) == (False, False, 1.0)
