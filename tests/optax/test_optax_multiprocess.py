"""Several JAX processes (``jax.distributed`` over localhost) take one run's decisions.

Two processes of two CPU devices each form one 2x2 mesh (data x model):
parameters sharded over the model axis, the batch over the data axis. With LR
and noise arms and the robust preset (one rollback), both processes log the
decisions of a single process that holds all four devices, and an orbax
checkpoint written mid-episode by both restores to a bitwise-equal
continuation; ``seed=None`` is refused, since every process would draw its
own entropy. See `multiprocess_worker`.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np

WORKER = Path(__file__).with_name("multiprocess_worker.py")
PROCESSES = 2


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start(args: list[str], devices: int, out: Path) -> subprocess.Popen:
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    log = (out / f"log-{args[0]}.txt").open("w")
    return subprocess.Popen(
        [sys.executable, str(WORKER), *args], env=env, stdout=log, stderr=subprocess.STDOUT
    )


def test_two_processes_decide_as_one_and_resume_from_a_checkpoint_bitwise(tmp_path: Path):
    port = str(_free_port())
    (tmp_path / "multi").mkdir()
    (tmp_path / "single").mkdir()
    workers = [
        _start([str(i), str(PROCESSES), port, str(tmp_path / "multi")], 2, tmp_path)
        for i in range(PROCESSES)
    ]
    single = _start(["single", str(tmp_path / "single")], 2 * PROCESSES, tmp_path)
    codes = [worker.wait(timeout=300) for worker in [*workers, single]]
    logs = {path.name: path.read_text()[-3000:] for path in tmp_path.glob("log-*.txt")}
    assert codes == [0] * (PROCESSES + 1), logs

    results = [json.loads((tmp_path / "multi" / f"process{i}.json").read_text()) for i in range(2)]
    alone = json.loads((tmp_path / "single" / "single.json").read_text())
    assert not alone["seed_none_refused"]
    for result in results:
        assert result["processes"] == PROCESSES
        assert result["devices"] == 2 * PROCESSES
        assert result["param_shards_here"] == 2
        assert result["rollbacks"] == 1
        assert result["resumed_bitwise"]
        assert result["seed_none_refused"]
        assert result["names"] == alone["names"]
        assert len(set(result["names"])) > 2
        np.testing.assert_allclose(result["rewards"], alone["rewards"], atol=1e-6)
        for name, values in result["params"].items():
            np.testing.assert_allclose(values, alone["params"][name], atol=1e-6)
    assert results[0] == results[1]
