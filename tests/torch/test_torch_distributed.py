"""Under torch.distributed every rank takes the same decisions and adds the same noise."""

from __future__ import annotations

import pathlib

import torch
from aees_torch_helpers import run_ranks

HERE = pathlib.Path(__file__).parent
WORLD_SIZE = 2


def test_two_gloo_ranks_end_with_identical_parameters_and_logs(tmp_path: pathlib.Path) -> None:
    first, second = run_ranks(HERE / "distributed_worker.py", tmp_path, WORLD_SIZE)
    assert len(first["logs"]["episode_rewards"]) == 6
    assert any(value > 0 for value in first["logs"]["selected_noise_values"])
    assert first["logs"] == second["logs"]
    for a, b in zip(first["params"], second["params"], strict=True):
        assert torch.equal(a, b)
