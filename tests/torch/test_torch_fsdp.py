"""FSDP2 (DTensor parameters): every rank takes the same decisions, those of one process fed the
same losses, and a rollback restores every local shard bitwise."""

from __future__ import annotations

import pathlib
from typing import Any

import pytest
import torch
from aees_torch_helpers import run_ranks, tiny_model
from fsdp_worker import CONFIGURATIONS, EPISODE_LENGTH

import pulseopt_core as core
from pulseopt_torch import AEES

HERE = pathlib.Path(__file__).parent

WORLD_SIZE = 2
# The decisions and what they were scored on (not the derived log columns).
DECISIONS = tuple(
    key
    for key in core.LOG_KEYS
    if key.startswith(("selected_", "episode_")) and "ema" not in key and "values" not in key
)


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """Both ranks' results for every configuration (one pair of processes for all)."""
    return run_ranks(HERE / "fsdp_worker.py", tmp_path_factory.mktemp("fsdp"), WORLD_SIZE)


def _single_process_logs(knobs: dict[str, Any], losses: list[float]) -> dict[str, list[Any]]:
    """One process, an unsharded model, fed the losses the FSDP run recorded."""
    model = tiny_model()
    aees = AEES(
        torch.optim.AdamW(model.parameters(), lr=2e-2),
        episode_length=EPISODE_LENGTH,
        seed=7,
        **knobs,
    )
    for step, loss in enumerate(losses):
        aees.step_start(step)
        aees.optimizer.zero_grad()
        model(torch.ones(1, 4)).sum().backward()
        aees.step_end(loss)
    aees.finalize()
    return aees.get_logs()


def test_the_parameters_are_sharded_unevenly(ranks: list[dict[str, Any]]) -> None:
    first, second = (rank["lr_only"]["local_shapes"] for rank in ranks)
    assert first != second


@pytest.mark.parametrize("name", list(CONFIGURATIONS))
def test_both_ranks_take_the_same_decisions(ranks: list[dict[str, Any]], name: str) -> None:
    first, second = (rank[name] for rank in ranks)
    assert len(first["logs"]["episode_rewards"]) >= 5
    assert first["logs"] == second["logs"]


@pytest.mark.parametrize("name", list(CONFIGURATIONS))
def test_the_decisions_are_those_of_one_process_fed_the_same_losses(
    ranks: list[dict[str, Any]], name: str
) -> None:
    sharded = ranks[0][name]
    alone = _single_process_logs(CONFIGURATIONS[name], sharded["losses"])
    for key in DECISIONS:
        assert sharded["logs"][key] == alone[key], key


def test_the_noise_arms_are_explored(ranks: list[dict[str, Any]]) -> None:
    assert any(value > 0 for value in ranks[0]["noise"]["logs"]["selected_noise_values"])


def test_a_spike_rolls_every_shard_back_to_the_snapshot_bitwise(
    ranks: list[dict[str, Any]],
) -> None:
    for rank in ranks:
        assert rank["robust"]["rollbacks"] == 1
        assert rank["robust"]["shards_equal_snapshot"] is True
