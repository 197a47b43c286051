"""Benchmark tasks: each one is a dataset, a model and a loss, all pure JAX.

A task knows how to initialise parameters from a key, how to score a batch,
and which fixed arrays it trains and validates on. The data either ships with
an installed package (scikit-learn's digits, the Python standard library's own
source text) or is generated from a fixed seed, so nothing is downloaded and
every run sees identical data.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

Params = Any
Batch = tuple[jax.Array, jax.Array]

# One fixed split seed for every task: the data never depends on the run seed,
# only the initialisation and the minibatch order do.
_SPLIT_SEED = 0


@dataclasses.dataclass(frozen=True)
class Task:
    """A training problem: data, model and loss.

    Attributes:
      name: short identifier used in tables and on the command line.
      description: one line for the report.
      init_params: builds a parameter pytree from a PRNG key.
      loss: mean loss of ``params`` on a ``(inputs, targets)`` batch.
      train: the training arrays, sampled in minibatches.
      val: the fixed validation arrays, always scored in full.
      batch_size: minibatch size.
      steps: training steps per run.
      eval_every: validation loss is measured every this many steps.
      optimizers: the inner optimizers (names in ``quality.arms.INNER_OPTIMIZERS``)
        this task is trained with.
      regime: one line saying what makes the task hard, for the report.
    """

    name: str
    description: str
    init_params: Callable[[jax.Array], Params]
    loss: Callable[[Params, Batch], jax.Array]
    train: Batch
    val: Batch
    batch_size: int
    steps: int
    eval_every: int
    optimizers: tuple[str, ...] = ("adamw", "sgd_momentum")
    regime: str = ""

    def sample_batch(self, key: jax.Array) -> Batch:
        """A minibatch drawn uniformly with replacement from the training arrays."""
        size = self.train[0].shape[0]
        index = jax.random.randint(key, (self.batch_size,), 0, size)
        return self.train[0][index], self.train[1][index]


def _dense_init(key: jax.Array, sizes: tuple[int, ...]) -> list[dict[str, jax.Array]]:
    """Layers with LeCun-normal weights and zero biases."""
    keys = jax.random.split(key, len(sizes) - 1)
    return [
        {
            "w": jax.random.normal(k, (fan_in, fan_out)) / jnp.sqrt(fan_in),
            "b": jnp.zeros((fan_out,)),
        }
        for k, fan_in, fan_out in zip(keys, sizes[:-1], sizes[1:], strict=True)
    ]


def _mlp_apply(layers: list[dict[str, jax.Array]], x: jax.Array) -> jax.Array:
    for layer in layers[:-1]:
        x = jax.nn.relu(x @ layer["w"] + layer["b"])
    return x @ layers[-1]["w"] + layers[-1]["b"]


def _cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def _split(n: int, val_size: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(_SPLIT_SEED).permutation(n)
    return order[val_size:], order[:val_size]


def digits_mlp(steps: int = 1500) -> Task:
    """Classify scikit-learn's 8x8 digits with a 64-64-64-10 ReLU MLP."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int32)
    train, val = _split(len(x), val_size=360)
    sizes = (64, 64, 64, 10)
    return Task(
        name="digits_mlp",
        description="scikit-learn digits (1437 train / 360 val), MLP 64-64-64-10, cross-entropy",
        init_params=lambda key: _dense_init(key, sizes),
        loss=lambda params, batch: _cross_entropy(_mlp_apply(params, batch[0]), batch[1]),
        train=(jnp.asarray(x[train]), jnp.asarray(y[train])),
        val=(jnp.asarray(x[val]), jnp.asarray(y[val])),
        batch_size=64,
        steps=steps,
        eval_every=50,
    )


def _stdlib_text() -> str:
    """Source text that every CPython install ships: the ``difflib`` module."""
    import difflib

    return inspect.getsource(difflib)


def char_mlp(steps: int = 1000, context: int = 8, embed: int = 16, hidden: int = 64) -> Task:
    """Predict the next character of Python's ``difflib`` source from the previous ``context``."""
    text = _stdlib_text()
    vocab = sorted(set(text))
    ids = np.array([vocab.index(c) for c in text], dtype=np.int32)
    windows = np.lib.stride_tricks.sliding_window_view(ids, context + 1)
    cut = int(0.9 * len(windows))
    # The validation windows come from the held-out tail of the file (so no
    # training window overlaps them); a fixed subsample keeps evaluation cheap.
    val_rows = np.linspace(cut + context, len(windows) - 1, 512).astype(int)
    train_windows, val_windows = windows[:cut], windows[val_rows]

    def init(key: jax.Array) -> Params:
        embed_key, mlp_key = jax.random.split(key)
        return {
            "embed": jax.random.normal(embed_key, (len(vocab), embed)),
            "mlp": _dense_init(mlp_key, (context * embed, hidden, len(vocab))),
        }

    def loss(params: Params, batch: Batch) -> jax.Array:
        inputs, targets = batch
        features = params["embed"][inputs].reshape(inputs.shape[0], -1)
        return _cross_entropy(_mlp_apply(params["mlp"], features), targets)

    return Task(
        name="char_mlp",
        description=(
            f"next character of CPython's difflib source ({len(text)} chars, {len(vocab)} symbols), "
            f"{context}-char context, embedding {embed}, MLP {context * embed}-{hidden}-{len(vocab)}"
        ),
        init_params=init,
        loss=loss,
        train=(jnp.asarray(train_windows[:, :-1]), jnp.asarray(train_windows[:, -1])),
        val=(jnp.asarray(val_windows[:, :-1]), jnp.asarray(val_windows[:, -1])),
        batch_size=64,
        steps=steps,
        eval_every=50,
    )


def teacher_regression(steps: int = 1000, dim: int = 16, noise: float = 0.1) -> Task:
    """Fit a random two-layer tanh teacher with a ReLU student under squared error."""
    rng = np.random.default_rng(_SPLIT_SEED)
    x = rng.standard_normal((5120, dim)).astype(np.float32)
    w1 = rng.standard_normal((dim, 32)) / np.sqrt(dim)
    w2 = rng.standard_normal((32, 1)) / np.sqrt(32)
    y = (np.tanh(x @ w1) @ w2 + noise * rng.standard_normal((len(x), 1))).astype(np.float32)
    train, val = _split(len(x), val_size=1024)
    sizes = (dim, 64, 64, 1)
    return Task(
        name="teacher_regression",
        description=(
            f"synthetic regression: y = tanh-teacher({dim}-32-1)(x) + N(0, {noise}^2), "
            f"4096 train / 1024 val, MLP {dim}-64-64-1, mean squared error"
        ),
        init_params=lambda key: _dense_init(key, sizes),
        loss=lambda params, batch: jnp.mean((_mlp_apply(params, batch[0]) - batch[1]) ** 2),
        train=(jnp.asarray(x[train]), jnp.asarray(y[train])),
        val=(jnp.asarray(x[val]), jnp.asarray(y[val])),
        batch_size=64,
        steps=steps,
        eval_every=50,
    )


# Inner optimizers of the tasks whose training loss reaches ~0 early: the
# plain ones, and the same under warmup + cosine decay to zero.
_WITH_SCHEDULES = ("adamw", "sgd_momentum", "adamw_cosine", "sgd_momentum_cosine")


def _small_mlp_classifier(
    name: str,
    description: str,
    data: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    sizes: tuple[int, ...],
    steps: int,
    regime: str,
) -> Task:
    """A small-data MLP classification task, trained with and without LR schedules."""
    x, y, train, val = data
    return Task(
        name=name,
        description=description,
        init_params=lambda key: _dense_init(key, sizes),
        loss=lambda params, batch: _cross_entropy(_mlp_apply(params, batch[0]), batch[1]),
        train=(jnp.asarray(x[train]), jnp.asarray(y[train])),
        val=(jnp.asarray(x[val]), jnp.asarray(y[val])),
        batch_size=64,
        steps=steps,
        eval_every=50,
        optimizers=_WITH_SCHEDULES,
        regime=regime,
    )


def small_digits(steps: int = 1000, train_size: int = 300) -> Task:
    """Digits again, from only ``train_size`` training images, with a wider MLP that memorises them."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int32)
    train, val = _split(len(x), val_size=360)
    return _small_mlp_classifier(
        "small_digits",
        f"scikit-learn digits, {train_size} train / 360 val, MLP 64-128-128-10, cross-entropy",
        (x, y, train[:train_size], val),
        (64, 128, 128, 10),
        steps,
        "small data: the training loss nears zero early, then the model memorises",
    )


def noisy_blobs(steps: int = 1000) -> Task:
    """Four classes from scikit-learn's ``make_classification`` with 10% flipped labels, 400 examples."""
    from sklearn.datasets import make_classification

    x, y = make_classification(
        n_samples=1400,
        n_features=20,
        n_informative=10,
        n_redundant=4,
        n_classes=4,
        n_clusters_per_class=2,
        flip_y=0.1,
        random_state=_SPLIT_SEED,
    )
    x = ((x - x.mean(0)) / x.std(0)).astype(np.float32)
    train, val = _split(len(x), val_size=1000)
    return _small_mlp_classifier(
        "noisy_blobs",
        "make_classification (20 features, 4 classes, 10% flipped labels), 400 train / 1000 "
        "val, MLP 20-128-128-4, cross-entropy",
        (x, y.astype(np.int32), train, val),
        (20, 128, 128, 4),
        steps,
        "small noisy data: fitting the flipped labels drives the training loss to ~0",
    )


def _conv(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
    """A 3x3 "SAME" convolution as patches times a matrix.

    ``kernel`` is ``[9 * in_channels, out_channels]``. Written as a matrix
    product so that a population (``vmap`` over members, each with its own
    kernel) runs as batched matrix products; a vmapped convolution becomes a
    grouped one, which is many times slower on the CPU.
    """
    height, width = x.shape[1], x.shape[2]
    padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    patches = jnp.concatenate(
        [
            padded[:, i : i + height : stride, j : j + width : stride, :]
            for i in range(3)
            for j in range(3)
        ],
        axis=-1,
    )
    return patches @ kernel


def conv_digits(steps: int = 600) -> Task:
    """Digits as 8x8 images: two 3x3 convolutions (8 and 16 channels, the second strided)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[..., None]
    y = digits.target.astype(np.int32)
    train, val = _split(len(x), val_size=360)

    def init(key: jax.Array) -> Params:
        k1, k2, k3 = jax.random.split(key, 3)
        return {
            "conv1": jax.random.normal(k1, (9 * 1, 8)) / 3.0,
            "conv2": jax.random.normal(k2, (9 * 8, 16)) / jnp.sqrt(72.0),
            "bias1": jnp.zeros((8,)),
            "bias2": jnp.zeros((16,)),
            "head": _dense_init(k3, (4 * 4 * 16, 10)),
        }

    def loss(params: Params, batch: Batch) -> jax.Array:
        h = jax.nn.relu(_conv(batch[0], params["conv1"], 1) + params["bias1"])
        h = jax.nn.relu(_conv(h, params["conv2"], 2) + params["bias2"])
        logits = _mlp_apply(params["head"], h.reshape(h.shape[0], -1))
        return _cross_entropy(logits, batch[1])

    return Task(
        name="conv_digits",
        description="scikit-learn digits as 8x8x1 images (1437 train / 360 val), conv 3x3x8, "
        "conv 3x3x16 stride 2, dense 256-10, cross-entropy, batch 32",
        init_params=init,
        loss=loss,
        train=(jnp.asarray(x[train]), jnp.asarray(y[train])),
        val=(jnp.asarray(x[val]), jnp.asarray(y[val])),
        batch_size=32,
        steps=steps,
        eval_every=50,
        regime="a convolutional net",
    )


def illconditioned_regression(steps: int = 1000, dim: int = 32, noise: float = 0.1) -> Task:
    """Linear least squares whose feature scales span 10^-1.5..1 (condition number 1000)."""
    rng = np.random.default_rng(_SPLIT_SEED)
    scales = np.logspace(0.0, -1.5, dim)
    x = (rng.standard_normal((3072, dim)) * scales).astype(np.float32)
    w = rng.standard_normal((dim, 1))
    y = (x @ w + noise * rng.standard_normal((len(x), 1))).astype(np.float32)
    train, val = _split(len(x), val_size=1024)
    return Task(
        name="illconditioned_regression",
        description=f"linear regression, {dim} features with scales 1..10^-1.5, y = x w + "
        f"N(0, {noise}^2), 2048 train / 1024 val, linear model, mean squared error",
        init_params=lambda key: _dense_init(key, (dim, 1)),
        loss=lambda params, batch: jnp.mean((_mlp_apply(params, batch[0]) - batch[1]) ** 2),
        train=(jnp.asarray(x[train]), jnp.asarray(y[train])),
        val=(jnp.asarray(x[val]), jnp.asarray(y[val])),
        batch_size=64,
        steps=steps,
        eval_every=50,
        regime="ill-conditioned: the nominal learning rate is far too low for the small directions",
    )


TASKS: dict[str, Callable[..., Task]] = {
    "digits_mlp": digits_mlp,
    "char_mlp": char_mlp,
    "teacher_regression": teacher_regression,
    "small_digits": small_digits,
    "noisy_blobs": noisy_blobs,
    "conv_digits": conv_digits,
    "illconditioned_regression": illconditioned_regression,
}
