"""state_dict/load_state_dict: plain tensors and values, and an exact resume."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest
import torch
from aees_torch_helpers import checkpointed_training, loss_at, tiny_model, train

HERE = pathlib.Path(__file__).parent
STEPS = 40
SAVE_AFTER = 18  # mid-episode: episodes are 4 steps long


def test_state_dict_loads_with_weights_only(tmp_path: pathlib.Path) -> None:
    model = tiny_model()
    aees, _ = checkpointed_training(model)
    train(aees, model, range(6))
    torch.save(aees.state_dict(), tmp_path / "aees.pt")
    loaded = torch.load(tmp_path / "aees.pt", weights_only=True)
    assert loaded["step_open"] is False
    assert loaded["logs"] == aees.get_logs()
    assert set(loaded["noise_generators"]) <= {"cpu:0:0", "cpu:0:1", "cpu:0:2", "cpu:0:3"}


def test_resume_in_a_fresh_process_is_bitwise_equal_to_an_uninterrupted_run(
    tmp_path: pathlib.Path,
) -> None:
    model = tiny_model()
    aees, _ = checkpointed_training(model)
    train(aees, model, range(STEPS))
    aees.finalize()
    expected_logs = aees.get_logs()
    expected_params = [p.detach().clone() for p in model.parameters()]
    assert 0.01 in expected_logs["selected_noise_values"]

    model = tiny_model()
    aees, scheduler = checkpointed_training(model)
    train(aees, model, range(SAVE_AFTER))
    checkpoint = {
        "model": model.state_dict(),
        "optimizer": aees.optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "aees": aees.state_dict(),
    }
    torch.save(checkpoint, tmp_path / "checkpoint.pt")
    output = tmp_path / "resumed.pt"
    subprocess.run(
        [
            sys.executable,
            str(HERE / "resume_worker.py"),
            str(tmp_path / "checkpoint.pt"),
            str(SAVE_AFTER),
            str(STEPS),
            str(output),
        ],
        check=True,
        cwd=HERE,
    )
    resumed = torch.load(output, weights_only=True)
    assert resumed["logs"] == expected_logs
    for ours, expected in zip(resumed["params"], expected_params, strict=True):
        assert torch.equal(ours, expected)


def test_a_state_dict_taken_inside_a_step_resumes_that_step() -> None:
    model = tiny_model()
    aees, _ = checkpointed_training(model)
    train(aees, model, range(5))
    candidate = aees.step_start(5)
    saved = aees.state_dict()
    assert saved["step_open"] is True

    other_model = tiny_model()
    restored, _ = checkpointed_training(other_model)
    restored.load_state_dict(saved)
    assert restored.current_candidate == candidate
    loss = loss_at(other_model, 5)
    loss.backward()
    restored.step_end(loss)
    assert restored.current_candidate is None


def test_load_state_dict_rejects_a_different_configuration() -> None:
    from pulseopt_torch import AEES

    aees, _ = checkpointed_training(tiny_model())
    other = AEES(torch.optim.SGD(tiny_model().parameters(), lr=0.1), episode_length=7)
    with pytest.raises(ValueError, match="episode_length"):
        other.load_state_dict(aees.state_dict())
