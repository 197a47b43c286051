"""FSDP2 (DTensor parameters): every rank takes the same decisions, those of one process fed the
same losses, and a rollback restores every local shard bitwise."""

from __future__ import annotations

import pathlib
import socket
import subprocess
import sys
from typing import Any

import pytest
import torch
from aees_torch_helpers import tiny_model
from fsdp_worker import CONFIGURATIONS, EPISODE_LENGTH

from pulseopt_torch import AEES

HERE = pathlib.Path(__file__).parent

WORLD_SIZE = 2
DECISIONS = (
    "selected_lr_indices",
    "selected_noise_indices",
    "selected_combined_names",
    "episode_rewards",
    "episode_start_steps",
    "episode_end_steps",
    "episode_start_losses",
    "episode_end_losses",
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """Both ranks' results for every configuration (one pair of processes for all)."""
    folder = tmp_path_factory.mktemp("fsdp")
    port = _free_port()
    outputs = [folder / f"rank{rank}.pt" for rank in range(WORLD_SIZE)]
    workers = [
        subprocess.Popen(
            [
                sys.executable,
                str(HERE / "fsdp_worker.py"),
                str(rank),
                str(WORLD_SIZE),
                str(port),
                str(outputs[rank]),
            ],
            cwd=HERE,
        )
        for rank in range(WORLD_SIZE)
    ]
    assert [worker.wait(timeout=240) for worker in workers] == [0] * WORLD_SIZE
    return [torch.load(path, weights_only=True) for path in outputs]


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
