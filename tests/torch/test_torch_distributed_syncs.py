"""Under DDP the host waits as often as in one process: never inside an episode by default,
once per step with the guard, each wait one buffer read with at most one blocking collective."""

from __future__ import annotations

import pathlib

from aees_torch_helpers import run_ranks
from sync_count_worker import EPISODE_LENGTH

HERE = pathlib.Path(__file__).parent
WORLD_SIZE = 2


def test_two_gloo_ranks_wait_for_the_device_at_most_once_per_step(tmp_path: pathlib.Path) -> None:
    for result in run_ranks(HERE / "sync_count_worker.py", tmp_path, WORLD_SIZE):
        default, robust = result["default"], result["robust"]
        ends = [(index + 1) % EPISODE_LENGTH == 0 for index in range(len(default))]
        assert [step["scalar"] for step in default + robust] == [0] * (2 * len(default))
        # Default: the step rows are all-reduced asynchronously; the step that
        # ends an episode reads them, its one wait.
        assert [step["buffer"] for step in default] == [int(end) for end in ends]
        assert all(step["collective"] <= step["buffer"] for step in default)
        # The guard: one read before every optimizer step, with its one blocking
        # all-reduce (the loss and the gradient flag), the episode's last step included.
        assert [step["buffer"] for step in robust] == [1] * len(robust)
        assert [step["collective"] for step in robust] == [1] * len(robust)
