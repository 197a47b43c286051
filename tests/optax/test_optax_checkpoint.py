"""Checkpoint/resume with orbax in a fresh process is bitwise exact."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

WORKER = Path(__file__).with_name("checkpoint_worker.py")


def _run(mode, directory):
    done = subprocess.run(
        [sys.executable, str(WORKER), mode, str(directory)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_resuming_from_an_orbax_checkpoint_mid_episode_equals_an_uninterrupted_run(tmp_path):
    _run("save", tmp_path)
    result = json.loads(_run("resume", tmp_path).strip().splitlines()[-1])
    assert result == {
        "key_is_typed": True,
        "leaves": True,
        "bitwise_equal": True,
        "logs_equal": True,
        "episodes": 6,
    }
