"""Lightning's automatic optimization drives `AEESOptimizer` like a hand-written AEES loop."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from aees_torch_helpers import loss_at, tiny_model, train

from pulseopt_torch import AEES, AEESOptimizer

lightning = pytest.importorskip("lightning")

KNOBS: dict[str, Any] = {
    "lr_candidates": [0.5, 1.0, 2.0],
    "noise_candidates": [0.0, 0.01],
    "episode_length": 4,
    "seed": 11,
}
STEPS = 20


class _TinyModule(lightning.LightningModule):  # type: ignore[misc]
    """The helpers' MLP; batch ``i`` is the helpers' batch of step ``i``."""

    def __init__(self) -> None:
        super().__init__()
        self.net = tiny_model()
        self.aees_optimizer: AEESOptimizer | None = None

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        return loss_at(self.net, int(batch))

    def configure_optimizers(self) -> AEESOptimizer:
        self.aees_optimizer = AEESOptimizer(
            torch.optim.AdamW(self.net.parameters(), lr=2e-2), **KNOBS
        )
        return self.aees_optimizer


def test_lightning_automatic_optimization_takes_the_hand_written_loops_decisions() -> None:
    module = _TinyModule()
    trainer = lightning.Trainer(
        max_steps=STEPS,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    steps = torch.utils.data.DataLoader(list(range(STEPS)), batch_size=None)
    trainer.fit(module, train_dataloaders=steps)
    assert module.aees_optimizer is not None
    module.aees_optimizer.finalize()

    model = tiny_model()
    aees = AEES(torch.optim.AdamW(model.parameters(), lr=2e-2), **KNOBS)
    train(aees, model, range(STEPS))
    aees.finalize()

    logs = module.aees_optimizer.get_logs()
    assert len(logs["episode_rewards"]) == STEPS // KNOBS["episode_length"]
    assert logs == aees.get_logs()
    for ours, expected in zip(module.net.parameters(), model.parameters(), strict=True):
        assert torch.equal(ours.detach(), expected.detach())
