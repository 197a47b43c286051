"""With deterministic tie-breaking, pulseopt_torch.AEES reproduces the published wrapper.

Both wrappers train the same model on the same batches with the same seed; the
published one has its ties broken towards the lowest arm index, ours runs with
``tie_break="lowest"``. Arms must agree in every episode, rewards to 1e-5 and
the parameters bit for bit (noise arms included).
"""

from __future__ import annotations

import pulseopt
import pulseopt.controller
import pytest
import torch
from aees_torch_helpers import tiny_model, train

import pulseopt_torch

EPISODE_LENGTH = 5
EPISODES = 20
STEPS = EPISODE_LENGTH * EPISODES

OPTIMIZERS = {
    "adamw": lambda params: torch.optim.AdamW(params, lr=3e-2, weight_decay=1e-2),
    "sgd_momentum": lambda params: torch.optim.SGD(params, lr=5e-2, momentum=0.9),
}

# Every optimizer, scheduler, structured mode and context mode appears, and
# each context mode runs in both structured modes.
CASES = [
    ("adamw", False, "independent", "none"),
    ("adamw", True, "conditional", "none"),
    ("sgd_momentum", True, "independent", "trend"),
    ("sgd_momentum", False, "conditional", "trend"),
    ("adamw", True, "independent", "trend_phase"),
    ("sgd_momentum", True, "conditional", "trend_phase"),
]


@pytest.fixture
def lowest_index_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        pulseopt.controller.DiscountedUCBController,
        "_break_tie",
        lambda self, candidates: min(candidates),
    )


def _run(wrapper_cls: type, optimizer_name: str, cosine: bool, **knobs: object) -> tuple:
    model = tiny_model(seed=1)
    optimizer = OPTIMIZERS[optimizer_name](model.parameters())
    scheduler = (
        torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=STEPS) if cosine else None
    )
    aees = wrapper_cls(
        optimizer,
        lr_candidates=[0.5, 1.0, 2.0],
        noise_candidates=[0.0, 0.01],
        episode_length=EPISODE_LENGTH,
        lr_scheduler=scheduler,
        seed=7,
        **knobs,
    )
    train(aees, model, range(STEPS))
    aees.finalize()
    return aees.get_logs(), [p.detach().clone() for p in model.parameters()]


@pytest.mark.usefixtures("lowest_index_reference")
@pytest.mark.parametrize(("optimizer_name", "cosine", "structured", "context"), CASES)
def test_matches_published_wrapper_arms_rewards_and_parameters(
    optimizer_name: str, cosine: bool, structured: str, context: str
) -> None:
    knobs: dict[str, object] = {"structured_control_mode": structured, "context_mode": context}
    if context == "trend_phase":
        knobs["total_training_steps"] = STEPS
    expected_logs, expected_params = _run(pulseopt.AEES, optimizer_name, cosine, **knobs)
    logs, params = _run(pulseopt_torch.AEES, optimizer_name, cosine, tie_break="lowest", **knobs)

    assert len(logs["episode_rewards"]) == EPISODES
    for key in ("selected_lr_indices", "selected_noise_indices", "selected_combined_names"):
        assert logs[key] == expected_logs[key], key
    if context != "none":
        assert logs["context_bucket_ids"] == expected_logs["context_bucket_ids"]
    assert logs["episode_rewards"] == pytest.approx(expected_logs["episode_rewards"], abs=1e-5)
    assert len(set(logs["selected_combined_names"])) > 1, "the bandit never switched arms"
    assert 0.01 in logs["selected_noise_values"], "no episode ran with gradient noise"
    for ours, theirs in zip(params, expected_params, strict=True):
        assert torch.equal(ours, theirs)


@pytest.mark.usefixtures("lowest_index_reference")
def test_logs_match_published_wrapper_key_for_key() -> None:
    knobs = {"context_mode": "trend_phase", "total_training_steps": STEPS}
    expected_logs, _ = _run(pulseopt.AEES, "adamw", False, **knobs)
    logs, _ = _run(pulseopt_torch.AEES, "adamw", False, tie_break="lowest", **knobs)

    assert logs.keys() == expected_logs.keys()
    for key, expected in expected_logs.items():
        if isinstance(expected[0], float):
            assert logs[key] == pytest.approx(expected, rel=1e-5, abs=1e-7), key
        else:
            assert logs[key] == expected, key
