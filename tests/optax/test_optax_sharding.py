"""Multi-device: sharded params keep their sharding, noise is shard-local, decisions global.

Each case runs in a subprocess with 8 host devices (see `sharding_worker.CASES`):
1-D, 2-D and 3-D meshes, parameters sharded on their first, middle and last
axes, with and without the robust preset (which rolls back once).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

WORKER = Path(__file__).with_name("sharding_worker.py")


def _run(case: str) -> dict:
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    env["JAX_PLATFORMS"] = "cpu"
    done = subprocess.run(
        [sys.executable, str(WORKER), case], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("case", ["1d", "1d-middle", "2d", "2d-robust", "3d-robust"])
def test_a_sharded_step_keeps_shardings_gathers_nothing_and_matches_one_device(case: str):
    result = _run(case)
    assert result["devices"] == 8
    assert result["param_shards"] >= 4
    assert result["shardings_kept"]
    assert result["all_gathers"] == 0
    assert result["all_to_alls"] == 0
    assert result["all_reduces"] > 0
    assert result["non_scalar_all_reduces"] == []
    assert result["same_decisions"]
    assert result["rollbacks"] == (1 if "robust" in case else 0)
    assert result["episodes"] >= 5
    assert result["params_moved"] > 0.01
    assert result["max_param_difference"] < 1e-5
