"""The quality benchmark: what AEES is worth against fixed learning rates and LR-free peers.

- `tasks`: data + model + loss (digits MLP, a character model, a regression).
- `arms`: optimizer configurations (fixed multipliers, AEES variants, peers).
- `runner`: one vmapped, jitted population per (task, optimizer, arm).
- `metrics`: final/best validation loss, train-loss AUC, regret to the oracle.
- `report`: markdown tables, generated findings, figures.
- `suite`: the command-line driver used by ``benchmarks/run_all.py``.
"""
