"""Every knob is declared once (`pulseopt_core.AEESKnobs`) and shows everywhere by name."""

from __future__ import annotations

import inspect

import optax
import pytest
import torch

import pulseopt_core as core
import pulseopt_optax
import pulseopt_torch

# (callable, its leading arguments for a call with only knobs)
ENTRY_POINTS = {
    "AEESConfig": (core.AEESConfig, ()),
    "aees": (pulseopt_optax.aees, (optax.sgd(0.1),)),
    "AEES": (pulseopt_torch.AEES, ()),
    "AEESOptimizer": (pulseopt_torch.AEESOptimizer, ()),
}


def _leading(name: str) -> tuple[object, ...]:
    if name in ("AEES", "AEESOptimizer"):
        return (torch.optim.SGD([torch.zeros(2, requires_grad=True)], lr=0.1),)
    return ENTRY_POINTS[name][1]


def test_every_knob_is_structural_or_dynamic_and_never_both() -> None:
    structural, dynamic = set(core.STRUCTURAL_KNOBS), set(core.DYNAMIC_KNOBS)
    assert structural.isdisjoint(dynamic)
    assert structural | dynamic == set(core.KNOBS)
    assert set(core.PRESET_KNOBS) == {name for p in core.PRESETS.values() for name in p}
    assert pulseopt_optax.STRUCTURAL_KNOBS == core.STRUCTURAL_KNOBS
    assert pulseopt_optax.DYNAMIC_KNOBS == core.DYNAMIC_KNOBS


def test_the_config_holds_every_declared_knob_at_its_declared_default() -> None:
    config = core.AEESConfig()
    for name, declared in core.KNOBS.items():
        assert getattr(config, name) == declared.knob.default, name


@pytest.mark.parametrize("name", ["aees", "AEES", "AEESOptimizer"])
def test_adapters_spell_out_every_knob_in_signature_and_docstring(name: str) -> None:
    target = ENTRY_POINTS[name][0]
    parameters = inspect.signature(target).parameters
    doc = inspect.getdoc(target) or ""
    assert "{options}" not in doc
    for knob, declared in core.KNOBS.items():
        assert parameters[knob].kind is inspect.Parameter.KEYWORD_ONLY
        default = None if declared.knob.preset else declared.knob.default
        assert parameters[knob].default == default, knob
        assert f"\n  {knob} (" in doc, knob
    for option in ("preset", "track_update_norm", "seed"):
        assert option in parameters
        assert f"\n  {option} (" in doc


def test_the_config_docstring_documents_every_knob() -> None:
    doc = inspect.getdoc(core.AEESConfig) or ""
    for knob, declared in core.KNOBS.items():
        assert f"{knob} (" in doc
        assert declared.knob.doc.split()[0] in doc


@pytest.mark.parametrize("name", sorted(ENTRY_POINTS))
def test_an_unknown_knob_is_a_type_error_naming_it(name: str) -> None:
    target = ENTRY_POINTS[name][0]
    with pytest.raises(TypeError, match="'episode_lenght'"):
        target(*_leading(name), episode_lenght=3)


@pytest.mark.parametrize("name", sorted(ENTRY_POINTS))
def test_a_bad_knob_value_is_a_value_error_naming_it(name: str) -> None:
    target = ENTRY_POINTS[name][0]
    with pytest.raises(ValueError, match="episode_length"):
        target(*_leading(name), episode_length=0)
