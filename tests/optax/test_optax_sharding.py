"""Multi-device: sharded params keep their sharding, noise is shard-local, decisions global."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

WORKER = Path(__file__).with_name("sharding_worker.py")


def test_a_sharded_step_keeps_shardings_gathers_nothing_and_matches_one_device():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    env["JAX_PLATFORMS"] = "cpu"
    done = subprocess.run(
        [sys.executable, str(WORKER)], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["devices"] == 8
    assert result["param_shards"] == 8
    assert result["shardings_kept"]
    assert result["all_gathers"] == 0
    assert result["all_reduces"] > 0
    assert result["same_decisions"]
    assert result["episodes"] == 6
    assert result["params_moved"] > 0.01
    assert result["max_param_difference"] < 1e-5
