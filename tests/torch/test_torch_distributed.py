"""Under torch.distributed every rank takes the same decisions and adds the same noise."""

from __future__ import annotations

import pathlib
import socket
import subprocess
import sys

import torch

HERE = pathlib.Path(__file__).parent
WORLD_SIZE = 2


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_two_gloo_ranks_end_with_identical_parameters_and_logs(tmp_path: pathlib.Path) -> None:
    port = _free_port()
    outputs = [tmp_path / f"rank{rank}.pt" for rank in range(WORLD_SIZE)]
    workers = [
        subprocess.Popen(
            [
                sys.executable,
                str(HERE / "distributed_worker.py"),
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

    first, second = (torch.load(path, weights_only=True) for path in outputs)
    assert len(first["logs"]["episode_rewards"]) == 6
    assert any(value > 0 for value in first["logs"]["selected_noise_values"])
    assert first["logs"] == second["logs"]
    for a, b in zip(first["params"], second["params"], strict=True):
        assert torch.equal(a, b)
