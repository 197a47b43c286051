"""AEES in two minutes: a Flax NNX MLP on scikit-learn's digits at a mis-set learning rate.

The base learning rate of AdamW is set 10x below its usual 1e-3, the kind of
mistake AEES is meant to absorb. The script trains the same model with the
recommended ``pulseopt_optax.aees(optax.adamw(...), preset="robust")``, with
the same preset fed the validation loss (``eval_value``, ending on its best
parameters), with the published bandit over the multipliers below, and with
each of those multipliers fixed. It prints a comparison table and writes a
figure of the bandit's arm and reward per episode and of every run's
validation loss.

Run it with ``make demo`` (or ``.venv/bin/python examples/demo.py``).
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from sklearn.datasets import load_digits
from tqdm import tqdm

import pulseopt_optax
from pulseopt_core.plotting import plot_logs

BASE_LR = 1e-4  # 10x below AdamW's usual 1e-3: deliberately mis-set
MULTIPLIERS = (0.25, 0.5, 1.0, 2.0, 4.0)
EPISODE_LENGTH = 50
BATCH_SIZE = 64
EVAL_EVERY = 50


class MLP(nnx.Module):
    """64 -> 64 -> 64 -> 10 ReLU classifier for the 8x8 digits."""

    def __init__(self, rngs: nnx.Rngs):
        self.hidden1 = nnx.Linear(64, 64, rngs=rngs)
        self.hidden2 = nnx.Linear(64, 64, rngs=rngs)
        self.out = nnx.Linear(64, 10, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = jax.nn.relu(self.hidden1(x))
        x = jax.nn.relu(self.hidden2(x))
        return self.out(x)


def cross_entropy(model: MLP, x: jax.Array, y: jax.Array) -> jax.Array:
    return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()


@nnx.jit
def train_step(model: MLP, optimizer: nnx.Optimizer, x: jax.Array, y: jax.Array) -> jax.Array:
    """One AdamW (+ AEES) step; AEES needs the loss, passed as ``value``."""
    loss, grads = nnx.value_and_grad(cross_entropy)(model, x, y)
    optimizer.update(model, grads, value=loss)
    return loss


@nnx.jit
def train_step_with_eval(
    model: MLP, optimizer: nnx.Optimizer, x: jax.Array, y: jax.Array, eval_value: jax.Array
) -> jax.Array:
    """The same step, also handing AEES the latest validation loss (NaN between evals)."""
    loss, grads = nnx.value_and_grad(cross_entropy)(model, x, y)
    optimizer.update(model, grads, value=loss, eval_value=eval_value)
    return loss


@nnx.jit
def evaluate(model: MLP, x: jax.Array, y: jax.Array) -> tuple[jax.Array, jax.Array]:
    logits = model(x)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return loss, (logits.argmax(-1) == y).mean()


def load_data() -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Digits scaled to [0, 1], split 80/20 with a fixed permutation."""
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int32)
    order = np.random.default_rng(0).permutation(len(x))
    val, train = order[:360], order[360:]
    return (x[train], y[train]), (x[val], y[val])


@dataclasses.dataclass
class Run:
    """One finished training run and its curves."""

    name: str
    optimizer: nnx.Optimizer
    train_loss: np.ndarray
    val_steps: np.ndarray
    val_loss: np.ndarray
    val_accuracy: float


def train(
    name: str,
    make_tx: Callable[[], optax.GradientTransformation],
    data: tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]],
    batches: np.ndarray,
    progress: tqdm,
    *,
    eval_aware: bool = False,
) -> Run:
    """Train a fresh model (same init, same minibatches for every run); record the curves.

    With ``eval_aware`` AEES gets each validation loss on the step after it was
    measured, and the run ends on the parameters of the best one.
    """
    (x_train, y_train), (x_val, y_val) = data
    model = MLP(nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, make_tx(), wrt=nnx.Param)
    train_losses, val_steps, val_losses = [], [], []
    progress.set_postfix_str(name)
    for step, index in enumerate(batches):
        eval_value = jnp.float32(jnp.nan)
        if step % EVAL_EVERY == 0:
            val_steps.append(step)
            val_losses.append(evaluate(model, x_val, y_val)[0])
            eval_value = val_losses[-1]
        batch = (x_train[index], y_train[index])
        if eval_aware:
            train_losses.append(train_step_with_eval(model, optimizer, *batch, eval_value))
        else:
            train_losses.append(train_step(model, optimizer, *batch))
        progress.update()
    if eval_aware:
        # End on the best parameters: those of the best eval handed in, or the
        # trained ones if their own validation loss is lower still.
        final_loss = evaluate(model, x_val, y_val)[0]
        params = nnx.state(model, nnx.Param)
        nnx.update(model, pulseopt_optax.best_params(optimizer, params, eval_value=final_loss))
    val_loss, val_accuracy = evaluate(model, x_val, y_val)
    val_steps.append(len(batches))
    val_losses.append(val_loss)
    return Run(
        name=name,
        optimizer=optimizer,
        train_loss=np.asarray(jax.device_get(train_losses)),
        val_steps=np.asarray(val_steps),
        val_loss=np.asarray(jax.device_get(val_losses)),
        val_accuracy=float(val_accuracy),
    )


def smooth(values: np.ndarray, window: int = EPISODE_LENGTH) -> np.ndarray:
    return np.convolve(values, np.ones(window) / window, mode="valid")


def print_table(runs: list[Run]) -> None:
    plain_final = next(r.val_loss[-1] for r in runs if r.name == "fixed x1")
    print(f"\nAdamW at base LR {BASE_LR:g} (10x below the usual 1e-3), digits, same seed:")
    print(f"{'run':<22} {'final val loss':>15} {'best val loss':>14} {'val acc':>8} {'vs x1':>7}")
    for run in runs:
        val = run.val_loss
        print(
            f"{run.name:<22} {val[-1]:>15.4f} {val.min():>14.4f} "
            f"{run.val_accuracy:>8.3f} {val[-1] / plain_final:>6.2f}x"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument(
        "--figure", type=Path, default=Path(__file__).parent / "out" / "demo_aees.png"
    )
    args = parser.parse_args()
    start = time.perf_counter()
    data = load_data()
    batches = np.random.default_rng(1).integers(0, len(data[0][0]), (args.steps, BATCH_SIZE))

    def robust_tx() -> optax.GradientTransformation:
        return pulseopt_optax.aees(optax.adamw(BASE_LR), preset="robust", seed=0)

    def robust_eval_tx() -> optax.GradientTransformation:
        return pulseopt_optax.aees(optax.adamw(BASE_LR), preset="robust", restore_best=True, seed=0)

    def bandit_tx() -> optax.GradientTransformation:
        return pulseopt_optax.aees(
            optax.adamw(BASE_LR),
            lr_candidates=MULTIPLIERS,
            episode_length=EPISODE_LENGTH,
            seed=0,
        )

    def fixed_tx(multiplier: float) -> Callable[[], optax.GradientTransformation]:
        return lambda: optax.chain(optax.adamw(BASE_LR), optax.scale(multiplier))

    runs_to_do = [
        ("robust preset", robust_tx, False),
        ("robust + eval_value", robust_eval_tx, True),
        ("bandit (reference)", bandit_tx, False),
    ] + [(f"fixed x{m:g}", fixed_tx(m), False) for m in MULTIPLIERS]
    with tqdm(total=args.steps * len(runs_to_do), unit="step", desc="training") as progress:
        runs = [
            train(name, make, data, batches, progress, eval_aware=eval_aware)
            for name, make, eval_aware in runs_to_do
        ]
    print_table(runs)
    robust_scale = pulseopt_optax.current_candidate(runs[0].optimizer).lr_multiplier
    print(f"\nrobust preset: LR multiplier at the end {float(robust_scale):g}")

    aees_run = runs[2]
    logs = pulseopt_optax.get_logs(pulseopt_optax.finalize(aees_run.optimizer.opt_state))
    chosen = np.bincount(logs["selected_lr_indices"], minlength=len(MULTIPLIERS))
    print(
        "bandit episodes per multiplier: "
        + ", ".join(f"x{m:g}: {n}" for m, n in zip(MULTIPLIERS, chosen, strict=True))
    )
    curves = {
        "bandit train (smoothed)": (
            np.arange(EPISODE_LENGTH - 1, args.steps),
            smooth(aees_run.train_loss),
        )
    }
    for run in runs:
        curves[f"{run.name} val"] = (run.val_steps, run.val_loss)
    args.figure.parent.mkdir(parents=True, exist_ok=True)
    plot_logs(
        logs,
        curves=curves,
        title=f"AEES around AdamW at base LR {BASE_LR:g} on digits (arms: the bandit's)",
        path=args.figure,
    )
    print(f"\nfigure: {args.figure.resolve()}")
    print(f"total time: {time.perf_counter() - start:.1f} s (compilation included)")


if __name__ == "__main__":
    main()
