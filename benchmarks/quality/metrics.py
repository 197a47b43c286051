"""Scoring runs: final and best validation loss, train-loss AUC, regret to the oracle.

A diverged or useless run must not dominate a mean with an astronomically
large (or NaN) loss, so every loss is capped at the member's untrained
validation loss: a run that ends worse than where it started counts as having
learned nothing, no more and no less.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from quality.arms import FIXED_PREFIX
from quality.runner import RunResult

PLAIN = f"{FIXED_PREFIX}1"
ORACLE = "oracle"
GLOBAL_FIXED = "fixed_best_global"


def _capped(losses: np.ndarray, cap: np.ndarray) -> np.ndarray:
    return np.where(np.isfinite(losses) & (losses < cap), losses, cap)


@dataclasses.dataclass(frozen=True)
class Scoreboard:
    """Per-member scores of every arm on one task and inner optimizer.

    Arrays are shaped ``[arm, base LR, seed]`` and follow ``arms``, which ends
    with two rows chosen in hindsight from the fixed multipliers: ``oracle``
    (the best multiplier per base LR) and ``fixed_best_global`` (the one
    multiplier that is best on average over all base LRs).
    """

    task: str
    optimizer: str
    base_lrs: np.ndarray
    mis_set: np.ndarray
    arms: list[str]
    final_val: np.ndarray
    best_val: np.ndarray
    train_auc: np.ndarray
    regret: np.ndarray
    diverged: np.ndarray
    oracle_choice: list[str]
    global_choice: str

    def row(self, arm: str) -> int:
        return self.arms.index(arm)

    def mean_regret(self, arm: str) -> float:
        """Regret against the oracle, averaged over seeds and base LRs."""
        return float(self.regret[self.row(arm)].mean())


def score(results: list[RunResult], nominal_lr: float) -> Scoreboard:
    """Score the runs of one task and optimizer (all on the same base LRs and seeds)."""
    first = results[0]
    names = [r.arm for r in results]
    cap = np.stack([r.val_loss[..., :1] for r in results])
    val = _capped(np.stack([r.val_loss for r in results]), cap)
    train = _capped(np.stack([r.train_loss for r in results]), cap)
    final_val, best_val = val[..., -1], val.min(axis=-1)
    diverged = np.stack([~np.isfinite(r.val_loss[..., -1]) for r in results])

    fixed = [i for i, name in enumerate(names) if name.startswith(FIXED_PREFIX)]
    fixed_means = final_val[fixed].mean(axis=-1)
    oracle_rows = [fixed[i] for i in fixed_means.argmin(axis=0)]
    global_row = fixed[int(fixed_means.mean(axis=1).argmin())]
    lr_index = np.arange(len(first.base_lrs))

    def with_hindsight_rows(table: np.ndarray) -> np.ndarray:
        oracle = table[oracle_rows, lr_index]
        return np.concatenate([table, oracle[None], table[global_row][None]])

    final_all = with_hindsight_rows(final_val)
    return Scoreboard(
        task=first.task,
        optimizer=first.optimizer,
        base_lrs=first.base_lrs,
        mis_set=first.base_lrs / nominal_lr,
        arms=[*names, ORACLE, GLOBAL_FIXED],
        final_val=final_all,
        best_val=with_hindsight_rows(best_val),
        train_auc=with_hindsight_rows(train.mean(axis=-1)),
        regret=final_all - final_all[len(names)][None],
        diverged=with_hindsight_rows(diverged),
        oracle_choice=[names[i] for i in oracle_rows],
        global_choice=names[global_row],
    )


def relative_to_plain(board: Scoreboard, arm: str) -> np.ndarray:
    """Mean final validation loss of ``arm`` over that of plain training, per base LR."""
    final = board.final_val.mean(axis=-1)
    return final[board.row(arm)] / final[board.row(PLAIN)]
